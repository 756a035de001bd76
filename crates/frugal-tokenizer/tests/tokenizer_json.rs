//! `tokenizer.json` through the `tokenizers` crate. The file is built here
//! from the GPT-2 vocabulary of llama.cpp's test GGUF (tokens, merges), as a
//! Hugging Face byte-level BPE; llama.cpp's gpt-2 vectors were produced by
//! Hugging Face's tokenizer, so the same ids must come out.

mod common;

use common::*;
use frugal_formats::gguf::GgufFile;
use frugal_tokenizer::{Tokenizer, TokenizerKind};
use serde_json::{json, Value};

fn gpt2_json(post_processor: Value) -> Value {
    let f = GgufFile::open(&vocab_file("gpt-2")).unwrap();
    let md = &f.metadata;
    let tokens = md.get_array("tokenizer.ggml.tokens").unwrap();
    let merges: Vec<&str> = md
        .get_array("tokenizer.ggml.merges")
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str().unwrap().to_string(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 50256, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": merges
        }
    })
}

fn write(dir: &tempfile::TempDir, v: &Value) -> std::path::PathBuf {
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p
}

#[test]
fn gpt2_json_matches_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &gpt2_json(
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        ),
    );
    let tok = Tokenizer::from_tokenizer_json(&path).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::HfJson);
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(check_vectors(&tok, "gpt-2"), 46);

    // No post-processor names BOS/EOS: fall back to the token's name.
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_id(), Some(50256));
    assert!(tok.is_eog(50256));
    assert!(!tok.add_bos());

    // Special-token text is plain text unless parse_special.
    assert_eq!(tok.encode("a<|endoftext|>", false, true), [64, 50256]);
    assert_eq!(
        tok.encode("a<|endoftext|>", false, false),
        [64, 27, 91, 437, 1659, 5239, 91, 29]
    );
    let ids = tok.encode("Hello world, ünïcödé!", false, false);
    assert_eq!(tok.decode(&ids), "Hello world, ünïcödé!");
    assert_eq!(tok.decode(&[15496, 50256]), "Hello");
    // Byte-level pieces are raw bytes: Ġ is a space.
    assert_eq!(tok.token_text(995), Some("Ġworld"));
    assert_eq!(tok.token_to_piece(995), b" world");
    assert_eq!(tok.token_to_piece(50256), b"");
    assert_eq!(tok.token_to_piece_special(50256, true), b"<|endoftext|>");
}

#[test]
fn template_processor_names_bos() {
    let dir = tempfile::tempdir().unwrap();
    let eot = json!({"id": "<|endoftext|>", "ids": [50256], "tokens": ["<|endoftext|>"]});
    let path = write(
        &dir,
        &gpt2_json(json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|endoftext|>": eot}
        })),
    );
    let tok = Tokenizer::from_tokenizer_json(&path).unwrap();
    assert_eq!(tok.bos_id(), Some(50256));
    assert!(tok.add_bos() && !tok.add_eos());
    assert_eq!(tok.encode("Hello", true, false), [50256, 15496]);
    assert_eq!(tok.encode("Hello", false, false), [15496]);
}

#[test]
fn missing_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_tokenizer_json(dir.path().join("nope.json")).unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, b"{\"model\": 3}").unwrap();
    assert!(Tokenizer::from_tokenizer_json(&p).is_err());
}
