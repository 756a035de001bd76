//! `frugal bench`: prefill and decode speed, like llama-bench.

use crate::common::{mib, progress_bar, ModelArgs};
use anyhow::{bail, Result};
use frugal_infer::bench::{BenchConfig, BenchResult};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens to prefill (0: skip the prefill test).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub prompt: usize,
    /// Tokens to decode one by one (0: skip the decode test).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub gen: usize,
    /// Repetitions of each test (after one warm-up).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.prompt == 0 && a.gen == 0 {
        bail!("nothing to measure: both -p and -n are 0");
    }
    let quiet = a.quiet || a.json;
    let lm = a.model.load(quiet)?;
    let model = &lm.model;
    let limit = model.config.n_ctx_train;
    if a.prompt > limit || a.gen > limit {
        bail!("-p and -n must be at most the model's context of {limit} tokens");
    }
    let cfg = BenchConfig {
        prompt_tokens: a.prompt,
        gen_tokens: a.gen,
        reps: a.reps,
    };
    let runs = a.reps * ((a.prompt > 0) as usize + (a.gen > 0) as usize);
    let pb = progress_bar(runs as u64, quiet, "bench");
    let r: BenchResult = frugal_infer::bench::run(model, &cfg, || pb.inc(1))?;
    pb.finish_and_clear();
    let weight_bytes = model.weight_bytes_per_token();
    let bw = |tps: f64| weight_bytes as f64 * tps / 1e9;
    let threads = a.model.threads();
    if a.json {
        let j = json!({
            "model": lm.path,
            "architecture": model.config.arch.name(),
            "threads": threads,
            "n_prompt": a.prompt,
            "n_gen": a.gen,
            "repetitions": a.reps,
            "prefill_tps": r.prefill.mean,
            "prefill_tps_sd": r.prefill.sd,
            "prefill_tps_median": r.prefill.median,
            "prefill_tps_samples": r.prefill.samples,
            "decode_tps": r.decode.mean,
            "decode_tps_sd": r.decode.sd,
            "decode_tps_median": r.decode.median,
            "decode_tps_samples": r.decode.samples,
            "weight_bytes": weight_bytes,
            "decode_bandwidth_gbs": bw(r.decode.mean),
            "isa": format!("{:?}", frugal_kernels::detected_isa()),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "model {} ({}), {:.1} MiB of weights read per token, {threads} threads, ISA {:?}",
        lm.path.display(),
        model.config.arch.name(),
        mib(weight_bytes as u64),
        frugal_kernels::detected_isa()
    );
    println!("| test   |        t/s (mean ± sd) |  median | implied GB/s |");
    println!("|--------|------------------------|---------|--------------|");
    if a.prompt > 0 {
        println!(
            "| pp{:<4} | {:>12.2} ± {:>7.2} | {:>7.2} |              |",
            a.prompt, r.prefill.mean, r.prefill.sd, r.prefill.median
        );
    }
    if a.gen > 0 {
        println!(
            "| tg{:<4} | {:>12.2} ± {:>7.2} | {:>7.2} | {:>12.2} |",
            a.gen,
            r.decode.mean,
            r.decode.sd,
            r.decode.median,
            bw(r.decode.mean)
        );
    }
    Ok(())
}
