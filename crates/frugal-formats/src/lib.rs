//! Model file formats for frugal.
//!
//! Every loader produces a [`ModelSource`]: GGUF-named metadata plus tensors in
//! GGML layout. GGUF is the native format; Hugging Face folders and llama2.c
//! checkpoints are translated to the same names on load.

mod error;
mod ggml_type;
mod metadata;
mod tensor;

pub mod gguf;
pub mod hf;
pub mod llama2c;

pub use error::FormatError;
pub use ggml_type::{FrugalType, GgmlType, QK_K};
pub use metadata::{MetaType, MetaValue, Metadata};
pub use tensor::{Tensor, TensorData};

use std::path::PathBuf;

/// A model as loaded from any supported file: GGUF-style metadata and tensors.
#[derive(Clone, Debug, Default)]
pub struct ModelSource {
    pub metadata: Metadata,
    pub tensors: Vec<Tensor>,
    /// A Hugging Face `tokenizer.json` that came with the model, if any.
    pub tokenizer_json: Option<PathBuf>,
}

impl ModelSource {
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Total bytes of all tensors.
    pub fn tensor_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.bytes().len()).sum()
    }
}
