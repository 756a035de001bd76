//! Multiple-choice scoring, exactly what llama.cpp's `hellaswag_score`
//! (examples/perplexity/perplexity.cpp) scores, so numbers compare one to one:
//!
//! - each choice is the sequence `tokenize(context + " " + choice)` with BOS
//!   (llama.cpp's `common_tokenize(ctx, text, true)`);
//! - the tokens common to all choices' sequences are the shared prefix; the
//!   scored tokens of a choice are all its tokens after that prefix (the
//!   first predicted from the prefix's last logits);
//! - a choice's score is the mean log-probability of its scored tokens, and
//!   the first best choice wins (`acc_norm`).
//!
//! The raw sum of log-probabilities is kept as well (`acc_raw`). Where
//! llama.cpp reads out of bounds (a choice whose whole sequence is the shared
//! prefix), the prefix is cut back one token so every choice has one scored.

use super::{fit_left, row_scores, LogitSource};
use crate::EvalError;
use frugal_tokenizer::Tokenizer;

/// One multiple-choice question as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceItem {
    pub context: String,
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub label: usize,
}

/// A question tokenized for scoring.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceSeqs {
    /// One full token sequence per choice.
    pub seqs: Vec<Vec<u32>>,
    /// Leading tokens common to all sequences (at least 1, less than the shortest).
    pub shared: usize,
    pub label: usize,
    /// Context tokens cut from the left to fit the model's context.
    pub cut: usize,
}

/// A choice's summed log-probability over its scored tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChoiceScore {
    pub logprob: f64,
    pub tokens: usize,
}

impl ChoiceScore {
    /// The length-normalized score llama.cpp ranks by.
    pub fn mean(&self) -> f64 {
        self.logprob / self.tokens as f64
    }
}

/// Tokens shared by all `seqs`, capped so each keeps at least one token after them.
pub fn shared_prefix(seqs: &[Vec<u32>]) -> usize {
    let Some(first) = seqs.first() else { return 0 };
    let common = seqs[1..]
        .iter()
        .map(|s| super::common_prefix(first, s))
        .min()
        .unwrap_or(first.len());
    let shortest = seqs.iter().map(Vec::len).min().unwrap_or(0);
    common.min(shortest.saturating_sub(1))
}

/// Tokenize `item` as llama.cpp does, fitting it into `n_ctx` tokens.
pub fn tokenize(item: &ChoiceItem, tok: &Tokenizer, n_ctx: usize) -> Result<ChoiceSeqs, String> {
    let mut seqs: Vec<Vec<u32>> = item
        .choices
        .iter()
        .map(|c| tok.encode(&format!("{} {c}", item.context), true, false))
        .collect();
    let shared = shared_prefix(&seqs);
    if shared == 0 {
        return Err("the choices share no first token to predict them from \
                    (an empty context and a model without BOS)"
            .into());
    }
    let bos = tok.add_bos() && seqs[0].first().copied() == tok.bos_id();
    let cut = fit_left(&mut seqs, usize::from(bos), shared, n_ctx)?;
    Ok(ChoiceSeqs {
        seqs,
        shared: shared - cut,
        label: item.label,
        cut,
    })
}

/// Score every choice of `q`: the shared prefix runs once, then each choice's
/// tokens after it (all but its last, whose logits predict nothing scored).
pub fn score(src: &mut dyn LogitSource, q: &ChoiceSeqs) -> Result<Vec<ChoiceScore>, EvalError> {
    let p = q.shared;
    if p == 0 || q.seqs.iter().any(|s| s.len() <= p) {
        return Err(EvalError::Input(format!(
            "shared prefix of {p} tokens leaves a choice with nothing to score"
        )));
    }
    let n_vocab = src.n_vocab();
    let firsts: Vec<u32> = q.seqs.iter().map(|s| s[p]).collect();
    let mut scores: Vec<ChoiceScore> = Vec::with_capacity(q.seqs.len());
    src.truncate(0);
    src.feed(&q.seqs[0][..p], false, &mut |_, row| {
        scores = target_logprobs(row, n_vocab, &firsts)
            .into_iter()
            .map(|lp| ChoiceScore {
                logprob: lp,
                tokens: 1,
            })
            .collect();
    })?;
    if scores.len() != q.seqs.len() {
        return Err(EvalError::Input("the model returned no logits".into()));
    }
    for (s, score) in q.seqs.iter().zip(scores.iter_mut()) {
        let rest = &s[p..s.len() - 1];
        if rest.is_empty() {
            continue;
        }
        src.truncate(p);
        src.feed(rest, true, &mut |i, block| {
            for (lp, _) in row_scores(block, n_vocab, &s[p + 1 + i..]) {
                score.logprob += lp;
                score.tokens += 1;
            }
        })?;
    }
    Ok(scores)
}

/// Log-probabilities of several targets under one row of logits.
fn target_logprobs(row: &[f32], n_vocab: usize, targets: &[u32]) -> Vec<f64> {
    let row = &row[..n_vocab];
    let lse = crate::perplexity::log_sum_exp(row);
    targets
        .iter()
        .map(|&t| row[t as usize] as f64 - lse)
        .collect()
}

/// Index of the first largest value (NaN never wins).
pub fn best(values: &[f64]) -> usize {
    let mut bi = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[bi] || values[bi].is_nan() {
            bi = i;
        }
    }
    bi
}

/// Accuracy of a multiple-choice evaluation.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChoiceResult {
    pub items: usize,
    /// Right by mean log-probability (llama.cpp's acc_norm).
    pub correct: usize,
    /// Right by summed log-probability.
    pub correct_raw: usize,
    pub acc_pct: f64,
    pub acc_stderr_pct: f64,
    pub acc_raw_pct: f64,
    pub acc_raw_stderr_pct: f64,
    /// Items whose context was cut to fit the model.
    pub cut_items: usize,
    /// Tokens run through the model.
    pub tokens_run: usize,
}

/// Score all `items`; `progress(done, total, running_acc_pct)` after each.
pub fn evaluate(
    src: &mut dyn LogitSource,
    items: &[ChoiceSeqs],
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<ChoiceResult, EvalError> {
    let mut r = ChoiceResult::default();
    for (i, q) in items.iter().enumerate() {
        let scores = score(src, q)?;
        let means: Vec<f64> = scores.iter().map(ChoiceScore::mean).collect();
        let sums: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
        r.correct += usize::from(best(&means) == q.label);
        r.correct_raw += usize::from(best(&sums) == q.label);
        r.cut_items += usize::from(q.cut > 0);
        r.tokens_run += q.shared + q.seqs.iter().map(|s| s.len() - 1 - q.shared).sum::<usize>();
        progress(
            i + 1,
            items.len(),
            100.0 * r.correct as f64 / (i + 1) as f64,
        );
    }
    r.items = items.len();
    (r.acc_pct, r.acc_stderr_pct) = super::accuracy_pct(r.correct, r.items);
    (r.acc_raw_pct, r.acc_raw_stderr_pct) = super::accuracy_pct(r.correct_raw, r.items);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits that depend on the whole history (so a wrong cache reuse shows),
    /// with one favoured token per history.
    pub(crate) struct Fake {
        pub hist: Vec<u32>,
        pub n_vocab: usize,
        pub fed: usize,
    }

    pub(crate) fn fake_row(hist: &[u32], n_vocab: usize) -> Vec<f32> {
        let h = hist
            .iter()
            .fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64 + 1));
        (0..n_vocab)
            .map(|v| {
                let x = h.wrapping_mul(2654435761).wrapping_add(v as u64 * 40503) % 1000;
                x as f32 / 200.0
            })
            .collect()
    }

    impl LogitSource for Fake {
        fn n_vocab(&self) -> usize {
            self.n_vocab
        }
        fn truncate(&mut self, len: usize) {
            self.hist.truncate(len);
        }
        fn feed(
            &mut self,
            tokens: &[u32],
            all: bool,
            rows: &mut dyn FnMut(usize, &[f32]),
        ) -> Result<(), EvalError> {
            let mut block = Vec::new();
            for (i, &t) in tokens.iter().enumerate() {
                self.hist.push(t);
                if all || i + 1 == tokens.len() {
                    block.extend(fake_row(&self.hist, self.n_vocab));
                }
            }
            self.fed += tokens.len();
            rows(if all { 0 } else { tokens.len() - 1 }, &block);
            Ok(())
        }
    }

    /// Log-probability of `seq[from..]` computed from scratch, token by token.
    fn naive(seq: &[u32], from: usize, n_vocab: usize) -> f64 {
        (from..seq.len())
            .map(|j| -crate::perplexity::nll_of(&fake_row(&seq[..j], n_vocab), seq[j]))
            .sum()
    }

    #[test]
    fn prefix_reuse_scores_like_running_each_choice_alone() {
        let seqs = vec![
            vec![1, 5, 6, 7, 2, 3],
            vec![1, 5, 6, 7, 4],
            vec![1, 5, 6, 7, 2, 9, 9, 8],
        ];
        let q = ChoiceSeqs {
            shared: shared_prefix(&seqs),
            seqs: seqs.clone(),
            label: 0,
            cut: 0,
        };
        assert_eq!(q.shared, 4);
        let mut f = Fake {
            hist: vec![],
            n_vocab: 10,
            fed: 0,
        };
        let got = score(&mut f, &q).unwrap();
        for (s, g) in seqs.iter().zip(&got) {
            assert_eq!(g.tokens, s.len() - 4);
            assert!((g.logprob - naive(s, 4, 10)).abs() < 1e-9, "{g:?}");
        }
        // Prefix once, then each choice without its last token (1, 0 and 3 tokens).
        assert_eq!(f.fed, 4 + 1 + 3);
    }

    /// Hand-made logits: the next token's logits depend only on the last token.
    struct Bigram(Vec<Vec<f32>>, Vec<u32>);

    impl LogitSource for Bigram {
        fn n_vocab(&self) -> usize {
            self.0.len()
        }
        fn truncate(&mut self, len: usize) {
            self.1.truncate(len);
        }
        fn feed(
            &mut self,
            tokens: &[u32],
            all: bool,
            rows: &mut dyn FnMut(usize, &[f32]),
        ) -> Result<(), EvalError> {
            self.1.extend_from_slice(tokens);
            let block: Vec<f32> = if all {
                tokens
                    .iter()
                    .flat_map(|&t| self.0[t as usize].clone())
                    .collect()
            } else {
                self.0[*tokens.last().unwrap() as usize].clone()
            };
            rows(if all { 0 } else { tokens.len() - 1 }, &block);
            Ok(())
        }
    }

    #[test]
    fn best_mean_log_prob_wins_not_best_sum() {
        // Vocab: 0 = context, 1 = likely, 2 = unlikely, 3 = filler.
        // After 0: p(1) high, p(2) low. After 1: p(3) very low. After 2: p(3) high.
        let l = |p: [f32; 4]| p.iter().map(|x| x.ln()).collect::<Vec<f32>>();
        let table = vec![
            l([0.01, 0.6, 0.3, 0.09]),
            l([0.5, 0.4, 0.09, 0.01]),
            l([0.01, 0.01, 0.01, 0.97]),
            l([0.97, 0.01, 0.01, 0.01]),
        ];
        // Choice A = [1, 3]: ln .6 + ln .01 -> mean ≈ -2.56.
        // Choice B = [2, 3, 0]: ln .3 + ln .97 + ln .97 -> mean ≈ -0.42, sum ≈ -1.26.
        // Choice C = [1]: ln .6 ≈ -0.51 (best sum, worse mean than B).
        let q = ChoiceSeqs {
            seqs: vec![vec![0, 1, 3], vec![0, 2, 3, 0], vec![0, 1]],
            shared: 1,
            label: 1,
            cut: 0,
        };
        let mut m = Bigram(table, vec![]);
        let s = score(&mut m, &q).unwrap();
        let means: Vec<f64> = s.iter().map(ChoiceScore::mean).collect();
        let sums: Vec<f64> = s.iter().map(|c| c.logprob).collect();
        assert!((sums[1] - (0.3f64.ln() + 2.0 * 0.97f64.ln())).abs() < 1e-5);
        assert_eq!(s[1].tokens, 3);
        assert_eq!(best(&means), 1);
        assert_eq!(best(&sums), 2);
        let r = evaluate(&mut m, &[q.clone(), q], |_, _, _| {}).unwrap();
        assert_eq!((r.correct, r.correct_raw, r.items), (2, 0, 2));
        assert_eq!(r.acc_pct, 100.0);
        assert_eq!(r.acc_raw_pct, 0.0);
    }

    #[test]
    fn best_takes_the_first_maximum() {
        assert_eq!(best(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(best(&[f64::NAN, -1.0]), 1);
        assert_eq!(best(&[-2.0, f64::NAN, -1.0]), 2);
    }

    #[test]
    fn shared_prefix_leaves_every_choice_a_token() {
        assert_eq!(shared_prefix(&[vec![1, 2, 3], vec![1, 2, 4]]), 2);
        // Identical choices: llama.cpp would read past the end; we keep one token.
        assert_eq!(shared_prefix(&[vec![1, 2, 3], vec![1, 2, 3]]), 2);
        assert_eq!(shared_prefix(&[vec![1, 2], vec![1, 2, 3]]), 1);
        assert_eq!(shared_prefix(&[vec![5, 2], vec![1, 2]]), 0);
    }
}
