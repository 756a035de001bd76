//! Evaluation of a model's quality, and the records every result is written as.
//!
//! - [`perplexity`]: llama.cpp's perplexity method.
//! - [`kld`]: KL divergence from a base model, live or against saved base logits.
//! - [`tasks`]: LAMBADA, HellaSwag and generic multiple choice.
//! - [`data`]: reading task files (plain or `.bz2`), with line-numbered errors.
//! - [`record`]: the JSON envelope (model, data and version hashes) that
//!   `frugal report` merges.

pub mod data;
pub mod kld;
pub mod perplexity;
pub mod record;
pub mod stats;
pub mod tasks;

pub use data::{OnBadLine, TaskFile};
pub use record::{DataInfo, ModelInfo, Record};

use std::path::PathBuf;

/// What can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One line of a task file is malformed (1-based line number).
    #[error("{}:{line}: {reason} (use --on-bad-line skip to skip such lines)", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The file as a whole is not what the task expects.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] frugal_model::ModelError),
    #[error("{0}")]
    Input(String),
}
