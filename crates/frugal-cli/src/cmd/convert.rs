//! `frugal convert`: write a model as GGUF or as a Hugging Face folder.

use crate::common::resolve_model;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use frugal_formats::gguf::GgufWriter;
use frugal_formats::{hf, GgmlType};
use frugal_model::export::to_float_source;
use frugal_model::load::load_source;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Target {
    /// A GGUF file.
    Gguf,
    /// A Hugging Face folder: config.json and model.safetensors (float tensors only).
    Hf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutType {
    /// Keep each tensor's type (GGUF only).
    Keep,
    F32,
    F16,
    Bf16,
}

#[derive(clap::Args)]
pub struct Args {
    /// Model path or known name.
    #[arg(short, long)]
    pub model: String,
    /// Output path: a .gguf file, or a folder for --to hf.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Output layout.
    #[arg(long, value_enum, default_value = "gguf")]
    pub to: Target,
    /// Tensor type of the output (default: keep for GGUF, f32 for hf).
    #[arg(long = "type", value_enum)]
    pub ty: Option<OutType>,
    /// A tokenizer.json to put in the Hugging Face folder. Without one, load
    /// the folder with `--tokenizer ORIGINAL.gguf`.
    #[arg(long)]
    pub tokenizer_json: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let path = resolve_model(&a.model, false)?;
    let (src, _) = load_source(&path).with_context(|| format!("reading {}", path.display()))?;
    let ty = a.ty.unwrap_or(match a.to {
        Target::Gguf => OutType::Keep,
        Target::Hf => OutType::F32,
    });
    let float = match ty {
        OutType::Keep => None,
        OutType::F32 => Some(GgmlType::F32),
        OutType::F16 => Some(GgmlType::F16),
        OutType::Bf16 => Some(GgmlType::BF16),
    };
    let src = match float {
        Some(t) => to_float_source(&src, t)?,
        None => src,
    };
    match a.to {
        Target::Gguf => {
            GgufWriter::from_source(&src)?.write(&a.out)?;
        }
        Target::Hf => {
            if float.is_none() {
                bail!("a Hugging Face folder holds float tensors: use --type f32, f16 or bf16");
            }
            let tok = a
                .tokenizer_json
                .as_deref()
                .or(src.tokenizer_json.as_deref());
            hf::write_hf_dir(&a.out, &src, tok)?;
        }
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
