//! Threaded matmul (filled in by the kernels work).
