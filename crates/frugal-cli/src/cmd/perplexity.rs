//! `frugal perplexity`: llama.cpp's perplexity method on a text file.

use crate::common::{progress_bar, ModelArgs};
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
    /// Print {"ppl", "ppl_stderr", "tokens_scored", "chunks"} as JSON.
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
    let tok = &lm.tokenizer;
    let tokens = tok.encode(&text, true, false);
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    let n_chunks = frugal_eval::perplexity::chunk_count(tokens.len(), a.ctx, a.chunks);
    let pb = progress_bar(n_chunks as u64, a.quiet, "perplexity");
    let r = frugal_eval::perplexity::perplexity(
        &lm.model,
        &tokens,
        bos,
        a.ctx,
        a.chunks,
        |done, _, ppl| {
            pb.set_position(done as u64);
            pb.set_message(format!("perplexity {ppl:.4}"));
        },
    )?;
    pb.finish_and_clear();
    if a.json {
        let j = json!({
            "ppl": r.ppl,
            "ppl_stderr": r.ppl_stderr,
            "tokens_scored": r.tokens_scored,
            "chunks": r.chunks,
            "ctx": r.ctx,
            "file": a.file,
            "text_tokens": tokens.len(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "PPL = {:.4} +/- {:.5} ({} chunks of {}, {} tokens scored)",
            r.ppl, r.ppl_stderr, r.chunks, r.ctx, r.tokens_scored
        );
    }
    Ok(())
}
