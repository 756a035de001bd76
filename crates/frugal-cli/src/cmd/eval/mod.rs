//! `frugal eval`: one quality measurement, written as a [`Record`] that
//! `frugal report` can merge.
//!
//! A task is `NAME:FILE`: `perplexity:wiki.test.raw`, `kld:wiki.test.raw`,
//! `lambada:lambada_test.jsonl`, `hellaswag:hellaswag_val_full.txt.bz2`,
//! `mc:my_task.jsonl`.

mod kld;
mod tasks;

use crate::common::{progress_bar, ModelArgs, RecordArgs};
use anyhow::{bail, Result};
use frugal_eval::{DataInfo, ModelInfo, OnBadLine, Record, TaskFile};
use frugal_model::{KvType, LoadedModel};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(after_help = "Tasks:\n  \
perplexity:FILE  llama.cpp's perplexity of a text file\n  \
kld:FILE         KL divergence from --base (a model, or logits saved with --save-logits)\n  \
lambada:FILE     LAMBADA last-word accuracy (OpenAI jsonl) and target-word perplexity\n  \
hellaswag:FILE   HellaSwag (llama.cpp's 6-line format, .bz2 accepted), length-normalized\n  \
mc:FILE          multiple choice, one {\"context\", \"choices\", \"label\"} per line\n\n\
Examples:\n  \
frugal eval -m base-f32.gguf --task kld:wiki.test.raw --save-logits base.logits\n  \
frugal eval -m model-q4.gguf --task kld:wiki.test.raw --base base.logits --out q4.json\n  \
frugal eval -m smollm2-135m --task hellaswag:hellaswag_val_full.txt.bz2 --limit 400\n  \
frugal eval -m smollm2-135m --task kld:wiki.test.raw --base smollm2-135m --kv-type q8\n\n\
--kv-type applies to --model; a kld base always runs with an f32 KV cache.")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to measure, as NAME:FILE (see the list below).
    #[arg(long)]
    pub task: String,
    /// Base for kld: a model (path or known name) or a logits file written by --save-logits.
    #[arg(long)]
    pub base: Option<String>,
    /// kld: also save the base's logits here, to compare later models without rerunning the base.
    /// With no --base, the --model itself is the base.
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
    /// kld --save-logits: save a small approximate file instead (the base's K most likely
    /// tokens per position and one bucket for the rest; KL is then a lower bound).
    #[arg(long, value_name = "K")]
    pub logits_top_k: Option<usize>,
    /// Evaluate at most this many items (chunks for perplexity/kld, tasks otherwise).
    #[arg(long)]
    pub limit: Option<usize>,
    /// perplexity/kld: tokens per chunk; the second half of each chunk is scored.
    #[arg(long, default_value_t = 512, value_parser = crate::common::parse_ctx)]
    pub ctx: usize,
    /// A malformed line in a task file: stop with an error naming it, or skip it.
    #[arg(long, default_value = "stop", value_parser = ["stop", "skip"])]
    pub on_bad_line: String,
    #[command(flatten)]
    pub rec: RecordArgs,
}

/// What every task runner gets.
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub lm: LoadedModel,
    pub info: ModelInfo,
    pub file: PathBuf,
    pub on_bad: OnBadLine,
    /// Progress bars off.
    pub quiet: bool,
}

impl Ctx<'_> {
    /// A record for this model, with `data` filled in.
    pub fn record(
        &self,
        task: &str,
        data: DataInfo,
        settings: serde_json::Value,
        metrics: serde_json::Value,
    ) -> Record {
        let mut r = Record::new("eval", task, self.info.clone(), settings, metrics);
        r.data = Some(data);
        r
    }

    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        progress_bar(len, self.quiet, what)
    }

    /// Bytes of K and V per position in the model's cache of --kv-type.
    pub fn kv_bytes_per_token(&self) -> Result<usize> {
        let kv = self.lm.model.new_cache_typed(1, self.args.model.kv_type)?;
        Ok(kv.bytes_per_token())
    }
}

/// Split `NAME:FILE`.
fn parse_task(s: &str) -> Result<(&str, &Path)> {
    let Some((name, file)) = s.split_once(':') else {
        bail!("--task {s:?}: expected NAME:FILE, for example perplexity:wiki.test.raw");
    };
    const NAMES: [&str; 5] = ["perplexity", "kld", "lambada", "hellaswag", "mc"];
    if !NAMES.contains(&name) {
        bail!(
            "--task {s:?}: unknown task {name:?}; known tasks: {}",
            NAMES.join(", ")
        );
    }
    if file.is_empty() {
        bail!("--task {s:?}: no file after the colon");
    }
    Ok((name, Path::new(file)))
}

pub fn run(a: Args) -> Result<()> {
    let (name, file) = parse_task(&a.task)?;
    if !file.exists() {
        bail!("--task {}: {} does not exist", a.task, file.display());
    }
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    if name != "kld" && (a.base.is_some() || a.save_logits.is_some() || a.logits_top_k.is_some()) {
        bail!("--base, --save-logits and --logits-top-k belong to the kld task");
    }
    let on_bad: OnBadLine = a.on_bad_line.parse().map_err(anyhow::Error::msg)?;
    let quiet = a.rec.quiet || a.rec.json;
    let lm = a.model.load(quiet)?;
    // Scoring indexes the logits by token id: every id must have a row.
    let (n_tok, n_vocab) = (lm.tokenizer.vocab_size(), lm.model.config.n_vocab);
    if n_tok > n_vocab {
        bail!(
            "the tokenizer has {n_tok} tokens but the model scores only {n_vocab}: \
             is --tokenizer the model's own?"
        );
    }
    let info = ModelInfo::of(&lm, a.rec.label.as_deref())?;
    let ctx = Ctx {
        args: &a,
        lm,
        info,
        file: file.to_path_buf(),
        on_bad,
        quiet,
    };
    let record = match name {
        "perplexity" => perplexity(&ctx)?,
        "kld" => kld::run(&ctx)?,
        "lambada" | "hellaswag" | "mc" => tasks::run(&ctx, name)?,
        _ => unreachable!("checked by parse_task"),
    };
    a.rec.emit(&record)
}

/// Read and tokenize a text for perplexity/kld: BOS first if the model adds one.
pub fn text_tokens(ctx: &Ctx) -> Result<(TaskFile, Vec<u32>)> {
    let f = TaskFile::read(&ctx.file)?;
    let tok = &ctx.lm.tokenizer;
    let tokens = tok.encode(&f.text, true, false);
    Ok((f, tokens))
}

/// llama.cpp's perplexity of `tokens` with a `kv_type` KV cache, with a
/// progress bar showing the running value.
pub fn perplexity_with_progress(
    lm: &LoadedModel,
    tokens: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    kv_type: KvType,
    quiet: bool,
) -> Result<frugal_eval::perplexity::PerplexityResult> {
    let n_chunks = frugal_eval::perplexity::chunk_count(tokens.len(), ctx, max_chunks);
    let pb = progress_bar(n_chunks as u64, quiet, "perplexity");
    let r = frugal_eval::perplexity::perplexity_with_kv(
        &lm.model,
        tokens,
        lm.tokenizer.bos_to_add(),
        ctx,
        max_chunks,
        kv_type,
        |done, _, ppl| {
            pb.set_position(done as u64);
            pb.set_message(format!("perplexity {ppl:.4}"));
        },
    )?;
    pb.finish_and_clear();
    Ok(r)
}

fn perplexity(ctx: &Ctx) -> Result<Record> {
    let (f, tokens) = text_tokens(ctx)?;
    let a = ctx.args;
    let kv_type = a.model.kv_type;
    let r = perplexity_with_progress(&ctx.lm, &tokens, a.ctx, a.limit, kv_type, ctx.quiet)?;
    if !a.rec.json {
        println!(
            "PPL = {:.4} +/- {:.5} ({} chunks of {}, {} tokens scored)",
            r.ppl, r.ppl_stderr, r.chunks, r.ctx, r.tokens_scored
        );
    }
    Ok(ctx.record(
        "perplexity",
        DataInfo {
            path: f.path,
            sha256: f.sha256,
            items: r.chunks,
            skipped_lines: 0,
        },
        json!({
            "ctx": a.ctx,
            "chunks": r.chunks,
            "text_tokens": tokens.len(),
            "kv_type": kv_type.name(),
        }),
        json!({
            "ppl": r.ppl,
            "ppl_stderr": r.ppl_stderr,
            "nll": r.nll,
            "tokens_scored": r.tokens_scored,
            "kv_bytes_per_token": ctx.kv_bytes_per_token()?,
        }),
    ))
}
