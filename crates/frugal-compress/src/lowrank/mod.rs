//! Low-rank factorization: each block matrix W (`rows × cols`) replaced by
//! two factors, W ≈ B·A with A `r × cols` and B `rows × r`, which cost
//! r·(rows + cols) weights instead of rows·cols.
//!
//! Two decompositions:
//! * plain truncated SVD: W = UΣVᵀ kept to its r largest singular values,
//!   the best rank-r approximation of the weights themselves (Frobenius);
//! * whitened SVD (SVD-LLM, Wang et al., 2024): with S the lower Cholesky
//!   factor of the calibration inputs' XᵀX (S·Sᵀ = XᵀX), the SVD of W·S
//!   kept to rank r and mapped back by S⁻¹. Since ‖(W − W′)Xᵀ‖² =
//!   ‖(W − W′)S‖², this is the rank-r matrix of least *output* error on the
//!   calibration inputs, and the error it leaves is exactly the energy of
//!   the dropped singular values of W·S. (ASVD's diagonal activation scaling
//!   is the special case of a diagonal S.)
//!
//! The rank of a matrix comes from a parameter-reduction ratio (the same for
//! every matrix) or from the energy Σσ² its kept singular values must hold
//! (see [`Target`]); ranks are multiples of [`RANK_STEP`], so the second
//! factor's rows are whole quantization blocks. With a ratio, the rounding
//! error of each rank is carried to the next matrix, so the model as a
//! whole loses the ratio asked (within one step of rank), not what the
//! rounding of each shape happens to give. A matrix whose factors
//! would not be smaller than itself stays dense.
//!
//! [`pipeline::lowrank_model`] runs a whole model, layer by layer through
//! calibration, so later matrices see the factored outputs of earlier ones.

pub mod pipeline;

use crate::quant::InputStats;
use faer::linalg::triangular_solve::solve_upper_triangular_in_place;
use faer::{Mat, Side};

/// Ranks are multiples of this (a Q8_0 / Q4_0 block of the second factor's rows).
pub const RANK_STEP: usize = 32;

/// How a matrix is decomposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decomposition {
    /// Truncated SVD of the weights.
    Svd,
    /// Truncated SVD of the weights whitened by the calibration inputs
    /// (SVD-LLM); needs calibration statistics.
    Whitened,
}

impl Decomposition {
    pub fn name(&self) -> &'static str {
        match self {
            Decomposition::Svd => "svd",
            Decomposition::Whitened => "whitened",
        }
    }

    pub fn needs_calibration(&self) -> bool {
        matches!(self, Decomposition::Whitened)
    }
}

/// How the rank of each matrix is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Remove this fraction of every matrix's weights (in (0, 1)).
    Ratio(f32),
    /// Keep the smallest rank whose singular values hold this fraction of
    /// Σσ² (in (0, 1); in the whitened space for [`Decomposition::Whitened`]).
    Energy(f32),
}

impl Target {
    /// Both kinds take a fraction strictly between 0 and 1.
    pub fn validate(&self) -> Result<(), String> {
        let (what, v) = match *self {
            Target::Ratio(v) => ("parameter-reduction ratio", v),
            Target::Energy(v) => ("energy threshold", v),
        };
        if v > 0.0 && v < 1.0 {
            Ok(())
        } else {
            Err(format!("{what} {v}: use a fraction in (0, 1)"))
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ratio(r) => write!(f, "ratio {r}"),
            Target::Energy(e) => write!(f, "energy {e}"),
        }
    }
}

/// Whether rank `r` factors of a `rows × cols` matrix are smaller than it.
pub fn saves(rows: usize, cols: usize, r: usize) -> bool {
    r * (rows + cols) < rows * cols
}

/// `r` rounded to the nearest multiple of [`RANK_STEP`] (at least one step).
fn round_rank(r: f64) -> usize {
    ((r / RANK_STEP as f64).round() as usize).max(1) * RANK_STEP
}

/// The rank that removes `ratio` of a `rows × cols` matrix's weights
/// (rounded to a multiple of [`RANK_STEP`]); `None` when the factors
/// would not be smaller than the matrix.
pub fn rank_for_ratio(rows: usize, cols: usize, ratio: f32) -> Option<usize> {
    rank_keeping(rows, cols, (1.0 - ratio as f64) * (rows * cols) as f64)
}

/// The rank whose factors of a `rows × cols` matrix come nearest to `keep`
/// weights (a multiple of [`RANK_STEP`], at most min(rows, cols)); `None`
/// when the factors would not be smaller than the matrix.
pub fn rank_keeping(rows: usize, cols: usize, keep: f64) -> Option<usize> {
    let most = rows.min(cols) / RANK_STEP * RANK_STEP;
    let r = round_rank(keep / (rows + cols) as f64).min(most);
    (r > 0 && saves(rows, cols, r)).then_some(r)
}

/// The smallest rank whose singular values `s` (descending) hold at least
/// `energy` of Σσ² (0 when all are zero).
pub fn energy_rank(s: &[f64], energy: f64) -> usize {
    let total: f64 = s.iter().map(|v| v * v).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut kept = 0.0;
    for (i, v) in s.iter().enumerate() {
        kept += v * v;
        if kept >= energy * total * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    s.len()
}

/// The rank an energy threshold picks for a `rows × cols` matrix of
/// singular values `s`: [`energy_rank`] rounded up to a multiple of
/// [`RANK_STEP`]; `None` to keep the matrix dense.
pub fn rank_for_energy(rows: usize, cols: usize, s: &[f64], energy: f32) -> Option<usize> {
    let r = energy_rank(s, energy as f64).div_ceil(RANK_STEP).max(1) * RANK_STEP;
    (r <= rows.min(cols) && saves(rows, cols, r)).then_some(r)
}

/// The two factors of a low-rank matrix: W ≈ b · a.
#[derive(Clone, Debug)]
pub struct Factors {
    pub rank: usize,
    /// `rank × cols`, row-major: applied to the input first.
    pub a: Vec<f32>,
    /// `rows × rank`, row-major.
    pub b: Vec<f32>,
}

impl Factors {
    /// b · a, `rows × cols` row-major.
    pub fn product(&self, rows: usize, cols: usize) -> Vec<f32> {
        product(&self.b, &self.a, rows, self.rank, cols)
    }
}

/// `b · a` for `b` (`rows × r`) and `a` (`r × cols`), row-major.
pub fn product(b: &[f32], a: &[f32], rows: usize, r: usize, cols: usize) -> Vec<f32> {
    let mut w = vec![0.0f32; rows * cols];
    frugal_kernels::sgemm::sgemm(
        &mut w,
        cols,
        false,
        frugal_kernels::sgemm::View::rows(b, rows, r),
        frugal_kernels::sgemm::View::rows(a, r, cols),
        1.0,
        true,
    );
    w
}

/// The lower Cholesky factor S of the calibration inputs' XᵀX (mean over
/// tokens, damped): what [`Decomposition::Whitened`] multiplies W by. One
/// serves every matrix reading the same inputs.
pub struct Whitening {
    /// `cols × cols`, lower triangular.
    s: Mat<f64>,
    /// The damping used, as a fraction of XᵀX's mean diagonal: more than
    /// asked when XᵀX was not positive definite with less.
    pub damp: f64,
}

impl Whitening {
    /// S with S·Sᵀ = XᵀX/n + damp·mean(diag)·I. A damping of 0 that fails
    /// (XᵀX singular: fewer tokens than inputs, or dead input channels)
    /// becomes 1e-6, and any damping that fails is multiplied by 10, up to
    /// 6 times, as GPTQ does.
    pub fn new(stats: &InputStats, damp: f32) -> Result<Whitening, String> {
        let n = stats.cols;
        if stats.xtx.len() != n * n {
            return Err(format!(
                "statistics of {} values for {n} inputs",
                stats.xtx.len()
            ));
        }
        let tokens = stats.tokens.max(1) as f64;
        let h = Mat::<f64>::from_fn(n, n, |i, j| stats.xtx[i * n + j] as f64 / tokens);
        let mean = (0..n).map(|i| h[(i, i)]).sum::<f64>() / n.max(1) as f64;
        if !(mean > 0.0 && mean.is_finite()) {
            return Err("the calibration inputs are all zero (or not finite)".into());
        }
        let mut damp = damp as f64;
        for attempt in 0..7 {
            let mut hd = h.clone();
            for i in 0..n {
                hd[(i, i)] += damp * mean;
            }
            if let Ok(llt) = hd.llt(Side::Lower) {
                let s = llt.L().to_owned();
                if (0..n).all(|i| s[(i, i)] > 0.0) {
                    return Ok(Whitening { s, damp });
                }
            }
            if attempt == 6 {
                break;
            }
            damp = if damp > 0.0 { damp * 10.0 } else { 1e-6 };
        }
        Err("the calibration XᵀX is not positive definite even with heavy damping".into())
    }
}

/// A matrix's SVD (of W, or of W·S), kept to cut at any rank.
pub struct Decomposed {
    rows: usize,
    cols: usize,
    /// `rows × k`.
    u: Mat<f64>,
    /// The k = min(rows, cols) singular values, descending.
    s: Vec<f64>,
    /// `cols × k`.
    v: Mat<f64>,
}

impl Decomposed {
    /// The SVD of `w` (`rows × cols`, row-major), or of `w`·S when `white`
    /// is given (S must be `cols × cols`).
    pub fn new(
        w: &[f32],
        rows: usize,
        cols: usize,
        white: Option<&Whitening>,
    ) -> Result<Decomposed, String> {
        if w.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(format!("{} weights for a {rows} × {cols} matrix", w.len()));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err("the matrix has values that are not finite".into());
        }
        let wm = Mat::<f64>::from_fn(rows, cols, |i, j| w[i * cols + j] as f64);
        let m = match white {
            Some(ws) if ws.s.nrows() != cols => {
                return Err(format!(
                    "whitening for {} inputs, the matrix has {cols}",
                    ws.s.nrows()
                ))
            }
            Some(ws) => &wm * &ws.s,
            None => wm,
        };
        let svd = m.thin_svd().map_err(|e| format!("SVD failed: {e:?}"))?;
        let k = rows.min(cols);
        let s = (0..k).map(|i| svd.S()[i]).collect();
        Ok(Decomposed {
            rows,
            cols,
            u: svd.U().to_owned(),
            s,
            v: svd.V().to_owned(),
        })
    }

    /// Singular values, descending.
    pub fn singular_values(&self) -> &[f64] {
        &self.s
    }

    /// Σσ² of the singular values past rank `r`: the squared Frobenius
    /// error of the rank-`r` cut (of W·S when whitened).
    pub fn dropped_energy(&self, r: usize) -> f64 {
        self.s.iter().skip(r).map(|v| v * v).sum()
    }

    /// The rank-`r` factors, each singular value split evenly between them
    /// (√σ on both sides, so neither factor has much larger values than the
    /// other when they are quantized): b = U_r·√Σ_r, a = √Σ_r·V_rᵀ·S⁻¹ (no
    /// S⁻¹ for plain SVD). S⁻¹ is applied by a triangular solve.
    pub fn factors(&self, r: usize, white: Option<&Whitening>) -> Factors {
        let r = r.min(self.s.len());
        let (rows, cols) = (self.rows, self.cols);
        let root: Vec<f64> = self.s[..r].iter().map(|v| v.max(0.0).sqrt()).collect();
        let mut b = vec![0.0f32; rows * r];
        for i in 0..rows {
            for k in 0..r {
                b[i * r + k] = (self.u[(i, k)] * root[k]) as f32;
            }
        }
        // Columns of aᵀ = S⁻ᵀ · V_r · √Σ_r.
        let mut at = Mat::<f64>::from_fn(cols, r, |j, k| self.v[(j, k)] * root[k]);
        if let Some(ws) = white {
            solve_upper_triangular_in_place(
                ws.s.transpose(),
                at.as_mut(),
                faer::get_global_parallelism(),
            );
        }
        let mut a = vec![0.0f32; r * cols];
        for k in 0..r {
            for j in 0..cols {
                a[k * cols + j] = at[(j, k)] as f32;
            }
        }
        Factors { rank: r, a, b }
    }
}

#[cfg(test)]
mod tests;
