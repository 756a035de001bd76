//! llama.cpp's tokenizer test vectors (`models/ggml-vocab-*.gguf.inp/.out`),
//! tokenized with add_special = false and parse_special = false as
//! `test-tokenizer-0` does.

mod common;

use common::*;

#[test]
fn gpt2_vectors() {
    let tok = gguf_tokenizer(&vocab_file("gpt-2"));
    check_vectors(&tok, "gpt-2");
}

#[test]
fn llama_spm_vectors() {
    let tok = gguf_tokenizer(&vocab_file("llama-spm"));
    check_vectors(&tok, "llama-spm");
}

#[test]
fn starcoder_vectors() {
    let tok = gguf_tokenizer(&vocab_file("starcoder"));
    check_vectors(&tok, "starcoder");
}

#[test]
fn qwen2_vectors() {
    let tok = gguf_tokenizer(&fetched_model("qwen2.5-0.5b"));
    check_vectors(&tok, "qwen2");
}

#[test]
fn explore_roundtrip() {
    for name in ["gpt-2", "llama-spm", "starcoder"] {
        let tok = gguf_tokenizer(&vocab_file(name));
        for (text, _) in vectors(name) {
            let d = tok.decode(&tok.encode(&text, false, false));
            if d != text {
                eprintln!("{name}: {text:?} -> {d:?}");
            }
        }
    }
}
