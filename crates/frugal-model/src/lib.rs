//! The Llama-family decoder (Llama, SmolLM2, llama2.c models, Qwen2) on CPU.
//!
//! Read top to bottom: [`load`] opens a file of any supported format into a
//! [`LoadedModel`]; [`ModelConfig`] holds the hyper-parameters; [`Weights`]
//! the tensors; [`Model::forward`] runs a batch of tokens through the blocks
//! using the KV cache ([`KvCache`]) and scratch [`State`]; [`Sampler`] picks
//! the next token.

mod config;
pub mod export;
mod forward;
mod kv;
pub mod load;
pub mod sampling;
mod weights;

pub use config::{Arch, ModelConfig, RopeStyle};
pub use forward::{rms_norm, softmax, swiglu, Logits, Model, State};
pub use kv::{KvCache, KvType};
pub use load::{load, load_with, LoadedModel, Residency};
pub use sampling::{Sampler, SamplerConfig};
pub use weights::{
    factor_names, qmatrix, tensor_to_f32, Layer, Linear, Weights, BLOCK_MATRIX_NAMES,
};

use frugal_formats::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("unsupported architecture `{0}` (frugal runs: llama, qwen2)")]
    UnsupportedArch(String),
    #[error("bad model config: {0}")]
    BadConfig(String),
    #[error("model is missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{0}`: {1}")]
    BadTensor(String, String),
    #[error("{0}")]
    Input(String),
    #[error("context full: {needed} positions needed, the KV cache holds {n_ctx}")]
    ContextFull { n_ctx: usize, needed: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Load(String),
}
