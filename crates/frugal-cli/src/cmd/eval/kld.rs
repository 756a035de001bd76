//! `frugal eval --task kld:FILE`: KL divergence of --model from --base, like
//! `llama-perplexity --kl-divergence`. The base is a model run live, or a
//! file written by --save-logits (the base's hidden states and output matrix:
//! exact; or its top-k log-probs with --logits-top-k: a lower bound; see
//! [`frugal_eval::kld`]). With --save-logits and no --base, the model itself
//! is the base and only saved.
//!
//! --kv-type sets the compared model's KV cache; a base always runs with an
//! f32 cache, so `--base` the same model with `--kv-type q8` measures what
//! the KV type alone costs.

use super::{text_tokens, Ctx};
use crate::common::{mib, resolve_model};
use anyhow::{bail, Context, Result};
use frugal_eval::kld::{
    self, logits_file::is_logits_file, BaseSource, DataRef, Expect, KldResult, KldRun,
    LogitsHeader, LogitsReader, LogitsWriter, Payload,
};
use frugal_eval::{DataInfo, ModelInfo, Record};
use frugal_model::{KvType, LoadedModel};
use serde_json::json;
use std::path::Path;

enum Base {
    /// --save-logits without --base: the model is the base.
    Itself,
    Live(Box<LoadedModel>, ModelInfo),
    Saved(Box<LogitsReader>),
}

pub fn run(ctx: &Ctx) -> Result<Record> {
    let a = ctx.args;
    if a.base.is_none() && a.save_logits.is_none() {
        bail!(
            "the kld task needs --base (a model, or a file written by --save-logits) or --save-logits FILE"
        );
    }
    if a.ctx < 4 {
        bail!("--ctx {} is too small: at least 4", a.ctx);
    }
    if a.logits_top_k == Some(0) {
        bail!("--logits-top-k must be at least 1");
    }
    if a.logits_top_k.is_some() && a.save_logits.is_none() {
        bail!("--logits-top-k applies only with --save-logits");
    }
    if a.base.is_none() && a.model.kv_type != KvType::F32 {
        bail!(
            "--kv-type applies to the model compared with --base; a base runs (and is saved) \
             with an f32 KV cache. To measure a KV type, compare the model with itself: \
             --base <the same model> --kv-type {}",
            a.model.kv_type
        );
    }
    let (f, tokens) = text_tokens(ctx)?;
    let tok = &ctx.lm.tokenizer;
    let bos = tok.bos_to_add();
    let n_vocab = ctx.lm.model.config.n_vocab;

    let base = match &a.base {
        None => Base::Itself,
        Some(b) if is_logits_file(Path::new(b)) => {
            if a.save_logits.is_some() {
                bail!("--base {b} is a saved logits file already; drop --save-logits");
            }
            Base::Saved(Box::new(LogitsReader::open(Path::new(b))?))
        }
        Some(b) => {
            let path = resolve_model(b, ctx.quiet)?;
            let blm = frugal_model::load(&path, a.model.tokenizer.as_deref())
                .with_context(|| format!("loading the base model {}", path.display()))?;
            let info = ModelInfo::of(&blm, None)?;
            Base::Live(Box::new(blm), info)
        }
    };

    let chunks = match &base {
        Base::Saved(r) => a.limit.unwrap_or(r.header().n_chunks),
        _ => frugal_eval::perplexity::chunk_count(tokens.len(), a.ctx, a.limit),
    };
    if chunks == 0 {
        bail!(
            "{}: {} tokens, fewer than one chunk of --ctx {}",
            f.path.display(),
            tokens.len(),
            a.ctx
        );
    }
    match &base {
        Base::Saved(r) => {
            r.header().check_compatible(
                r.path(),
                &Expect {
                    n_vocab,
                    ctx: a.ctx,
                    bos,
                    data_sha256: f.sha256.clone(),
                    chunks,
                },
            )?;
            r.check_tokens(&tokens, chunks)?;
        }
        Base::Live(blm, info) => check_live_base(ctx, blm, info, &f.text, &tokens, chunks)?,
        Base::Itself => {}
    }
    let base_info = match &base {
        Base::Itself => ctx.info.clone(),
        Base::Live(_, info) => info.clone(),
        Base::Saved(r) => r.header().base.clone(),
    };

    let mut writer = match &a.save_logits {
        Some(p) => {
            let bm = match &base {
                Base::Live(blm, _) => &blm.model,
                _ => &ctx.lm.model,
            };
            let out = &bm.weights.output;
            // The file stores the output matrix in ggml's layout, whatever
            // run-time layout this process gave it.
            let (out_ty, out_bytes) = if frugal_kernels::interleave::is_interleaved(out.ty) {
                let (ty, b) = frugal_kernels::interleave::to_ggml(
                    out.ty,
                    out.bytes(),
                    out.n_rows(),
                    out.row_len(),
                );
                (ty, std::borrow::Cow::Owned(b))
            } else {
                (out.ty, std::borrow::Cow::Borrowed(out.bytes()))
            };
            let (payload, output) = match a.logits_top_k {
                Some(k) => (Payload::TopK { k: k.min(n_vocab) }, None),
                None => (
                    Payload::Hidden {
                        n_embd: bm.config.n_embd,
                        output_type: out_ty.name().to_string(),
                    },
                    Some(&*out_bytes),
                ),
            };
            let header = LogitsHeader {
                n_vocab,
                ctx: a.ctx,
                n_chunks: chunks,
                payload,
                bos,
                data: DataRef {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                },
                base: base_info.clone(),
                frugal_version: frugal_eval::record::frugal_version(),
            };
            Some(LogitsWriter::create(
                p,
                header,
                &tokens[..chunks * a.ctx],
                output,
            )?)
        }
        None => None,
    };
    let saved_payload = match (&base, &writer) {
        (Base::Saved(r), _) => Some(r.header().payload.clone()),
        (_, Some(w)) => Some(w.header().payload.clone()),
        _ => None,
    };

    let run = KldRun {
        tokens: &tokens,
        bos,
        ctx: a.ctx,
        chunks,
        kv_type: a.model.kv_type,
    };
    let what = if matches!(base, Base::Itself) {
        "base logits"
    } else {
        "kld"
    };
    let pb = ctx.progress(chunks as u64, what);
    let on_chunk = |done: usize, _: usize, s: &kld::KldStats| {
        pb.set_position(done as u64);
        if s.compared {
            pb.set_message(format!("kld {:.5}", s.running_kld()));
        }
    };
    let model = &ctx.lm.model;
    let (mode, logits_path) = match &base {
        Base::Itself => ("save-only", a.save_logits.as_ref()),
        Base::Live(..) => ("live", a.save_logits.as_ref()),
        Base::Saved(_) => ("saved", None),
    };
    let mut base = base;
    let stats = match &mut base {
        Base::Itself => kld::compute(
            None,
            BaseSource::Live(model),
            &run,
            writer.as_mut(),
            on_chunk,
        )?,
        Base::Live(blm, _) => kld::compute(
            Some(model),
            BaseSource::Live(&blm.model),
            &run,
            writer.as_mut(),
            on_chunk,
        )?,
        Base::Saved(r) => kld::compute(Some(model), BaseSource::Saved(r), &run, None, on_chunk)?,
    };
    pb.finish_and_clear();
    let logits_file = match (&base, writer) {
        (Base::Saved(r), _) => Some(r.path().to_path_buf()),
        (_, Some(w)) => {
            w.finish()?;
            let p = logits_path.expect("a writer comes from --save-logits");
            if !ctx.quiet {
                let size = std::fs::metadata(p).map_or(0, |m| m.len());
                eprintln!(
                    "saved the base ({}) for {chunks} chunks to {} ({:.1} MiB)",
                    payload_text(saved_payload.as_ref()),
                    p.display(),
                    mib(size)
                );
            }
            Some(p.clone())
        }
        _ => None,
    };

    let data = DataInfo {
        path: f.path.clone(),
        sha256: f.sha256.clone(),
        items: chunks,
        skipped_lines: 0,
    };
    let settings = json!({
        "ctx": a.ctx,
        "chunks": chunks,
        "text_tokens": tokens.len(),
        "base_mode": mode,
        "saved": saved_payload,
        "logits_file": logits_file,
        "kv_type": a.model.kv_type.name(),
    });
    let metrics = if stats.compared {
        let r = stats.result();
        if !a.rec.json {
            print_summary(&r, &base_info, mode, saved_payload.as_ref(), chunks, a.ctx);
        }
        let mut m = serde_json::to_value(&r)?;
        m["kv_bytes_per_token"] = ctx.kv_bytes_per_token()?.into();
        m
    } else {
        let b = stats.base_ppl();
        if !a.rec.json {
            println!(
                "PPL(base) = {:.4} +/- {:.5} ({} chunks of {}, {} tokens scored)",
                b.ppl_base, b.ppl_base_stderr, chunks, a.ctx, b.tokens_scored
            );
        }
        serde_json::to_value(&b)?
    };
    let mut r = ctx.record("kld", data, settings, metrics);
    r.base = Some(base_info);
    Ok(r)
}

/// A live base must cut the text into the same tokens as the model.
fn check_live_base(
    ctx: &Ctx,
    blm: &LoadedModel,
    info: &ModelInfo,
    text: &str,
    tokens: &[u32],
    chunks: usize,
) -> Result<()> {
    let (bc, mc) = (&blm.model.config, &ctx.lm.model.config);
    if bc.n_vocab != mc.n_vocab {
        bail!(
            "vocabulary mismatch: the base {} has {} tokens, the model {} has {}",
            info.label,
            bc.n_vocab,
            ctx.info.label,
            mc.n_vocab
        );
    }
    let bt = &blm.tokenizer;
    let bos = bt.bos_to_add();
    let mt = &ctx.lm.tokenizer;
    let mbos = mt.bos_to_add();
    if bos != mbos {
        bail!(
            "BOS mismatch: the base {} starts chunks with {bos:?}, the model {} with {mbos:?}",
            info.label,
            ctx.info.label
        );
    }
    let base_tokens = bt.encode(text, true, false);
    let n = chunks * ctx.args.ctx;
    if let Some(i) = (0..n).find(|&i| base_tokens.get(i) != tokens.get(i)) {
        bail!(
            "token mismatch: the base {} and the model {} tokenize the text differently (chunk {}, position {}: {:?} vs {:?})",
            info.label,
            ctx.info.label,
            i / ctx.args.ctx + 1,
            i % ctx.args.ctx,
            base_tokens.get(i),
            tokens.get(i)
        );
    }
    Ok(())
}

/// How a saved base keeps its distribution, in words.
fn payload_text(p: Option<&Payload>) -> String {
    match p {
        Some(Payload::Hidden { output_type, .. }) => {
            format!("hidden states and its {output_type} output matrix: exact")
        }
        Some(Payload::TopK { k }) => format!("top-{k} log-probabilities: approximate"),
        None => "none".into(),
    }
}

fn print_summary(
    r: &KldResult,
    base: &ModelInfo,
    mode: &str,
    saved: Option<&Payload>,
    chunks: usize,
    ctx: usize,
) {
    let how = match mode {
        "saved" => format!("saved: {}", payload_text(saved)),
        _ => "live, full vocabulary".into(),
    };
    println!(
        "base: {} ({how}); {chunks} chunks of {ctx}, {} tokens scored",
        base.label, r.tokens_scored
    );
    println!();
    println!("====== Perplexity statistics ======");
    println!(
        "Mean PPL(Q)                   : {:10.6} ± {:10.6}",
        r.ppl_model, r.ppl_model_stderr
    );
    println!(
        "Mean PPL(base)                : {:10.6} ± {:10.6}",
        r.ppl_base, r.ppl_base_stderr
    );
    println!(
        "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}",
        r.ln_ppl_ratio, r.ln_ppl_ratio_stderr
    );
    println!();
    println!("====== KL divergence statistics ======");
    println!("Mean    KLD: {:10.6} ± {:10.6}", r.kld_mean, r.kld_stderr);
    println!("Maximum KLD: {:10.6}", r.kld_max);
    println!("99.9%   KLD: {:10.6}", r.kld_p999);
    println!("99.0%   KLD: {:10.6}", r.kld_p99);
    println!("90.0%   KLD: {:10.6}", r.kld_p90);
    println!("Median  KLD: {:10.6}", r.kld_median);
    println!();
    println!("====== Token probability statistics ======");
    println!(
        "Mean    Δp: {:6.3} ± {:5.3} %",
        r.dp_mean_pct, r.dp_mean_stderr_pct
    );
    println!(
        "RMS Δp    : {:6.3} ± {:5.3} %",
        r.rms_dp_pct, r.rms_dp_stderr_pct
    );
    println!(
        "Same top p: {:6.3} ± {:5.3} %",
        r.same_top_pct, r.same_top_stderr_pct
    );
}
