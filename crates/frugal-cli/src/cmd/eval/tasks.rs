//! `frugal eval --task lambada|hellaswag|mc:FILE`: task accuracy (see
//! `frugal_eval::tasks` for what is scored and how).
use super::Ctx;
use anyhow::Result;
use frugal_eval::data::{Parsed, SkippedLine};
use frugal_eval::tasks::{choice, collect, hellaswag, lambada, mc, ModelRunner};
use frugal_eval::{DataInfo, Record, TaskFile};
use serde_json::json;
use std::time::Instant;

/// Tokens per forward call: bounds the logits buffer (batch × vocabulary).
const BATCH: usize = 256;

pub fn run(ctx: &Ctx, name: &str) -> Result<Record> {
    let f = TaskFile::read(&ctx.file)?;
    match name {
        "lambada" => run_lambada(ctx, &f),
        _ => run_choice(ctx, &f, name),
    }
}

/// The model's context: items longer than this are cut from the left.
fn n_ctx(ctx: &Ctx) -> usize {
    ctx.lm.model.config.n_ctx_train.max(2)
}

fn run_lambada(ctx: &Ctx, f: &TaskFile) -> Result<Record> {
    let (tok, n_ctx) = (&ctx.lm.tokenizer, n_ctx(ctx));
    let p = collect(
        f,
        lambada::records(f),
        ctx.on_bad,
        ctx.args.limit,
        "LAMBADA passages ({\"text\": ...} lines)",
        |it| lambada::tokenize(&it, tok, n_ctx),
    )?;
    warn_skipped(f, &p);
    let longest = p.items.iter().map(|t| t.tokens.len()).max().unwrap_or(1);
    let kv_type = ctx.args.model.kv_type;
    let mut runner = ModelRunner::with_kv_type(&ctx.lm.model, longest, BATCH, kv_type)?;
    let pb = ctx.progress(p.items.len() as u64, "lambada");
    let t0 = Instant::now();
    let r = lambada::evaluate(&mut runner, &p.items, |done, _, acc| {
        pb.set_position(done as u64);
        pb.set_message(format!("lambada acc {acc:.2}%"));
    })?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if !ctx.args.rec.json {
        println!(
            "LAMBADA: acc = {:.2} +/- {:.2} % over {} passages, target-word perplexity = {:.3} ({:.1} s)",
            r.acc_pct, r.acc_stderr_pct, r.items, r.word_ppl, secs
        );
    }
    warn_cut(r.cut_items, n_ctx);
    Ok(ctx.record(
        "lambada",
        data_info(f, &p),
        json!({
            "limit": ctx.args.limit,
            "on_bad_line": ctx.args.on_bad_line,
            "n_ctx": n_ctx,
            "kv_type": kv_type.name(),
            "order": "file order, first items",
            "target": "last whitespace-separated word; greedy = every target token is the argmax",
        }),
        json!({
            "acc_pct": r.acc_pct,
            "acc_stderr_pct": r.acc_stderr_pct,
            "word_ppl": r.word_ppl,
            "items": r.items,
            "correct": r.correct,
            "target_tokens_mean": r.target_tokens_mean,
            "cut_items": r.cut_items,
            "seconds": secs,
            "kv_bytes_per_token": ctx.kv_bytes_per_token()?,
        }),
    ))
}

fn run_choice(ctx: &Ctx, f: &TaskFile, name: &str) -> Result<Record> {
    let (tok, n_ctx) = (&ctx.lm.tokenizer, n_ctx(ctx));
    let prepare = |it: choice::ChoiceItem| choice::tokenize(&it, tok, n_ctx);
    let (on_bad, limit) = (ctx.on_bad, ctx.args.limit);
    let p = if name == "hellaswag" {
        let what = "HellaSwag tasks (llama.cpp's 6-line format)";
        collect(f, hellaswag::records(f)?, on_bad, limit, what, prepare)?
    } else {
        let what = "questions ({\"context\", \"choices\", \"label\"} lines)";
        collect(f, mc::records(f), on_bad, limit, what, prepare)?
    };
    warn_skipped(f, &p);
    let longest = p
        .items
        .iter()
        .flat_map(|q| q.seqs.iter().map(Vec::len))
        .max()
        .unwrap_or(1);
    let kv_type = ctx.args.model.kv_type;
    let mut runner = ModelRunner::with_kv_type(&ctx.lm.model, longest, BATCH, kv_type)?;
    let pb = ctx.progress(p.items.len() as u64, name);
    let t0 = Instant::now();
    let r = choice::evaluate(&mut runner, &p.items, |done, _, acc| {
        pb.set_position(done as u64);
        pb.set_message(format!("{name} acc {acc:.2}%"));
    })?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if !ctx.args.rec.json {
        let (title, unit) = if name == "hellaswag" {
            ("HellaSwag", "tasks")
        } else {
            ("mc", "questions")
        };
        println!(
            "{title}: acc_norm = {:.2} +/- {:.2} % over {} {unit} (acc_raw = {:.2} %, {:.1} s)",
            r.acc_pct, r.acc_stderr_pct, r.items, r.acc_raw_pct, secs
        );
    }
    warn_cut(r.cut_items, n_ctx);
    Ok(ctx.record(
        name,
        data_info(f, &p),
        json!({
            "limit": limit,
            "on_bad_line": ctx.args.on_bad_line,
            "n_ctx": n_ctx,
            "kv_type": kv_type.name(),
            "order": "file order, first items",
            "scoring": "llama.cpp hellaswag_score: BOS + context + \" \" + choice; \
                        mean log-prob of the tokens after the choices' common prefix",
        }),
        json!({
            "acc_pct": r.acc_pct,
            "acc_stderr_pct": r.acc_stderr_pct,
            "acc_raw_pct": r.acc_raw_pct,
            "acc_raw_stderr_pct": r.acc_raw_stderr_pct,
            "items": r.items,
            "correct": r.correct,
            "cut_items": r.cut_items,
            "tokens_run": r.tokens_run,
            "seconds": secs,
            "kv_bytes_per_token": ctx.kv_bytes_per_token()?,
        }),
    ))
}

fn data_info<T>(f: &TaskFile, p: &Parsed<T>) -> DataInfo {
    DataInfo {
        path: f.path.clone(),
        sha256: f.sha256.clone(),
        items: p.items.len(),
        skipped_lines: p.skipped.len(),
    }
}

/// List skipped lines on stderr (the first few with their reasons).
fn warn_skipped<T>(f: &TaskFile, p: &Parsed<T>) {
    if p.skipped.is_empty() {
        return;
    }
    const SHOWN: usize = 10;
    eprintln!(
        "warning: skipped {} malformed record(s) in {}:",
        p.skipped.len(),
        f.path.display()
    );
    for SkippedLine { line, reason } in p.skipped.iter().take(SHOWN) {
        eprintln!("  {}:{line}: {reason}", f.path.display());
    }
    if p.skipped.len() > SHOWN {
        let rest: Vec<String> = p.skipped[SHOWN..]
            .iter()
            .map(|s| s.line.to_string())
            .collect();
        eprintln!("  and lines {}", rest.join(", "));
    }
}

fn warn_cut(cut: usize, n_ctx: usize) {
    if cut > 0 {
        eprintln!(
            "note: {cut} item(s) were longer than the model's context of {n_ctx} tokens; \
             their contexts were cut from the left"
        );
    }
}
