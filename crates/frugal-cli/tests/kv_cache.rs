//! `--kv-type` end to end: the KV cache types against the f32 cache on the
//! fetched SmolLM2-135M (heads of 64), the records and summaries that name
//! the type and its bytes, and the clear refusals (an unknown name; Q8_0 and
//! Q4_0 on stories260K, whose heads of 8 values do not fill a 32-value block).

use frugal_formats::GgmlType;
use frugal_model::export::to_float_source;
use frugal_model::load::load_source;
use frugal_model::sampling::argmax;
use frugal_model::{KvType, Logits, Model};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;
use common::shared;

fn frugal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(args)
        .output()
        .expect("run frugal")
}

fn ok_json(out: Output) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
}

fn smollm2() -> PathBuf {
    frugal_fetch::fetch("smollm2-135m").unwrap()
}

fn wiki() -> PathBuf {
    shared().join("data/wikitext-2-raw/wiki.test.raw")
}

/// Per position: log-softmax of a row of logits.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// SmolLM2-135M with its weights widened to f32: its logits are then exactly
/// the same whether tokens run in one batch or one at a time (no activation
/// quantization to re-round), so what moves them is the KV cache alone.
#[test]
fn smollm2_packed_caches_track_the_f32_cache() {
    let path = smollm2();
    let lm = frugal_model::load(&path, None).unwrap();
    let (src, _) = load_source(&path).unwrap();
    let m = Model::from_source(&to_float_source(&src, GgmlType::F32).unwrap()).unwrap();
    assert_eq!(m.config.head_dim, 64);
    let text = std::fs::read_to_string(wiki()).unwrap();
    let tokens = lm.tokenizer.encode(&text[..20_000], true, false);
    let tokens = &tokens[..256];
    let n_vocab = m.config.n_vocab;
    let run = |ty: KvType| -> Vec<f32> {
        let mut kv = m.new_cache_typed(tokens.len(), ty).unwrap();
        // Most in one batch (prefill), the last 32 one at a time (decode).
        let split = tokens.len() - 32;
        let mut st = m.new_state(split, true);
        let mut out = m
            .forward(&tokens[..split], &mut kv, &mut st, Logits::All)
            .unwrap()
            .to_vec();
        for &t in &tokens[split..] {
            out.extend_from_slice(m.forward(&[t], &mut kv, &mut st, Logits::Last).unwrap());
        }
        out
    };
    let base = run(KvType::F32);
    // Measured: mean KL f16 3e-7, q8 7e-4, q4 0.12 (Q4_0 keys cost the most:
    // keys alone 0.1, values alone 0.009); top-1 agreement 100%, 99%, 82%.
    // (type, most mean KL allowed, least top-1 agreement allowed)
    let mut kls = Vec::new();
    for (ty, max_kl, min_top1) in [
        (KvType::F16, 1e-5, 0.99),
        (KvType::Q8_0, 4e-3, 0.93),
        (KvType::Q4_0, 0.4, 0.6),
    ] {
        let got = run(ty);
        let (mut kl, mut same) = (0.0, 0usize);
        for (b, g) in base.chunks(n_vocab).zip(got.chunks(n_vocab)) {
            let (lb, lg) = (log_softmax(b), log_softmax(g));
            kl += lb
                .iter()
                .zip(&lg)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
            same += (argmax(b) == argmax(g)) as usize;
        }
        let n = tokens.len() as f64;
        let (kl, top1) = (kl / n, same as f64 / n);
        eprintln!("{ty}: mean KL {kl:.2e}, top-1 agreement {top1:.4}");
        assert!(kl > 0.0 && kl < max_kl, "{ty}: mean KL {kl}");
        assert!(top1 >= min_top1, "{ty}: top-1 agreement {top1}");
        kls.push(kl);
    }
    assert!(kls[0] < kls[1] && kls[1] < kls[2], "{kls:?}");
}

#[test]
fn perplexity_with_a_q8_cache_is_close_and_names_the_type() {
    let m = smollm2();
    let m = m.to_str().unwrap();
    let w = wiki();
    let ppl = |ty: &str| {
        ok_json(frugal(&[
            "perplexity",
            "-q",
            "--json",
            "--model",
            m,
            "--file",
            w.to_str().unwrap(),
            "--ctx",
            "512",
            "--chunks",
            "3",
            "--kv-type",
            ty,
        ]))
    };
    let (a, b) = (ppl("f32"), ppl("q8"));
    assert_eq!(a["kv_type"], "f32");
    assert_eq!(b["kv_type"], "q8");
    // 30 layers × 2 (K and V) × 3 heads × 64 values: 4 bytes, or 34 per 32.
    assert_eq!(a["kv_bytes_per_token"], 30 * 2 * 192 * 4);
    assert_eq!(b["kv_bytes_per_token"], 30 * 2 * 6 * 34);
    // This Q4_1 model quantizes its activations to 8 bits for every matmul,
    // so any change re-rounds them: the q8 cache moves perplexity by about
    // as much as that noise (measured -0.3% here, -0.04% over 20 chunks).
    let (pa, pb) = (a["ppl"].as_f64().unwrap(), b["ppl"].as_f64().unwrap());
    assert!(
        pa != pb && (pb / pa - 1.0).abs() < 0.02,
        "f32 {pa}, q8 {pb}"
    );
}

struct Stories {
    _dir: tempfile::TempDir,
    model: PathBuf,
    tok: PathBuf,
    text: PathBuf,
}

fn stories() -> Stories {
    let s = shared().join("models/stories260K");
    let d = tempfile::tempdir().unwrap();
    let story = std::fs::read_to_string(s.join("expected_greedy_200.txt")).unwrap();
    let text = d.path().join("text.txt");
    std::fs::write(&text, story.repeat(4)).unwrap();
    Stories {
        _dir: d,
        model: s.join("stories260K.bin"),
        tok: s.join("tok512.bin"),
        text,
    }
}

/// `frugal CMD --model stories260K --tokenizer tok512.bin -t 1 EXTRA...`
fn on_stories(s: &Stories, cmd: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .arg(cmd)
        .arg("--model")
        .arg(&s.model)
        .arg("--tokenizer")
        .arg(&s.tok)
        .args(["-t", "1"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn eval_and_bench_records_carry_the_kv_type() {
    let s = stories();
    let task = format!("perplexity:{}", s.text.display());
    let r = ok_json(on_stories(
        &s,
        "eval",
        &[
            "--task",
            &task,
            "--ctx",
            "64",
            "--json",
            "--quiet",
            "--kv-type",
            "f16",
        ],
    ));
    assert_eq!(r["settings"]["kv_type"], "f16");
    // stories260K: 5 layers, 4 K/V heads of 8 values, 2 bytes each, K and V.
    assert_eq!(r["metrics"]["kv_bytes_per_token"], 5 * 2 * 32 * 2);
    let f32_run = ok_json(on_stories(
        &s,
        "eval",
        &["--task", &task, "--ctx", "64", "--json", "--quiet"],
    ));
    assert_eq!(f32_run["settings"]["kv_type"], "f32");
    let (p16, p32) = (
        r["metrics"]["ppl"].as_f64().unwrap(),
        f32_run["metrics"]["ppl"].as_f64().unwrap(),
    );
    assert!((p16 / p32 - 1.0).abs() < 1e-3, "f16 {p16}, f32 {p32}");

    let b = ok_json(on_stories(
        &s,
        "bench",
        &[
            "-p",
            "16",
            "-n",
            "8",
            "-r",
            "1",
            "--json",
            "--kv-type",
            "f16",
        ],
    ));
    assert_eq!(b["settings"]["kv_type"], "f16");
    assert_eq!(b["metrics"]["kv_type"], "f16");
    assert_eq!(b["metrics"]["kv_bytes_per_token"], 5 * 2 * 32 * 2);
}

#[test]
fn generate_reports_the_cache_it_used() {
    let s = stories();
    let j = ok_json(on_stories(
        &s,
        "generate",
        &[
            "--temp",
            "0",
            "-n",
            "20",
            "--json",
            "--kv-type",
            "f16",
            "--ctx",
            "32",
        ],
    ));
    assert_eq!(j["kv_type"], "f16");
    assert_eq!(j["kv_bytes_per_token"], 5 * 2 * 32 * 2);
    assert_eq!(j["kv_cache_bytes"], 32 * 5 * 2 * 32 * 2);
    assert!(!j["text"].as_str().unwrap().is_empty());
}

#[test]
fn blocks_that_do_not_fit_the_heads_are_refused_clearly() {
    let s = stories();
    let file = s.text.to_str().unwrap().to_string();
    for ty in ["q8", "q4"] {
        let out = on_stories(
            &s,
            "perplexity",
            &["-q", "--file", &file, "--ctx", "64", "--kv-type", ty],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("a {ty} KV cache"))
                && err.contains("8 values")
                && err.contains("f16"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn unknown_kv_types_list_the_choices() {
    let s = stories();
    let out = on_stories(&s, "generate", &["-n", "4", "--kv-type", "q5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("q5") && err.contains("f32, f16, q8, q4"),
        "{err}"
    );
    // The ggml names are accepted too (stories260K then refuses the blocks).
    let out = on_stories(&s, "generate", &["-n", "4", "--kv-type", "q8_0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("a q8 KV cache"),
        "{err}"
    );
    let help = frugal(&["bench", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--kv-type") && help.contains("Q8_0") && help.contains("Q4_0"),
        "{help}"
    );
}

#[test]
fn kld_base_runs_with_f32_and_save_only_refuses_a_kv_type() {
    let s = stories();
    let task = format!("kld:{}", s.text.display());
    let logits = s._dir.path().join("base.logits");
    let out = on_stories(
        &s,
        "eval",
        &[
            "--task",
            &task,
            "--ctx",
            "64",
            "--quiet",
            "--kv-type",
            "f16",
            "--save-logits",
            logits.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kv-type") && err.contains("f32 KV cache"),
        "{err}"
    );
    // The model against itself: the divergence is the f16 cache's alone.
    let model = s.model.to_str().unwrap();
    let r = ok_json(on_stories(
        &s,
        "eval",
        &[
            "--task",
            &task,
            "--ctx",
            "64",
            "--json",
            "--quiet",
            "--kv-type",
            "f16",
            "--base",
            model,
        ],
    ));
    assert_eq!(r["settings"]["kv_type"], "f16");
    let kld = r["metrics"]["kld_mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 1e-4, "{kld}");
    assert_eq!(r["metrics"]["kv_bytes_per_token"], 5 * 2 * 32 * 2);
}
