//! Model compression: quantization (RTN, GPTQ, AWQ, SmoothQuant) with
//! calibration on real text, written as GGUF that llama.cpp loads, or in
//! frugal's own formats where no ggml type expresses the scheme.

pub mod calib;
pub mod quant;
