//! `frugal bench` through the binary on stories260K: the record it writes
//! carries every cost metric, and the numbers are consistent with each other
//! and with the model's shape.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

mod common;

fn stories() -> PathBuf {
    common::shared().join("models/stories260K")
}

fn bench(extra: &[&str]) -> std::process::Output {
    let s = stories();
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["bench", "--model"])
        .arg(s.join("stories260K.bin"))
        .arg("--tokenizer")
        .arg(s.join("tok512.bin"))
        .args(["-t", "1"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn record_has_every_cost_metric() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("bench.json");
    let out = bench(&[
        "-p",
        "16,64",
        "-n",
        "8",
        "-r",
        "2",
        "--usd-per-hour",
        "3.6",
        "--watts-per-core",
        "10",
        "--json",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    assert_eq!(printed, saved);
    assert_eq!(saved["kind"], "bench");
    let m = &saved["metrics"];
    let f = |k: &str| {
        m[k].as_f64()
            .unwrap_or_else(|| panic!("metric {k} missing: {m}"))
    };

    // One prefill entry per prompt length, each with a TTFT no shorter than its prefill.
    let pre = m["prefill"].as_array().unwrap();
    assert_eq!(pre.len(), 2);
    for (p, n) in pre.iter().zip([16.0, 64.0]) {
        assert_eq!(p["n_prompt"].as_f64().unwrap(), n);
        let tps = p["tps"].as_f64().unwrap();
        assert!(p["ttft_ms"].as_f64().unwrap() >= n / tps * 1e3 * 0.999);
    }
    assert_eq!(f("prefill_tps"), pre[0]["tps"].as_f64().unwrap());

    // Latency percentiles are ordered, and the median is near 1/decode rate.
    let (p50, p90, p99) = (f("tpot_ms_p50"), f("tpot_ms_p90"), f("tpot_ms_p99"));
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= f("tpot_ms_max"));
    assert_eq!(m["decode_tps_samples"].as_array().unwrap().len(), 2);

    // stories260K: 5 layers, 4 KV heads of 8 dims, f32 K and V.
    assert_eq!(f("kv_bytes_per_token"), (2 * 5 * 32 * 4) as f64);
    // Output tied to the embedding: FLOPs ≈ 2 per parameter (plus a little attention).
    let params = saved["model"]["params"].as_f64().unwrap();
    let ratio = f("flops_per_token") / (2.0 * params);
    assert!((1.0..1.05).contains(&ratio), "flops/2·params = {ratio}");
    assert_eq!(saved["model"]["bpw"].as_f64().unwrap(), 32.0);

    // Money: $3.6/hour = $0.001/s, so $/Mtok = 1000 / tokens per second.
    let usd = f("usd_per_mtok");
    assert!((usd - 1000.0 / f("decode_tps")).abs() < 1e-6 * usd);
    // Energy: the estimate is CPU seconds × 10 W over the tokens decoded.
    let tokens = 2.0 * 8.0;
    assert!((f("energy_estimate_j_per_token") - f("decode_cpu_s") * 10.0 / tokens).abs() < 1e-9);
    assert!(f("energy_j_per_token") > 0.0);
    assert!(m["energy_source"].as_str().unwrap().len() > 5);
    assert!(f("peak_rss_bytes") > 1e6);
    assert_eq!(saved["data"], Value::Null);
}

#[test]
fn bad_options_are_named() {
    for (args, want) in [
        (vec!["-p", "0", "-n", "0"], "nothing to measure"),
        (vec!["-r", "0"], "--repetitions"),
        (vec!["--watts-per-core=-1"], "--watts-per-core"),
        (vec!["-p", "100000"], "context"),
    ] {
        let out = bench(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
