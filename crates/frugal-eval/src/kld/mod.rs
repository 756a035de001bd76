//! KL divergence of a model from a base model, as llama.cpp's
//! `llama-perplexity --kl-divergence` measures it: the same chunks and scored
//! positions as [`crate::perplexity`], and per scored token
//! KL(base ‖ model) = Σ p_base (log p_base − log p_model), top-1 agreement,
//! Δp = p_model(correct) − p_base(correct), and both perplexities.
//!
//! The base comes from one of two places:
//! - **live**: a base model runs on every chunk beside the model;
//! - **saved**: a file written once by `--save-logits` ([`logits_file`]), so
//!   comparing ten models does not rerun the base ten times.
//!
//! # What the saved file keeps, and why
//!
//! Full-vocabulary logits are large (SmolLM2: 49152 × 25.5k scored tokens =
//! 2.5 GB even as llama.cpp's uint16; Qwen2.5: 7.7 GB). But a Llama-family
//! model's logits are its output matrix times one hidden state per token, so
//! by default the file keeps, per scored token, the base's final hidden state
//! (after the output norm, `n_embd` f32: 2.3 KB for SmolLM2 instead of 98 KB),
//! and the base's output matrix once, in the base's own tensor type. The
//! comparison rebuilds the base's logits with the same kernel the base uses,
//! so saved and live give the same numbers (exact, full-vocabulary KL) for
//! the price of one output matmul per chunk, not a rerun of the base. For
//! SmolLM2-F32, 100 chunks of 512: 172 MB.
//!
//! The obvious alternative, each token's top-k base log-probs plus one tail
//! bucket, is kept as `--logits-top-k K` for when a tiny file matters more
//! than the last digits: merging the tail into one bucket only lowers KL
//! (log-sum inequality), and on SmolLM2 Q4_1 against F32 the tail matters a
//! lot, because quantization noise spreads divergence over the whole
//! vocabulary in proportion to probability: the mean KLD comes out 15% low at
//! k = 128, 4% at 1024 and still 0.4% at 8192 (1.7 GB), as measured in
//! notes/kld-vs-llamacpp.md. Top-1 agreement, perplexities and Δp are exact
//! either way.

pub mod logits_file;
pub mod math;

pub use logits_file::{
    BaseChunk, ChunkData, DataRef, Expect, LogitsHeader, LogitsReader, LogitsWriter, Payload,
};
pub use math::TokenStats;

use crate::perplexity::NllStats;
use crate::stats::{accuracy_stderr, mean_stderr, quantile};
use crate::EvalError;
use frugal_kernels::matmul::{matmul_f32, QuantizedActs};
use frugal_model::{qmatrix, KvType, Logits, Model};
use rayon::prelude::*;
use serde::Serialize;

/// Where the base distribution of each chunk comes from.
pub enum BaseSource<'a> {
    /// A model run on every chunk: exact KL over the whole vocabulary.
    Live(&'a Model),
    /// Logits saved earlier: top-k KL with a tail bucket. Its header must
    /// already have been checked against this run.
    Saved(&'a mut LogitsReader),
}

/// What to evaluate: `chunks` chunks of `ctx` tokens of `tokens`.
#[derive(Clone, Copy, Debug)]
pub struct KldRun<'a> {
    /// The whole text, tokenized (BOS included if the model adds it).
    pub tokens: &'a [u32],
    /// Written over each chunk's first token (models that add BOS).
    pub bos: Option<u32>,
    pub ctx: usize,
    pub chunks: usize,
    /// How the compared model's KV cache is stored (a live base always uses f32).
    pub kv_type: KvType,
}

/// Per-token results collected over a run.
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    pub tokens: Vec<TokenStats>,
    /// Whether a model was compared (not just a base saved).
    pub compared: bool,
}

/// The summary of a comparison; field names are the record's metric keys.
#[derive(Clone, Debug, Serialize)]
pub struct KldResult {
    pub kld_mean: f64,
    pub kld_stderr: f64,
    pub kld_median: f64,
    pub kld_p90: f64,
    pub kld_p99: f64,
    pub kld_p999: f64,
    pub kld_max: f64,
    pub same_top_pct: f64,
    pub same_top_stderr_pct: f64,
    pub rms_dp_pct: f64,
    pub rms_dp_stderr_pct: f64,
    pub dp_mean_pct: f64,
    pub dp_mean_stderr_pct: f64,
    pub ppl_model: f64,
    pub ppl_model_stderr: f64,
    pub ppl_base: f64,
    pub ppl_base_stderr: f64,
    /// ln(PPL(model)/PPL(base)) and its standard error (paired, as llama.cpp's).
    pub ln_ppl_ratio: f64,
    pub ln_ppl_ratio_stderr: f64,
    pub tokens_scored: usize,
}

/// The base's own perplexity (what a save-only run reports).
#[derive(Clone, Debug, Serialize)]
pub struct BasePpl {
    pub ppl_base: f64,
    pub ppl_base_stderr: f64,
    pub tokens_scored: usize,
}

impl KldStats {
    /// Mean KLD so far (for progress messages).
    pub fn running_kld(&self) -> f64 {
        let n = self.tokens.len().max(1) as f64;
        self.tokens.iter().map(|t| t.kld).sum::<f64>() / n
    }

    pub fn base_ppl(&self) -> BasePpl {
        let mut b = NllStats::default();
        for t in &self.tokens {
            b.add(t.nll_base);
        }
        BasePpl {
            ppl_base: b.ppl(),
            ppl_base_stderr: b.ppl_stderr(),
            tokens_scored: self.tokens.len(),
        }
    }

    /// All metrics, with llama.cpp's definitions: standard errors of means,
    /// percentiles interpolated linearly, RMS Δp's error by the delta method.
    pub fn result(&self) -> KldResult {
        let t = &self.tokens;
        let n = t.len();
        let mut kld: Vec<f64> = t.iter().map(|t| t.kld).collect();
        let (kld_mean, kld_stderr) = mean_stderr(&kld);
        kld.sort_by(f64::total_cmp);
        let same = t.iter().filter(|t| t.same_top).count();
        let dp: Vec<f64> = t.iter().map(|t| t.p_diff).collect();
        let (dp_mean, dp_se) = mean_stderr(&dp);
        let dp2: Vec<f64> = dp.iter().map(|d| d * d).collect();
        let (mse, mse_se) = mean_stderr(&dp2);
        let rms = mse.sqrt();
        let (mut m, mut b) = (NllStats::default(), NllStats::default());
        for x in t {
            m.add(x.nll_model);
            b.add(x.nll_base);
        }
        let ratio: Vec<f64> = t.iter().map(|t| t.nll_model - t.nll_base).collect();
        let (ln_ppl_ratio, ln_ppl_ratio_stderr) = mean_stderr(&ratio);
        KldResult {
            kld_mean,
            kld_stderr,
            kld_median: quantile(&kld, 0.5),
            kld_p90: quantile(&kld, 0.9),
            kld_p99: quantile(&kld, 0.99),
            kld_p999: quantile(&kld, 0.999),
            kld_max: kld.last().copied().unwrap_or(f64::NAN),
            same_top_pct: 100.0 * same as f64 / n.max(1) as f64,
            same_top_stderr_pct: 100.0 * accuracy_stderr(same, n),
            rms_dp_pct: 100.0 * rms,
            rms_dp_stderr_pct: if rms > 0.0 {
                100.0 * 0.5 / rms * mse_se
            } else {
                0.0
            },
            dp_mean_pct: 100.0 * dp_mean,
            dp_mean_stderr_pct: 100.0 * dp_se,
            ppl_model: m.ppl(),
            ppl_model_stderr: m.ppl_stderr(),
            ppl_base: b.ppl(),
            ppl_base_stderr: b.ppl_stderr(),
            ln_ppl_ratio,
            ln_ppl_ratio_stderr,
            tokens_scored: n,
        }
    }
}

fn input(s: String) -> EvalError {
    EvalError::Input(s)
}

fn non_finite(who: &str, chunk: usize, pos: usize) -> EvalError {
    input(format!(
        "the {who} gave a non-finite logit (NaN or infinity) in chunk {chunk} at position {pos}"
    ))
}

/// The base's distribution over one chunk's scored positions.
enum BaseView<'x> {
    /// Full logits, `scored × n_vocab`.
    Logits(&'x [f32]),
    TopK(&'x BaseChunk),
}

/// Run the comparison (or, with `model = None`, only save the base).
///
/// Each chunk: the base's distribution at the scored positions (by running
/// the base model, or rebuilt from the file), saved to `save` if given, then
/// the model's logits and the per-token statistics, computed in parallel.
/// `on_chunk(done, total, stats)` reports progress.
pub fn compute(
    model: Option<&Model>,
    base: BaseSource,
    run: &KldRun,
    mut save: Option<&mut LogitsWriter>,
    mut on_chunk: impl FnMut(usize, usize, &KldStats),
) -> Result<KldStats, EvalError> {
    let KldRun {
        tokens,
        bos,
        ctx,
        chunks,
        kv_type,
    } = *run;
    if ctx < 4 {
        return Err(input(format!(
            "context {ctx} is too small: at least 4 tokens, so each chunk scores one"
        )));
    }
    if chunks == 0 {
        return Err(input("the number of chunks must be at least 1".into()));
    }
    let need = chunks
        .checked_mul(ctx)
        .ok_or_else(|| input("chunks × ctx overflows".into()))?;
    if tokens.len() < need {
        return Err(input(format!(
            "the text has {} tokens, fewer than {chunks} chunks of {ctx}",
            tokens.len()
        )));
    }
    let n_vocab = match &base {
        BaseSource::Live(b) => b.config.n_vocab,
        BaseSource::Saved(r) => r.header().n_vocab,
    };
    if let Some(m) = model {
        if m.config.n_vocab != n_vocab {
            return Err(input(format!(
                "vocabulary mismatch: the base has {n_vocab} tokens, the model {}",
                m.config.n_vocab
            )));
        }
    }
    match &base {
        BaseSource::Saved(r) => {
            let h = r.header();
            if model.is_none() {
                return Err(input("a saved base needs a model to compare".into()));
            }
            if h.ctx != ctx || chunks > h.n_chunks || save.is_some() {
                return Err(input(format!(
                    "{}: saved with ctx {} and {} chunks; this run: ctx {ctx}, {chunks} chunks{}",
                    r.path().display(),
                    h.ctx,
                    h.n_chunks,
                    if save.is_some() {
                        ", and a saved base cannot be saved again"
                    } else {
                        ""
                    }
                )));
            }
        }
        BaseSource::Live(b) => {
            if let Some(w) = &save {
                let h = w.header();
                let fits = match h.payload {
                    Payload::Hidden { n_embd, .. } => n_embd == b.config.n_embd,
                    Payload::TopK { .. } => true,
                };
                if h.n_vocab != n_vocab || h.ctx != ctx || h.n_chunks != chunks || !fits {
                    return Err(input(
                        "the logits file's header does not match this run".into(),
                    ));
                }
            }
        }
    }
    if let Some(t) = tokens[..need].iter().find(|&&t| t as usize >= n_vocab) {
        return Err(input(format!(
            "token {t} of the text is outside the vocabulary of {n_vocab}"
        )));
    }
    if bos.is_some_and(|b| b as usize >= n_vocab) {
        return Err(input("the BOS id is outside the vocabulary".into()));
    }

    let first = ctx / 2;
    let n_scored = ctx - 1 - first;
    let mut base = base;
    let (mut base_kv, mut base_st) = match &base {
        BaseSource::Live(b) => (Some(b.new_cache(ctx)?), Some(b.new_state(ctx, true))),
        BaseSource::Saved(_) => (None, None),
    };
    let (mut kv, mut st) = match model {
        Some(m) => (
            Some(m.new_cache_typed(ctx, kv_type)?),
            Some(m.new_state(ctx, true)),
        ),
        None => (None, None),
    };
    let save_payload = save.as_ref().map(|w| w.header().payload.clone());
    let mut topk = BaseChunk::new(match save_payload {
        Some(Payload::TopK { k }) => k,
        _ => 1,
    });
    let mut read = ChunkData::Hidden(Vec::new());
    let mut base_buf: Vec<f32> = Vec::new();
    let mut acts = QuantizedActs::new();
    let mut stats = KldStats {
        tokens: Vec::with_capacity(chunks * n_scored),
        compared: model.is_some(),
    };
    let mut batch = vec![0u32; ctx];
    for c in 0..chunks {
        let chunk = &tokens[c * ctx..(c + 1) * ctx];
        batch.copy_from_slice(chunk);
        if let Some(b) = bos {
            batch[0] = b;
        }
        // Position first + j predicts token first + j + 1; j < n_scored.
        let targets = &chunk[first + 1..];
        let view = match &mut base {
            BaseSource::Live(b) => {
                let (kv, st) = base_kv
                    .as_mut()
                    .zip(base_st.as_mut())
                    .expect("made above for a live base");
                kv.clear();
                match (&save_payload, save.as_deref_mut()) {
                    (Some(Payload::Hidden { .. }), Some(w)) => {
                        let hidden = b.forward_hidden(&batch, kv, st, Logits::From(first))?;
                        let hidden = &hidden[..n_scored * b.config.n_embd];
                        w.write_hidden(hidden)?;
                        base_buf.resize(n_scored * n_vocab, 0.0);
                        let out = qmatrix(&b.weights.output);
                        matmul_f32(&out, hidden, n_scored, &mut acts, &mut base_buf);
                        BaseView::Logits(&base_buf)
                    }
                    (_, w) => {
                        let l = b.forward(&batch, kv, st, Logits::From(first))?;
                        let l = &l[..n_scored * n_vocab];
                        if let Some(w) = w {
                            let k = topk.k;
                            extract_chunk(l, n_vocab, targets, k, &mut topk)
                                .map_err(|j| non_finite("base", c + 1, first + j))?;
                            w.write_topk(&topk)?;
                        }
                        BaseView::Logits(l)
                    }
                }
            }
            BaseSource::Saved(r) => {
                r.read_chunk(&mut read)?;
                match &read {
                    ChunkData::Hidden(x) => {
                        let out = r.output_matrix().ok_or_else(|| {
                            input(format!("{}: no output matrix", r.path().display()))
                        })?;
                        base_buf.resize(n_scored * n_vocab, 0.0);
                        matmul_f32(&out, x, n_scored, &mut acts, &mut base_buf);
                        BaseView::Logits(&base_buf)
                    }
                    ChunkData::TopK(t) => BaseView::TopK(t),
                }
            }
        };
        let model_logits: Option<&[f32]> = match (model, kv.as_mut(), st.as_mut()) {
            (Some(m), Some(kv), Some(st)) => {
                kv.clear();
                Some(m.forward(&batch, kv, st, Logits::From(first))?)
            }
            _ => None,
        };
        let row = |j: usize| j * n_vocab..(j + 1) * n_vocab;
        let per_token: Result<Vec<TokenStats>, usize> = match (view, model_logits) {
            (BaseView::Logits(bl), Some(ml)) => (0..n_scored)
                .into_par_iter()
                .map(|j| math::exact_token(&bl[row(j)], &ml[row(j)], targets[j]).ok_or(j))
                .collect(),
            (BaseView::TopK(t), Some(ml)) => (0..n_scored)
                .into_par_iter()
                .map_init(Vec::new, |scratch, j| {
                    math::topk_token(t.token(j), &ml[row(j)], targets[j], scratch).ok_or(j)
                })
                .collect(),
            (BaseView::Logits(bl), None) => (0..n_scored)
                .into_par_iter()
                .map(|j| {
                    let r = &bl[row(j)];
                    let s = math::row_stats(r).ok_or(j)?;
                    Ok(TokenStats {
                        nll_base: s.log_norm() - r[targets[j] as usize] as f64,
                        ..Default::default()
                    })
                })
                .collect(),
            (BaseView::TopK(_), None) => unreachable!("a saved base is refused without a model"),
        };
        let per_token = per_token.map_err(|j| {
            let who = if model.is_some() {
                "model or base"
            } else {
                "base"
            };
            non_finite(who, c + 1, first + j)
        })?;
        stats.tokens.extend(per_token);
        on_chunk(c + 1, chunks, &stats);
    }
    Ok(stats)
}

/// Fill `out` with the top-`k` records of one chunk's base logits (row j
/// predicts `targets[j]`); the error is the row of a non-finite logit.
pub fn extract_chunk(
    logits: &[f32],
    n_vocab: usize,
    targets: &[u32],
    k: usize,
    out: &mut BaseChunk,
) -> Result<(), usize> {
    type Rec = (Vec<u32>, Vec<f32>, f32, f32);
    let n = logits.len() / n_vocab;
    let recs: Vec<Rec> = targets[..n]
        .par_iter()
        .enumerate()
        .map_init(Vec::new, |scratch, (j, &t)| {
            let row = &logits[j * n_vocab..(j + 1) * n_vocab];
            let (mut ids, mut lps) = (Vec::with_capacity(k), Vec::with_capacity(k));
            let (tl, tail) =
                math::extract_top_k(row, k, t, &mut ids, &mut lps, scratch).ok_or(j)?;
            Ok((ids, lps, tl, tail))
        })
        .collect::<Result<_, usize>>()?;
    out.k = k.clamp(1, n_vocab);
    out.clear();
    for (ids, lps, tl, tail) in recs {
        out.ids.extend(ids);
        out.lps.extend(lps);
        out.target_lp.push(tl);
        out.tail_lp.push(tail);
    }
    Ok(())
}
