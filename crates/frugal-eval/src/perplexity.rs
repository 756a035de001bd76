//! Perplexity with llama.cpp's method, so numbers compare one to one:
//! tokenize the whole text (with BOS if the model adds one), cut it into
//! chunks of `ctx` tokens, replace each chunk's first token with BOS where the
//! model adds BOS, run each chunk from an empty cache, and score only the
//! second half of each chunk (every token there has at least ctx/2 of context).

use frugal_model::{KvType, Logits, Model, ModelError};
use rayon::prelude::*;

#[derive(Clone, Debug, serde::Serialize)]
pub struct PerplexityResult {
    pub ppl: f64,
    pub ppl_stderr: f64,
    pub tokens_scored: usize,
    pub chunks: usize,
    pub ctx: usize,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
}

/// Running sums of negative log-likelihoods.
#[derive(Clone, Debug, Default)]
pub struct NllStats {
    sum: f64,
    sum_sq: f64,
    count: usize,
}

impl NllStats {
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum_sq += nll * nll;
        self.count += 1;
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// Standard error of the perplexity, by the delta method as llama.cpp reports it.
    pub fn ppl_stderr(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        if var <= 0.0 {
            return 0.0;
        }
        (var / (n - 1.0)).sqrt() * mean.exp()
    }
}

/// `log Σ exp(logits)`, computed stably: `log softmax(logits)[t]` is
/// `logits[t] - log_sum_exp(logits)`.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}

/// `-log softmax(logits)[target]`, computed stably.
pub fn nll_of(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// Chunks available in `n_tokens` tokens at context `ctx`, capped by `max_chunks`.
pub fn chunk_count(n_tokens: usize, ctx: usize, max_chunks: Option<usize>) -> usize {
    let all = n_tokens.checked_div(ctx).unwrap_or(0);
    max_chunks.map_or(all, |m| m.min(all))
}

/// Perplexity of `tokens` (already tokenized, BOS included if the model adds it).
/// `bos` is the BOS id when the model adds BOS. `on_chunk(done, total, running_ppl)`
/// reports progress.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult, ModelError> {
    perplexity_with_kv(model, tokens, bos, ctx, max_chunks, KvType::F32, on_chunk)
}

/// [`perplexity`] with the KV cache stored as `kv_type`.
pub fn perplexity_with_kv(
    model: &Model,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    kv_type: KvType,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult, ModelError> {
    if ctx < 4 {
        return Err(ModelError::Input(format!(
            "context {ctx} is too small: at least 4 tokens, so each chunk scores one"
        )));
    }
    if max_chunks == Some(0) {
        return Err(ModelError::Input(
            "the number of chunks must be at least 1".into(),
        ));
    }
    let chunks = chunk_count(tokens.len(), ctx, max_chunks);
    if chunks == 0 {
        return Err(ModelError::Input(format!(
            "the text has {} tokens, fewer than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let n_vocab = model.config.n_vocab;
    let mut kv = model.new_cache_typed(ctx, kv_type)?;
    let mut st = model.new_state(ctx, true);
    let mut stats = NllStats::default();
    let first = ctx / 2;
    let mut batch = vec![0u32; ctx];
    for c in 0..chunks {
        batch.copy_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let Some(b) = bos {
            batch[0] = b;
        }
        kv.clear();
        // Only the scored half needs logits.
        let logits = model.forward(&batch, &mut kv, &mut st, Logits::From(first))?;
        // Position j predicts token j+1; score j in [ctx/2, ctx-1).
        let nlls: Vec<f64> = (first..ctx - 1)
            .into_par_iter()
            .map(|j| {
                let row = j - first;
                nll_of(
                    &logits[row * n_vocab..(row + 1) * n_vocab],
                    tokens[c * ctx + j + 1],
                )
            })
            .collect();
        for v in nlls {
            stats.add(v);
        }
        on_chunk(c + 1, chunks, stats.ppl());
    }
    Ok(PerplexityResult {
        ppl: stats.ppl(),
        ppl_stderr: stats.ppl_stderr(),
        tokens_scored: stats.count(),
        chunks,
        ctx,
        nll: stats.sum / stats.count as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_matches_definition() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        let want = -(2.0f64.exp() / z).ln();
        assert!((nll_of(&l, 1) - want).abs() < 1e-9);
    }

    #[test]
    fn uniform_model_has_vocab_perplexity() {
        let mut s = NllStats::default();
        for _ in 0..10 {
            s.add((7.0f64).ln());
        }
        assert!((s.ppl() - 7.0).abs() < 1e-9);
        assert_eq!(s.ppl_stderr(), 0.0);
    }

    #[test]
    fn chunks_are_capped() {
        assert_eq!(chunk_count(1000, 512, None), 1);
        assert_eq!(chunk_count(5000, 512, Some(3)), 3);
        assert_eq!(chunk_count(100, 512, None), 0);
        assert_eq!(chunk_count(100, 0, None), 0);
    }
}
