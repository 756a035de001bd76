//! llama2.c (to be written).
