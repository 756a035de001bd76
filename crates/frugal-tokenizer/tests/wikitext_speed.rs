//! Tokenizing WikiText-2's test split (1.3 MB) with each vocabulary: it must
//! finish, give llama.cpp's token count (counted with `llama_tokenize(..,
//! add_special = false, parse_special = false)` from the library built at
//! /tmp/llama.cpp, whose ids ours equal), and decode back where llama.cpp's
//! decoding is lossless. The time is printed, not asserted
//! (`cargo test -p frugal-tokenizer --test wikitext_speed -- --nocapture`).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;

fn run(name: &str, model: PathBuf, want_tokens: usize, lossless: bool) {
    let text = std::fs::read_to_string(shared_file("data/wikitext-2-raw/wiki.test.raw")).unwrap();
    let tok = gguf_tokenizer(&model);
    let t0 = Instant::now();
    let ids = tok.encode(&text, false, false);
    let enc = t0.elapsed();
    let t1 = Instant::now();
    let back = tok.decode(&ids);
    let dec = t1.elapsed();
    eprintln!(
        "{name}: wiki.test.raw ({} bytes) -> {} tokens: encode {:.3} s, decode {:.3} s",
        text.len(),
        ids.len(),
        enc.as_secs_f64(),
        dec.as_secs_f64()
    );
    assert_eq!(ids.len(), want_tokens, "{name}: token count");
    if lossless {
        assert!(back == text, "{name}: decode(encode(text)) differs");
    }
}

#[test]
fn gpt2() {
    // clean_spaces: " ," and friends lose their space on decode.
    run("gpt-2", vocab_file("gpt-2"), 286_178, false);
}

#[test]
fn llama_spm() {
    run("llama-spm", vocab_file("llama-spm"), 332_754, true);
}

#[test]
fn starcoder() {
    run("starcoder", vocab_file("starcoder"), 354_587, false);
}

#[test]
fn qwen2() {
    run("qwen2", fetched_model("qwen2.5-0.5b"), 298_938, true);
}

#[test]
fn smollm2() {
    run("smollm2", fetched_model("smollm2-135m"), 304_830, true);
}
