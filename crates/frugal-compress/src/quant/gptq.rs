//! GPTQ (Frantar et al., 2022): round a weight matrix one input column at a
//! time and push each column's rounding error onto the columns not yet
//! rounded, weighted by the inverse Hessian of the layer's squared output
//! error, H = 2·XXᵀ over calibration inputs.
//!
//! As in the reference implementation: dead inputs (zero energy) are zeroed,
//! H is damped by a fraction of its mean diagonal, the updates use the upper
//! Cholesky factor U of H⁻¹ (so each column's error is divided by U[i,i]
//! and spread along U's row), and updates are applied lazily, 128 columns
//! at a time, as one matrix product. With `act_order` the columns are
//! visited by decreasing H[i,i], with static groups: every block's scales are
//! fitted from the original weights first, because a format's blocks are
//! runs of consecutive columns.
//!
//! Rows never interact, so chunks of rows run in parallel.

use super::format::{nearest_code, Format};
use super::imatrix::fit_weighted;
use super::method::{matrix_bytes, require_stats, InputStats, Method};
use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use frugal_kernels::sgemm::{sgemm, View};
use rayon::prelude::*;

pub struct Gptq {
    /// Damping added to H's diagonal, as a fraction of its mean (0.01).
    pub damp: f32,
    /// Columns per lazy update (128).
    pub block: usize,
    /// Visit columns by decreasing activation energy.
    pub act_order: bool,
    /// Choose each block's scales by the importance-weighted search of
    /// [`super::imatrix`] (weights: the input channels' energies, H's
    /// diagonal) instead of the format's plain reference quantizer.
    pub weighted_scales: bool,
}

impl Default for Gptq {
    fn default() -> Self {
        Gptq {
            damp: 0.01,
            block: 128,
            act_order: false,
            weighted_scales: false,
        }
    }
}

impl Method for Gptq {
    fn name(&self) -> String {
        let mut name = String::from("gptq");
        if self.act_order {
            name += "+act-order";
        }
        if self.weighted_scales {
            name += "+imatrix";
        }
        name
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn quantize(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        fmt: &dyn Format,
        stats: Option<&InputStats>,
    ) -> Result<Vec<u8>, String> {
        let stats = require_stats(stats, cols, "GPTQ")?;
        let total = matrix_bytes(fmt, rows, cols)?;
        let fit_len = fmt.fit_len(cols);
        // A lazy block must start where every fit block starts, so a block's
        // scales are fitted on fully updated weights.
        let block = if fit_len <= self.block {
            self.block / fit_len * fit_len
        } else {
            fit_len
        };

        // H = 2/n Σ x xᵀ, in f64 for the factorizations.
        let n_tok = stats.tokens.max(1) as f64;
        let mut h: Vec<f64> = stats.xtx.iter().map(|&v| 2.0 * v as f64 / n_tok).collect();
        let mut w = w.to_vec();
        for i in 0..cols {
            if h[i * cols + i] <= 0.0 {
                h[i * cols + i] = 1.0;
                for r in 0..rows {
                    w[r * cols + i] = 0.0;
                }
            }
        }
        let perm: Vec<usize> = if self.act_order {
            let mut p: Vec<usize> = (0..cols).collect();
            p.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
            p
        } else {
            (0..cols).collect()
        };
        let hp = Mat::<f64>::from_fn(cols, cols, |i, j| h[perm[i] * cols + perm[j]]);
        drop(h);
        let u = upper_cholesky_of_inverse(hp, self.damp as f64)?;

        let importance = self
            .weighted_scales
            .then(|| super::imatrix::channel_importance(stats));
        let mut out = vec![0u8; total];
        let rb = total / rows.max(1);
        let threads = rayon::current_num_threads().max(1);
        let chunk = rows.div_ceil(threads * 4).clamp(1, 64);
        let ctx = Ctx {
            fmt,
            cols,
            fit_len,
            block,
            perm: &perm,
            u: &u,
            act_order: self.act_order,
            importance: importance.as_deref(),
        };
        out.par_chunks_mut(chunk * rb)
            .zip(w.par_chunks(chunk * cols))
            .for_each(|(o, wc)| ctx.rows(wc, o));
        Ok(out)
    }
}

/// U with H⁻¹ = UᵀU, for H damped by `damp`·mean(diag); more damping is
/// tried if H is too ill-conditioned to factor.
/// Row-major, n × n.
fn upper_cholesky_of_inverse(h: Mat<f64>, damp: f64) -> Result<Vec<f32>, String> {
    let n = h.nrows();
    let mean = (0..n).map(|i| h[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let mut damp = damp;
    for _ in 0..6 {
        let mut hd = h.clone();
        for i in 0..n {
            hd[(i, i)] += damp * mean;
        }
        if let Ok(llt) = hd.llt(Side::Lower) {
            let inv = llt.inverse();
            if let Ok(l2) = inv.llt(Side::Lower) {
                let l = l2.L();
                let mut u = vec![0.0f32; n * n];
                for i in 0..n {
                    for j in i..n {
                        u[i * n + j] = l[(j, i)] as f32;
                    }
                }
                return Ok(u);
            }
        }
        damp *= 10.0;
    }
    Err("the calibration Hessian is not positive definite even with heavy damping".into())
}

/// What every row chunk shares.
struct Ctx<'a> {
    fmt: &'a dyn Format,
    cols: usize,
    fit_len: usize,
    block: usize,
    perm: &'a [usize],
    /// U, row-major `cols × cols`.
    u: &'a [f32],
    act_order: bool,
    /// Per input column, for weighted scale search.
    importance: Option<&'a [f32]>,
}

impl Ctx<'_> {
    /// GPTQ for a chunk of rows (`w`, row-major, original column order);
    /// writes their quantized rows to `out`.
    fn rows(&self, w: &[f32], out: &mut [u8]) {
        let (cols, fit_len, fmt) = (self.cols, self.fit_len, self.fmt);
        let nr = w.len() / cols;
        let bb = fmt.block_bytes(cols);
        let nblk = cols / fit_len;
        let qmax = fmt.qmax();
        // Fitted blocks and per-element levels, original column order.
        let mut blocks = vec![0u8; nr * nblk * bb];
        let mut scale = vec![0.0f32; nr * cols];
        let mut offset = vec![0.0f32; nr * cols];
        let mut codes = vec![0u8; nr * cols];
        let fit =
            |r: usize, b: usize, x: &[f32], blocks: &mut [u8], s: &mut [f32], o: &mut [f32]| {
                let blk = &mut blocks[(r * nblk + b) * bb..][..bb];
                match self.importance {
                    Some(imp) => fit_weighted(fmt, x, &imp[b * fit_len..][..fit_len], blk),
                    None => fmt.fit(x, blk),
                }
                let at = r * cols + b * fit_len;
                fmt.levels(blk, &mut s[at..at + fit_len], &mut o[at..at + fit_len]);
            };
        if self.act_order {
            // Static groups: every block fitted from the original weights.
            for r in 0..nr {
                for b in 0..nblk {
                    let x = &w[r * cols + b * fit_len..][..fit_len];
                    fit(r, b, x, &mut blocks, &mut scale, &mut offset);
                }
            }
        }
        // Working copy in visiting order.
        let mut wp = vec![0.0f32; nr * cols];
        for r in 0..nr {
            for (i, &p) in self.perm.iter().enumerate() {
                wp[r * cols + i] = w[r * cols + p];
            }
        }
        let mut err = vec![0.0f32; nr * self.block];
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + self.block).min(cols);
            let bw = i2 - i1;
            for r in 0..nr {
                let row = &mut wp[r * cols..(r + 1) * cols];
                for i in i1..i2 {
                    let orig = self.perm[i];
                    if !self.act_order && orig.is_multiple_of(fit_len) {
                        // Not permuted: columns orig.. are row[i..] and up to date.
                        let x = row[i..i + fit_len].to_vec();
                        fit(r, orig / fit_len, &x, &mut blocks, &mut scale, &mut offset);
                    }
                    let (s, o) = (scale[r * cols + orig], offset[r * cols + orig]);
                    let q = nearest_code(row[i], s, o, qmax);
                    codes[r * cols + orig] = q;
                    let d = self.u[i * cols + i];
                    let e = (row[i] - (s * q as f32 + o)) / d;
                    let ui = &self.u[i * cols..(i + 1) * cols];
                    for (x, &uij) in row[i + 1..i2].iter_mut().zip(&ui[i + 1..i2]) {
                        *x -= e * uij;
                    }
                    err[r * self.block + (i - i1)] = e;
                }
            }
            if i2 < cols {
                // W[:, i2..] -= Err · U[i1..i2, i2..]
                let lhs = View {
                    data: &err,
                    rows: nr,
                    cols: bw,
                    rs: self.block,
                    cs: 1,
                };
                let rhs = View {
                    data: &self.u[i1 * cols + i2..],
                    rows: bw,
                    cols: cols - i2,
                    rs: cols,
                    cs: 1,
                };
                sgemm(&mut wp[i2..], cols, true, lhs, rhs, -1.0, false);
            }
            i1 = i2;
        }
        let rb = out.len() / nr;
        for r in 0..nr {
            for b in 0..nblk {
                let blk = &mut blocks[(r * nblk + b) * bb..][..bb];
                fmt.set_codes(blk, &codes[r * cols + b * fit_len..][..fit_len]);
                out[r * rb + b * bb..][..bb].copy_from_slice(blk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Rtn, TypeFormat};
    use frugal_formats::GgmlType;
    use rand::{Rng, SeedableRng};

    /// Calibration inputs with strongly correlated channels of unequal
    /// energy, as real activations have.
    fn inputs(n: usize, cols: usize, seed: u64) -> Vec<f32> {
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

    fn stats_of(x: &[f32], cols: usize) -> InputStats {
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

    /// Σ over tokens and rows of (x·w − x·ŵ)²: the error GPTQ minimizes.
    fn output_error(x: &[f32], w: &[f32], q: &[u8], ty: GgmlType, rows: usize, cols: usize) -> f64 {
        let mut wq = vec![0.0f32; rows * cols];
        let rb = q.len() / rows;
        let to_float = frugal_kernels::traits(ty).unwrap().to_float;
        for r in 0..rows {
            to_float(&q[r * rb..(r + 1) * rb], &mut wq[r * cols..(r + 1) * cols]);
        }
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

    fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..rows * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect()
    }

    #[test]
    fn gptq_beats_rtn_on_correlated_inputs() {
        let (rows, cols) = (24, 256);
        let x = inputs(1024, cols, 1);
        let st = stats_of(&x, cols);
        let w = weights(rows, cols, 2);
        for ty in [GgmlType::Q4_0, GgmlType::Q3K, GgmlType::Q4K, GgmlType::Q8_0] {
            let f = TypeFormat::new(ty).unwrap();
            let rtn = Rtn.quantize(&w, rows, cols, &f, None).unwrap();
            let e_rtn = output_error(&x, &w, &rtn, ty, rows, cols);
            for act_order in [false, true] {
                let g = Gptq {
                    act_order,
                    ..Gptq::default()
                };
                let q = g.quantize(&w, rows, cols, &f, Some(&st)).unwrap();
                let e = output_error(&x, &w, &q, ty, rows, cols);
                assert!(
                    e < 0.7 * e_rtn,
                    "{ty} act_order={act_order}: GPTQ error {e:.4} vs RTN {e_rtn:.4}"
                );
            }
        }
    }

    #[test]
    fn gptq_with_uncorrelated_inputs_is_rtn() {
        // H = I: no error is propagated, so GPTQ rounds like RTN.
        let (rows, cols) = (8, 64);
        let mut st = InputStats::new(cols);
        st.tokens = 2;
        for i in 0..cols {
            st.xtx[i * cols + i] = 1.0;
        }
        let w = weights(rows, cols, 3);
        let f = TypeFormat::new(GgmlType::Q4_1).unwrap();
        let rtn = Rtn.quantize(&w, rows, cols, &f, None).unwrap();
        let g = Gptq::default()
            .quantize(&w, rows, cols, &f, Some(&st))
            .unwrap();
        let differ = rtn.iter().zip(&g).filter(|(a, b)| a != b).count();
        assert!(differ <= 2, "{differ} bytes differ");
    }

    #[test]
    fn gptq_refuses_without_calibration() {
        let f = TypeFormat::new(GgmlType::Q4_0).unwrap();
        let w = weights(2, 32, 4);
        assert!(Gptq::default().quantize(&w, 2, 32, &f, None).is_err());
    }
}
