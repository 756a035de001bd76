//! `frugal prune` on the real SmolLM2 model (fetched on first use) and on
//! bad input.

mod common;
mod quantize_common;

use frugal_formats::{FrugalType, GgmlType};
use frugal_model::load::load_source;
use quantize_common::{fails, ok, ppl, smollm2_f32};
use std::path::Path;

/// For every block matrix of `file`: its rows' zero counts, checked by `check`.
fn each_block_row(file: &Path, check: impl Fn(&str, &[f32])) -> usize {
    let (src, _) = load_source(file).unwrap();
    let mut n = 0;
    for t in src.tensors.iter().filter(|t| t.name.starts_with("blk.")) {
        if t.dims.len() < 2 {
            continue;
        }
        let v = frugal_model::tensor_to_f32(t).unwrap();
        for row in v.chunks(t.dims[0]) {
            check(&t.name, row);
        }
        n += 1;
    }
    n
}

/// `frugal prune` of model `m` into `dir/name.gguf`, calibrated on 4,096
/// tokens of wikitext-2 valid, with the options `extra`.
fn prune_into(dir: &Path, m: &str, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let out = dir.join(format!("{name}.gguf"));
    let calib = common::shared().join("data/wikitext-2/valid.txt");
    let mut args = vec![
        "prune",
        "-q",
        "-m",
        m,
        "-o",
        out.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--calib-tokens",
        "4096",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    out
}

fn zeros(x: &[f32]) -> usize {
    x.iter().filter(|&&v| v == 0.0).count()
}

#[test]
fn pruned_rows_keep_their_share_and_calibrated_criteria_beat_magnitude() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = smollm2_f32(dir.path());
    let m = f32_path.to_str().unwrap().to_string();
    let run = |name: &str, extra: &[&str]| prune_into(dir.path(), &m, name, extra);
    let mag = run("mag", &["--method", "magnitude"]);
    let wanda24 = run("wanda24", &["--method", "wanda", "--pattern", "2:4"]);
    let sgpt = run("sgpt", &["--method", "sparsegpt"]);
    let joint = run(
        "joint",
        &["--method", "sparsegpt", "--type", "Q8_0", "--gptq"],
    );
    // The same pruning stored densely and sparsely.
    let dense24 = run(
        "dense24",
        &["--method", "wanda", "--pattern", "2:4", "--type", "Q8_0"],
    );
    let sparse24 = run(
        "sparse24",
        &["--method", "wanda", "--pattern", "2:4", "--type", "sparse"],
    );
    let sparse50 = run(
        "sparse50",
        &["--method", "sparsegpt", "--type", "sparse", "--gptq"],
    );

    // Half of every row is pruned (a weight may also have been zero before).
    for file in [&mag, &sgpt] {
        let extra = std::sync::atomic::AtomicUsize::new(0);
        let n = each_block_row(file, |name, row| {
            assert!(zeros(row) >= row.len() / 2, "{name}");
            extra.fetch_add(
                zeros(row) - row.len() / 2,
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        assert_eq!(n, 30 * 7);
        let extra = extra.into_inner();
        assert!(extra < 100_000, "{extra} zeros beyond half of 106M weights");
    }
    each_block_row(&wanda24, |name, row| {
        for g in row.chunks(4) {
            assert!(zeros(g) >= 2, "{name}: {g:?}");
        }
    });
    // Joint: Q8_0 block matrices, at least half zeros (a kept weight may
    // also round to zero).
    each_block_row(&joint, |name, row| {
        assert!(zeros(row) >= row.len() / 2, "{name}")
    });
    let (src, _) = load_source(&joint).unwrap();
    assert_eq!(
        src.tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    // The embedding is not pruned.
    let (base, _) = load_source(&f32_path).unwrap();
    let (p, _) = load_source(&sgpt).unwrap();
    assert!(
        base.tensor("token_embd.weight").unwrap().bytes()
            == p.tensor("token_embd.weight").unwrap().bytes()
    );

    // Sparse files hold the same weights in less space.
    for (file, ty) in [
        (&sparse24, GgmlType::Frugal(FrugalType::Sparse24Q8)),
        (
            &sparse50,
            GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 }),
        ),
    ] {
        let (src, _) = load_source(file).unwrap();
        assert_eq!(src.tensor("blk.3.attn_q.weight").unwrap().ty, ty);
        let size = std::fs::metadata(file).unwrap().len() as f64;
        let dense = std::fs::metadata(&dense24).unwrap().len() as f64;
        assert!(size < 0.8 * dense, "{ty}: {size} bytes vs Q8_0's {dense}");
    }
    let (d, _) = load_source(&dense24).unwrap();
    let (s, _) = load_source(&sparse24).unwrap();
    for t in d
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2)
    {
        assert_eq!(
            frugal_model::tensor_to_f32(t).unwrap(),
            frugal_model::tensor_to_f32(s.tensor(&t.name).unwrap()).unwrap(),
            "{}",
            t.name
        );
    }
    each_block_row(&sparse50, |name, row| {
        assert!(zeros(row) >= row.len() / 2, "{name}")
    });

    let chunks = "4";
    let (p_base, p_mag, p_wanda24, p_sgpt, p_joint) = (
        ppl(&f32_path, chunks),
        ppl(&mag, chunks),
        ppl(&wanda24, chunks),
        ppl(&sgpt, chunks),
        ppl(&joint, chunks),
    );
    let (p_dense24, p_sparse24, p_sparse50) = (
        ppl(&dense24, chunks),
        ppl(&sparse24, chunks),
        ppl(&sparse50, chunks),
    );
    // Same codes, same integer block sums; only the float summation order
    // differs (which moves this damaged model's ppl by a few tenths of a
    // percent: Q8_0's own AVX2 and AVX-512 kernels differ by 0.1 %).
    assert!(
        (p_sparse24 / p_dense24 - 1.0).abs() < 0.01,
        "{p_sparse24} vs {p_dense24}"
    );
    assert!(
        (p_sparse50 / p_joint - 1.0).abs() < 0.01,
        "{p_sparse50} vs {p_joint}"
    );
    eprintln!("ppl base {p_base:.2} magnitude {p_mag:.2} wanda 2:4 {p_wanda24:.2} sparsegpt {p_sgpt:.2} joint Q8_0 {p_joint:.2}");
    assert!(p_sgpt > p_base, "pruning half the weights costs something");
    assert!(
        p_sgpt < 0.5 * p_mag,
        "SparseGPT {p_sgpt} vs magnitude {p_mag}"
    );
    assert!(
        p_wanda24 < p_mag,
        "Wanda 2:4 {p_wanda24} vs magnitude 50% {p_mag}"
    );
    assert!(
        (p_joint / p_sgpt - 1.0).abs() < 0.03,
        "joint Q8_0 {p_joint} vs f32 SparseGPT {p_sgpt}"
    );
}

#[test]
fn each_block_gets_its_own_sparsity() {
    let dir = tempfile::tempdir().unwrap();
    let m = frugal_fetch::fetch("smollm2-135m").unwrap();
    let out = dir.path().join("blocks.gguf");
    let ratios: Vec<String> = (0..30)
        .map(|i| format!("{}", 0.3 + 0.01 * i as f32))
        .collect();
    let list = ratios.join(",");
    ok(&[
        "prune",
        "-q",
        "-m",
        m.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--method",
        "magnitude",
        "--layer-sparsity",
        &list,
    ]);
    let (src, _) = load_source(&out).unwrap();
    for li in [0usize, 15, 29] {
        let t = src.tensor(&format!("blk.{li}.ffn_up.weight")).unwrap();
        let v = frugal_model::tensor_to_f32(t).unwrap();
        let got = zeros(&v) as f32 / v.len() as f32;
        let want = 0.3 + 0.01 * li as f32;
        // Q4_1's own zeros add a little.
        assert!(
            got >= want - 1e-3 && got < want + 0.01,
            "block {li}: {got} vs {want}"
        );
    }
}

#[test]
fn structured_pruning_shrinks_the_shapes_and_refit_beats_magnitude() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = smollm2_f32(dir.path());
    let m = f32_path.to_str().unwrap().to_string();
    let run = |name: &str, extra: &[&str]| prune_into(dir.path(), &m, name, extra);
    let mag = run("mag", &["--method", "magnitude", "--shrink", "0.2"]);
    let refit = run("refit", &["--method", "sparsegpt", "--shrink", "0.2"]);
    let blocks = run(
        "blocks",
        &["--method", "wanda", "--layers", "3", "--heads", "3"],
    );

    let model = |p: &Path| {
        let (src, _) = load_source(p).unwrap();
        frugal_model::Model::from_source(&src).unwrap().config
    };
    let base = model(&f32_path);
    for p in [&mag, &refit] {
        let c = model(p);
        // 20% of the model is 25% of its blocks: no head of a GQA group of
        // 3 (0.75 rounds down); the FFN gives it all.
        assert_eq!((c.n_layer, c.n_head, c.n_head_kv), (30, 9, 3));
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.n_ff % 32, 0);
        assert!(c.n_ff < base.n_ff);
        // A fifth of the 135 M parameters, of 4 bytes each.
        let (before, after) = (
            std::fs::metadata(&f32_path).unwrap().len() as f64,
            std::fs::metadata(p).unwrap().len() as f64,
        );
        let saved = (before - after) / before;
        assert!((saved - 0.2).abs() < 0.01, "saved {saved} of the file");
    }
    let c = model(&blocks);
    assert_eq!((c.n_layer, c.n_head, c.n_ff), (27, 6, base.n_ff));
    let (src, _) = load_source(&blocks).unwrap();
    let removed = src
        .metadata
        .get("frugal.prune.removed_blocks")
        .and_then(|v| v.as_array())
        .unwrap()
        .len();
    assert_eq!(removed, 3);

    let chunks = "4";
    let (p_base, p_mag, p_refit, p_blocks) = (
        ppl(&f32_path, chunks),
        ppl(&mag, chunks),
        ppl(&refit, chunks),
        ppl(&blocks, chunks),
    );
    eprintln!("ppl base {p_base:.2} magnitude 20% {p_mag:.2} refit 20% {p_refit:.2} 3 blocks + 3 heads {p_blocks:.2}");
    assert!(p_refit > p_base);
    assert!(
        p_refit < 0.2 * p_mag,
        "refit {p_refit} vs magnitude {p_mag}"
    );
    assert!(p_blocks.is_finite() && p_blocks > p_base);
}

/// The zero positions of a matrix's rows.
fn zero_masks(t: &frugal_formats::Tensor) -> Vec<Vec<bool>> {
    let v = frugal_model::tensor_to_f32(t).unwrap();
    v.chunks(t.dims[0])
        .map(|r| r.iter().map(|&x| x == 0.0).collect())
        .collect()
}

/// `--prune-output` on SmolLM2, whose output matrix is its token embedding:
/// the pruned copy becomes a separate `output.weight` (sparse with `--type
/// sparse`), the embedding stays whole in the type it had, Wanda's scores
/// choose other weights than magnitude's, and the model pays for the pruned
/// head in perplexity.
#[test]
fn the_output_matrix_is_pruned_apart_from_a_tied_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let q41 = frugal_fetch::fetch("smollm2-135m").unwrap();
    let m = q41.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let mut args = extra.to_vec();
        args.push("--prune-output");
        prune_into(dir.path(), m, name, &args)
    };
    let plain = prune_into(
        dir.path(),
        m,
        "plain",
        &["--method", "wanda", "--type", "sparse"],
    );
    let head = run("head", &["--method", "wanda", "--type", "sparse"]);
    let mag = run("mag", &["--method", "magnitude", "--type", "sparse"]);
    let q4k = run("q4k", &["--method", "magnitude", "--type", "Q4_K"]);
    // Joint SparseGPT + GPTQ, with an output type no method rounds into.
    let joint = run(
        "joint",
        &[
            "--method",
            "sparsegpt",
            "--gptq",
            "--type",
            "Q8_0",
            "--output-type",
            "F16",
        ],
    );

    let (p, _) = load_source(&plain).unwrap();
    let (h, _) = load_source(&head).unwrap();
    assert!(p.tensor("output.weight").is_none(), "tied stays tied");
    let embd = h.tensor("token_embd.weight").unwrap();
    let out = h.tensor("output.weight").expect("a separate output matrix");
    assert_eq!(out.ty, GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 }));
    assert_eq!(out.dims, embd.dims);
    // The embedding's lookups keep every weight: the same bytes as without.
    assert!(embd.bytes() == p.tensor("token_embd.weight").unwrap().bytes());
    // Every output row keeps at most half its weights, each the embedding's
    // own within one Q8_0 step (Wanda moves no weight; a block whose
    // largest weight was pruned gets a finer scale).
    let (e, o) = (
        frugal_model::tensor_to_f32(embd).unwrap(),
        frugal_model::tensor_to_f32(out).unwrap(),
    );
    let cols = embd.dims[0];
    for (r, (er, or)) in e.chunks(cols).zip(o.chunks(cols)).enumerate() {
        assert!(zeros(or) >= cols / 2, "row {r}: {} zeros", zeros(or));
        for (eb, ob) in er.chunks(32).zip(or.chunks(32)) {
            let step = eb.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in eb.iter().zip(ob) {
                assert!(
                    *b == 0.0 || (a - b).abs() <= step * 1.01 + 1e-7,
                    "row {r}: kept {b} for the embedding's {a}"
                );
            }
        }
    }
    // Wanda scores on the head's real inputs: its choice differs from
    // magnitude's in most rows.
    let (mg, _) = load_source(&mag).unwrap();
    let (wm, mm) = (
        zero_masks(out),
        zero_masks(mg.tensor("output.weight").unwrap()),
    );
    let differ = wm.iter().zip(&mm).filter(|(a, b)| a != b).count();
    assert!(
        differ > wm.len() / 2,
        "{differ} of {} rows differ",
        wm.len()
    );
    // The block matrices are pruned as before.
    for name in ["blk.0.attn_q.weight", "blk.29.ffn_down.weight"] {
        assert!(h.tensor(name).unwrap().bytes() == p.tensor(name).unwrap().bytes());
    }
    assert_eq!(h.metadata.get_bool("frugal.prune.output").ok(), Some(true));
    // A dense quantized type: the embedding keeps the type a tied output
    // matrix gets (Q6_K, which falls back to Q8_0 for 576-wide rows), not the
    // blocks' (Q4_K, falling back to Q5_0); the pruned head takes it too.
    let (q, _) = load_source(&q4k).unwrap();
    assert_eq!(q.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q5_0);
    assert_eq!(q.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    let qo = q.tensor("output.weight").unwrap();
    assert_eq!(qo.ty, GgmlType::Q8_0);
    assert!(zero_masks(qo)
        .iter()
        .all(|r| r.iter().filter(|&&z| z).count() >= cols / 2));
    // With SparseGPT inside GPTQ, an F16 head is pruned all the same.
    let (j, _) = load_source(&joint).unwrap();
    let jo = j.tensor("output.weight").unwrap();
    assert_eq!(jo.ty, GgmlType::F16);
    assert!(zero_masks(jo)
        .iter()
        .all(|r| r.iter().filter(|&&z| z).count() >= cols / 2));

    let (pp, ph) = (ppl(&plain, "4"), ppl(&head, "4"));
    eprintln!("ppl: blocks pruned {pp:.2}, output matrix too {ph:.2}");
    assert!(
        ph > pp * 1.01,
        "{ph} vs {pp}: pruning the head costs something"
    );
    assert!(
        ph < pp * 3.0,
        "{ph} vs {pp}: a Wanda-pruned head still works"
    );
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
    let base = ["prune", "-m", m, "-o", o, "--method", "magnitude"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    fails(&with(&["--sparsity", "0"]), "must be in (0, 1)");
    fails(&with(&["--sparsity", "1.5"]), "must be in (0, 1)");
    fails(&with(&["--pattern", "4:4"]), "0 < N < M");
    fails(&with(&["--pattern", "0.5"]), "give N:M");
    // 576-wide rows do not split into groups of 5.
    fails(&with(&["--pattern", "2:5"]), "does not divide rows of 576");
    fails(&with(&["--type", "F16", "--gptq"]), "quantized --type");
    fails(&with(&["--type", "Q9_9"]), "unknown type");
    fails(
        &["prune", "-m", m, "-o", o, "--method", "wanda"],
        "needs calibration text",
    );
    fails(
        &with(&["--layer-sparsity", "0.5,0.5"]),
        "2 fractions for the model's 30 blocks",
    );
    fails(&with(&["--layer-sparsity", "1.5"]), "must be in (0, 1)");
    fails(&with(&["--owl"]), "--owl needs calibration text");
    fails(&with(&["--owl", "--pattern", "2:4"]), "cannot be used with");
    // Structured: SmolLM2 has 9 query heads per block in 3 GQA groups, 30 blocks.
    fails(&with(&["--heads", "9"]), "the model has 9");
    fails(&with(&["--heads", "12"]), "the model has 9");
    fails(&with(&["--heads", "2"]), "multiple of 3");
    fails(&with(&["--shrink", "1.5"]), "(0, 1)");
    fails(
        &with(&["--shrink", "0.2", "--prune-output"]),
        "cannot be used with",
    );
    fails(
        &with(&["--layer-sparsity", "0.5", "--prune-output"]),
        "cannot be used with",
    );
    fails(&with(&["--ffn", "0"]), "(0, 1)");
    fails(&with(&["--shrink", "0.2", "--type", "Q8_0"]), "float model");
    fails(&with(&["--layers", "2"]), "needs calibration text");
    fails(
        &["prune", "-m", m, "-o", o, "--layers", "30", "--calib", c],
        "the model has 30",
    );
    fails(
        &with(&["--shrink", "0.2", "--pattern", "2:4"]),
        "cannot be used with",
    );
    fails(
        &[
            "prune",
            "-m",
            m,
            "-o",
            o,
            "--method",
            "sparsegpt",
            "--calib",
            c,
            "--calib-tokens",
            "100000000",
        ],
        "calibration text has",
    );
    fails(
        &[
            "prune",
            "-m",
            m,
            "-o",
            "/nonexistent-dir/x.gguf",
            "--method",
            "magnitude",
        ],
        "cannot write",
    );
    assert!(!out.exists(), "a failed run left {o}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed run left files: {left:?}");
}
