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
use crate::prune::Pattern;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use frugal_kernels::sgemm::{sgemm, View};
use rayon::prelude::*;

/// Which weights the column sweep sets to zero (and keeps there) instead of
/// rounding them: the same sweep is SparseGPT when it prunes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ObsMask {
    /// Plain GPTQ: nothing is pruned.
    #[default]
    None,
    /// Weights that are exactly zero on entry stay zero (a mask chosen
    /// before, e.g. by Wanda or magnitude).
    KeepZeros,
    /// SparseGPT: at the start of each lazy block, every row prunes, under
    /// the pattern, the block's weights of least saliency w²/[H⁻¹]ᵢᵢ, the
    /// output error their removal costs once the rest are updated.
    Select(Pattern),
}

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
    /// Weights pruned in the same sweep (SparseGPT and GPTQ jointly).
    pub mask: ObsMask,
}

impl Default for Gptq {
    fn default() -> Self {
        Gptq {
            damp: 0.01,
            block: 128,
            act_order: false,
            weighted_scales: false,
            mask: ObsMask::None,
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
        match self.mask {
            ObsMask::None => {}
            ObsMask::KeepZeros => name += "+mask",
            ObsMask::Select(p) => name = format!("sparsegpt({p})+{name}"),
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
        if let ObsMask::Select(p) = self.mask {
            p.check_cols(cols)?;
            if let Pattern::NM { m, .. } = p {
                if !(fit_len.is_multiple_of(m) || m.is_multiple_of(fit_len)) {
                    return Err(format!(
                        "N:M groups of {m} straddle the {fit_len}-element blocks of {}",
                        fmt.ty()
                    ));
                }
            }
        }
        if self.act_order && self.mask != ObsMask::None {
            return Err("act-order does not combine with pruning".into());
        }
        // A lazy block must start where every fit block (and N:M group)
        // starts, so a block's scales are fitted on fully updated weights.
        let unit = match self.mask {
            ObsMask::Select(Pattern::NM { m, .. }) => lcm(fit_len, m),
            _ => fit_len,
        };
        let block = lazy_block(self.block, unit);
        let Prepared { perm, u, w } = prepare(w, rows, cols, stats, self.act_order, self.damp)?;

        let importance = self
            .weighted_scales
            .then(|| super::imatrix::channel_importance(stats));
        let mut out = vec![0u8; total];
        let rb = total / rows.max(1);
        let ctx = Ctx {
            fmt: Some(fmt),
            cols,
            fit_len,
            block,
            perm: &perm,
            u: &u,
            act_order: self.act_order,
            importance: importance.as_deref(),
            mask: self.mask,
        };
        let chunk = row_chunk(rows);
        out.par_chunks_mut(chunk * rb)
            .zip(w.par_chunks(chunk * cols))
            .for_each(|(o, wc)| ctx.rows(wc, Out::Bytes(o)));
        Ok(out)
    }
}

/// The column sweep without rounding: weights pruned by `mask` and the rest
/// updated to absorb their error (SparseGPT with f32 values). `w` is
/// `rows × cols`, row-major; so is the result.
pub fn obs_values(
    w: &[f32],
    rows: usize,
    cols: usize,
    stats: &InputStats,
    mask: ObsMask,
    damp: f32,
) -> Result<Vec<f32>, String> {
    if stats.cols != cols {
        return Err(format!(
            "calibration statistics are for {} inputs, the matrix has {cols}",
            stats.cols
        ));
    }
    let unit = match mask {
        ObsMask::Select(Pattern::NM { m, .. }) => m,
        _ => 1,
    };
    let block = lazy_block(128, unit);
    let Prepared { perm, u, w } = prepare(w, rows, cols, stats, false, damp)?;
    let ctx = Ctx {
        fmt: None,
        cols,
        fit_len: 1,
        block,
        perm: &perm,
        u: &u,
        act_order: false,
        importance: None,
        mask,
    };
    let mut out = vec![0.0f32; rows * cols];
    let chunk = row_chunk(rows);
    out.par_chunks_mut(chunk * cols)
        .zip(w.par_chunks(chunk * cols))
        .for_each(|(o, wc)| ctx.rows(wc, Out::Values(o)));
    Ok(out)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b).max(1) * b
}

/// Columns per lazy update: about `want`, a multiple of `unit`.
fn lazy_block(want: usize, unit: usize) -> usize {
    if unit <= want {
        want / unit * unit
    } else {
        unit
    }
}

/// Rows per parallel task.
fn row_chunk(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).clamp(1, 64)
}

/// What the sweep starts from.
struct Prepared {
    /// The visiting order of the columns.
    perm: Vec<usize>,
    /// The upper Cholesky factor of the damped H⁻¹, in that order.
    u: Vec<f32>,
    /// The weights, with dead inputs (zero energy) zeroed.
    w: Vec<f32>,
}

fn prepare(
    w: &[f32],
    rows: usize,
    cols: usize,
    stats: &InputStats,
    act_order: bool,
    damp: f32,
) -> Result<Prepared, String> {
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
    let perm: Vec<usize> = if act_order {
        let mut p: Vec<usize> = (0..cols).collect();
        p.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
        p
    } else {
        (0..cols).collect()
    };
    let hp = Mat::<f64>::from_fn(cols, cols, |i, j| h[perm[i] * cols + perm[j]]);
    drop(h);
    let u = upper_cholesky_of_inverse(hp, damp as f64)?;
    Ok(Prepared { perm, u, w })
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

/// Where a row chunk's result goes.
enum Out<'a> {
    /// Quantized rows, in the format.
    Bytes(&'a mut [u8]),
    /// f32 rows (no format: pruning only).
    Values(&'a mut [f32]),
}

/// What every row chunk shares.
struct Ctx<'a> {
    /// None: values are not rounded, only pruned.
    fmt: Option<&'a dyn Format>,
    cols: usize,
    fit_len: usize,
    block: usize,
    perm: &'a [usize],
    /// U, row-major `cols × cols`.
    u: &'a [f32],
    act_order: bool,
    /// Per input column, for weighted scale search.
    importance: Option<&'a [f32]>,
    mask: ObsMask,
}

impl Ctx<'_> {
    /// The sweep for a chunk of rows (`w`, row-major, original column
    /// order), written to `out`.
    fn rows(&self, w: &[f32], out: Out) {
        let (cols, fit_len) = (self.cols, self.fit_len);
        let nr = w.len() / cols;
        let bb = self.fmt.map_or(0, |f| f.block_bytes(cols));
        let nblk = cols / fit_len;
        let qmax = self.fmt.map_or(0, |f| f.qmax());
        // Fitted blocks and per-element levels, original column order.
        let quantized = self.fmt.is_some();
        let per = |n: usize| if quantized { n } else { 0 };
        let mut blocks = vec![0u8; per(nr * nblk * bb)];
        let mut scale = vec![0.0f32; per(nr * cols)];
        let mut offset = vec![0.0f32; per(nr * cols)];
        let mut codes = vec![0u8; per(nr * cols)];
        let fit =
            |r: usize, b: usize, x: &[f32], blocks: &mut [u8], s: &mut [f32], o: &mut [f32]| {
                let Some(fmt) = self.fmt else { return };
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
        // Per row of the current lazy block: which weights are pruned.
        let mut pruned = vec![false; nr * self.block];
        let mut scores = vec![0.0f32; self.block];
        let mut vals = match &out {
            Out::Values(_) => vec![0.0f32; nr * cols],
            Out::Bytes(_) => Vec::new(),
        };
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + self.block).min(cols);
            let bw = i2 - i1;
            for r in 0..nr {
                let row = &mut wp[r * cols..(r + 1) * cols];
                let pr = &mut pruned[r * self.block..][..bw];
                match self.mask {
                    ObsMask::None => pr.fill(false),
                    ObsMask::KeepZeros => {
                        for (i, p) in (i1..i2).zip(pr.iter_mut()) {
                            *p = w[r * cols + self.perm[i]] == 0.0;
                        }
                    }
                    ObsMask::Select(pattern) => {
                        let s = &mut scores[..bw];
                        for (i, s) in (i1..i2).zip(s.iter_mut()) {
                            let d = self.u[i * cols + i];
                            *s = row[i] * row[i] / (d * d);
                        }
                        pattern.select(s, i1, pr);
                    }
                }
                for i in i1..i2 {
                    let orig = self.perm[i];
                    let is_pruned = pr[i - i1];
                    let q = if quantized {
                        if !self.act_order && orig.is_multiple_of(fit_len) {
                            // Not permuted: columns orig.. are row[i..] and
                            // up to date; pruned weights do not count.
                            let mut x = row[i..i + fit_len].to_vec();
                            for (j, v) in x.iter_mut().enumerate() {
                                if pr.get(i + j - i1) == Some(&true) {
                                    *v = 0.0;
                                }
                            }
                            fit(r, orig / fit_len, &x, &mut blocks, &mut scale, &mut offset);
                        }
                        let (s, o) = (scale[r * cols + orig], offset[r * cols + orig]);
                        let target = if is_pruned { 0.0 } else { row[i] };
                        let c = nearest_code(target, s, o, qmax);
                        codes[r * cols + orig] = c;
                        s * c as f32 + o
                    } else {
                        let v = if is_pruned { 0.0 } else { row[i] };
                        vals[r * cols + orig] = v;
                        v
                    };
                    let d = self.u[i * cols + i];
                    let e = (row[i] - q) / d;
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
        match out {
            Out::Values(o) => o.copy_from_slice(&vals),
            Out::Bytes(out) => {
                let fmt = self.fmt.expect("bytes come from a format");
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Rtn, TypeFormat};
    use crate::testutil::{inputs, output_error, stats_of, weights};
    use frugal_formats::GgmlType;

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
