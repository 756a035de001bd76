//! `frugal bench`: prefill and decode speed like llama-bench, plus what a
//! deployment pays: time to first token, per-token latency percentiles,
//! memory, FLOPs, energy and money per token.

use crate::common::{mib, peak_rss_bytes, progress_bar, ModelArgs, RecordArgs};
use anyhow::{bail, Result};
use frugal_eval::{ModelInfo, Record};
use frugal_infer::bench::{model_flops_per_token, BenchConfig, BenchResult};
use serde_json::json;

#[derive(clap::Args)]
#[command(
    after_help = "Energy: the RAPL package counter under /sys/class/powercap when it is \
readable (it covers the whole CPU package, not just this process); otherwise an estimate, \
process CPU time × --watts-per-core. Money: --usd-per-hour over the measured decode rate.\n\n\
Batching: frugal decodes one sequence at a time, so throughput is reported at batch size 1."
)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to prefill, comma-separated (0: skip the prefill test).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub prompt: Vec<usize>,
    /// Tokens to decode one by one (0: skip the decode test).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub gen: usize,
    /// Repetitions of each test (after one warm-up).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Watts drawn per busy core, for the energy estimate when no RAPL counter is readable.
    #[arg(long, default_value_t = 10.0)]
    pub watts_per_core: f64,
    /// What the machine costs per hour (USD), for the cost per million tokens.
    #[arg(long, default_value_t = 0.05)]
    pub usd_per_hour: f64,
    #[command(flatten)]
    pub rec: RecordArgs,
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    let prompts: Vec<usize> = a.prompt.iter().copied().filter(|&p| p > 0).collect();
    if prompts.is_empty() && a.gen == 0 {
        bail!("nothing to measure: -p and -n are both 0");
    }
    if !(a.watts_per_core.is_finite() && a.watts_per_core >= 0.0) {
        bail!("--watts-per-core must be a non-negative number");
    }
    if !(a.usd_per_hour.is_finite() && a.usd_per_hour >= 0.0) {
        bail!("--usd-per-hour must be a non-negative number");
    }
    let quiet = a.rec.quiet || a.rec.json;
    let lm = a.model.load(quiet)?;
    let model = &lm.model;
    let c = &model.config;
    let limit = c.n_ctx_train;
    if prompts.iter().any(|&p| p > limit) || a.gen > limit {
        bail!("-p and -n must be at most the model's context of {limit} tokens");
    }
    let info = ModelInfo::of(&lm, a.rec.label.as_deref())?;
    let cfg = BenchConfig {
        prompt_lengths: prompts.clone(),
        gen_tokens: a.gen,
        reps: a.reps,
        kv_type: a.model.kv_type,
    };
    let runs = a.reps * (prompts.len() + (a.gen > 0) as usize);
    let pb = progress_bar(runs as u64, quiet, "bench");
    let r: BenchResult = frugal_infer::bench::run(model, &cfg, || pb.inc(1))?;
    pb.finish_and_clear();

    let weight_bytes = model.weight_bytes_per_token();
    let kv_bytes = r.kv_bytes_per_token;
    let kv_type = a.model.kv_type;
    let decode_tps = r.decode.mean;
    // FLOPs at the middle of the decode run (attention grows with position).
    let flops = model_flops_per_token(model, a.gen / 2);
    let u = &r.usage;
    let tokens = u.decode_tokens.max(1) as f64;
    let estimate_j = u.decode_cpu_s * a.watts_per_core / tokens;
    let (energy_j, energy_source) = match u.rapl_joules {
        Some(j) => (j / tokens, "rapl package counter (whole CPU package)"),
        None => (estimate_j, "estimate: process CPU time × watts per core"),
    };
    let per_mtok = |tps: f64| {
        if tps > 0.0 {
            a.usd_per_hour / 3600.0 * 1e6 / tps
        } else {
            f64::NAN
        }
    };
    let first = r.prefill.first();
    let peak_rss = peak_rss_bytes();
    let threads = a.model.threads();
    let prefill_json: Vec<_> = r
        .prefill
        .iter()
        .map(|p| {
            json!({
                "n_prompt": p.n_prompt,
                "tps": p.tps.mean,
                "tps_sd": p.tps.sd,
                "tps_median": p.tps.median,
                "tps_samples": p.tps.samples,
                "ttft_ms": p.ttft_ms.mean,
                "ttft_ms_median": p.ttft_ms.median,
                "usd_per_mtok": per_mtok(p.tps.mean),
            })
        })
        .collect();
    let metrics = json!({
        "prefill": prefill_json,
        "prefill_tps": first.map(|p| p.tps.mean),
        "ttft_ms": first.map(|p| p.ttft_ms.mean),
        "decode_tps": (a.gen > 0).then_some(decode_tps),
        "decode_tps_sd": (a.gen > 0).then_some(r.decode.sd),
        "decode_tps_median": (a.gen > 0).then_some(r.decode.median),
        "decode_tps_samples": r.decode.samples,
        "tpot_ms_p50": (a.gen > 0).then_some(r.decode_latency_ms.p50),
        "tpot_ms_p90": (a.gen > 0).then_some(r.decode_latency_ms.p90),
        "tpot_ms_p99": (a.gen > 0).then_some(r.decode_latency_ms.p99),
        "tpot_ms_max": (a.gen > 0).then_some(r.decode_latency_ms.max),
        "batch_sizes": [1],
        "peak_rss_bytes": peak_rss,
        "weight_bytes_per_token": weight_bytes,
        "decode_bandwidth_gbs": (a.gen > 0).then(|| weight_bytes as f64 * decode_tps / 1e9),
        "kv_bytes_per_token": kv_bytes,
        "kv_type": kv_type.name(),
        "bpw": info.bpw,
        "flops_per_token": flops,
        "decode_gflops": (a.gen > 0).then(|| flops * decode_tps / 1e9),
        "energy_j_per_token": (a.gen > 0).then_some(energy_j),
        "energy_source": energy_source,
        "energy_estimate_j_per_token": (a.gen > 0).then_some(estimate_j),
        "decode_cpu_s": u.decode_cpu_s,
        "decode_wall_s": u.decode_wall_s,
        "usd_per_mtok": (a.gen > 0).then(|| per_mtok(decode_tps)),
    });
    let settings = json!({
        "n_prompt": prompts,
        "n_gen": a.gen,
        "repetitions": a.reps,
        "threads": threads,
        "watts_per_core": a.watts_per_core,
        "usd_per_hour": a.usd_per_hour,
        "kv_type": kv_type.name(),
    });
    let record = Record::new("bench", "bench", info, settings, metrics);
    if a.rec.json {
        return a.rec.emit(&record);
    }

    println!(
        "model {} ({}, {:.2} bpw), {threads} threads, ISA {:?}",
        lm.path.display(),
        c.arch.name(),
        record.model.bpw,
        frugal_kernels::detected_isa()
    );
    println!("| test   |        t/s (mean ± sd) |  median | TTFT ms | implied GB/s |");
    println!("|--------|------------------------|---------|---------|--------------|");
    for p in &r.prefill {
        println!(
            "| pp{:<4} | {:>12.2} ± {:>7.2} | {:>7.2} | {:>7.1} |              |",
            p.n_prompt, p.tps.mean, p.tps.sd, p.tps.median, p.ttft_ms.mean
        );
    }
    if a.gen > 0 {
        println!(
            "| tg{:<4} | {:>12.2} ± {:>7.2} | {:>7.2} |         | {:>12.2} |",
            a.gen,
            r.decode.mean,
            r.decode.sd,
            r.decode.median,
            weight_bytes as f64 * decode_tps / 1e9
        );
        let l = &r.decode_latency_ms;
        println!(
            "time per output token: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50, l.p90, l.p99, l.max
        );
    }
    println!(
        "memory: peak RSS {}, weights read per token {:.1} MiB, KV cache {:.2} KiB per token ({kv_type})",
        peak_rss.map_or("unknown".into(), |b| format!("{:.1} MiB", mib(b))),
        mib(weight_bytes as u64),
        kv_bytes as f64 / 1024.0
    );
    if a.gen > 0 {
        println!(
            "compute: {:.1} MFLOP per token ({:.1} GFLOP/s while decoding)",
            flops / 1e6,
            flops * decode_tps / 1e9
        );
        println!(
            "energy: {:.3} J per token ({energy_source}); cost: ${:.4} per million tokens at ${}/hour",
            energy_j,
            per_mtok(decode_tps),
            a.usd_per_hour
        );
    }
    a.rec.emit(&record)
}
