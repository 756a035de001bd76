//! Hyper-parameters of a Llama-family decoder, read from GGUF-style metadata.
//!
//! The architecture comes from `general.architecture`, never from a file name.

use crate::ModelError;
use frugal_formats::{Metadata, ModelSource};

/// The decoder architectures frugal runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama (and SmolLM2, llama2.c): no biases, interleaved-pair RoPE.
    Llama,
    /// Qwen2: biases on Q, K and V; NeoX (half-split) RoPE.
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    pub fn from_name(name: &str) -> Result<Arch, ModelError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }

    /// The RoPE convention GGUF files of this architecture use.
    pub fn rope_style(self) -> RopeStyle {
        match self {
            Arch::Llama => RopeStyle::Interleaved,
            Arch::Qwen2 => RopeStyle::Neox,
        }
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): the original Llama/GGUF convention.
    Interleaved,
    /// Pairs (i, i + d/2): the GPT-NeoX convention used by Qwen2.
    Neox,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub rope_theta: f32,
    /// Dimensions of each head that RoPE rotates (the rest pass through).
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
}

impl ModelConfig {
    pub fn from_source(src: &ModelSource) -> Result<ModelConfig, ModelError> {
        let md = &src.metadata;
        let arch = Arch::from_name(md.get_str("general.architecture")?)?;
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let n_embd = md.get_usize(&key("embedding_length"))?;
        let n_head = md.get_usize(&key("attention.head_count"))?;
        let n_head_kv = md
            .opt(&key("attention.head_count_kv"), Metadata::get_usize)?
            .unwrap_or(n_head);
        let n_vocab = match md.opt(&key("vocab_size"), Metadata::get_usize)? {
            Some(v) => v,
            None => match src.tensor("token_embd.weight") {
                Some(t) if t.dims.len() == 2 => t.dims[1],
                _ => md.get_array("tokenizer.ggml.tokens")?.len(),
            },
        };
        // Features that change the computation and that frugal does not run:
        // refuse them rather than produce quietly wrong logits.
        if src.tensor("rope_freqs.weight").is_some() {
            return Err(ModelError::BadConfig(
                "rope_freqs.weight (Llama 3 style RoPE frequency scaling) is not supported".into(),
            ));
        }
        if let Some(t) = md.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            if t != "none" {
                return Err(ModelError::BadConfig(format!(
                    "rope.scaling.type `{t}` is not supported"
                )));
            }
        }
        let key_len = md.opt(&key("attention.key_length"), Metadata::get_usize)?;
        let value_len = md.opt(&key("attention.value_length"), Metadata::get_usize)?;
        if key_len != value_len {
            return Err(ModelError::BadConfig(format!(
                "attention.key_length {key_len:?} differs from attention.value_length {value_len:?}"
            )));
        }
        let cfg = ModelConfig {
            arch,
            n_vocab,
            n_embd,
            n_layer: md.get_usize(&key("block_count"))?,
            n_head,
            n_head_kv,
            // The head size is explicit in newer files; otherwise heads split the embedding evenly.
            head_dim: match key_len {
                Some(k) => k,
                None if n_head > 0 && n_embd % n_head == 0 => n_embd / n_head,
                None => 0,
            },
            n_ff: md.get_usize(&key("feed_forward_length"))?,
            n_ctx_train: md
                .opt(&key("context_length"), Metadata::get_usize)?
                .unwrap_or(2048),
            rope_theta: md
                .opt(&key("rope.freq_base"), Metadata::get_f32)?
                .unwrap_or(10000.0),
            rope_dim: 0,
            rope_style: arch.rope_style(),
            rms_eps: md
                .opt(&key("attention.layer_norm_rms_epsilon"), Metadata::get_f32)?
                .unwrap_or(1e-5),
        };
        let rope_dim = md
            .opt(&key("rope.dimension_count"), Metadata::get_usize)?
            .unwrap_or(cfg.head_dim);
        let cfg = ModelConfig { rope_dim, ..cfg };
        cfg.validate()?;
        // Every layer has at least its nine weight tensors: a block count
        // beyond that is a corrupt header, not a model.
        if cfg.n_layer > src.tensors.len() {
            return Err(ModelError::BadConfig(format!(
                "block_count {} exceeds the {} tensors in the file",
                cfg.n_layer,
                src.tensors.len()
            )));
        }
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: &str, why: String| Err(ModelError::BadConfig(format!("{what}: {why}")));
        for (name, v) in [
            ("embedding_length", self.n_embd),
            ("attention.head_count", self.n_head),
            ("attention.head_count_kv", self.n_head_kv),
            ("block_count", self.n_layer),
            ("feed_forward_length", self.n_ff),
            ("vocab_size", self.n_vocab),
        ] {
            if v == 0 {
                return bad(name, "must be positive".into());
            }
        }
        if self.head_dim == 0 {
            return bad(
                "attention.head_count",
                format!(
                    "{} heads leave no head size in embedding_length {} (and no attention.key_length)",
                    self.n_head, self.n_embd
                ),
            );
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(
                "attention.head_count_kv",
                format!(
                    "{} does not divide head_count {}",
                    self.n_head_kv, self.n_head
                ),
            );
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return bad(
                "rope.dimension_count",
                format!(
                    "{} must be even and at most the head size {}",
                    self.rope_dim, self.head_dim
                ),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope.freq_base",
                format!("{} must be positive", self.rope_theta),
            );
        }
        Ok(())
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
