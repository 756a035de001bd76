use super::*;
use crate::testutil::{inputs, stats_of, value_error, weights};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A `rows × cols` matrix of rank exactly `r`.
fn rank_r(rows: usize, cols: usize, r: usize, seed: u64) -> Vec<f32> {
    let b = weights(rows, r, seed);
    let a = weights(r, cols, seed + 1);
    product(&b, &a, rows, r, cols)
}

#[test]
fn svd_of_an_exactly_low_rank_matrix_is_exact() {
    let (rows, cols, r) = (48, 80, 32);
    let w = rank_r(rows, cols, r, 1);
    let d = Decomposed::new(&w, rows, cols, None).unwrap();
    let s = d.singular_values();
    assert!(
        s[r - 1] > 1e-3 && s[r] < 1e-5 * s[0],
        "{:?}",
        &s[r - 1..r + 1]
    );
    let f = d.factors(r, None);
    assert_eq!((f.a.len(), f.b.len()), (r * cols, rows * r));
    let err = max_abs_diff(&f.product(rows, cols), &w);
    assert!(err < 1e-4, "{err}");
    // A smaller rank is not exact, and its error is the dropped energy.
    let f = d.factors(16, None);
    let e2: f64 = f
        .product(rows, cols)
        .iter()
        .zip(&w)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let want = d.dropped_energy(16);
    assert!((e2 - want).abs() < 1e-3 * want, "{e2} vs {want}");
}

#[test]
fn whitened_svd_leaves_the_least_output_error() {
    let (rows, cols, r, n) = (40, 64, 16, 600);
    let x = inputs(n, cols, 3);
    let st = stats_of(&x, cols);
    let w = weights(rows, cols, 4);
    let plain = Decomposed::new(&w, rows, cols, None)
        .unwrap()
        .factors(r, None);
    let ws = Whitening::new(&st, 0.0).unwrap();
    assert_eq!(ws.damp, 0.0);
    let d = Decomposed::new(&w, rows, cols, Some(&ws)).unwrap();
    let white = d.factors(r, Some(&ws));
    let e_plain = value_error(&x, &w, &plain.product(rows, cols), cols);
    let e_white = value_error(&x, &w, &white.product(rows, cols), cols);
    assert!(
        e_white < 0.5 * e_plain,
        "whitened {e_white} vs plain {e_plain}"
    );
    // The output error is the dropped energy of W·S (S from XᵀX/n): the
    // optimum of Eckart–Young, which no other rank-r matrix beats.
    let want = d.dropped_energy(r) * n as f64;
    assert!((e_white - want).abs() < 1e-2 * want, "{e_white} vs {want}");
    // And the weights themselves are further from W than plain SVD's.
    let frob = |f: &Factors| -> f64 {
        f.product(rows, cols)
            .iter()
            .zip(&w)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum()
    };
    assert!(frob(&white) > frob(&plain));
}

#[test]
fn singular_inputs_are_damped() {
    // Two identical channels and one dead one: XᵀX is singular.
    let (cols, n) = (32, 200);
    let mut x = inputs(n, cols, 5);
    for t in 0..n {
        x[t * cols + 1] = x[t * cols];
        x[t * cols + 2] = 0.0;
    }
    let st = stats_of(&x, cols);
    let ws = Whitening::new(&st, 0.0).unwrap();
    assert!(ws.damp > 0.0, "damped");
    let w = weights(24, cols, 6);
    let d = Decomposed::new(&w, 24, cols, Some(&ws)).unwrap();
    let f = d.factors(8, Some(&ws));
    assert!(f.a.iter().chain(&f.b).all(|v| v.is_finite()));
    // All-zero inputs cannot be whitened: an error, not a panic.
    let zero = stats_of(&vec![0.0; n * cols], cols);
    assert!(Whitening::new(&zero, 0.01).is_err());
}

#[test]
fn energy_threshold_picks_the_smallest_rank_that_holds_it() {
    let s = [4.0, 2.0, 1.0, 1.0];
    // Energies 16, 4, 1, 1 of 22.
    assert_eq!(energy_rank(&s, 0.5), 1);
    assert_eq!(energy_rank(&s, 16.0 / 22.0), 1);
    assert_eq!(energy_rank(&s, 0.8), 2);
    assert_eq!(energy_rank(&s, 0.95), 3);
    assert_eq!(energy_rank(&s, 0.99), 4);
    assert_eq!(energy_rank(&[0.0, 0.0], 0.9), 0);
    // On a matrix: rank 40 of singular values 1 (then 0), rounded up to 64.
    let (rows, cols) = (128, 160);
    let w = rank_r(rows, cols, 40, 7);
    let d = Decomposed::new(&w, rows, cols, None).unwrap();
    let need = energy_rank(d.singular_values(), 0.999999);
    assert_eq!(need, 40);
    assert_eq!(
        rank_for_energy(rows, cols, d.singular_values(), 0.999999),
        Some(64)
    );
    // Full energy of a full-rank matrix: factors would be larger, stay dense.
    let full = weights(64, 64, 8);
    let d = Decomposed::new(&full, 64, 64, None).unwrap();
    assert_eq!(rank_for_energy(64, 64, d.singular_values(), 0.99), None);
}

#[test]
fn ratio_ranks_are_multiples_of_32_that_save_weights() {
    // SmolLM2-135M's shapes at 20%: q/o 576×576, k/v 192×576, ffn 1536×576.
    assert_eq!(rank_for_ratio(576, 576, 0.2), Some(224));
    assert_eq!(rank_for_ratio(192, 576, 0.2), Some(128));
    assert_eq!(rank_for_ratio(1536, 576, 0.2), Some(320));
    assert_eq!(rank_for_ratio(576, 1536, 0.4), Some(256));
    // Too small to save anything at one step of rank.
    assert_eq!(rank_for_ratio(32, 32, 0.2), None);
    // The nearest rank to a number of weights; dense when that saves nothing.
    assert_eq!(rank_keeping(96, 256, 64.0 * 352.0), Some(64));
    assert_eq!(rank_keeping(96, 256, 75.0 * 352.0), Some(64));
    assert_eq!(rank_keeping(96, 256, -5.0), Some(32));
    assert_eq!(rank_keeping(96, 256, 1e9), None);
    assert_eq!(rank_keeping(64, 200, 1e9), None);
    for (rows, cols) in [(576, 576), (192, 576), (896, 4864), (128, 64)] {
        for ratio in [0.05, 0.2, 0.4, 0.7, 0.95] {
            if let Some(r) = rank_for_ratio(rows, cols, ratio) {
                assert_eq!(r % RANK_STEP, 0);
                assert!(saves(rows, cols, r) && r <= rows.min(cols));
            }
        }
    }
}

#[test]
fn bad_targets_and_shapes_are_errors() {
    for t in [
        Target::Ratio(0.0),
        Target::Ratio(1.0),
        Target::Energy(-0.1),
        Target::Energy(f32::NAN),
    ] {
        assert!(t.validate().is_err(), "{t}");
    }
    assert!(Target::Ratio(0.4).validate().is_ok());
    assert!(Decomposed::new(&[1.0; 10], 3, 4, None).is_err());
    assert!(Decomposed::new(&[f32::NAN; 12], 3, 4, None).is_err());
    let st = stats_of(&inputs(50, 16, 9), 16);
    let ws = Whitening::new(&st, 0.01).unwrap();
    assert!(Decomposed::new(&[1.0; 24], 3, 8, Some(&ws)).is_err());
}
