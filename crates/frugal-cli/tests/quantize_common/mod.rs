//! Helpers of the `frugal quantize` tests: run the binary, expect success
//! or a named error, measure perplexity.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn frugal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(args)
        .output()
        .expect("run frugal")
}

pub fn ok(args: &[&str]) -> String {
    let out = frugal(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "frugal {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn fails(args: &[&str], needle: &str) {
    let out = frugal(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "frugal {args:?} should fail");
    assert!(stderr.contains(needle), "expected `{needle}` in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

pub fn ppl(model: &Path, chunks: &str) -> f64 {
    let wiki = super::common::shared().join("data/wikitext-2-raw/wiki.test.raw");
    let out = ok(&[
        "perplexity",
        "-q",
        "--json",
        "-m",
        model.to_str().unwrap(),
        "-f",
        wiki.to_str().unwrap(),
        "--chunks",
        chunks,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["ppl"].as_f64().unwrap()
}

/// An F32 copy of SmolLM2 (fetched on first use) in `dir`: the quantizer's
/// and the pruner's usual input.
pub fn smollm2_f32(dir: &Path) -> PathBuf {
    let q41 = frugal_fetch::fetch("smollm2-135m").unwrap();
    let out = dir.join("smol-f32.gguf");
    ok(&[
        "convert",
        "-m",
        q41.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    out
}
