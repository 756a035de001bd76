//! Model compression: pruning (magnitude, Wanda, SparseGPT), low-rank
//! factorization (SVD, whitened SVD) and quantization (RTN, GPTQ, AWQ,
//! SmoothQuant) with
//! calibration on real text, written as GGUF that llama.cpp loads, or in
//! frugal's own formats where no ggml type expresses the scheme.

pub mod calib;
pub mod lowrank;
pub mod prune;
pub mod quant;
#[cfg(test)]
mod testutil;
