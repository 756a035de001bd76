//! The sparse int8 types: their reference codecs against Q8_0 (a sparse row
//! is the Q8_0 row of the pruned weights, stored smaller), the packers'
//! refusals, and every dot product against the scalar reference, on random
//! rows of uneven density and on a hostile row.

use frugal_formats::{FrugalType, GgmlType};
use frugal_kernels::sparse::{dot_impls, pack_q8_0_row, scalar};
use frugal_kernels::traits;
use rand::{Rng, SeedableRng};

fn sparse(keep: u8) -> GgmlType {
    GgmlType::Frugal(FrugalType::SparseQ8 { keep })
}
const S24: GgmlType = GgmlType::Frugal(FrugalType::Sparse24Q8);

/// A row with about `density` of its weights nonzero, unevenly: some blocks
/// dense, some empty.
fn row(n: usize, density: f64, rng: &mut impl Rng) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let block_density = match (i / 32) % 4 {
                0 => 1.0,
                1 => 0.0,
                _ => density,
            };
            if rng.gen_bool(block_density.min(1.0)) {
                rng.gen_range(-2.0f32..2.0)
            } else {
                0.0
            }
        })
        .collect()
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    (traits(ty).unwrap().from_float.unwrap())(x, &mut out);
    out
}

fn dequantize(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    (traits(ty).unwrap().to_float)(b, &mut out);
    out
}

#[test]
fn a_sparse_row_is_the_q8_0_row_of_its_kept_weights() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for n in [64, 576, 1536] {
        let x = row(n, 0.4, &mut rng);
        let nz = x.iter().filter(|&&v| v != 0.0).count();
        let keep = (nz * 64).div_ceil(n).clamp(1, 63) as u8;
        let q8 = dequantize(GgmlType::Q8_0, &quantize(GgmlType::Q8_0, &x), n);
        let sp = dequantize(sparse(keep), &quantize(sparse(keep), &x), n);
        assert_eq!(sp, q8, "n = {n}, keep {keep}");
    }
}

/// Rows are the unit of both layouts (their groups of 4 blocks restart at
/// each row): a matrix decodes row by row into its Q8_0 rows, whatever the
/// row length (here with a last group of 2 blocks, and of 1).
#[test]
fn a_matrix_decodes_row_by_row() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (ty, n) in [(sparse(32), 576), (S24, 576), (S24, 160), (S24, 1536)] {
        assert!(ty.block_size() <= n);
        let rows = 5;
        let (mut bytes, mut want) = (Vec::new(), Vec::new());
        for _ in 0..rows {
            let x = row(n, 0.5, &mut rng);
            let w = quantize(ty, &x);
            want.extend(dequantize(ty, &w, n));
            bytes.extend(w);
        }
        let mut got = vec![0.0; rows * n];
        frugal_kernels::dequantize_rows(ty, &bytes, &mut got, n).unwrap();
        assert_eq!(got, want, "{ty} n={n}");
    }
}

#[test]
fn too_many_weights_are_pruned_by_magnitude_to_fit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let n = 256;
    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let back = dequantize(sparse(32), &quantize(sparse(32), &x), n);
    let kept: Vec<usize> = (0..n).filter(|&i| back[i] != 0.0).collect();
    assert!(kept.len() <= n / 2);
    let smallest_kept = kept.iter().map(|&i| x[i].abs()).fold(f32::MAX, f32::min);
    let largest_pruned = (0..n)
        .filter(|&i| back[i] == 0.0)
        .map(|i| x[i].abs())
        .fold(0.0, f32::max);
    // Rounding may zero a small kept weight, never keep a small one over a large one.
    assert!(smallest_kept >= largest_pruned || kept.len() < n / 2);

    let back = dequantize(S24, &quantize(S24, &x), n);
    for (g, xs) in back.chunks(4).zip(x.chunks(4)) {
        assert!(g.iter().filter(|&&v| v != 0.0).count() <= 2, "{g:?}");
        let mut order: Vec<usize> = (0..4).collect();
        order.sort_by(|&a, &b| xs[b].abs().total_cmp(&xs[a].abs()));
        for &i in &order[2..] {
            assert_eq!(g[i], 0.0, "the two smallest of {xs:?} go");
        }
    }
}

#[test]
fn packers_refuse_rows_that_do_not_fit() {
    let x: Vec<f32> = (0..64).map(|i| 1.0 + i as f32).collect();
    let q8 = quantize(GgmlType::Q8_0, &x);
    let mut out = vec![0u8; sparse(32).row_bytes(64).unwrap() as usize];
    let e = pack_q8_0_row(FrugalType::SparseQ8 { keep: 32 }, &q8, &mut out).unwrap_err();
    assert!(e.contains("room for"), "{e}");
    let mut out = vec![0u8; S24.row_bytes(64).unwrap() as usize];
    let e = pack_q8_0_row(FrugalType::Sparse24Q8, &q8, &mut out).unwrap_err();
    assert!(e.contains("2:4"), "{e}");
    assert!(pack_q8_0_row(FrugalType::W8Row, &q8, &mut out).is_err());
}

fn q8_acts(n: usize, rng: &mut impl Rng) -> Vec<u8> {
    let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    quantize(GgmlType::Q8_0, &a)
}

#[test]
fn every_dot_product_matches_the_reference_and_q8_0() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let q8_dot = traits(GgmlType::Q8_0).unwrap().vec_dot_ref;
    let mut checked = 0;
    for n in [32, 64, 96, 576, 960, 1536] {
        for density in [0.1, 0.5, 0.9] {
            let x = row(n, density, &mut rng);
            let a = q8_acts(n, &mut rng);
            for (t, ft) in [
                (sparse(63), FrugalType::SparseQ8 { keep: 63 }),
                (S24, FrugalType::Sparse24Q8),
            ] {
                if n % 64 != 0 && t != S24 {
                    continue;
                }
                let w = quantize(t, &x);
                // The same kept codes as a dense Q8_0 row.
                let dense = quantize(GgmlType::Q8_0, &dequantize(t, &w, n));
                let want = q8_dot(n, &dense, &a);
                let impls = dot_impls(ft);
                for (name, f) in impls
                    .iter()
                    .chain(&[("dispatched", traits(t).unwrap().vec_dot)])
                {
                    let got = f(n, &w, &a);
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{t} {name} n={n} density {density}: {got} vs {want}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 40);
}

/// A `SparseQ8` row (type `ty`) of `n` weights whose every bitmap bit is
/// set (more codes than it has room for), scales 0.5, codes `code`.
fn hostile_sq8_row(ty: GgmlType, n: usize, code: u8) -> Vec<u8> {
    let mut w = vec![code; ty.row_bytes(n as u64).unwrap() as usize];
    let nb = n / 32;
    for g in 0..nb.div_ceil(4) {
        let m = (nb - 4 * g).min(4);
        let h = &mut w[24 * g..][..6 * m];
        h[..4 * m].fill(0xFF);
        for d in h[4 * m..].chunks_mut(2) {
            d.copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        }
    }
    w
}

#[test]
fn a_hostile_bitmap_reads_nothing_out_of_bounds() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for n in [64, 128, 192, 576] {
        let w = hostile_sq8_row(sparse(32), n, 0x91);
        let a = q8_acts(n, &mut rng);
        let want = scalar::vec_dot_sparse_q8_0(n, &w, &a);
        assert!(want.is_finite() && want != 0.0);
        for (name, f) in dot_impls(FrugalType::SparseQ8 { keep: 32 }) {
            assert_eq!(f(n, &w, &a), want, "{name} n={n}");
        }
        let back = dequantize(sparse(32), &w, n);
        assert_eq!(back.iter().filter(|&&v| v != 0.0).count(), n / 2);
    }
}

/// Random bytes for a row of `ty` (scales kept finite and small).
fn random_row(ty: GgmlType, n: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut w: Vec<u8> = (0..ty.row_bytes(n as u64).unwrap())
        .map(|_| rng.gen())
        .collect();
    let nb = n / 32;
    let d = |rng: &mut dyn rand::RngCore| {
        half::f16::from_f32(rng.gen_range(-0.1f32..0.1)).to_le_bytes()
    };
    for g in 0..nb.div_ceil(4) {
        let m = (nb - 4 * g).min(4);
        let scales = if ty == S24 { 88 * g } else { 24 * g + 4 * m };
        for k in 0..m {
            w[scales + 2 * k..][..2].copy_from_slice(&d(rng));
        }
    }
    w
}

/// Random rows (random bitmaps and positions: a `SparseQ8` row may claim
/// more codes than it holds, a 2:4 group may name one position twice) give
/// every kernel the scalar reference's result.
#[test]
fn random_bytes_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (ty, ft, lens) in [
        (
            sparse(32),
            FrugalType::SparseQ8 { keep: 32 },
            &[64usize, 128, 192, 576][..],
        ),
        (
            sparse(20),
            FrugalType::SparseQ8 { keep: 20 },
            &[64, 320][..],
        ),
        (
            S24,
            FrugalType::Sparse24Q8,
            &[32, 64, 96, 128, 160, 576, 896][..],
        ),
    ] {
        for &n in lens {
            for _ in 0..20 {
                let w = random_row(ty, n, &mut rng);
                let a = q8_acts(n, &mut rng);
                let want = dot_impls(ft)[0].1(n, &w, &a);
                for (name, f) in dot_impls(ft) {
                    let got = f(n, &w, &a);
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{ty} {name} n={n}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// The matmul (the AVX-512 4-row kernels where this CPU has them) against
/// the scalar reference, for one token and several, on rows that are not
/// whole groups of 4 blocks, row counts that are not multiples of 4, and
/// matrices with hostile rows among good ones.
#[test]
fn matmul_matches_the_reference() {
    use frugal_kernels::matmul::{matmul, matmul_ref, QMatrix, QuantizedActs};
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for (ty, lens) in [
        (sparse(32), &[64usize, 128, 192, 576, 896][..]),
        (sparse(40), &[64, 320][..]),
        (S24, &[32, 64, 96, 160, 576, 896][..]),
    ] {
        for &n in lens {
            for rows in [1usize, 6, 33] {
                let rb = ty.row_bytes(n as u64).unwrap() as usize;
                let mut w = Vec::with_capacity(rows * rb);
                for r in 0..rows {
                    let row = match r % 5 {
                        3 => random_row(ty, n, &mut rng),
                        4 if ty != S24 => hostile_sq8_row(ty, n, 0x91),
                        _ => quantize(ty, &row(n, 0.5, &mut rng)),
                    };
                    assert_eq!(row.len(), rb);
                    w.extend_from_slice(&row);
                }
                let m = QMatrix::new(ty, rows, n, &w);
                for n_tok in [1usize, 3] {
                    let x: Vec<f32> = (0..n_tok * n)
                        .map(|_| rng.gen_range(-3.0f32..3.0))
                        .collect();
                    let mut acts = QuantizedActs::new();
                    acts.quantize(GgmlType::Q8_0, &x, n_tok, n);
                    let mut got = vec![f32::NAN; n_tok * rows];
                    let mut want = vec![f32::NAN; n_tok * rows];
                    matmul(&m, &acts, &mut got);
                    matmul_ref(&m, &acts, &mut want);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                            "{ty} {rows}x{n} n_tok={n_tok} element {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
