//! GGUF (to be written).
