//! `frugal generate`: complete a prompt, streaming tokens to stdout; speed and
//! memory go to stderr (or into --json).

use crate::common::{mib, peak_rss_bytes, ModelArgs, SamplingArgs};
use anyhow::{bail, Result};
use frugal_model::Sampler;
use serde_json::json;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (may be empty when the model adds a BOS token).
    #[arg(short, long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Context size (default: prompt + n, at most the model's training context).
    #[arg(short, long)]
    pub ctx: Option<usize>,
    /// Print one JSON object with the text and the measurements instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Don't print progress messages (fetching).
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sampler_cfg = a.sampling.config()?;
    let lm = a.model.load(a.quiet || a.json)?;
    let tok = &lm.tokenizer;
    let model = &lm.model;
    let prompt = tok.encode(&a.prompt, true, true);
    if prompt.is_empty() {
        bail!("the prompt is empty and the model adds no BOS token: give --prompt");
    }
    let wanted = prompt.len().saturating_add(a.n.max(1));
    let n_ctx = a
        .ctx
        .unwrap_or(wanted.min(model.config.n_ctx_train.max(prompt.len() + 1)));
    if prompt.len() >= n_ctx {
        bail!(
            "the prompt has {} tokens but the context holds {n_ctx}: raise --ctx",
            prompt.len()
        );
    }
    let mut kv = model.new_cache_typed(n_ctx, a.model.kv_type)?;
    let mut st = model.new_state(prompt.len().min(512), false);
    let mut sampler = Sampler::new(sampler_cfg);

    let mut out = std::io::stdout().lock();
    let mut stream = tok.stream_decoder();
    for &t in &prompt {
        stream.push_token(tok, t);
    }
    let mut text = String::new();
    let stats = frugal_infer::generate(
        model,
        &prompt,
        a.n,
        &mut sampler,
        &mut kv,
        &mut st,
        |t| tok.is_eog(t),
        |t| {
            let piece = stream.push_token(tok, t);
            if a.json {
                text.push_str(&piece);
            } else {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
            true
        },
    )?;
    // A character cut short by the token limit still prints (as U+FFFD).
    let rest = stream.finish();
    if a.json {
        text.push_str(&rest);
    } else {
        out.write_all(rest.as_bytes())?;
        out.flush()?;
    }
    let peak = peak_rss_bytes().unwrap_or(0);
    if a.json {
        let j = json!({
            "text": text,
            "prompt_tokens": stats.prompt_tokens,
            "gen_tokens": stats.gen_tokens,
            "prompt_tps": stats.prompt_tps(),
            "gen_tps": stats.gen_tps(),
            "threads": a.model.threads(),
            "peak_rss_bytes": peak,
            "model_file_bytes": lm.file_bytes,
            "kv_cache_bytes": kv.capacity_bytes(),
            "kv_type": kv.kv_type().name(),
            "kv_bytes_per_token": kv.bytes_per_token(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        eprintln!();
        eprintln!(
            "prompt: {} tokens, {:.1} t/s | generation: {} tokens, {:.1} t/s | {} threads | peak RSS {:.1} MiB (model file {:.1} MiB, {} KV cache {:.1} MiB)",
            stats.prompt_tokens,
            stats.prompt_tps(),
            stats.gen_tokens,
            stats.gen_tps(),
            a.model.threads(),
            mib(peak),
            mib(lm.file_bytes),
            kv.kv_type(),
            mib(kv.capacity_bytes() as u64)
        );
    }
    Ok(())
}
