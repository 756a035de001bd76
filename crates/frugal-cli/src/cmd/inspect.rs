//! `frugal inspect MODEL`: what a model file holds.

use crate::common::{mib, resolve_model};
use anyhow::{Context, Result};
use frugal_formats::GgmlType;
use frugal_model::load::{load_source, load_tokenizer};
use frugal_model::ModelConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model path or known name.
    pub model: String,
    /// Tokenizer file, for models that carry none.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show only the per-type summary, not every tensor.
    #[arg(long)]
    pub summary: bool,
}

pub fn run(a: Args) -> Result<()> {
    let path = resolve_model(&a.model, a.json)?;
    let (src, format) =
        load_source(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = ModelConfig::from_source(&src)?;
    let tok = load_tokenizer(&src, cfg.n_vocab, a.tokenizer.as_deref());

    let total_bytes: usize = src.tensor_bytes();
    let total_elems: usize = src.tensors.iter().map(|t| t.n_elements()).sum();
    let bpw = total_bytes as f64 * 8.0 / total_elems.max(1) as f64;
    let mut by_type: BTreeMap<&'static str, (usize, usize, usize)> = BTreeMap::new();
    for t in &src.tensors {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.bytes().len();
    }

    if a.json {
        let tensors: Vec<_> = src
            .tensors
            .iter()
            .map(|t| json!({"name": t.name, "type": t.ty.name(), "dims": t.dims, "bytes": t.bytes().len()}))
            .collect();
        let tokenizer = match &tok {
            Ok(t) => {
                json!({"kind": format!("{:?}", t.kind()), "vocab_size": t.vocab_size(), "bos": t.bos_id(), "eos": t.eos_id(), "add_bos": t.add_bos()})
            }
            Err(e) => json!({"error": e.to_string()}),
        };
        let out = json!({
            "path": path,
            "format": format.name(),
            "architecture": cfg.arch.name(),
            "n_vocab": cfg.n_vocab, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_head_kv": cfg.n_head_kv, "head_dim": cfg.head_dim,
            "n_ff": cfg.n_ff, "n_ctx_train": cfg.n_ctx_train, "rope_theta": cfg.rope_theta,
            "rope_style": format!("{:?}", cfg.rope_style), "rms_eps": cfg.rms_eps,
            "tokenizer": tokenizer,
            "n_tensors": src.tensors.len(),
            "n_params": total_elems,
            "total_bytes": total_bytes,
            "bits_per_weight": bpw,
            "types": by_type.iter().map(|(k, v)| json!({"type": k, "tensors": v.0, "elements": v.1, "bytes": v.2})).collect::<Vec<_>>(),
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!("model         {}", path.display());
    println!("format        {}", format.name());
    println!("architecture  {}", cfg.arch.name());
    println!(
        "layers {}  embd {}  ff {}  heads {} (kv {})  head dim {}  vocab {}",
        cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_vocab
    );
    println!(
        "context {}  rope theta {} ({:?}, {} dims)  rms eps {:e}",
        cfg.n_ctx_train, cfg.rope_theta, cfg.rope_style, cfg.rope_dim, cfg.rms_eps
    );
    match &tok {
        Ok(t) => println!(
            "tokenizer     {:?} ({} tokens, bos {:?}, eos {:?}, add bos {})",
            t.kind(),
            t.vocab_size(),
            t.bos_id(),
            t.eos_id(),
            t.add_bos()
        ),
        Err(e) => println!("tokenizer     none: {e}"),
    }
    println!(
        "parameters    {:.1} M in {} tensors, {:.1} MiB, {:.3} bits per weight",
        total_elems as f64 / 1e6,
        src.tensors.len(),
        mib(total_bytes as u64),
        bpw
    );
    println!();
    println!(
        "{:<8} {:>8} {:>14} {:>12} {:>7}",
        "type", "tensors", "elements", "MiB", "bpw"
    );
    for (ty, (n, el, by)) in &by_type {
        let bpw = GgmlType::from_name(ty).map_or(0.0, |t| t.bits_per_weight());
        println!(
            "{ty:<8} {n:>8} {el:>14} {:>12.2} {bpw:>7.3}",
            mib(*by as u64)
        );
    }
    if !a.summary {
        println!();
        println!(
            "{:<36} {:<6} {:<20} {:>12}",
            "tensor", "type", "dims", "bytes"
        );
        for t in &src.tensors {
            println!(
                "{:<36} {:<6} {:<20} {:>12}",
                t.name,
                t.ty.name(),
                format!("{:?}", t.dims),
                t.bytes().len()
            );
        }
    }
    Ok(())
}
