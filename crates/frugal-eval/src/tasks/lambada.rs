//! LAMBADA (OpenAI's detokenized test set, one `{"text": ...}` per line):
//! predict the last word of a passage.
//!
//! The target is the last whitespace-separated word, the context the text
//! before the whitespace preceding it. Both the full text and the context are
//! tokenized (BOS first where the model adds it); the target's tokens are the
//! full text's tokens after their longest common prefix, so a tokenizer that
//! merges across the boundary still scores the whole word. An item is right
//! when every target token is the greedy argmax given the tokens before it
//! (lm-evaluation-harness's `is_greedy`); the word perplexity is
//! exp(mean over items of the target's summed negative log-likelihood), the
//! harness's `perplexity` for lambada.

use super::{common_prefix, fit_left, json_object, row_scores, LogitSource, Rec};
use crate::data::TaskFile;
use crate::EvalError;
use frugal_tokenizer::Tokenizer;

/// A passage, split where its last word begins.
#[derive(Clone, Debug, PartialEq)]
pub struct LambadaItem {
    /// The passage without trailing whitespace.
    pub text: String,
    /// Byte length of the context: `text[..context_len]`, then whitespace, then the word.
    pub context_len: usize,
}

impl LambadaItem {
    pub fn context(&self) -> &str {
        &self.text[..self.context_len]
    }

    pub fn word(&self) -> &str {
        self.text[self.context_len..].trim_start()
    }
}

/// Split `text` into context and last word; `None` when there is no
/// whitespace-separated last word after a non-empty context.
pub fn split_target(text: &str) -> Option<LambadaItem> {
    let text = text.trim_end();
    let sep = text.rfind(char::is_whitespace)?;
    let context = text[..sep].trim_end();
    if context.is_empty() {
        return None;
    }
    Some(LambadaItem {
        text: text.to_string(),
        context_len: context.len(),
    })
}

/// The records of a LAMBADA jsonl file.
pub fn records(f: &TaskFile) -> impl Iterator<Item = Rec<LambadaItem>> + '_ {
    f.lines()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| parse_line(l).map(|it| (n, it)).map_err(|e| (n, e)))
}

/// One line: `{"text": "..."}`.
pub fn parse_line(line: &str) -> Result<LambadaItem, String> {
    const EXPECTED: &str = "one {\"text\": ...} object per line";
    let obj = json_object(line, EXPECTED)?;
    let text = match obj.get("text") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err("\"text\" is not a string".into()),
        None => return Err(format!("no \"text\" field; expected {EXPECTED}")),
    };
    split_target(text).ok_or_else(|| "the text has no context and last word to split".into())
}

/// A passage tokenized: the target is `tokens[start..]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSeq {
    pub tokens: Vec<u32>,
    pub start: usize,
    /// Context tokens cut from the left to fit the model's context.
    pub cut: usize,
}

/// Tokenize `item` and locate its target tokens, fitting it into `n_ctx`.
pub fn tokenize(item: &LambadaItem, tok: &Tokenizer, n_ctx: usize) -> Result<TargetSeq, String> {
    // BOS by hand: encode(.., add_special) could also append EOS to both.
    let bos: Vec<u32> = tok.bos_id().filter(|_| tok.add_bos()).into_iter().collect();
    let with_bos = |s: &str| {
        let mut v = bos.clone();
        v.extend(tok.encode(s, false, false));
        v
    };
    let full = with_bos(&item.text);
    let context = with_bos(item.context());
    let start = align(&context, &full);
    if start == 0 {
        return Err("the context gives no token to predict the last word from".into());
    }
    if start >= full.len() {
        return Err("the last word adds no tokens".into());
    }
    let mut seqs = [full];
    let cut = fit_left(&mut seqs, bos.len(), start, n_ctx)?;
    let [tokens] = seqs;
    Ok(TargetSeq {
        tokens,
        start: start - cut,
        cut,
    })
}

/// Where the target's tokens start in `full`: after the longest common
/// prefix with the context's own tokens.
pub fn align(context: &[u32], full: &[u32]) -> usize {
    common_prefix(context, full)
}

/// How the model did on one passage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetScore {
    /// Every target token was the argmax.
    pub greedy: bool,
    /// Summed negative log-likelihood of the target tokens.
    pub nll: f64,
    pub tokens: usize,
}

/// Score the target of `t`: the context runs with last-token logits only,
/// then the target's tokens but its last.
pub fn score(src: &mut dyn LogitSource, t: &TargetSeq) -> Result<TargetScore, EvalError> {
    if t.start == 0 || t.start >= t.tokens.len() {
        return Err(EvalError::Input(format!(
            "target start {} outside 1..{}",
            t.start,
            t.tokens.len()
        )));
    }
    let n_vocab = src.n_vocab();
    let (context, target) = t.tokens.split_at(t.start);
    let mut s = TargetScore {
        greedy: true,
        nll: 0.0,
        tokens: 0,
    };
    let mut add = |block: &[f32], targets: &[u32]| {
        for (lp, g) in row_scores(block, n_vocab, targets) {
            s.nll -= lp;
            s.greedy &= g;
            s.tokens += 1;
        }
    };
    src.truncate(0);
    src.feed(context, false, &mut |_, row| add(row, &target[..1]))?;
    if target.len() > 1 {
        src.feed(&target[..target.len() - 1], true, &mut |i, block| {
            add(block, &target[1 + i..])
        })?;
    }
    if s.tokens != target.len() {
        return Err(EvalError::Input("the model returned too few logits".into()));
    }
    Ok(s)
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LambadaResult {
    pub items: usize,
    pub correct: usize,
    pub acc_pct: f64,
    pub acc_stderr_pct: f64,
    /// exp(mean summed NLL of the target word).
    pub word_ppl: f64,
    /// Mean tokens per target word.
    pub target_tokens_mean: f64,
    /// Items whose context was cut to fit the model.
    pub cut_items: usize,
}

/// Score all `items`; `progress(done, total, running_acc_pct)` after each.
pub fn evaluate(
    src: &mut dyn LogitSource,
    items: &[TargetSeq],
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<LambadaResult, EvalError> {
    let mut r = LambadaResult::default();
    let (mut nll, mut target_tokens) = (0.0, 0usize);
    for (i, t) in items.iter().enumerate() {
        let s = score(src, t)?;
        r.correct += usize::from(s.greedy);
        r.cut_items += usize::from(t.cut > 0);
        nll += s.nll;
        target_tokens += s.tokens;
        progress(
            i + 1,
            items.len(),
            100.0 * r.correct as f64 / (i + 1) as f64,
        );
    }
    r.items = items.len();
    let n = r.items.max(1) as f64;
    (r.acc_pct, r.acc_stderr_pct) = super::accuracy_pct(r.correct, r.items);
    r.word_ppl = (nll / n).exp();
    r.target_tokens_mean = target_tokens as f64 / n;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_word_splits_off() {
        let it = split_target("He said \"go\"\n\nand she  left. \n").unwrap();
        assert_eq!(it.context(), "He said \"go\"\n\nand she");
        assert_eq!(it.word(), "left.");
        assert_eq!(it.text, "He said \"go\"\n\nand she  left.");
        let it = split_target("a\nword").unwrap();
        assert_eq!((it.context(), it.word()), ("a", "word"));
        assert!(split_target("oneword").is_none());
        assert!(split_target("  word ").is_none());
        assert!(split_target("").is_none());
    }

    #[test]
    fn lines_parse_or_say_why() {
        assert_eq!(parse_line(r#"{"text": "a b"}"#).unwrap().word(), "b");
        let e = parse_line(r#"{"txt": "a b"}"#).unwrap_err();
        assert!(e.contains("no \"text\""), "{e}");
        assert!(parse_line(r#"{"text": 3}"#)
            .unwrap_err()
            .contains("not a string"));
        assert!(parse_line(r#"{"text": "word"}"#)
            .unwrap_err()
            .contains("last word"));
        assert!(parse_line("Roof shingle removal: A man")
            .unwrap_err()
            .contains("JSON"));
    }

    #[test]
    fn target_tokens_follow_the_common_prefix() {
        // Clean boundary: the context's tokens are a prefix of the full text's.
        assert_eq!(align(&[1, 10, 11], &[1, 10, 11, 12, 13]), 3);
        // A merge across the boundary: the context ends in 11 alone but the
        // full text has 14 there; the target starts at the divergence.
        assert_eq!(align(&[1, 10, 11], &[1, 10, 14, 13]), 2);
    }

    /// Logits from the last token only: `next[t]` is the favoured successor.
    struct Chain {
        next: Vec<u32>,
    }

    impl LogitSource for Chain {
        fn n_vocab(&self) -> usize {
            self.next.len()
        }
        fn truncate(&mut self, _: usize) {}
        fn feed(
            &mut self,
            tokens: &[u32],
            all: bool,
            rows: &mut dyn FnMut(usize, &[f32]),
        ) -> Result<(), EvalError> {
            let row = |t: u32| {
                let mut r = vec![0.0f32; self.next.len()];
                r[self.next[t as usize] as usize] = 2.0;
                r
            };
            let (i, block): (usize, Vec<f32>) = if all {
                (0, tokens.iter().flat_map(|&t| row(t)).collect())
            } else {
                (tokens.len() - 1, row(*tokens.last().unwrap()))
            };
            rows(i, &block);
            Ok(())
        }
    }

    #[test]
    fn greedy_needs_every_target_token() {
        // 0 -> 1 -> 2 -> 3 -> 0
        let mut m = Chain {
            next: vec![1, 2, 3, 0],
        };
        let right = TargetSeq {
            tokens: vec![0, 1, 2, 3],
            start: 2,
            cut: 0,
        };
        let s = score(&mut m, &right).unwrap();
        assert!(s.greedy);
        assert_eq!(s.tokens, 2);
        // Each favoured token has p = e^2 / (e^2 + 3).
        let p = 2f64.exp() / (2f64.exp() + 3.0);
        assert!((s.nll + 2.0 * p.ln()).abs() < 1e-6, "{s:?}");
        // First target token right, second wrong.
        let wrong = TargetSeq {
            tokens: vec![0, 1, 2, 0],
            start: 2,
            cut: 0,
        };
        assert!(!score(&mut m, &wrong).unwrap().greedy);
        let r = evaluate(&mut m, &[right, wrong], |_, _, _| {}).unwrap();
        assert_eq!((r.items, r.correct), (2, 1));
        assert_eq!(r.acc_pct, 50.0);
        assert!(r.word_ppl > 1.0);
    }
}
