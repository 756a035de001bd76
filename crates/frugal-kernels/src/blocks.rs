//! Packed block structs (filled in by the kernels work).
