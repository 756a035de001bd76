//! Streaming generation: prefill the prompt in batches (matrix-matrix), then
//! decode one token at a time (matrix-vector), calling back with each token.

use frugal_model::{KvCache, Logits, Model, ModelError, Sampler, State};
use std::time::Instant;

/// Timings of one generation.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    /// Tokens produced (the first comes from the prefill's logits).
    pub gen_tokens: usize,
    /// Single-token forward passes run, and their total time.
    pub decode_steps: usize,
    pub decode_secs: f64,
}

impl GenStats {
    pub fn prompt_tps(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }
    /// Decode speed: single-token forward passes per second.
    pub fn gen_tps(&self) -> f64 {
        rate(self.decode_steps, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Run `tokens` through the model in batches of the state's capacity and
/// return the last token's logits.
pub fn prefill<'s>(
    model: &Model,
    tokens: &[u32],
    kv: &mut KvCache,
    st: &'s mut State,
) -> Result<&'s [f32], ModelError> {
    if tokens.is_empty() {
        return Err(ModelError::Input("the prompt has no tokens".into()));
    }
    let cap = st.capacity();
    let n_chunks = tokens.len().div_ceil(cap);
    for chunk in tokens.chunks(cap).take(n_chunks - 1) {
        model.forward(chunk, kv, st, Logits::Last)?;
    }
    let last = &tokens[(n_chunks - 1) * cap..];
    model.forward(last, kv, st, Logits::Last)
}

/// Generate up to `n` tokens after `prompt` (which must be non-empty).
/// `on_token` receives each new token and returns false to stop early;
/// generation also stops at a token for which `is_stop` is true (not passed on).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Model,
    prompt: &[u32],
    n: usize,
    sampler: &mut Sampler,
    kv: &mut KvCache,
    st: &mut State,
    is_stop: impl Fn(u32) -> bool,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenStats, ModelError> {
    let mut stats = GenStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    for &t in prompt {
        sampler.accept(t);
    }
    let t0 = Instant::now();
    let mut logits = prefill(model, prompt, kv, st)?.to_vec();
    stats.prompt_secs = t0.elapsed().as_secs_f64();

    for i in 0..n {
        let tok = sampler.sample(&mut logits);
        if is_stop(tok) {
            break;
        }
        sampler.accept(tok);
        stats.gen_tokens += 1;
        if !on_token(tok) || i + 1 == n || kv.len() == kv.n_ctx() {
            break;
        }
        let td = Instant::now();
        let l = model.forward(&[tok], kv, st, Logits::Last)?;
        logits.copy_from_slice(l);
        stats.decode_secs += td.elapsed().as_secs_f64();
        stats.decode_steps += 1;
    }
    Ok(stats)
}
