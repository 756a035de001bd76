//! A llama-bench-style benchmark that also reports what a deployment costs.
//!
//! - Prefill: `p` random tokens into an empty cache, for each prompt length;
//!   the time to first token is that prefill plus picking the first token.
//! - Decode: `n` tokens one at a time from an empty cache; every step is timed
//!   so the report can give per-token latency percentiles.
//!
//! Each test runs `reps` times after a warm-up. CPU time (all threads) and,
//! where the kernel exposes it, the RAPL energy counter are read around every
//! decode run, so energy per token is measured rather than guessed when it can be.

use frugal_model::{KvCache, KvType, Logits, Model, ModelConfig, ModelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Prompt lengths to prefill (0 entries are skipped).
    pub prompt_lengths: Vec<usize>,
    pub gen_tokens: usize,
    pub reps: usize,
    /// How the KV cache stores keys and values.
    pub kv_type: KvType,
}

/// Summary of repeated measurements.
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

/// One prompt length's prefill results.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PrefillResult {
    pub n_prompt: usize,
    /// Tokens per second.
    pub tps: Rate,
    /// Time to first token (prefill plus choosing the token), milliseconds.
    pub ttft_ms: Rate,
}

/// Per-token decode latency percentiles over every step of every run (ms).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn from_ms(mut v: Vec<f64>) -> Latency {
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let pick = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Energy used by the decode runs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Usage {
    /// Process CPU seconds (user + system, all threads) over all decode runs.
    pub decode_cpu_s: f64,
    /// Wall seconds over all decode runs.
    pub decode_wall_s: f64,
    /// Tokens decoded over all decode runs.
    pub decode_tokens: usize,
    /// Joules from the RAPL package counter(s) over the decode runs, when readable.
    pub rapl_joules: Option<f64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchResult {
    pub prefill: Vec<PrefillResult>,
    pub decode: Rate,
    pub decode_latency_ms: Latency,
    pub usage: Usage,
    /// Bytes of K and V per position (all layers) in the cache used.
    pub kv_bytes_per_token: usize,
}

/// Prefill `tokens` into a fresh cache and pick the first token.
/// Returns (prefill seconds, time-to-first-token seconds).
fn time_prefill(
    model: &Model,
    tokens: &[u32],
    kv: &mut KvCache,
    st: &mut frugal_model::State,
) -> Result<(f64, f64), ModelError> {
    kv.clear();
    let t = Instant::now();
    let logits = crate::prefill(model, tokens, kv, st)?;
    let pre = t.elapsed().as_secs_f64();
    std::hint::black_box(frugal_model::sampling::argmax(logits));
    Ok((pre, t.elapsed().as_secs_f64()))
}

/// `n` single-token decode steps from an empty cache; each step's seconds.
fn time_decode(
    model: &Model,
    first: u32,
    n: usize,
    kv: &mut KvCache,
    st: &mut frugal_model::State,
    steps: &mut Vec<f64>,
) -> Result<f64, ModelError> {
    kv.clear();
    let mut tok = first;
    let t = Instant::now();
    let mut last = t;
    for _ in 0..n {
        let logits = model.forward(&[tok], kv, st, Logits::Last)?;
        tok = frugal_model::sampling::argmax(logits);
        let now = Instant::now();
        steps.push((now - last).as_secs_f64());
        last = now;
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
    let lengths: Vec<usize> = cfg
        .prompt_lengths
        .iter()
        .copied()
        .filter(|&p| p > 0)
        .collect();
    let max_p = lengths.iter().copied().max().unwrap_or(0);
    let n_ctx = max_p.max(cfg.gen_tokens).max(1);
    let mut kv = model.new_cache_typed(n_ctx, cfg.kv_type)?;
    let mut st = model.new_state(max_p.clamp(1, 512), false);
    let mut rng = StdRng::seed_from_u64(1234);
    let tokens: Vec<u32> = (0..max_p)
        .map(|_| rng.gen_range(0..c.n_vocab as u32))
        .collect();
    let first = rng.gen_range(0..c.n_vocab as u32);
    let mut steps = Vec::new();

    // Warm-up: page the weights in and grow every buffer.
    if max_p > 0 {
        time_prefill(model, &tokens, &mut kv, &mut st)?;
    }
    if cfg.gen_tokens > 0 {
        time_decode(
            model,
            first,
            cfg.gen_tokens.min(4),
            &mut kv,
            &mut st,
            &mut steps,
        )?;
        steps.clear();
    }

    let mut prefill = Vec::new();
    for &p in &lengths {
        let (mut tps, mut ttft) = (Vec::new(), Vec::new());
        for _ in 0..cfg.reps {
            let (pre, first_tok) = time_prefill(model, &tokens[..p], &mut kv, &mut st)?;
            tps.push(p as f64 / pre);
            ttft.push(first_tok * 1e3);
            progress();
        }
        prefill.push(PrefillResult {
            n_prompt: p,
            tps: Rate::from_samples(tps),
            ttft_ms: Rate::from_samples(ttft),
        });
    }

    let mut dec = Vec::new();
    let mut usage = Usage::default();
    let mut rapl = Some(0.0);
    let decode_reps = if cfg.gen_tokens > 0 { cfg.reps } else { 0 };
    for _ in 0..decode_reps {
        let cpu0 = process_cpu_seconds();
        let e0 = rapl_energy();
        let s = time_decode(model, first, cfg.gen_tokens, &mut kv, &mut st, &mut steps)?;
        let e1 = rapl_energy();
        let cpu1 = process_cpu_seconds();
        usage.decode_cpu_s += cpu1 - cpu0;
        usage.decode_wall_s += s;
        usage.decode_tokens += cfg.gen_tokens;
        rapl = match (rapl, e0, e1) {
            (Some(acc), Some(a), Some(b)) if a.counters.len() == b.counters.len() => {
                Some(acc + a.joules_until(&b))
            }
            _ => None,
        };
        dec.push(cfg.gen_tokens as f64 / s);
        progress();
    }
    usage.rapl_joules = rapl.filter(|_| usage.decode_tokens > 0);
    Ok(BenchResult {
        prefill,
        decode: Rate::from_samples(dec),
        decode_latency_ms: Latency::from_ms(steps.iter().map(|s| s * 1e3).collect()),
        usage,
        kv_bytes_per_token: kv.bytes_per_token(),
    })
}

/// Analytical floating-point operations (multiply and add counted apart) to
/// run one token at position `pos`: every weight matrix once (2 FLOPs per
/// weight), plus attention's scores and weighted sum over `pos + 1` positions.
/// Norms, RoPE and activations are left out (well under 1%).
pub fn flops_per_token(c: &ModelConfig, pos: usize) -> f64 {
    let qd = (c.n_head * c.head_dim) as f64;
    let kvd = c.kv_dim() as f64;
    let e = c.n_embd as f64;
    let per_layer_weights = e * qd + 2.0 * e * kvd + qd * e + 3.0 * e * c.n_ff as f64;
    let matmul = 2.0 * (c.n_layer as f64 * per_layer_weights + e * c.n_vocab as f64);
    let attention = 4.0 * c.n_layer as f64 * qd * (pos + 1) as f64;
    matmul + attention
}

/// [`flops_per_token`] for the model as stored: its matrices' weights
/// (fewer when block matrices are low-rank factors) rather than the
/// config's dense shapes.
pub fn model_flops_per_token(m: &Model, pos: usize) -> f64 {
    let c = &m.config;
    let attention = 4.0 * c.n_layer as f64 * (c.n_head * c.head_dim) as f64 * (pos + 1) as f64;
    2.0 * m.weights.matmul_params() as f64 + attention
}

/// CPU seconds (user + system) used so far by every thread of this process,
/// with nanosecond resolution (the tick counts in /proc are only 10 ms).
#[cfg(unix)]
pub fn process_cpu_seconds() -> f64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

/// No process CPU clock here: the energy estimate then reads 0.
#[cfg(not(unix))]
pub fn process_cpu_seconds() -> f64 {
    0.0
}

/// A reading of every RAPL package counter (µJ) with its wrap-around range.
#[derive(Clone, Debug)]
pub struct RaplReading {
    counters: Vec<(u64, u64)>,
}

impl RaplReading {
    /// Joules used between `self` and a later reading, allowing for wrap-around.
    pub fn joules_until(&self, later: &RaplReading) -> f64 {
        self.counters
            .iter()
            .zip(&later.counters)
            .map(|(&(a, range), &(b, _))| {
                let d = if b >= a {
                    b - a
                } else {
                    range.saturating_sub(a).saturating_add(b)
                };
                d as f64 * 1e-6
            })
            .sum()
    }
}

/// The package-level RAPL energy counters under /sys/class/powercap, if
/// readable (often absent in VMs, and root-only on recent kernels).
pub fn rapl_energy() -> Option<RaplReading> {
    let dir = std::fs::read_dir("/sys/class/powercap").ok()?;
    let mut zones: Vec<_> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            // Package zones are "intel-rapl:N"; "intel-rapl:N:M" are parts of one.
            name.starts_with("intel-rapl:") && name.matches(':').count() == 1
        })
        .collect();
    zones.sort();
    let read = |p: &std::path::Path| -> Option<u64> {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    };
    let counters: Option<Vec<(u64, u64)>> = zones
        .iter()
        .map(|z| {
            Some((
                read(&z.join("energy_uj"))?,
                read(&z.join("max_energy_range_uj")).unwrap_or(u64::MAX),
            ))
        })
        .collect();
    counters
        .filter(|c| !c.is_empty())
        .map(|counters| RaplReading { counters })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_statistics() {
        let r = Rate::from_samples(vec![1.0, 2.0, 3.0, 10.0]);
        assert_eq!(r.mean, 4.0);
        assert_eq!(r.median, 2.5);
        // Deviations -3, -2, -1, 6: sample variance 50 / 3.
        assert!((r.sd - (50.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Rate::from_samples(vec![5.0, 1.0, 3.0]).median, 3.0);
    }

    #[test]
    fn latency_percentiles_by_nearest_rank() {
        let l = Latency::from_ms((1..=100).map(f64::from).rev().collect());
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        let l = Latency::from_ms(vec![7.0]);
        assert_eq!((l.p50, l.p99), (7.0, 7.0));
    }

    #[test]
    fn flops_count_every_weight_twice() {
        let c = ModelConfig {
            arch: frugal_model::Arch::Llama,
            n_vocab: 10,
            n_embd: 4,
            n_layer: 1,
            n_head: 2,
            n_head_kv: 1,
            head_dim: 2,
            n_ff: 8,
            n_ctx_train: 16,
            rope_theta: 10000.0,
            rope_dim: 2,
            rope_style: frugal_model::RopeStyle::Interleaved,
            rms_eps: 1e-5,
        };
        // Weights: q 16, k 8, v 8, o 16, ffn 96, output 40 = 184.
        // Attention at position 0: 4 × 1 layer × 4 query dims × 1 position.
        assert_eq!(flops_per_token(&c, 0), 2.0 * 184.0 + 16.0);
        assert_eq!(flops_per_token(&c, 9) - flops_per_token(&c, 0), 16.0 * 9.0);
    }

    #[test]
    fn rapl_wraps_around() {
        let a = RaplReading {
            counters: vec![(900, 1000), (10, u64::MAX)],
        };
        let b = RaplReading {
            counters: vec![(100, 1000), (2_000_010, u64::MAX)],
        };
        assert!((a.joules_until(&b) - (200e-6 + 2.0)).abs() < 1e-12);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        // Spin until the clock shows 50 ms of CPU; a broken clock never does.
        let t0 = process_cpu_seconds();
        let mut x = 0u64;
        let start = Instant::now();
        while process_cpu_seconds() - t0 < 0.05 {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            assert!(start.elapsed().as_secs() < 30, "CPU time did not advance");
        }
        assert!(process_cpu_seconds() - t0 >= 0.05);
    }
}
