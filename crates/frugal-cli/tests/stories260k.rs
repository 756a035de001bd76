//! End to end through the binary on the llama2.c stories260K model from
//! ../shared: greedy generation must print exactly llama2.c's reference text.

use std::process::Command;

mod common;
use common::shared;

#[test]
fn greedy_200_tokens_match_llama2c() {
    let s = shared().join("models/stories260K");
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["generate", "--model"])
        .arg(s.join("stories260K.bin"))
        .arg("--tokenizer")
        .arg(s.join("tok512.bin"))
        .args(["--temp", "0", "-n", "200", "-t", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = std::fs::read_to_string(s.join("expected_greedy_200.txt")).unwrap();
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got, want);
}

#[test]
fn llama2c_without_tokenizer_is_a_clear_error() {
    let s = shared().join("models/stories260K");
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["generate", "--model"])
        .arg(s.join("stories260K.bin"))
        .args(["-n", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokenizer"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_tokenizer_file_is_named() {
    let s = shared().join("models/stories260K");
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["generate", "--model"])
        .arg(s.join("stories260K.bin"))
        .args(["--tokenizer", "/nonexistent/tok.bin", "-n", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tok.bin"), "{err}");
}
