//! llama2.c checkpoints (karpathy/llama2.c `run.c`, "legacy" version 0):
//! a header of seven i32 followed by f32 arrays, all weights of one kind for
//! every layer stored together.
//!
//! Each layer's slice is exposed zero-copy from the memory map under its
//! GGUF name. llama2.c rotates adjacent pairs in RoPE, like GGUF llama, so
//! Q and K need no permutation.

use crate::{FormatError, GgmlType, MetaValue, Metadata, ModelSource, Tensor, TensorData};
use std::path::Path;
use std::sync::Arc;

const HEADER_BYTES: usize = 7 * 4;

/// The checkpoint hyper-parameters, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Llama2cConfig {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// The classifier reuses the token embeddings (vocab_size was positive).
    pub shared_classifier: bool,
}

impl Llama2cConfig {
    /// Parse and validate the 28-byte header.
    pub fn parse(bytes: &[u8]) -> Result<Llama2cConfig, FormatError> {
        let Some(header) = bytes.first_chunk::<HEADER_BYTES>() else {
            return Err(FormatError::Truncated {
                field: "llama2.c header".into(),
                offset: 0,
                len: bytes.len() as u64,
            });
        };
        let field =
            |i: usize| i32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let positive = |i: usize, name: &str| -> Result<usize, FormatError> {
            let v = field(i);
            if v > 0 {
                Ok(v as usize)
            } else {
                Err(FormatError::invalid(name, format!("{v} is not positive")))
            }
        };
        let vocab = field(5);
        let cfg = Llama2cConfig {
            dim: positive(0, "dim")?,
            hidden_dim: positive(1, "hidden_dim")?,
            n_layers: positive(2, "n_layers")?,
            n_heads: positive(3, "n_heads")?,
            n_kv_heads: positive(4, "n_kv_heads")?,
            vocab_size: match vocab.checked_abs() {
                Some(v) if v > 0 => v as usize,
                _ => {
                    return Err(FormatError::invalid(
                        "vocab_size",
                        format!("{vocab} is not valid"),
                    ))
                }
            },
            seq_len: positive(6, "seq_len")?,
            shared_classifier: vocab > 0,
        };
        if !cfg.dim.is_multiple_of(cfg.n_heads) {
            return Err(FormatError::invalid(
                "n_heads",
                format!("{} does not divide dim {}", cfg.n_heads, cfg.dim),
            ));
        }
        if !cfg.n_heads.is_multiple_of(cfg.n_kv_heads) {
            return Err(FormatError::invalid(
                "n_kv_heads",
                format!("{} does not divide n_heads {}", cfg.n_kv_heads, cfg.n_heads),
            ));
        }
        if !cfg.head_size().is_multiple_of(2) {
            return Err(FormatError::invalid(
                "n_heads",
                format!("head size {} is odd; RoPE needs pairs", cfg.head_size()),
            ));
        }
        Ok(cfg)
    }

    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.head_size() * self.n_kv_heads
    }

    /// The arrays of the file in order: (kind, elements per layer or in
    /// total, per layer?). Only call after [`Self::file_bytes`] succeeded,
    /// which proves these products do not overflow.
    fn layout(&self) -> Vec<(&'static str, usize, bool)> {
        let (d, h, v, kv) = (self.dim, self.hidden_dim, self.vocab_size, self.kv_dim());
        let freq = self.seq_len * (self.head_size() / 2);
        let mut l = vec![
            ("token_embd", v * d, false),
            ("attn_norm", d, true),
            ("attn_q", d * d, true),
            ("attn_k", d * kv, true),
            ("attn_v", d * kv, true),
            ("attn_output", d * d, true),
            ("ffn_norm", d, true),
            ("ffn_gate", h * d, true),
            ("ffn_down", d * h, true),
            ("ffn_up", h * d, true),
            ("output_norm", d, false),
            ("freq_cis_real", freq, false),
            ("freq_cis_imag", freq, false),
        ];
        if !self.shared_classifier {
            l.push(("output", v * d, false));
        }
        l
    }

    /// Expected file size in bytes, or an error if it overflows.
    pub fn file_bytes(&self) -> Result<usize, FormatError> {
        // Every product is checked: header values are up to 2^31 each.
        let overflow = || FormatError::invalid("llama2.c header", "sizes overflow");
        let m = |a: usize, b: usize| a.checked_mul(b).ok_or_else(overflow);
        let (d, h, v) = (self.dim, self.hidden_dim, self.vocab_size);
        let kv = self.kv_dim();
        let freq = m(self.seq_len, self.head_size() / 2)?;
        let per_layer = [
            d,
            m(d, d)?,
            m(d, kv)?,
            m(d, kv)?,
            m(d, d)?,
            d,
            m(h, d)?,
            m(d, h)?,
            m(h, d)?,
        ]
        .iter()
        .try_fold(0usize, |a, &x| a.checked_add(x))
        .ok_or_else(overflow)?;
        let classifiers = if self.shared_classifier { 1 } else { 2 };
        let floats = [
            m(per_layer, self.n_layers)?,
            m(m(v, d)?, classifiers)?,
            d,
            freq,
            freq,
        ]
        .iter()
        .try_fold(0usize, |a, &x| a.checked_add(x))
        .ok_or_else(overflow)?;
        m(floats, 4)?.checked_add(HEADER_BYTES).ok_or_else(overflow)
    }
}

/// The GGML dims of a llama2.c array (row-major `[out, in]` reversed).
fn dims(cfg: &Llama2cConfig, name: &str) -> Vec<usize> {
    let (d, h, v, kv) = (cfg.dim, cfg.hidden_dim, cfg.vocab_size, cfg.kv_dim());
    match name {
        "token_embd" | "output" => vec![d, v],
        "attn_q" | "attn_output" => vec![d, d],
        "attn_k" | "attn_v" => vec![d, kv],
        "ffn_gate" | "ffn_up" => vec![d, h],
        "ffn_down" => vec![h, d],
        _ => vec![d],
    }
}

fn metadata(cfg: &Llama2cConfig) -> Metadata {
    let u = |x: usize| MetaValue::U32(x as u32); // header values are i32, so they fit
    let mut m = Metadata::default();
    m.set("general.architecture", MetaValue::String("llama".into()));
    m.set("llama.embedding_length", u(cfg.dim));
    m.set("llama.feed_forward_length", u(cfg.hidden_dim));
    m.set("llama.block_count", u(cfg.n_layers));
    m.set("llama.attention.head_count", u(cfg.n_heads));
    m.set("llama.attention.head_count_kv", u(cfg.n_kv_heads));
    m.set("llama.context_length", u(cfg.seq_len));
    m.set("llama.vocab_size", u(cfg.vocab_size));
    m.set(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-5),
    );
    m.set("llama.rope.freq_base", MetaValue::F32(10000.0));
    m.set("llama.rope.dimension_count", u(cfg.head_size()));
    m
}

/// Memory-map a llama2.c checkpoint and expose its weights under GGUF names.
pub fn read_checkpoint(path: &Path) -> Result<ModelSource, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: read-only map; no mutable access is handed out. Sound as long
    // as no other process truncates or rewrites the checkpoint while mapped,
    // which we assume for model files (written once, then only read).
    let mmap =
        Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?);
    let named = |e: FormatError| FormatError::invalid(path.display().to_string(), e.to_string());
    let cfg = Llama2cConfig::parse(&mmap).map_err(named)?;
    let expected = cfg.file_bytes().map_err(named)?;
    if mmap.len() != expected {
        return Err(named(FormatError::invalid(
            "file length",
            format!(
                "{} bytes, but the header ({cfg:?}) implies {expected}",
                mmap.len()
            ),
        )));
    }

    let mut tensors = Vec::new();
    let mut at = HEADER_BYTES;
    for (kind, n, per_layer) in cfg.layout() {
        let bytes = n * 4; // no overflow: file_bytes() summed these
        if kind.starts_with("freq_cis") {
            at += bytes; // derived from the config; not needed
            continue;
        }
        let layers = if per_layer { cfg.n_layers } else { 1 };
        for l in 0..layers {
            let name = if per_layer {
                format!("blk.{l}.{kind}.weight")
            } else {
                format!("{kind}.weight")
            };
            tensors.push(Tensor {
                name,
                ty: GgmlType::F32,
                dims: dims(&cfg, kind),
                data: TensorData::Mapped(mmap.clone(), at..at + bytes),
            });
            at += bytes;
        }
    }
    debug_assert_eq!(at, mmap.len());
    // Put the layers in model order (the file groups them by kind).
    tensors.sort_by_key(|t| order(&t.name));
    Ok(ModelSource {
        metadata: metadata(&cfg),
        tensors,
        tokenizer_json: None,
    })
}

fn order(name: &str) -> (u8, usize, usize) {
    const KINDS: [&str; 9] = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_down",
        "ffn_up",
    ];
    match name {
        "token_embd.weight" => (0, 0, 0),
        "output_norm.weight" => (2, 0, 0),
        "output.weight" => (3, 0, 0),
        _ => {
            let mut parts = name.split('.');
            let layer = parts.nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
            let kind = parts.next().unwrap_or("");
            (1, layer, KINDS.iter().position(|k| *k == kind).unwrap_or(0))
        }
    }
}
