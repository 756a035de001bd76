//! Task accuracy: LAMBADA ([`lambada`]), HellaSwag ([`hellaswag`]) and generic
//! multiple choice ([`mc`]), the last two scored alike ([`choice`]).
//!
//! Each task file is read as *records* (one per line, or per 6-line group for
//! HellaSwag), each record tokenized into an item; a malformed record, or one
//! that cannot be scored, stops the run with an error naming its line or is
//! skipped ([`OnBadLine`]). `--limit N` takes the first N good items in file
//! order.
//!
//! Items longer than the model's context are cut from the left (keeping BOS),
//! as lm-evaluation-harness does, so a long context never stops a run; only the
//! scored tokens must fit, else the item is bad. Cut items are counted.
//!
//! Scoring only computes what it needs: the shared prefix runs once with
//! last-token logits, then each continuation runs after it
//! ([`KvCache::truncate`]) with logits for its scored positions only.

pub mod choice;
pub mod hellaswag;
pub mod lambada;
pub mod mc;

use crate::data::{OnBadLine, Parsed, TaskFile};
use crate::perplexity::nll_of;
use crate::EvalError;
use frugal_model::sampling::argmax;
use frugal_model::{KvCache, KvType, Logits, Model, State};
use rayon::prelude::*;

/// A record read from a task file: its (first) line and value, or the line
/// that is malformed and why.
pub type Rec<R> = Result<(usize, R), (usize, String)>;

/// What scoring needs from a language model. A trait so the scoring logic can
/// be checked against hand-made logits.
pub trait LogitSource {
    fn n_vocab(&self) -> usize;
    /// Keep only the first `len` positions of the history.
    fn truncate(&mut self, len: usize);
    /// Append `tokens` to the history. `rows(i, block)` receives the logits
    /// (row-major, `n_vocab` per row) of `tokens[i..]`: of every token when
    /// `all`, else only of the last one.
    fn feed(
        &mut self,
        tokens: &[u32],
        all: bool,
        rows: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), EvalError>;
}

/// A [`Model`] with a KV cache, run in batches of at most `batch` tokens.
pub struct ModelRunner<'m> {
    model: &'m Model,
    kv: KvCache,
    st: State,
}

impl<'m> ModelRunner<'m> {
    /// Room for sequences of `n_ctx` tokens; batches of `batch` tokens bound
    /// the logits buffer (`batch × n_vocab` floats).
    pub fn new(model: &'m Model, n_ctx: usize, batch: usize) -> Result<Self, EvalError> {
        Self::with_kv_type(model, n_ctx, batch, KvType::F32)
    }

    /// [`ModelRunner::new`] with the KV cache stored as `kv_type`.
    pub fn with_kv_type(
        model: &'m Model,
        n_ctx: usize,
        batch: usize,
        kv_type: KvType,
    ) -> Result<Self, EvalError> {
        let kv = model.new_cache_typed(n_ctx.max(1), kv_type)?;
        let st = model.new_state(batch.clamp(1, n_ctx.max(1)), true);
        Ok(ModelRunner { model, kv, st })
    }
}

impl LogitSource for ModelRunner<'_> {
    fn n_vocab(&self) -> usize {
        self.model.config.n_vocab
    }

    fn truncate(&mut self, len: usize) {
        self.kv.truncate(len);
    }

    fn feed(
        &mut self,
        tokens: &[u32],
        all: bool,
        rows: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), EvalError> {
        let cap = self.st.capacity();
        let mode = if all { Logits::All } else { Logits::Last };
        let mut i = 0;
        while i < tokens.len() {
            let end = (i + cap).min(tokens.len());
            let out = self
                .model
                .forward(&tokens[i..end], &mut self.kv, &mut self.st, mode)?;
            if all {
                rows(i, out);
            } else if end == tokens.len() {
                rows(end - 1, out);
            }
            i = end;
        }
        Ok(())
    }
}

/// For each row of `block`, the log-probability of its target and whether the
/// target is the row's argmax (greedy). Rows beyond `targets` are ignored.
pub fn row_scores(block: &[f32], n_vocab: usize, targets: &[u32]) -> Vec<(f64, bool)> {
    block
        .par_chunks_exact(n_vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| (-nll_of(row, t), argmax(row) == t))
        .collect()
}

/// Length of the longest common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Cut `drop` tokens after the first `keep` (BOS) of every sequence so the
/// longest fits `n_ctx`. The cut must stay inside the first `shared` tokens
/// (common to all) and leave at least one of them. Returns the tokens cut.
pub fn fit_left(
    seqs: &mut [Vec<u32>],
    keep: usize,
    shared: usize,
    n_ctx: usize,
) -> Result<usize, String> {
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if longest <= n_ctx {
        return Ok(0);
    }
    let drop = longest - n_ctx;
    if drop + keep.max(1) > shared {
        return Err(format!(
            "{longest} tokens do not fit the model's context of {n_ctx} \
             even with the context cut from the left ({} scored tokens)",
            longest - shared
        ));
    }
    for s in seqs.iter_mut() {
        s.drain(keep..keep + drop);
    }
    Ok(drop)
}

/// Gather up to `limit` items from `records`, turning each record into an
/// item with `prepare`; a malformed record or a failed `prepare` is handled
/// by `on_bad`. `what` names the items for the error when none are usable.
pub fn collect<R, T>(
    f: &TaskFile,
    records: impl IntoIterator<Item = Rec<R>>,
    on_bad: OnBadLine,
    limit: Option<usize>,
    what: &str,
    mut prepare: impl FnMut(R) -> Result<T, String>,
) -> Result<Parsed<T>, EvalError> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for r in records {
        if limit.is_some_and(|n| items.len() >= n) {
            break;
        }
        match r.and_then(|(line, rec)| prepare(rec).map_err(|e| (line, e))) {
            Ok(t) => items.push(t),
            Err((line, reason)) => f.bad(on_bad, line, reason, &mut skipped)?,
        }
    }
    if items.is_empty() {
        let reason = match skipped.first() {
            None => format!("no {what} in the file"),
            Some(s) => format!(
                "no usable {what}: all {} records are malformed (first, line {}: {})",
                skipped.len(),
                s.line,
                s.reason
            ),
        };
        return Err(EvalError::Format {
            path: f.path.clone(),
            reason,
        });
    }
    Ok(Parsed { items, skipped })
}

/// Parse one line as a JSON object, with an error that gives the column
/// (serde's own "line 1" would mislead: the file line is named by the caller).
pub(crate) fn json_object(
    line: &str,
    expected: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("not a JSON object; expected {expected}")),
        Err(e) => {
            let msg = e.to_string();
            let msg = msg.rsplit_once(" at line ").map_or(&msg[..], |(m, _)| m);
            Err(format!(
                "not valid JSON ({msg} at column {}); expected {expected}",
                e.column()
            ))
        }
    }
}

/// Whether a line is a JSON object (to name a JSON file given to a text task).
pub(crate) fn is_json_object(line: &str) -> bool {
    line.trim_start().starts_with('{')
        && matches!(
            serde_json::from_str::<serde_json::Value>(line),
            Ok(serde_json::Value::Object(_))
        )
}

/// Accuracy in percent with its binomial standard error in percent.
pub fn accuracy_pct(correct: usize, n: usize) -> (f64, f64) {
    (
        100.0 * correct as f64 / n.max(1) as f64,
        100.0 * crate::stats::accuracy_stderr(correct, n),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_left_cuts_the_shared_context_after_bos() {
        let mut s = vec![vec![1, 10, 11, 12, 13, 20], vec![1, 10, 11, 12, 13, 30, 31]];
        assert_eq!(fit_left(&mut s, 1, 5, 5).unwrap(), 2);
        assert_eq!(s, vec![vec![1, 12, 13, 20], vec![1, 12, 13, 30, 31]]);
        // Fits already: untouched.
        let mut s = vec![vec![1, 2, 3]];
        assert_eq!(fit_left(&mut s, 1, 2, 3).unwrap(), 0);
        assert_eq!(s, vec![vec![1, 2, 3]]);
        // The scored part alone is too long.
        let mut s = vec![vec![1, 10, 20, 21, 22]];
        let e = fit_left(&mut s, 1, 2, 3).unwrap_err();
        assert!(e.contains("context of 3"), "{e}");
        // Without BOS one shared token must remain.
        let mut s = vec![vec![10, 11, 20]];
        assert!(fit_left(&mut s, 0, 2, 1).is_err());
        assert_eq!(fit_left(&mut s, 0, 2, 2).unwrap(), 1);
        assert_eq!(s, vec![vec![11, 20]]);
    }

    #[test]
    fn json_errors_give_the_column_not_a_line() {
        let e = json_object("{\"a\": ", "x").unwrap_err();
        assert!(e.contains("column"), "{e}");
        assert!(!e.contains("line"), "{e}");
        assert!(json_object("[1]", "x")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(is_json_object("{\"text\": \"a\"}"));
        assert!(!is_json_object("{not json"));
    }

    #[test]
    fn collect_honours_limit_and_policy() {
        let f = TaskFile::from_text("t.txt", String::new());
        let recs = || -> Vec<Rec<i32>> {
            vec![Ok((1, 1)), Err((2, "bad".into())), Ok((3, 3)), Ok((4, -4))]
        };
        let pos = |v: i32| {
            if v < 0 {
                Err("negative".to_string())
            } else {
                Ok(v)
            }
        };
        let e = collect(&f, recs(), OnBadLine::Stop, None, "items", pos).unwrap_err();
        assert!(e.to_string().starts_with("t.txt:2: bad"), "{e}");
        let p = collect(&f, recs(), OnBadLine::Skip, None, "items", pos).unwrap();
        assert_eq!(p.items, vec![1, 3]);
        let lines: Vec<usize> = p.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 4]);
        // The limit counts good items and stops before reading further.
        let p = collect(&f, recs(), OnBadLine::Stop, Some(1), "items", pos).unwrap();
        assert_eq!(p.items, vec![1]);
        let e = collect(
            &f,
            Vec::<Rec<i32>>::new(),
            OnBadLine::Skip,
            None,
            "items",
            pos,
        );
        assert!(e.unwrap_err().to_string().contains("no items"));
        let all_bad: Vec<Rec<i32>> = vec![Err((7, "nope".into()))];
        let e = collect(&f, all_bad, OnBadLine::Skip, None, "items", pos).unwrap_err();
        assert!(e.to_string().contains("line 7: nope"), "{e}");
    }
}
