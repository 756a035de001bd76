//! The calibration pass must compute what the model computes: with no
//! matrix replaced, its hidden states match the inference forward pass, and
//! the output matrix's input statistics are those of its final-normed states.

use frugal_compress::calib::{Calibration, LayerF32, LayerPass};
use frugal_model::{load, rms_norm, Logits};
use std::path::PathBuf;

fn shared() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        dir.join("models/stories260K/stories260K.bin").exists(),
        "test material missing: expected ../shared/models/stories260K beside the checkout (see the README)"
    );
    dir
}

#[test]
fn layer_pass_matches_the_forward_pass() {
    let dir = shared().join("models/stories260K");
    let lm = load(&dir.join("stories260K.bin"), Some(&dir.join("tok512.bin"))).unwrap();
    let m = &lm.model;
    let seqs = vec![
        vec![1u32, 403, 407, 261, 378, 300, 270, 290, 284, 1, 5, 9],
        vec![1u32, 17, 33, 35, 200, 201],
        // Longer than one block of query rows in the attention.
        std::iter::once(1u32)
            .chain((0..149u32).map(|i| 2 + i * 37 % 500))
            .collect(),
    ];
    let n_tok: usize = seqs.iter().map(|s| s.len()).sum();
    let calib = Calibration { seqs: seqs.clone() };
    let mut pass = LayerPass::new(m, &calib).unwrap();
    for (li, l) in m.weights.layers.iter().enumerate() {
        let mut w = LayerF32::of(l).unwrap();
        let mut sites = Vec::new();
        pass.run_layer(li, &mut w, &mut |site, st, _| {
            assert!(st.tokens == n_tok, "statistics over every token");
            let n = st.cols;
            for i in 0..n {
                let sq = st.xtx[i * n + i];
                assert!(
                    sq >= st.absmax[i] * st.absmax[i] * 0.999,
                    "diagonal {sq} vs max"
                );
                assert!(st.absmax[i] > 0.0);
                for j in 0..i {
                    assert_eq!(st.xtx[i * n + j], st.xtx[j * n + i], "xᵀx is symmetric");
                }
            }
            sites.push(site);
            Ok(())
        })
        .unwrap();
        assert_eq!(sites.len(), 4);
    }
    let d = m.config.n_embd;
    let mut at = 0;
    // xᵀx of the forward pass's final-normed hidden states: what the output
    // matrix's statistics must hold.
    let mut xtx = vec![0.0f64; d * d];
    for s in &seqs {
        let mut kv = m.new_cache(256).unwrap();
        let mut st = m.new_state(s.len(), true);
        let want = m
            .forward_hidden(s, &mut kv, &mut st, Logits::All)
            .unwrap()
            .to_vec();
        let mut got = vec![0.0f32; s.len() * d];
        rms_norm(
            &pass.hidden()[at * d..(at + s.len()) * d],
            &m.weights.output_norm,
            m.config.rms_eps,
            &mut got,
        );
        let max = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-3, "hidden states differ by {max}");
        for h in want.chunks(d) {
            for i in 0..d {
                for j in 0..d {
                    xtx[i * d + j] += h[i] as f64 * h[j] as f64;
                }
            }
        }
        at += s.len();
    }
    let out = pass.output_stats();
    assert_eq!((out.cols, out.tokens), (d, n_tok));
    let scale = xtx.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = xtx
        .iter()
        .zip(&out.xtx)
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst < 1e-3 * scale,
        "output statistics off by {worst} (largest entry {scale})"
    );
}
