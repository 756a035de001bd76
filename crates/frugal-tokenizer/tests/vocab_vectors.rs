//! llama.cpp's tokenizer test vectors (`models/ggml-vocab-*.gguf.inp/.out`),
//! tokenized with add_special = false and parse_special = false as
//! `tests/test-tokenizer-0.cpp` does, plus the round trips of
//! `test-tokenizer-1-bpe.cpp` / `test-tokenizer-1-spm.cpp`.

mod common;

use common::*;
use frugal_tokenizer::Tokenizer;

/// decode(encode(x)) for every test input. The vocabularies whose
/// pre-tokenizer turns on llama.cpp's `clean_spaces` (gpt-2, starcoder) drop
/// the space of " ?", " !", " .", " ," when decoding; the only such inputs
/// here contain " ?" (llama.cpp's `llama_detokenize` gives the same, checked
/// with the library built at /tmp/llama.cpp).
fn check_round_trip(tok: &Tokenizer, name: &str, cleans_spaces: bool) {
    let mut changed = 0;
    for (text, _) in vectors(name) {
        let back = tok.decode(&tok.encode(&text, false, false));
        let want = if cleans_spaces {
            text.replace(" ?", "?")
        } else {
            text.clone()
        };
        if want != text {
            changed += 1;
        }
        assert_eq!(back, want, "{name}: round trip of {text:?}");
    }
    assert_eq!(changed > 0, cleans_spaces, "{name}: inputs with \" ?\"");
}

/// Every codepoint (but surrogates, U+40000..=U+E0000, and `▁` U+2581, as in
/// llama.cpp's test-tokenizer-1) decodes back to itself.
fn check_codepoints(tok: &Tokenizer, name: &str) {
    let mut n = 0;
    for cp in 0..0x11_0000u32 {
        if (0x4_0000..=0xE_0000).contains(&cp) || cp == 0x2581 {
            continue;
        }
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        let s = c.to_string();
        let back = tok.decode(&tok.encode(&s, false, false));
        assert_eq!(back, s, "{name}: codepoint U+{cp:04X}");
        n += 1;
    }
    assert!(n > 1000);
}

#[test]
fn gpt2_vectors() {
    let tok = gguf_tokenizer(&vocab_file("gpt-2"));
    assert_eq!(check_vectors(&tok, "gpt-2"), 46);
    check_round_trip(&tok, "gpt-2", true);
    check_codepoints(&tok, "gpt-2");
}

#[test]
fn llama_spm_vectors() {
    let tok = gguf_tokenizer(&vocab_file("llama-spm"));
    assert_eq!(check_vectors(&tok, "llama-spm"), 46);
    check_round_trip(&tok, "llama-spm", false);
    check_codepoints(&tok, "llama-spm");
}

#[test]
fn starcoder_vectors() {
    let tok = gguf_tokenizer(&vocab_file("starcoder"));
    assert_eq!(check_vectors(&tok, "starcoder"), 46);
    check_round_trip(&tok, "starcoder", true);
    check_codepoints(&tok, "starcoder");
}

/// The qwen2 vectors run on the vocabulary inside the Qwen2.5-Coder-0.5B GGUF.
#[test]
fn qwen2_vectors() {
    let tok = gguf_tokenizer(&fetched_model("qwen2.5-0.5b"));
    assert_eq!(check_vectors(&tok, "qwen2"), 46);
    check_codepoints(&tok, "qwen2");
    // No clean_spaces for qwen2: every input comes back unchanged.
    for (text, _) in vectors("qwen2") {
        assert_eq!(tok.decode(&tok.encode(&text, false, false)), text);
    }
}
