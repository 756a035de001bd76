//! A llama-bench-style benchmark: prefill `p` random tokens into an empty
//! cache, and separately decode `n` tokens one at a time from an empty cache,
//! repeated `r` times after a warm-up; report mean, standard deviation and
//! median tokens/s.

use frugal_model::{KvCache, Logits, Model, ModelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub reps: usize,
}

/// Summary of repeated measurements in tokens/s.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rate {
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    pub samples: Vec<f64>,
}

impl Rate {
    pub fn from_samples(samples: Vec<f64>) -> Rate {
        if samples.is_empty() {
            return Rate::default();
        }
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let sd = if samples.len() > 1 {
            (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let m = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[m]
        } else {
            (sorted[m - 1] + sorted[m]) / 2.0
        };
        Rate {
            mean,
            sd,
            median,
            samples,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchResult {
    pub prefill: Rate,
    pub decode: Rate,
}

/// Time one prefill of `p` tokens into a fresh cache (seconds).
fn time_prefill(
    model: &Model,
    tokens: &[u32],
    kv: &mut KvCache,
    st: &mut frugal_model::State,
) -> Result<f64, ModelError> {
    kv.clear();
    let t = Instant::now();
    crate::prefill(model, tokens, kv, st)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Time `n` single-token decode steps from an empty cache (seconds).
fn time_decode(
    model: &Model,
    first: u32,
    n: usize,
    kv: &mut KvCache,
    st: &mut frugal_model::State,
) -> Result<f64, ModelError> {
    kv.clear();
    let mut tok = first;
    let t = Instant::now();
    for _ in 0..n {
        let logits = model.forward(&[tok], kv, st, Logits::Last)?;
        tok = frugal_model::sampling::argmax(logits);
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Run the benchmark. `progress` is called after each timed run.
pub fn run(
    model: &Model,
    cfg: &BenchConfig,
    mut progress: impl FnMut(),
) -> Result<BenchResult, ModelError> {
    let c = &model.config;
    let n_ctx = cfg.prompt_tokens.max(cfg.gen_tokens).max(1);
    let mut kv = model.new_cache(n_ctx)?;
    let mut st = model.new_state(cfg.prompt_tokens.clamp(1, 512), false);
    let mut rng = StdRng::seed_from_u64(1234);
    let tokens: Vec<u32> = (0..cfg.prompt_tokens)
        .map(|_| rng.gen_range(0..c.n_vocab as u32))
        .collect();
    let first = rng.gen_range(0..c.n_vocab as u32);

    // Warm-up: page the weights in and grow every buffer.
    if cfg.prompt_tokens > 0 {
        time_prefill(model, &tokens, &mut kv, &mut st)?;
    }
    if cfg.gen_tokens > 0 {
        time_decode(model, first, cfg.gen_tokens.min(4), &mut kv, &mut st)?;
    }

    let mut pre = Vec::new();
    let mut dec = Vec::new();
    for _ in 0..cfg.reps {
        if cfg.prompt_tokens > 0 {
            let s = time_prefill(model, &tokens, &mut kv, &mut st)?;
            pre.push(cfg.prompt_tokens as f64 / s);
            progress();
        }
        if cfg.gen_tokens > 0 {
            let s = time_decode(model, first, cfg.gen_tokens, &mut kv, &mut st)?;
            dec.push(cfg.gen_tokens as f64 / s);
            progress();
        }
    }
    Ok(BenchResult {
        prefill: Rate::from_samples(pre),
        decode: Rate::from_samples(dec),
    })
}

#[cfg(test)]
mod tests {
    use super::Rate;

    #[test]
    fn rate_statistics() {
        let r = Rate::from_samples(vec![1.0, 2.0, 3.0, 10.0]);
        assert_eq!(r.mean, 4.0);
        assert_eq!(r.median, 2.5);
        // Deviations -3, -2, -1, 6: sample variance 50 / 3.
        assert!((r.sd - (50.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Rate::from_samples(vec![5.0, 1.0, 3.0]).median, 3.0);
    }
}
