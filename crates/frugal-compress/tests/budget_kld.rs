//! The KLD weighting of `--budget-bpw`: each matrix's reference error must
//! become the KL divergence of the model's output with that matrix alone
//! rounded, computed here the slow way (the statistics pass with the matrix
//! swapped in, and a float64 softmax), and the plain block pass it forks
//! must compute what the statistics pass computes.

use frugal_compress::calib::{linear, Calibration, LayerF32, LayerPass};
use frugal_compress::quant::budget::{weigh_by_kld, Sensitivity, KLD_GROUP_TOKENS};
use frugal_formats::GgmlType;
use frugal_model::{load, rms_norm, tensor_to_f32, LoadedModel, Model};
use std::path::PathBuf;

fn stories() -> LoadedModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/stories260K");
    assert!(
        dir.join("stories260K.bin").exists(),
        "test material missing: expected ../shared/models/stories260K beside the checkout (see the README)"
    );
    load(&dir.join("stories260K.bin"), Some(&dir.join("tok512.bin"))).unwrap()
}

/// 640 tokens in three sequences: more than one group of
/// `KLD_GROUP_TOKENS`, so the weighting must add its groups up.
fn calibration() -> Calibration {
    let calib = Calibration {
        seqs: vec![
            std::iter::once(1u32)
                .chain((0..255u32).map(|i| 2 + i * 37 % 500))
                .collect(),
            std::iter::once(1u32)
                .chain((0..191u32).map(|i| 3 + i * 101 % 480))
                .collect(),
            std::iter::once(1u32)
                .chain((0..191u32).map(|i| 5 + i * 53 % 490))
                .collect(),
        ],
    };
    assert_eq!(calib.groups(KLD_GROUP_TOKENS).len(), 2);
    calib
}

const NAMES: [&str; 7] = frugal_model::BLOCK_MATRIX_NAMES;

fn slot(w: &mut LayerF32, k: usize) -> &mut Vec<f32> {
    [
        &mut w.wq,
        &mut w.wk,
        &mut w.wv,
        &mut w.wo,
        &mut w.w_gate,
        &mut w.w_up,
        &mut w.w_down,
    ]
    .into_iter()
    .nth(k)
    .unwrap()
}

/// Next-token log-probabilities (float64) of a final residual stream.
fn log_probs(m: &Model, x: &[f32]) -> Vec<Vec<f64>> {
    let (d, vocab) = (m.config.n_embd, m.config.n_vocab);
    let n = x.len() / d;
    let mut xn = vec![0.0f32; n * d];
    rms_norm(x, &m.weights.output_norm, m.config.rms_eps, &mut xn);
    let out = tensor_to_f32(&m.weights.output).unwrap();
    let z = linear(&xn, n, &out, vocab, None);
    z.chunks_exact(vocab)
        .map(|row| {
            let max = row.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row.iter().map(|&v| v as f64 - lse).collect()
        })
        .collect()
}

/// The final residual stream with matrix `k` of block `at` replaced by
/// `swap` (none: the float model), through the statistics pass.
fn stream(lm: &LoadedModel, calib: &Calibration, swap: Option<(usize, usize, &[f32])>) -> Vec<f32> {
    let m = &lm.model;
    let mut pass = LayerPass::new(m, calib).unwrap();
    for (li, l) in m.weights.layers.iter().enumerate() {
        let mut w = LayerF32::of(l).unwrap();
        if let Some((at, k, q)) = swap {
            if at == li {
                *slot(&mut w, k) = q.to_vec();
            }
        }
        pass.run_layer(li, &mut w, &mut |_, _, _| Ok(())).unwrap();
    }
    pass.hidden().to_vec()
}

#[test]
fn plain_block_pass_matches_the_statistics_pass() {
    let lm = stories();
    let m = &lm.model;
    let calib = calibration();
    let mut a = LayerPass::new(m, &calib).unwrap();
    for (li, l) in m.weights.layers.iter().enumerate() {
        let mut w = LayerF32::of(l).unwrap();
        // A fork taken before the block must advance as the original does.
        let mut b = a.clone();
        a.run_layer(li, &mut w, &mut |_, _, _| Ok(())).unwrap();
        b.run_layer_plain(li, &w);
        let max = a
            .hidden()
            .iter()
            .zip(b.hidden())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-5, "block {li}: streams differ by {max}");
        a = b;
    }
}

#[test]
fn kld_weights_are_the_output_divergence_of_each_matrix_alone() {
    let lm = stories();
    let m = &lm.model;
    let calib = calibration();
    // Rows of 64 values take a per-row 4-bit type, the reference (the
    // largest option of at most 4.5 bits per weight), between a cheaper
    // 3-bit one and an 8-bit one. Down's rows of 172 fit no quantized type:
    // it is left out, and the weighting must skip it.
    let q3 = GgmlType::from_name("FQ3a_row").unwrap();
    let q4 = GgmlType::from_name("FQ4a_row").unwrap();
    let q8 = GgmlType::from_name("FQ8a_row").unwrap();
    // One matrix whose reference rounds without error cannot be measured
    // against it: it must get the median of the others' scales.
    let unmeasured = "blk.0.attn_q.weight";
    let mut sens = Vec::new();
    for li in 0..m.config.n_layer {
        for short in &NAMES[..6] {
            let name = format!("blk.{li}.{short}.weight");
            let t = lm.source.tensor(&name).unwrap();
            let (cols, rows) = (t.dims[0] as u64, t.dims[1] as u64);
            let bytes = |ty: GgmlType| (ty.row_bytes(cols).unwrap() * rows) as usize;
            let options = if name == unmeasured {
                vec![
                    (q3, bytes(q3), 6.0),
                    (q4, bytes(q4), 0.0),
                    (q8, bytes(q8), 0.0),
                ]
            } else {
                vec![
                    (q3, bytes(q3), 6.0),
                    (q4, bytes(q4), 2.0),
                    (q8, bytes(q8), 0.5),
                ]
            };
            sens.push(Sensitivity {
                name,
                elements: (rows * cols) as usize,
                // Arbitrary proxies: the weighting rescales them.
                options,
            });
        }
    }
    let before = sens.clone();
    weigh_by_kld(&lm.source, m, &calib, &mut sens, &mut |_, _, _| {}).unwrap();

    let base = log_probs(m, &stream(&lm, &calib, None));
    let mut klds = Vec::new();
    let mut scales = Vec::new();
    for (li, l) in m.weights.layers.iter().enumerate() {
        let mut w = LayerF32::of(l).unwrap();
        for (k, short) in NAMES[..6].iter().enumerate() {
            let name = format!("blk.{li}.{short}.weight");
            if name == unmeasured {
                continue;
            }
            let i = sens.iter().position(|s| s.name == name).unwrap();
            let ref4 = sens[i].options.iter().position(|o| o.0 == q4).unwrap();
            // The matrix rounded to the reference type, as the weighting does.
            let cols = lm.source.tensor(&name).unwrap().dims[0];
            let float = slot(&mut w, k).clone();
            let rows = float.len() / cols;
            let mut back = vec![0.0f32; rows * cols];
            let fmt = frugal_compress::quant::TypeFormat::new(q4).ok().unwrap();
            use frugal_compress::quant::Method;
            let bytes = frugal_compress::quant::Rtn
                .quantize(&float, rows, cols, &fmt, None)
                .unwrap();
            frugal_kernels::dequantize_rows(q4, &bytes, &mut back, cols).unwrap();
            let lq = log_probs(m, &stream(&lm, &calib, Some((li, k, &back))));
            let kld: f64 = base
                .iter()
                .zip(&lq)
                .map(|(p, q)| p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum::<f64>())
                .sum::<f64>()
                / base.len() as f64;
            let got = sens[i].options[ref4].2;
            assert!(kld > 0.0, "{name}: rounding changed nothing");
            assert!(
                (got - kld).abs() <= 2e-3 * kld + 1e-9,
                "{name}: weight {got:.6e} against the divergence {kld:.6e}"
            );
            // Every option of the matrix is scaled alike.
            let c = got / before[i].options[ref4].2;
            for (o, b) in sens[i].options.iter().zip(&before[i].options) {
                assert!((o.2 - c * b.2).abs() <= 1e-9 * o.2.abs().max(1e-30));
            }
            klds.push(kld);
            scales.push(c);
        }
    }
    scales.sort_by(f64::total_cmp);
    let median = scales[scales.len() / 2];
    let i = sens.iter().position(|s| s.name == unmeasured).unwrap();
    let got = sens[i].options[0].2 / before[i].options[0].2;
    assert!(
        (got - median).abs() <= 1e-9 * median,
        "{unmeasured}: scale {got:.6e}, the others' median {median:.6e}"
    );
    // The point of measuring: the matrices differ in how much they matter.
    let (lo, hi) = klds
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &k| (a.min(k), b.max(k)));
    assert!(hi > 5.0 * lo, "divergences {lo:.3e}..{hi:.3e}");
}

#[test]
fn calibration_groups_keep_order_and_bound_their_tokens() {
    let seq = |n: usize, first: u32| (first..first + n as u32).collect::<Vec<u32>>();
    let calib = Calibration {
        seqs: vec![seq(300, 0), seq(200, 1000), seq(700, 2000), seq(10, 3000)],
    };
    let groups = calib.groups(512);
    let lens: Vec<Vec<usize>> = groups
        .iter()
        .map(|g| g.seqs.iter().map(|s| s.len()).collect())
        .collect();
    // 300 + 200 fit; 700 is longer than a group and stands alone; 10 follows.
    assert_eq!(lens, vec![vec![300, 200], vec![700], vec![10]]);
    let flat: Vec<&Vec<u32>> = groups.iter().flat_map(|g| &g.seqs).collect();
    assert_eq!(flat, calib.seqs.iter().collect::<Vec<_>>());
    assert!(Calibration { seqs: vec![] }.groups(512).is_empty());
}
