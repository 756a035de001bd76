//! `frugal quantize --method awq | awq-gptq | smoothquant` on the real
//! SmolLM2 model (fetched on first use), and their argument checks.

mod common;
mod quantize_common;

use frugal_formats::{FrugalType, GgmlType, MetaValue};
use frugal_model::load::load_source;
use quantize_common::{fails, ok, ppl, smollm2_f32};

#[test]
fn scaling_methods_check_their_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("out.gguf");
    let o = o.to_str().unwrap();
    let base = ["quantize", "-m", "model.gguf", "-o", o];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    fails(
        &with(&["--method", "smoothquant", "--type", "Q4_0", "--calib", "x"]),
        "use --type W8_row",
    );
    fails(
        &with(&["--method", "smoothquant", "--alpha", "1.5", "--calib", "x"]),
        "--alpha 1.5",
    );
    fails(
        &with(&["--method", "awq", "--type", "Q4_0", "--alpha", "1"]),
        "--alpha 1",
    );
    fails(
        &with(&["--method", "rtn", "--type", "Q4_0", "--alpha", "0.5"]),
        "--alpha is for",
    );
    for m in ["awq", "awq-gptq", "smoothquant"] {
        fails(
            &with(&["--method", m, "--type", "W8_row"]),
            "needs calibration text",
        );
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn awq_beats_rtn_at_3_bits_and_smoothquant_w8a8_stays_near_f32() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = smollm2_f32(dir.path());
    let f32s = f32_path.to_str().unwrap();
    let calib = common::shared().join("data/wikitext-2/valid.txt");
    let calib = calib.to_str().unwrap();
    let quantize = |name: &str, extra: &[&str]| -> std::path::PathBuf {
        let out = dir.path().join(name);
        let mut a = vec!["quantize", "-q", "-m", f32s, "-o", out.to_str().unwrap()];
        a.extend_from_slice(extra);
        a.extend(["--calib", calib, "--calib-tokens", "2048"]);
        ok(&a);
        out
    };
    let three = ["--bits", "3", "--group", "128"];
    let rtn3 = quantize("rtn3.gguf", &three);
    let mut a = three.to_vec();
    a.extend(["--method", "awq"]);
    let awq3 = quantize("awq3.gguf", &a);
    let sq8 = quantize("sq8.gguf", &["--method", "smoothquant"]);

    // The scaled norms are in the file, as f32, and the method is recorded.
    let (q, _) = load_source(&sq8).unwrap();
    let (base, _) = load_source(&f32_path).unwrap();
    let norm = q.tensor("blk.3.ffn_norm.weight").unwrap();
    assert_eq!(norm.ty, GgmlType::F32);
    assert_ne!(
        norm.bytes(),
        base.tensor("blk.3.ffn_norm.weight").unwrap().bytes()
    );
    assert_eq!(
        q.tensor("blk.3.ffn_down.weight").unwrap().ty,
        GgmlType::Frugal(FrugalType::W8Row)
    );
    match q.metadata.get("frugal.quantize.method") {
        Some(MetaValue::String(s)) => assert!(s.starts_with("smoothquant"), "{s}"),
        other => panic!("method metadata {other:?}"),
    }

    let (p_f32, p_rtn3, p_awq3, p_sq8) = (
        ppl(&f32_path, "4"),
        ppl(&rtn3, "4"),
        ppl(&awq3, "4"),
        ppl(&sq8, "4"),
    );
    eprintln!("ppl (4 chunks): f32 {p_f32:.2}, 3-bit rtn {p_rtn3:.2} awq {p_awq3:.2}, W8A8 smoothquant {p_sq8:.2}");
    assert!(
        p_awq3 < 0.8 * p_rtn3,
        "3-bit AWQ ppl {p_awq3:.2} should be well below RTN's {p_rtn3:.2}"
    );
    assert!(
        p_sq8 < 1.03 * p_f32,
        "W8A8 SmoothQuant ppl {p_sq8:.2} should be within 3% of F32's {p_f32:.2}"
    );
}
