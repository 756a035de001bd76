//! Test material shared by the methods' unit tests: correlated calibration
//! inputs, their statistics, and the output error a method minimizes.

use crate::quant::InputStats;
use frugal_formats::GgmlType;
use rand::{Rng, SeedableRng};

/// Calibration inputs with strongly correlated channels of unequal
/// energy, as real activations have.
pub fn inputs(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let k = 8;
    let mix: Vec<f32> = (0..k * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let gain: Vec<f32> = (0..cols).map(|c| 0.2 + (c % 7) as f32).collect();
    let mut x = vec![0.0f32; n * cols];
    for t in 0..n {
        let z: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        for c in 0..cols {
            let mut v = 0.1 * rng.gen_range(-1.0f32..1.0);
            for j in 0..k {
                v += z[j] * mix[j * cols + c];
            }
            x[t * cols + c] = v * gain[c];
        }
    }
    x
}

pub fn stats_of(x: &[f32], cols: usize) -> InputStats {
    let mut s = InputStats::new(cols);
    s.tokens = x.len() / cols;
    for t in x.chunks(cols) {
        for i in 0..cols {
            for j in 0..cols {
                s.xtx[i * cols + j] += t[i] * t[j];
            }
        }
    }
    s
}

/// Σ over tokens and rows of (x·w − x·ŵ)² for the quantized rows `q` of
/// type `ty`: the error GPTQ minimizes.
pub fn output_error(x: &[f32], w: &[f32], q: &[u8], ty: GgmlType, rows: usize, cols: usize) -> f64 {
    let mut wq = vec![0.0f32; rows * cols];
    let rb = q.len() / rows;
    let to_float = frugal_kernels::traits(ty).unwrap().to_float;
    for r in 0..rows {
        to_float(&q[r * rb..(r + 1) * rb], &mut wq[r * cols..(r + 1) * cols]);
    }
    value_error(x, w, &wq, cols)
}

/// Σ over tokens and rows of (x·w − x·ŵ)² for f32 weights `wq`.
pub fn value_error(x: &[f32], w: &[f32], wq: &[f32], cols: usize) -> f64 {
    let rows = w.len() / cols;
    let mut e = 0.0f64;
    for t in x.chunks(cols) {
        for r in 0..rows {
            let d: f32 = (0..cols)
                .map(|c| t[c] * (w[r * cols + c] - wq[r * cols + c]))
                .sum();
            e += (d as f64).powi(2);
        }
    }
    e
}

pub fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..rows * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect()
}
