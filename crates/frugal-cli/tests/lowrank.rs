//! `frugal lowrank` on the real SmolLM2 model (fetched on first use) and on
//! bad input.

mod common;
mod quantize_common;

use frugal_formats::{GgmlType, ModelSource};
use frugal_model::load::load_source;
use quantize_common::{fails, ok, ppl, smollm2_f32};

/// Weights of the block matrices (dense or factors) of a model.
fn block_params(src: &ModelSource) -> usize {
    src.tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2)
        .map(|t| t.n_elements())
        .sum()
}

#[test]
fn factored_models_load_shrink_and_whitening_beats_plain_svd() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = smollm2_f32(dir.path());
    let (m, calib) = (
        f32_path.to_str().unwrap().to_string(),
        common::shared().join("data/wikitext-2/valid.txt"),
    );
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.gguf"));
        let mut args = vec![
            "lowrank",
            "-q",
            "-m",
            &m,
            "-o",
            out.to_str().unwrap(),
            "--calib",
            calib.to_str().unwrap(),
            "--calib-tokens",
            "2048",
        ];
        args.extend_from_slice(extra);
        ok(&args);
        out
    };
    let svd = run("svd20", &["--method", "svd", "--ratio", "0.2"]);
    let white = run("white20", &["--ratio", "0.2"]);
    let q8 = run(
        "q8-energy",
        &["--energy", "0.8", "--type", "Q8_0", "--only", "q,k,v"],
    );

    let (base, _) = load_source(&f32_path).unwrap();
    for file in [&svd, &white] {
        let (src, _) = load_source(file).unwrap();
        // Every block matrix is two factors with a rank of whole blocks.
        for li in 0..30 {
            for kind in frugal_compress::lowrank::pipeline::KINDS {
                let name = format!("blk.{li}.{kind}.weight");
                assert!(src.tensor(&name).is_none(), "{name} still dense");
                let (a, b) = frugal_model::factor_names(&name);
                let (a, b) = (src.tensor(&a).unwrap(), src.tensor(&b).unwrap());
                assert_eq!(a.ty, GgmlType::F32);
                assert_eq!(a.n_rows(), b.row_len(), "{name}");
                assert_eq!(a.n_rows() % 32, 0, "{name}");
            }
        }
        // A fifth of the block weights are gone (within one rank step).
        let cut = 1.0 - block_params(&src) as f64 / block_params(&base) as f64;
        assert!((cut - 0.2).abs() < 0.01, "{cut}");
        assert_eq!(
            src.metadata.get_str("frugal.lowrank.target").unwrap(),
            "ratio 0.2"
        );
        // Whole file: embedding and output are untouched.
        let size = std::fs::metadata(file).unwrap().len() as f64;
        let full = std::fs::metadata(&f32_path).unwrap().len() as f64;
        let blocks = 4.0 * block_params(&base) as f64;
        assert!(
            (full - size - 0.2 * blocks).abs() < 0.01 * blocks,
            "{size} vs {full}"
        );
        assert!(
            base.tensor("token_embd.weight").unwrap().bytes()
                == src.tensor("token_embd.weight").unwrap().bytes()
        );
    }
    // Energy on Q, K, V only, in Q8_0: the other matrices stay dense (Q8_0).
    let (src, _) = load_source(&q8).unwrap();
    assert_eq!(
        src.tensor("blk.5.ffn_up.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    assert_eq!(
        src.tensor("blk.5.attn_q_a.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    assert!(src.tensor("blk.5.attn_q.weight").is_none());
    // A quantized --type rounds the (tied) output matrix too, as quantize does.
    assert_eq!(src.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);

    let chunks = "4";
    let (p_base, p_svd, p_white, p_q8) = (
        ppl(&f32_path, chunks),
        ppl(&svd, chunks),
        ppl(&white, chunks),
        ppl(&q8, chunks),
    );
    eprintln!("ppl base {p_base:.2} svd {p_svd:.2} whitened {p_white:.2} q8 energy {p_q8:.2}");
    assert!(p_white > p_base, "a fifth of the weights costs something");
    assert!(
        p_white < 0.1 * p_svd,
        "whitened {p_white} vs plain SVD {p_svd}"
    );
    assert!(p_q8.is_finite() && p_q8 > p_base);

    // A factored model is refused by the pipelines that want dense matrices.
    let o = dir.path().join("again.gguf");
    let o = o.to_str().unwrap();
    let w = white.to_str().unwrap();
    fails(
        &[
            "lowrank", "-m", w, "-o", o, "--method", "svd", "--ratio", "0.2",
        ],
        "low-rank factors",
    );
    fails(
        &["quantize", "-m", w, "-o", o, "--type", "Q8_0"],
        "low-rank factors",
    );
    assert!(!std::path::Path::new(o).exists());
}

#[test]
fn bad_input_gets_a_clear_error_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let q41 = frugal_fetch::fetch("smollm2-135m").unwrap();
    let m = q41.to_str().unwrap();
    let out = dir.path().join("out.gguf");
    let o = out.to_str().unwrap();
    let calib = common::shared().join("data/wikitext-2/valid.txt");
    let c = calib.to_str().unwrap();
    let base = ["lowrank", "-m", m, "-o", o, "--method", "svd"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    fails(&with(&["--ratio", "0"]), "fraction in (0, 1)");
    fails(&with(&["--ratio", "1.5"]), "fraction in (0, 1)");
    fails(&with(&["--energy", "1"]), "fraction in (0, 1)");
    fails(
        &with(&["--ratio", "0.2", "--energy", "0.9"]),
        "cannot be used",
    );
    fails(&with(&[]), "--ratio");
    fails(&with(&["--ratio", "0.2", "--type", "Q9_9"]), "unknown type");
    fails(&with(&["--ratio", "0.2", "--only", "q,x"]), "--only x");
    fails(&with(&["--ratio", "0.2", "--damp", "1.5"]), "--damp 1.5");
    fails(
        &["lowrank", "-m", m, "-o", o, "--ratio", "0.2"],
        "needs calibration text",
    );
    fails(
        &[
            "lowrank",
            "-m",
            m,
            "-o",
            o,
            "--ratio",
            "0.2",
            "--calib",
            c,
            "--calib-tokens",
            "100000000",
        ],
        "calibration text has",
    );
    fails(
        &[
            "lowrank",
            "-m",
            m,
            "-o",
            "/nonexistent-dir/x.gguf",
            "--method",
            "svd",
            "--ratio",
            "0.2",
        ],
        "cannot write",
    );
    assert!(!out.exists(), "a failed run left {o}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed run left files: {left:?}");
}
