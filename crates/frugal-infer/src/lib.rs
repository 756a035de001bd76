//! Inference loops: prefill a prompt, then decode token by token.

pub mod bench;
mod generate;

pub use generate::{generate, prefill, GenStats};
