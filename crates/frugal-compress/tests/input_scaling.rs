//! Per-channel input scaling (AWQ, SmoothQuant) on stories260K: folding the
//! scales must leave the float model's output unchanged, AWQ's search must
//! never lose to plain rounding, and SmoothQuant must even out the
//! activation maxima. (Whole files: `frugal-cli/tests/quantize_scales.rs`.)

use frugal_compress::calib::{Calibration, LayerF32, LayerNorms, LayerPass, Site, Stage};
use frugal_compress::quant::scales::{self, Scaling, SiteMatrix};
use frugal_compress::quant::{Format, InputStats, TypeFormat};
use frugal_formats::{FrugalType, GgmlType};
use frugal_model::load::load_source;
use frugal_model::{Layer, Model};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

fn stories() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/stories260K");
    assert!(
        dir.join("stories260K.bin").exists(),
        "test material missing: expected ../shared/models/stories260K beside the checkout (see the README)"
    );
    dir.join("stories260K.bin")
}

fn calibration(n_seq: usize, len: usize, seed: u64) -> Calibration {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Calibration {
        seqs: (0..n_seq)
            .map(|_| {
                std::iter::once(1u32)
                    .chain((1..len).map(|_| rng.gen_range(3u32..512)))
                    .collect()
            })
            .collect(),
    }
}

fn layer_f32(l: &Layer) -> LayerF32 {
    LayerF32::of(l).unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
        / scale
}

/// Scales over two decades, random per channel.
fn random_scales(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| 10f32.powf(rng.gen_range(-1.0f32..1.0)))
        .collect()
}

#[test]
fn folded_scales_leave_the_float_model_unchanged() {
    let (src, _) = load_source(&stories()).unwrap();
    let m = Model::from_source(&src).unwrap();
    assert_ne!(m.config.n_head, m.config.n_head_kv, "stories260K uses GQA");
    let calib = calibration(3, 70, 1);
    let mut plain = LayerPass::new(&m, &calib).unwrap();
    let mut scaled = LayerPass::new(&m, &calib).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for (li, l) in m.weights.layers.iter().enumerate() {
        plain
            .run_layer(li, &mut layer_f32(l), &mut |_, _, _| Ok(()))
            .unwrap();
        let mut w = layer_f32(l);
        let mut norms = LayerNorms::of(l);
        let mut seen = Vec::new();
        let mut down_preview: Option<(InputStats, Vec<f32>)> = None;
        scaled
            .run_layer_with(
                li,
                &mut w,
                &mut norms,
                &[Site::AttnOut, Site::Down],
                &mut |stage, st, w, norms| {
                    seen.push(stage);
                    match stage {
                        Stage::Use(Site::Qkv) | Stage::Use(Site::GateUp) => {
                            let Stage::Use(site) = stage else {
                                unreachable!()
                            };
                            let s = random_scales(&mut rng, st.cols);
                            scales::fold(site, &s, w, norms)?;
                        }
                        Stage::Preview(Site::Down) => {
                            let s = random_scales(&mut rng, st.cols);
                            scales::fold(Site::Down, &s, w, norms)?;
                            down_preview = Some((scales::scaled_stats(st, &s), s));
                        }
                        Stage::Use(Site::Down) => {
                            // The inputs down really gets are the previewed
                            // ones divided by the scales folded into up.
                            let (want, _) = down_preview.as_ref().expect("a preview came first");
                            let n = st.cols;
                            for j in 0..n {
                                let (a, b) = (st.xtx[j * n + j], want.xtx[j * n + j]);
                                assert!((a - b).abs() <= 1e-3 * b.abs() + 1e-6, "{a} vs {b}");
                                let (a, b) = (st.absmax[j], want.absmax[j]);
                                assert!((a - b).abs() <= 1e-3 * b.abs() + 1e-6, "{a} vs {b}");
                            }
                        }
                        Stage::Preview(Site::AttnOut) => {
                            // With GQA, V's rows are not O's columns: no fold.
                            let s = random_scales(&mut rng, st.cols);
                            assert!(scales::fold(Site::AttnOut, &s, w, norms).is_err());
                        }
                        _ => {}
                    }
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(
            seen,
            [
                Stage::Preview(Site::AttnOut),
                Stage::Use(Site::Qkv),
                Stage::Use(Site::AttnOut),
                Stage::Preview(Site::Down),
                Stage::Use(Site::GateUp),
                Stage::Use(Site::Down),
            ]
        );
        assert_ne!(norms, LayerNorms::of(l), "the norms took the scales");
    }
    let diff = max_rel_diff(plain.hidden(), scaled.hidden());
    assert!(diff < 1e-4, "hidden states differ by {diff} of their range");
}

/// The matrices of block `w` that read `site`'s inputs.
fn site_matrices(site: Site, w: &LayerF32) -> Vec<&[f32]> {
    match site {
        Site::Qkv => vec![&w.wq, &w.wk, &w.wv],
        Site::AttnOut => vec![&w.wo],
        Site::GateUp => vec![&w.w_gate, &w.w_up],
        Site::Down => vec![&w.w_down],
    }
}

/// max / min of a vector.
fn spread(v: &[f32]) -> f32 {
    let hi = v.iter().copied().fold(0.0f32, f32::max);
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    hi / lo
}

#[test]
fn awq_never_loses_to_rounding_on_real_activations_and_smoothquant_evens_them() {
    let (src, _) = load_source(&stories()).unwrap();
    let m = Model::from_source(&src).unwrap();
    let calib = calibration(4, 128, 3);
    let mut pass = LayerPass::new(&m, &calib).unwrap();
    // 3 bits, one scale per row: where the choice of scales matters most.
    let fq3 = TypeFormat::new(GgmlType::Frugal(FrugalType::Affine {
        bits: 3,
        group: 0,
        sym: false,
    }))
    .unwrap();
    let (mut loss, mut base, mut awq_sites) = (0.0f64, 0.0f64, 0);
    let mut spreads = Vec::new();
    for (li, l) in m.weights.layers.iter().enumerate() {
        let mut w = layer_f32(l);
        pass.run_layer(li, &mut w, &mut |site, st, w| {
            let sm: Vec<SiteMatrix> = site_matrices(site, w)
                .into_iter()
                .map(|w| SiteMatrix {
                    w,
                    rows: w.len() / st.cols,
                    fmt: &fq3 as &dyn Format,
                })
                .collect();
            // SmoothQuant on the sites the pipeline smooths with GQA (all but O).
            if site != Site::AttnOut {
                let sq = scales::choose(&Scaling::SmoothQuant { alpha: 0.5 }, st, &sm)?.unwrap();
                let after = scales::scaled_stats(st, &sq.s).absmax;
                spreads.push((li, site, spread(&st.absmax), spread(&after)));
            }
            // AWQ where a format fits the rows (not down's 172 inputs).
            if st.cols % 32 != 0 {
                return Ok(());
            }
            let c = scales::choose(&Scaling::awq(), st, &sm)?.unwrap();
            let (l1, l0) = c.loss.unwrap();
            assert!(l1 <= l0, "block {li} {site:?}: AWQ {l1} > RTN {l0}");
            // The α = 0 candidate is rounding to nearest itself.
            let t = st.tokens as f32;
            let h: Vec<f32> = st.xtx.iter().map(|v| v / t).collect();
            let ones = vec![1.0; st.cols];
            let rtn: f64 = sm
                .iter()
                .map(|m| scales::rounding_loss(m, &ones, &h).unwrap())
                .sum();
            assert_eq!(rtn, l0);
            loss += l1;
            base += l0;
            awq_sites += 1;
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(awq_sites, 3 * m.config.n_layer);
    assert!(loss < 0.9 * base, "AWQ {loss} vs RTN {base} over the model");
    assert_eq!(spreads.len(), 3 * m.config.n_layer);
    for (li, site, before, after) in spreads {
        assert!(
            after < before,
            "block {li} {site:?}: SmoothQuant spread {before} -> {after}"
        );
    }
}
