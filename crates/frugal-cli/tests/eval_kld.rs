//! `frugal eval --task kld` end to end on the llama2.c stories260K model from
//! ../shared: saving base logits, comparing against them and against a live
//! base, and refusing what does not match.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::shared;

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    model: PathBuf,
    tok: PathBuf,
    text: PathBuf,
}

/// A temporary folder with a text of a few dozen chunks of 64 tokens.
fn setup() -> Setup {
    let s = shared().join("models/stories260K");
    let d = tempfile::tempdir().unwrap();
    let story = std::fs::read_to_string(s.join("expected_greedy_200.txt")).unwrap();
    let text = d.path().join("text.txt");
    std::fs::write(&text, story.repeat(6)).unwrap();
    Setup {
        dir: d.path().to_path_buf(),
        _dir: d,
        model: s.join("stories260K.bin"),
        tok: s.join("tok512.bin"),
        text,
    }
}

/// `frugal eval --task kld:TEXT` with `extra` options (--ctx 64 unless given).
fn eval(s: &Setup, model: &Path, extra: &[&str]) -> Output {
    let ctx: &[&str] = if extra.contains(&"--ctx") {
        &[]
    } else {
        &["--ctx", "64"]
    };
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["eval", "-t", "1", "--quiet", "--model"])
        .arg(model)
        .arg("--tokenizer")
        .arg(&s.tok)
        .arg("--task")
        .arg(format!("kld:{}", s.text.display()))
        .args(ctx)
        .args(extra)
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "succeeded unexpectedly");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn m(r: &Value, key: &str) -> f64 {
    r["metrics"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("metric {key} missing in {}", r["metrics"]))
}

#[test]
fn model_against_its_own_saved_logits_is_zero() {
    let s = setup();
    let logits = s.dir.join("base.logits");
    let saved = ok_json(eval(&s, &s.model, &["--save-logits", p(&logits), "--json"]));
    assert!(logits.exists());
    assert_eq!(saved["settings"]["base_mode"], "save-only");
    let ppl = m(&saved, "ppl_base");
    assert!(ppl > 1.0 && ppl < 512.0, "{ppl}");

    let r = ok_json(eval(&s, &s.model, &["--base", p(&logits), "--json"]));
    assert_eq!(r["task"], "kld");
    assert_eq!(r["settings"]["base_mode"], "saved");
    assert!(m(&r, "kld_mean").abs() < 1e-6, "{}", r["metrics"]);
    assert!(m(&r, "kld_p99").abs() < 1e-6);
    assert_eq!(m(&r, "same_top_pct"), 100.0);
    assert!(m(&r, "rms_dp_pct") < 1e-3);
    assert!((m(&r, "ppl_model") - ppl).abs() < 1e-3 * ppl);
    assert!((m(&r, "ppl_base") - ppl).abs() < 1e-3 * ppl);
    assert_eq!(r["base"]["sha256"], r["model"]["sha256"]);
    assert_eq!(r["base"]["label"], "stories260K");
    for key in [
        "kld_mean",
        "kld_stderr",
        "kld_median",
        "kld_p99",
        "same_top_pct",
        "same_top_stderr_pct",
        "rms_dp_pct",
        "ppl_model",
        "ppl_model_stderr",
        "ppl_base",
        "ppl_base_stderr",
        "tokens_scored",
    ] {
        assert!(r["metrics"].get(key).is_some(), "{key} missing");
    }
    // 64-token chunks score 31 tokens each.
    let n = m(&r, "tokens_scored") as usize;
    assert_eq!(n % 31, 0);
    assert_eq!(n / 31, r["settings"]["chunks"].as_u64().unwrap() as usize);
}

/// stories260K with its weights rounded to bf16: a slightly different model.
fn bf16_model(s: &Setup) -> PathBuf {
    let bf16 = s.dir.join("st-bf16.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["convert", "--type", "bf16", "--model"])
        .arg(&s.model)
        .arg("--out")
        .arg(&bf16)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bf16
}

const SAME_KEYS: [&str; 12] = [
    "kld_mean",
    "kld_stderr",
    "kld_median",
    "kld_p99",
    "kld_max",
    "same_top_pct",
    "rms_dp_pct",
    "dp_mean_pct",
    "ppl_model",
    "ppl_base",
    "ln_ppl_ratio",
    "tokens_scored",
];

#[test]
fn live_and_saved_base_agree_on_a_different_model() {
    let s = setup();
    let bf16 = bf16_model(&s);
    let logits = s.dir.join("base.logits");
    let base = p(&s.model);
    // Live base (exact KL), saving it on the way.
    let live = ok_json(eval(
        &s,
        &bf16,
        &["--base", base, "--save-logits", p(&logits), "--json"],
    ));
    assert_eq!(live["settings"]["base_mode"], "live");
    let kl = m(&live, "kld_mean");
    assert!(kl > 1e-6, "bf16 rounding must show: {kl}");
    // The saved base rebuilds the base's logits: the same numbers.
    let saved = ok_json(eval(&s, &bf16, &["--base", p(&logits), "--json"]));
    assert_eq!(saved["settings"]["base_mode"], "saved");
    assert_eq!(saved["settings"]["saved"]["kind"], "hidden");
    for key in SAME_KEYS {
        let (a, b) = (m(&live, key), m(&saved, key));
        assert!(
            (a - b).abs() <= 1e-9 * a.abs().max(1e-6),
            "{key}: live {a} vs saved {b}"
        );
    }
    assert_eq!(live["base"]["sha256"], saved["base"]["sha256"]);
    // The model against itself through a live base: zero.
    let own = ok_json(eval(&s, &s.model, &["--base", base, "--json"]));
    assert!(m(&own, "kld_mean").abs() < 1e-9);
    assert_eq!(m(&own, "same_top_pct"), 100.0);
    // The human summary, llama.cpp-like.
    let out = eval(&s, &bf16, &["--base", p(&logits)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Mean    KLD:",
        "Median  KLD:",
        "99.0%   KLD:",
        "Same top p:",
        "RMS Δp",
        "PPL(base)",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
}

#[test]
fn top_k_file_is_a_close_lower_bound() {
    let s = setup();
    let bf16 = bf16_model(&s);
    let logits = s.dir.join("topk.logits");
    let live = ok_json(eval(
        &s,
        &bf16,
        &[
            "--base",
            p(&s.model),
            "--save-logits",
            p(&logits),
            "--logits-top-k",
            "64",
            "--json",
        ],
    ));
    let saved = ok_json(eval(&s, &bf16, &["--base", p(&logits), "--json"]));
    assert_eq!(saved["settings"]["saved"]["kind"], "top-k");
    assert_eq!(saved["settings"]["saved"]["k"], 64);
    let (kl, ks) = (m(&live, "kld_mean"), m(&saved, "kld_mean"));
    assert!(
        ks <= kl * (1.0 + 1e-6) && ks > 0.8 * kl,
        "live {kl}, top-64 {ks}"
    );
    // Top-1 agreement, perplexities and Δp do not depend on k.
    for key in ["same_top_pct", "ppl_model", "ppl_base", "rms_dp_pct"] {
        let (a, b) = (m(&live, key), m(&saved, key));
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "{key}: {a} vs {b}"
        );
    }
}

#[test]
fn mismatches_are_refused() {
    let s = setup();
    let logits = s.dir.join("base.logits");
    ok_json(eval(
        &s,
        &s.model,
        &["--save-logits", p(&logits), "--limit", "3", "--json"],
    ));
    let e = failed(eval(&s, &s.model, &["--base", p(&logits), "--ctx", "32"]));
    assert!(e.contains("--ctx 64") && e.contains("--ctx 32"), "{e}");
    let e = failed(eval(&s, &s.model, &["--base", p(&logits), "--limit", "4"]));
    assert!(e.contains("holds 3 chunks"), "{e}");
    // Another text.
    let other = Setup {
        text: s.dir.join("other.txt"),
        ..setup()
    };
    std::fs::write(&other.text, "Once upon a time. ".repeat(200)).unwrap();
    let e = failed(eval(&other, &s.model, &["--base", p(&logits)]));
    assert!(e.contains("text mismatch"), "{e}");
    // A damaged file.
    let bytes = std::fs::read(&logits).unwrap();
    let cut = s.dir.join("cut.logits");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = failed(eval(&s, &s.model, &["--base", p(&cut)]));
    assert!(e.contains("truncated") && e.contains("cut.logits"), "{e}");
    // Neither --base nor --save-logits.
    let e = failed(eval(&s, &s.model, &[]));
    assert!(e.contains("--base"), "{e}");
    // --logits-top-k without saving.
    let e = failed(eval(
        &s,
        &s.model,
        &["--base", p(&logits), "--logits-top-k", "8"],
    ));
    assert!(e.contains("--save-logits"), "{e}");
}

#[test]
fn failed_save_leaves_no_file() {
    let s = setup();
    // The folder does not exist.
    let missing = s.dir.join("nope/base.logits");
    let e = failed(eval(&s, &s.model, &["--save-logits", p(&missing)]));
    assert!(e.contains("nope"), "{e}");
    assert!(!s.dir.join("nope").exists());
    // The target is a folder: the run completes, the final rename fails,
    // and the temporary file is removed.
    let target = s.dir.join("taken");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = failed(eval(
        &s,
        &s.model,
        &["--save-logits", p(&target), "--limit", "2"],
    ));
    assert!(e.contains("taken"), "{e}");
    let names: Vec<String> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
}
