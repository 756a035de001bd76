//! `frugal perplexity`: llama.cpp's perplexity method on a text file.

use crate::common::ModelArgs;
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (UTF-8).
    #[arg(short, long)]
    pub file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(long, default_value_t = 512, value_parser = crate::common::parse_ctx)]
    pub ctx: usize,
    /// Score at most this many chunks (default: all).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Print {"ppl", "ppl_stderr", "tokens_scored", "chunks", "kv_type", ...} as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let quiet = a.quiet || a.json;
    let lm = a.model.load(quiet)?;
    let tokens = lm.tokenizer.encode(&text, true, false);
    let kv_type = a.model.kv_type;
    let r = crate::cmd::eval::perplexity_with_progress(
        &lm, &tokens, a.ctx, a.chunks, kv_type, a.quiet,
    )?;
    let kv_bytes = lm.model.new_cache_typed(1, kv_type)?.bytes_per_token();
    if a.json {
        let j = json!({
            "ppl": r.ppl,
            "ppl_stderr": r.ppl_stderr,
            "tokens_scored": r.tokens_scored,
            "chunks": r.chunks,
            "ctx": r.ctx,
            "file": a.file,
            "text_tokens": tokens.len(),
            "kv_type": kv_type.name(),
            "kv_bytes_per_token": kv_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "PPL = {:.4} +/- {:.5} ({} chunks of {}, {} tokens scored, {kv_type} KV cache: {kv_bytes} bytes per token)",
            r.ppl, r.ppl_stderr, r.chunks, r.ctx, r.tokens_scored
        );
    }
    Ok(())
}
