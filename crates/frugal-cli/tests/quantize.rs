//! `frugal quantize` on the real SmolLM2 model (fetched on first use) and
//! on bad input.

mod common;
mod quantize_common;

use frugal_formats::GgmlType;
use frugal_model::load::load_source;
use quantize_common::{fails, ok, ppl, smollm2_f32};

#[test]
fn rtn_writes_the_reference_quantizers_bytes_and_gptq_beats_it_at_3_bits() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = smollm2_f32(dir.path());
    let f32s = f32_path.to_str().unwrap();

    // RTN into Q4_0: every block matrix is the reference quantizer's output
    // (the kernels' tests hold that to ggml's bytes).
    let q4 = dir.path().join("q4_0.gguf");
    ok(&[
        "quantize",
        "-q",
        "-m",
        f32s,
        "-o",
        q4.to_str().unwrap(),
        "--type",
        "Q4_0",
    ]);
    let (base, _) = load_source(&f32_path).unwrap();
    let (quant, _) = load_source(&q4).unwrap();
    let from_float = frugal_kernels::traits(GgmlType::Q4_0)
        .unwrap()
        .from_float
        .unwrap();
    let mut checked = 0;
    for t in quant.tensors.iter().filter(|t| t.name.starts_with("blk.")) {
        if t.dims.len() < 2 {
            assert_eq!(t.ty, GgmlType::F32, "{}", t.name);
            continue;
        }
        assert_eq!(t.ty, GgmlType::Q4_0, "{}", t.name);
        let x = frugal_model::tensor_to_f32(base.tensor(&t.name).unwrap()).unwrap();
        let mut want = vec![0u8; t.bytes().len()];
        from_float(&x, &mut want);
        assert!(
            t.bytes() == want.as_slice(),
            "{} differs from the reference",
            t.name
        );
        checked += 1;
    }
    assert_eq!(checked, 30 * 7);
    // The embedding (tied output) gets Q6_K's fallback for 576 columns.
    assert_eq!(
        quant.tensor("token_embd.weight").unwrap().ty,
        GgmlType::Q8_0
    );

    // 3 bits, groups of 128 (a frugal type): RTN collapses, GPTQ holds up,
    // even with little calibration text.
    let calib = common::shared().join("data/wikitext-2/valid.txt");
    let rtn3 = dir.path().join("rtn3.gguf");
    let gptq3 = dir.path().join("gptq3.gguf");
    let three = ["--bits", "3", "--group", "128"];
    let mut a = vec!["quantize", "-q", "-m", f32s, "-o", rtn3.to_str().unwrap()];
    a.extend(three);
    ok(&a);
    let mut a = vec!["quantize", "-q", "-m", f32s, "-o", gptq3.to_str().unwrap()];
    a.extend(three);
    a.extend(["--method", "gptq", "--calib", calib.to_str().unwrap()]);
    a.extend(["--calib-tokens", "2048"]);
    ok(&a);
    let (p_rtn, p_gptq) = (ppl(&rtn3, "4"), ppl(&gptq3, "4"));
    assert!(
        p_gptq < 0.7 * p_rtn,
        "3-bit GPTQ ppl {p_gptq:.2} should be far below RTN's {p_rtn:.2}"
    );
    let (q3, _) = load_source(&gptq3).unwrap();
    assert_eq!(
        q3.tensor("blk.0.ffn_down.weight").unwrap().ty.name(),
        "FQ3a_g128"
    );
}

#[test]
fn budget_bpw_mixes_types_within_the_budget_and_beats_one_type() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = smollm2_f32(dir.path());
    let f32s = f32_path.to_str().unwrap();
    let calib = common::shared().join("data/wikitext-2/valid.txt");
    let mixed = dir.path().join("mixed.gguf");
    let uniform = dir.path().join("uniform.gguf");
    ok(&[
        "quantize",
        "-q",
        "-m",
        f32s,
        "-o",
        mixed.to_str().unwrap(),
        "--budget-bpw",
        "4.5",
        "--calib",
        calib.to_str().unwrap(),
        "--calib-tokens",
        "1024",
        // The default sensitivity (KLD per matrix) on fewer tokens, to keep it quick.
        "--budget-kld-tokens",
        "128",
    ]);
    ok(&[
        "quantize",
        "-q",
        "-m",
        f32s,
        "-o",
        uniform.to_str().unwrap(),
        "--type",
        "Q4_0",
    ]);
    let (q, _) = load_source(&mixed).unwrap();
    let (mut bits, mut elements) = (0usize, 0usize);
    let mut types = std::collections::BTreeSet::new();
    for t in q.tensors.iter().filter(|t| t.name.starts_with("blk.")) {
        if t.dims.len() < 2 {
            continue;
        }
        bits += t.bytes().len() * 8;
        elements += t.n_elements();
        types.insert(t.ty.name());
    }
    assert_eq!(
        elements,
        30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    );
    let bpw = bits as f64 / elements as f64;
    assert!(bpw <= 4.5 + 1e-9, "{bpw} bits per weight over a 4.5 budget");
    assert!(bpw > 4.3, "{bpw}: the budget should be nearly spent");
    assert!(types.len() >= 2, "one type everywhere: {types:?}");
    // The same bits as uniform Q4_0, spent where they matter, do better.
    let (p_mixed, p_uniform) = (ppl(&mixed, "4"), ppl(&uniform, "4"));
    assert!(
        p_mixed < p_uniform,
        "mixed {p_mixed:.2} should beat uniform Q4_0 {p_uniform:.2}"
    );
}

/// `--budget-types` is the whole ladder: nothing else appears, frugal's own
/// types included.
#[test]
fn budget_types_are_the_only_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = smollm2_f32(dir.path());
    let calib = common::shared().join("data/wikitext-2/valid.txt");
    let out = dir.path().join("mixed.gguf");
    ok(&[
        "quantize",
        "-q",
        "-m",
        f32_path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--budget-bpw",
        "5",
        "--budget-types",
        "Q4_0,FQ6a_g64",
        "--budget-sensitivity",
        "proxy",
        "--calib",
        calib.to_str().unwrap(),
        "--calib-tokens",
        "512",
    ]);
    let (q, _) = load_source(&out).unwrap();
    let types: std::collections::BTreeSet<_> = q
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2)
        .map(|t| t.ty.name())
        .collect();
    assert_eq!(
        types,
        ["FQ6a_g64", "Q4_0"].into_iter().collect(),
        "block matrix types"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let q41 = frugal_fetch::fetch("smollm2-135m").unwrap();
    let m = q41.to_str().unwrap();
    let out = dir.path().join("out.gguf");
    let o = out.to_str().unwrap();
    fails(
        &["quantize", "-m", m, "-o", o, "--type", "Q9_9"],
        "unknown type `Q9_9`",
    );
    fails(
        &["quantize", "-m", m, "-o", o, "--bits", "9"],
        "2 to 8 bits",
    );
    fails(
        &["quantize", "-m", m, "-o", o, "--bits", "4", "--group", "48"],
        "--group 48",
    );
    fails(
        &["quantize", "-m", m, "-o", o, "--type", "Q8_K"],
        "activation type",
    );
    fails(
        &["quantize", "-m", m, "-o", o, "--type", "F16"],
        "not a quantized type",
    );
    fails(
        &[
            "quantize", "-m", m, "-o", o, "--type", "Q4_0", "--method", "gptq",
        ],
        "needs calibration text",
    );
    fails(
        &["quantize", "-m", m, "-o", o, "--budget-bpw", "0"],
        "positive number of bits",
    );
    fails(
        &["quantize", "-m", m, "-o", o, "--budget-bpw", "4"],
        "--calib FILE",
    );
    let calib = common::shared().join("data/wikitext-2/valid.txt");
    fails(
        &[
            "quantize",
            "-m",
            m,
            "-o",
            o,
            "--budget-bpw",
            "1.5",
            "--calib",
            calib.to_str().unwrap(),
            "--calib-tokens",
            "64",
        ],
        "the smallest candidate types already need",
    );
    let c = calib.to_str().unwrap();
    for (types, needle) in [
        ("Q4_0,F16", "--budget-types: F16 is not a quantized type"),
        ("Q4_0,Q7_7", "unknown type `Q7_7`"),
    ] {
        fails(
            &[
                "quantize",
                "-m",
                m,
                "-o",
                o,
                "--budget-bpw",
                "4",
                "--budget-types",
                types,
                "--calib",
                c,
            ],
            needle,
        );
    }
    fails(
        &["quantize", "-m", m, "-o", o, "--budget-types", "Q4_0"],
        "--budget-bpw",
    );
    fails(
        &[
            "quantize",
            "-m",
            m,
            "-o",
            o,
            "--budget-bpw",
            "4",
            "--calib",
            c,
            "--budget-kld-tokens",
            "0",
        ],
        "--budget-kld-tokens 0",
    );
    fails(
        &[
            "quantize",
            "-m",
            m,
            "-o",
            o,
            "--budget-bpw",
            "4",
            "--calib",
            c,
            "--budget-sensitivity",
            "hessian",
        ],
        "invalid value 'hessian'",
    );
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Only a few words of calibration text.").unwrap();
    let s = short.to_str().unwrap();
    let gptq = ["--method", "gptq", "--calib", s, "--calib-tokens", "4096"];
    let mut a = vec!["quantize", "-m", m, "-o", o, "--type", "Q4_0"];
    a.extend(gptq);
    fails(&a, "calibration text has");
    fails(
        &[
            "quantize",
            "-m",
            m,
            "-o",
            "/nonexistent-dir/x.gguf",
            "--type",
            "Q4_0",
        ],
        "cannot write",
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "short.txt")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
