//! `frugal eval` task accuracy end to end through the binary: on the llama2.c
//! stories260K model from ../shared with handmade task files whose right
//! answers are the model's own greedy continuations, and on SmolLM2 against
//! llama.cpp's HellaSwag.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::shared;

/// Run frugal on stories260K with `args` appended.
fn stories(args: &[&str]) -> Output {
    let s = shared().join("models/stories260K");
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .arg("eval")
        .arg("--model")
        .arg(s.join("stories260K.bin"))
        .arg("--tokenizer")
        .arg(s.join("tok512.bin"))
        .args(["-t", "1"])
        .args(args)
        .output()
        .expect("run frugal")
}

fn ok_json(out: &Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "frugal failed:\n{err}");
    serde_json::from_slice(&out.stdout).expect("--json prints a record")
}

fn failed(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure, got success:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The model's greedy continuation of `prompt`, cut to its first `words` words.
fn greedy(prompt: &str, words: usize) -> String {
    let s = shared().join("models/stories260K");
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["generate", "--model"])
        .arg(s.join("stories260K.bin"))
        .arg("--tokenizer")
        .arg(s.join("tok512.bin"))
        .args(["--temp", "0", "-n", "24", "-t", "1", "-q", "-p", prompt])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace()
        .take(words)
        .collect::<Vec<_>>()
        .join(" ")
}

const PROMPTS: [&str; 3] = ["Once upon a time,", "The little dog", "Lily wanted to"];
const JUNK: [&str; 3] = [
    "quantum ledger audits xylophone bureaucracy",
    "zq vbn mlp qqq krz",
    "the the the the the the",
];

/// mc lines: the greedy continuation at index `(i + shift) % 4`, junk elsewhere;
/// `label_on_greedy` says whether the label points at it.
fn mc_lines(label_on_greedy: bool) -> Vec<String> {
    PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let g = greedy(p, 5);
            let pos = i % 4;
            let mut choices: Vec<String> = JUNK.iter().map(|s| s.to_string()).collect();
            choices.insert(pos, g);
            let label = if label_on_greedy { pos } else { (pos + 1) % 4 };
            serde_json::json!({"context": p, "choices": choices, "label": label}).to_string()
        })
        .collect()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn task(name: &str, p: &Path) -> String {
    format!("{name}:{}", p.display())
}

#[test]
fn mc_greedy_continuation_is_always_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.jsonl", &mc_lines(true));
    let r = ok_json(&stories(&["--task", &task("mc", &good), "--json"]));
    assert_eq!(r["task"], "mc");
    assert_eq!(r["metrics"]["acc_pct"], 100.0, "{r}");
    assert_eq!(r["metrics"]["items"], 3);
    assert_eq!(r["data"]["items"], 3);
    assert_eq!(r["data"]["skipped_lines"], 0);
    assert_eq!(r["data"]["path"], good.to_str().unwrap());
    assert_eq!(r["data"]["sha256"].as_str().unwrap().len(), 64);
    assert!(r["settings"]["limit"].is_null());

    // The same questions with the labels on junk: nothing right.
    let wrong = write(dir.path(), "wrong.jsonl", &mc_lines(false));
    let r = ok_json(&stories(&["--task", &task("mc", &wrong), "--json"]));
    assert_eq!(r["metrics"]["acc_pct"], 0.0, "{r}");

    // --limit takes the first items; the human summary goes to stdout.
    let out = stories(&["--task", &task("mc", &good), "--limit", "2", "-q"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("acc_norm = 100.00") && text.contains("over 2 questions"),
        "{text}"
    );
}

#[test]
fn mc_bad_line_stops_or_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = mc_lines(true);
    lines.insert(
        1,
        r#"{"context": "A", "choices": ["b", "c"], "label": 5}"#.into(),
    );
    let f = write(dir.path(), "bad.jsonl", &lines);
    let err = failed(&stories(&["--task", &task("mc", &f)]));
    assert!(err.contains(&format!("{}:2:", f.display())), "{err}");
    assert!(err.contains("out of range"), "{err}");

    let out = stories(&["--task", &task("mc", &f), "--on-bad-line", "skip", "--json"]);
    let r = ok_json(&out);
    assert_eq!(r["data"]["skipped_lines"], 1);
    assert_eq!(r["data"]["items"], 3);
    assert_eq!(r["metrics"]["acc_pct"], 100.0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipped 1") && err.contains(":2: "), "{err}");
}

#[test]
fn hellaswag_format_from_greedy_continuations() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let pos = (i + 2) % 4;
        let mut endings: Vec<String> = JUNK.iter().map(|s| s.to_string()).collect();
        endings.insert(pos, greedy(p, 4));
        lines.push(p.to_string());
        lines.push(pos.to_string());
        lines.extend(endings);
    }
    let f = write(dir.path(), "hs.txt", &lines);
    let r = ok_json(&stories(&["--task", &task("hellaswag", &f), "--json"]));
    assert_eq!(r["task"], "hellaswag");
    assert_eq!(r["metrics"]["acc_pct"], 100.0, "{r}");
    assert_eq!(r["data"]["items"], 3);

    // A gold index that is not a number names its line (the second task's second line).
    let mut bad = lines.clone();
    bad[7] = "two".into();
    let fb = write(dir.path(), "hs-bad.txt", &bad);
    let err = failed(&stories(&["--task", &task("hellaswag", &fb)]));
    assert!(err.contains(&format!("{}:8:", fb.display())), "{err}");
    let r = ok_json(&stories(&[
        "--task",
        &task("hellaswag", &fb),
        "--on-bad-line",
        "skip",
        "--json",
    ]));
    assert_eq!(
        (
            r["data"]["items"].as_u64(),
            r["data"]["skipped_lines"].as_u64()
        ),
        (Some(2), Some(1))
    );

    // A truncated final task names its first line.
    let ft = write(dir.path(), "hs-cut.txt", &lines[..16]);
    let err = failed(&stories(&["--task", &task("hellaswag", &ft)]));
    assert!(
        err.contains(&format!("{}:13: truncated", ft.display())),
        "{err}"
    );
}

#[test]
fn lambada_greedy_word_is_right_and_junk_word_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for p in PROMPTS {
        let g = greedy(p, 3);
        lines.push(serde_json::json!({ "text": format!("{p} {g}") }).to_string());
    }
    lines.push(serde_json::json!({"text": "Once upon a time, xylophone"}).to_string());
    let f = write(dir.path(), "lam.jsonl", &lines);
    let r = ok_json(&stories(&["--task", &task("lambada", &f), "--json"]));
    assert_eq!(r["task"], "lambada");
    assert_eq!(r["metrics"]["items"], 4);
    assert_eq!(r["metrics"]["acc_pct"], 75.0, "{r}");
    let ppl = r["metrics"]["word_ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{r}");

    // A line without a last word to predict.
    lines.insert(2, r#"{"text": "single"}"#.into());
    let fb = write(dir.path(), "lam-bad.jsonl", &lines);
    let err = failed(&stories(&["--task", &task("lambada", &fb)]));
    assert!(err.contains(&format!("{}:3:", fb.display())), "{err}");
    let r = ok_json(&stories(&[
        "--task",
        &task("lambada", &fb),
        "--on-bad-line",
        "skip",
        "--json",
    ]));
    assert_eq!(r["data"]["skipped_lines"], 1);
    assert_eq!(r["metrics"]["acc_pct"], 75.0);
}

#[test]
fn missing_file_and_wrong_format_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let err = failed(&stories(&["--task", &task("mc", &missing)]));
    assert!(
        err.contains("nope.jsonl") && err.contains("does not exist"),
        "{err}"
    );

    // JSON lines given to hellaswag.
    let jsonl = write(dir.path(), "q.jsonl", &mc_lines(true)[..1]);
    let err = failed(&stories(&["--task", &task("hellaswag", &jsonl)]));
    assert!(err.contains("6-line"), "{err}");

    // HellaSwag's text given to mc and lambada: line 1 is not JSON.
    let text: Vec<String> = ["ctx", "0", "a", "b", "c", "d"].map(String::from).to_vec();
    let hs = write(dir.path(), "hs.txt", &text);
    for t in ["mc", "lambada"] {
        let err = failed(&stories(&["--task", &task(t, &hs)]));
        assert!(
            err.contains(&format!("{}:1: not valid JSON", hs.display())),
            "{err}"
        );
        let err = failed(&stories(&[
            "--task",
            &task(t, &hs),
            "--on-bad-line",
            "skip",
        ]));
        assert!(err.contains("no usable"), "{err}");
    }
}

/// Against llama.cpp: `llama-perplexity --hellaswag` run on each of the first
/// 20 tasks alone is right on the same 3 tasks as frugal. One task of
/// tolerance for a near-tie moved by kernel rounding.
#[test]
fn smollm2_hellaswag_first_20_tasks() {
    let data = shared().join("data/hellaswag/hellaswag_val_full.txt.bz2");
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["eval", "-m", "smollm2-135m", "--task"])
        .arg(format!("hellaswag:{}", data.display()))
        .args(["--limit", "20", "--json"])
        .output()
        .unwrap();
    let r = ok_json(&out);
    assert_eq!(r["data"]["items"], 20);
    assert_eq!(r["settings"]["limit"], 20);
    let correct = r["metrics"]["correct"].as_u64().unwrap();
    assert!((2..=4).contains(&correct), "{r}");
}
