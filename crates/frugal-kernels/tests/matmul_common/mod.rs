//! Shared checks of the threaded matmul against a naive f32 matmul of the
//! dequantized weights and against the single-threaded scalar reference.
#![allow(dead_code)]

use frugal_formats::GgmlType;
use frugal_kernels::matmul::{matmul, matmul_f32, matmul_ref, QMatrix, QuantizedActs};
use frugal_kernels::traits::traits;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Weight types to test: every registered type with a quantizer whose
/// activation type can be quantized too.
pub fn testable_types() -> Vec<GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|&ty| {
            let Some(t) = traits(ty) else { return false };
            t.from_float.is_some()
                && (matches!(
                    t.vec_dot_type,
                    GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::F32
                ) || traits(t.vec_dot_type).is_some_and(|d| d.from_float.is_some()))
        })
        .collect()
}

pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

pub struct Case {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub wbytes: Vec<u8>,
    /// Dequantized weights, rows × cols.
    pub wdeq: Vec<f32>,
}

pub fn make_case(ty: GgmlType, rows: usize, cols: usize, r: &mut StdRng) -> Case {
    let t = traits(ty).unwrap();
    let mut w: Vec<f32> = (0..rows * cols)
        .map(|_| r.gen_range(-1.0f32..1.0))
        .collect();
    // Some rows with an offset (exercises the Q4_1/Q5_1 minimum), some zero.
    for row in 0..rows {
        match row % 5 {
            1 => w[row * cols..(row + 1) * cols]
                .iter_mut()
                .for_each(|v| *v += 2.0),
            3 => w[row * cols..(row + 1) * cols].fill(0.0),
            _ => {}
        }
    }
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut wbytes = vec![0u8; rows * rb];
    for row in 0..rows {
        (t.from_float.unwrap())(
            &w[row * cols..(row + 1) * cols],
            &mut wbytes[row * rb..(row + 1) * rb],
        );
    }
    let mut wdeq = vec![0.0f32; rows * cols];
    (t.to_float)(&wbytes, &mut wdeq);
    Case {
        ty,
        rows,
        cols,
        wbytes,
        wdeq,
    }
}

pub fn acts(n_tok: usize, cols: usize, r: &mut StdRng) -> Vec<f32> {
    (0..n_tok * cols)
        .map(|i| {
            let v = r.gen_range(-1.0f32..1.0);
            if (i / cols) % 4 == 2 {
                v * 100.0 // a token with larger activations
            } else {
                v
            }
        })
        .collect()
}

/// Per output element: an error bound for the difference to the naive f32
/// matmul (activation quantization, the f16 block sums, float rounding).
fn naive_and_tol(
    c: &Case,
    x: &[f32],
    n_tok: usize,
    dot_ty: GgmlType,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let bs = dot_ty.block_size().max(1);
    let quantized_acts = dot_ty != GgmlType::F32;
    let (mut naive, mut tol, mut scale) = (
        vec![0.0; n_tok * c.rows],
        vec![0.0; n_tok * c.rows],
        vec![0.0; n_tok * c.rows],
    );
    for t in 0..n_tok {
        let xr = &x[t * c.cols..(t + 1) * c.cols];
        for r in 0..c.rows {
            let wr = &c.wdeq[r * c.cols..(r + 1) * c.cols];
            let (mut v, mut abs, mut qerr) = (0.0f64, 0.0f64, 0.0f64);
            for b in 0..c.cols.div_ceil(bs) {
                let lo = b * bs;
                let hi = (lo + bs).min(c.cols);
                let amax = xr[lo..hi].iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                let wmax = wr[lo..hi].iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                let sx: f64 = xr[lo..hi].iter().map(|v| v.abs() as f64).sum();
                let sw: f64 = wr[lo..hi].iter().map(|v| v.abs() as f64).sum();
                for i in lo..hi {
                    v += wr[i] as f64 * xr[i] as f64;
                    abs += (wr[i] as f64 * xr[i] as f64).abs();
                }
                if quantized_acts {
                    qerr += sw * amax / 254.0 * 1.01 + wmax * sx / 1024.0;
                }
            }
            naive[t * c.rows + r] = v;
            tol[t * c.rows + r] = qerr + 1e-5 * abs + 1e-6;
            scale[t * c.rows + r] = abs + qerr * 300.0;
        }
    }
    (naive, tol, scale)
}

/// Runs matmul for one case on `threads` threads and checks it.
pub fn check_case(c: &Case, n_tok: usize, threads: usize, r: &mut StdRng) -> Vec<f32> {
    let x = acts(n_tok, c.cols, r);
    let w = QMatrix::new(c.ty, c.rows, c.cols, &c.wbytes);
    let mut qa = QuantizedActs::new();
    let mut out = vec![f32::NAN; n_tok * c.rows];
    pool(threads).install(|| matmul_f32(&w, &x, n_tok, &mut qa, &mut out));
    let dot_ty = traits(c.ty).unwrap().vec_dot_type;
    assert_eq!(qa.dot_type(), dot_ty);
    assert_eq!(qa.n_tok(), n_tok);

    let mut reference = vec![0.0f32; n_tok * c.rows];
    matmul_ref(&w, &qa, &mut reference);
    let (naive, tol, scale) = naive_and_tol(c, &x, n_tok, dot_ty);
    for i in 0..out.len() {
        let (t, row) = (i / c.rows, i % c.rows);
        let ctx = format!(
            "{} {}x{} n_tok={n_tok} threads={threads} t={t} r={row}",
            c.ty, c.rows, c.cols
        );
        assert!(
            (out[i] as f64 - reference[i] as f64).abs() <= 2e-5 * scale[i] + 1e-6,
            "{ctx}: {} vs reference {}",
            out[i],
            reference[i]
        );
        assert!(
            (out[i] as f64 - naive[i]).abs() <= tol[i],
            "{ctx}: {} vs naive {} (tol {})",
            out[i],
            naive[i],
            tol[i]
        );
    }
    out
}

/// Shapes for a type: columns a multiple of its block size.
pub fn shapes(ty: GgmlType) -> Vec<(usize, usize)> {
    let bs = ty.block_size();
    if bs == 1 {
        vec![(1, 1), (3, 7), (16, 96), (33, 161), (64, 576), (300, 1024)]
    } else if bs == 32 {
        vec![
            (1, 32),
            (5, 64),
            (16, 96),
            (33, 160),
            (64, 576),
            (300, 1024),
        ]
    } else {
        vec![(1, bs), (7, 2 * bs), (33, 3 * bs), (300, 4 * bs)]
    }
}

/// The full check: all testable types, shapes, token counts, 1 and 2 threads.
pub fn check_all(seed: u64) {
    let mut r = StdRng::seed_from_u64(seed);
    for ty in testable_types() {
        for (rows, cols) in shapes(ty) {
            let c = make_case(ty, rows, cols, &mut r);
            for n_tok in [1usize, 3, 17, 64] {
                let mut r1 = StdRng::seed_from_u64(seed ^ (n_tok as u64 * 7919));
                let mut r2 = r1.clone();
                let one = check_case(&c, n_tok, 1, &mut r1);
                let two = check_case(&c, n_tok, 2, &mut r2);
                // Every element is computed by the same kernel however rows are split.
                assert!(
                    one.iter()
                        .zip(&two)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{ty} {rows}x{cols} n_tok={n_tok}: 1 and 2 threads differ"
                );
            }
        }
    }
}

/// Reusing one QuantizedActs across sizes and types gives the same results as fresh ones.
pub fn check_reuse(seed: u64) {
    let mut r = StdRng::seed_from_u64(seed);
    let mut shared = QuantizedActs::new();
    let types = testable_types();
    for round in 0..3 {
        for &ty in &types {
            let cols = 2 * ty.block_size().max(32) * (round + 1);
            let c = make_case(ty, 20, cols, &mut r);
            let n_tok = [5, 1, 9][round];
            let x = acts(n_tok, cols, &mut r);
            let w = QMatrix::new(ty, c.rows, cols, &c.wbytes);
            let mut a = vec![0.0f32; n_tok * c.rows];
            let mut b = vec![0.0f32; n_tok * c.rows];
            matmul_f32(&w, &x, n_tok, &mut shared, &mut a);
            let mut fresh = QuantizedActs::new();
            fresh.quantize(traits(ty).unwrap().vec_dot_type, &x, n_tok, cols);
            matmul(&w, &fresh, &mut b);
            assert_eq!(a, b, "{ty} round {round}");
        }
    }
}
