//! Test material: `../shared` beside the checkout (its absence is a failure,
//! not a skip) and the models `frugal-fetch` provides.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use frugal_formats::gguf::GgufFile;
use frugal_tokenizer::Tokenizer;

/// The shared test material folder; panics naming what is missing.
pub fn shared() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        dir.join("vectors/llama.cpp-vocab").is_dir(),
        "test material missing: expected ../shared/vectors/llama.cpp-vocab beside the checkout \
         (looked in {}); see ../shared/README.md",
        dir.display()
    );
    dir
}

/// A file under `../shared`, which must exist.
pub fn shared_file(rel: &str) -> PathBuf {
    let p = shared().join(rel);
    assert!(
        p.is_file(),
        "test material missing: ../shared/{rel} (looked for {})",
        p.display()
    );
    p
}

pub fn vocab_file(name: &str) -> PathBuf {
    shared_file(&format!("vectors/llama.cpp-vocab/ggml-vocab-{name}.gguf"))
}

/// The tokenizer of a GGUF file.
pub fn gguf_tokenizer(path: &Path) -> Tokenizer {
    let f = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_metadata(&f.metadata).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A model from `frugal-fetch` (downloaded on first use, then cached).
pub fn fetched_model(name: &str) -> PathBuf {
    frugal_fetch::fetch(name).unwrap_or_else(|e| {
        panic!("test material missing: could not fetch model `{name}` with frugal-fetch: {e}")
    })
}

/// llama.cpp's tokenizer test vectors (`tests/test-tokenizer-0.cpp`): the
/// `.inp` file holds the inputs separated by `\n__ggml_vocab_test__\n` (so
/// the newline before a separator is not part of the input); the `.out` file
/// one line per input, the expected ids separated by spaces.
pub fn vectors(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = format!("vectors/llama.cpp-vocab/ggml-vocab-{name}.gguf");
    let inp = std::fs::read_to_string(shared_file(&format!("{base}.inp"))).unwrap();
    let out = std::fs::read_to_string(shared_file(&format!("{base}.out"))).unwrap();
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                inputs.push(rest[..i].to_string());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| {
                    t.parse()
                        .unwrap_or_else(|e| panic!("{base}.out: bad id {t:?}: {e}"))
                })
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{base}: {} inputs but {} output lines",
        inputs.len(),
        outputs.len()
    );
    assert!(inputs.len() > 10, "{base}: suspiciously few vectors");
    inputs.into_iter().zip(outputs).collect()
}

/// Check every vector; returns how many passed, panics listing failures.
pub fn check_vectors(tok: &Tokenizer, name: &str) -> usize {
    let vs = vectors(name);
    let mut failures = Vec::new();
    for (text, want) in &vs {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} vectors differ from llama.cpp:\n{}",
        failures.len(),
        vs.len(),
        failures.join("\n")
    );
    eprintln!(
        "{name}: {} of {} vectors match llama.cpp",
        vs.len(),
        vs.len()
    );
    vs.len()
}
