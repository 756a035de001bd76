//! Per-input-channel scaling before rounding: AWQ and SmoothQuant.
//!
//! A matrix W (rows × cols) reading inputs x computes W·x = (W·S)·(S⁻¹·x)
//! for any positive diagonal S = diag(s). Dividing the input channels by s
//! and multiplying the weight columns by s leaves the float model unchanged
//! when S⁻¹ is folded into whatever produces x: an RMSNorm's weights (for
//! Q, K, V and for gate, up), the rows of up (for down: SwiGLU's output is
//! silu(gate·x)·(up·x), so up's row j scales channel j), or the rows of V
//! (for O, when every query head has its own V head). Rounding W·S instead
//! of W changes which errors are made:
//!
//! - **AWQ** (Lin et al., 2023) makes the columns that meet large inputs
//!   larger, so their relative rounding error shrinks:
//!   s = m^α / √(max·min) with m the RMS of each input channel; α is searched
//!   on a grid in [0, 1) for the smallest output error of the rounded site,
//!   Σ over its matrices of tr(ΔW·H·ΔWᵀ) with ΔW = Q(W·S)·S⁻¹ − W and
//!   H = Σ x·xᵀ / tokens. α = 0 (s = 1) is plain rounding, and is always a
//!   candidate, so the search never does worse than it on this loss.
//! - **SmoothQuant** (Xiao et al., 2023) moves the activations' outlier
//!   channels into the weights, for int8 activations:
//!   s_j = max|x_j|^α / max|W₍:,j₎|^(1−α), over all matrices of the site.
//!
//! Whatever rounds the weights afterwards (RTN, GPTQ) then sees the scaled
//! weights and the scaled statistics ([`scaled_stats`]).

use super::format::Format;
use super::method::{InputStats, Method, Rtn};
use crate::calib::{LayerF32, LayerNorms, Site};
use frugal_kernels::sgemm::{sgemm, View};
use rayon::prelude::*;

/// The input scaling applied before a method rounds the block matrices.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Scaling {
    /// None: the method rounds the weights as they are.
    #[default]
    None,
    /// AWQ: `alpha` fixed, or searched on a grid of `grid` values in [0, 1).
    Awq { alpha: Option<f32>, grid: usize },
    /// SmoothQuant with migration strength `alpha` (0.5 in the paper).
    SmoothQuant { alpha: f32 },
}

impl Scaling {
    /// AWQ with AutoAWQ's grid of 20.
    pub fn awq() -> Scaling {
        Scaling::Awq {
            alpha: None,
            grid: 20,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Scaling::None)
    }

    /// Short name for logs and metadata (`None` for no scaling).
    pub fn name(&self) -> Option<String> {
        match self {
            Scaling::None => None,
            Scaling::Awq { alpha: None, .. } => Some("awq".into()),
            Scaling::Awq { alpha: Some(a), .. } => Some(format!("awq(alpha={a})")),
            Scaling::SmoothQuant { alpha } => Some(format!("smoothquant(alpha={alpha})")),
        }
    }

    /// The candidate exponents of an AWQ search.
    fn alphas(&self) -> Vec<f32> {
        match *self {
            Scaling::Awq { alpha: Some(a), .. } => vec![a],
            Scaling::Awq { alpha: None, grid } => {
                let g = grid.max(1);
                (0..g).map(|i| i as f32 / g as f32).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// One matrix reading a site's input (`rows × cols`, row-major), with the
/// format it will be stored in.
pub struct SiteMatrix<'a> {
    pub w: &'a [f32],
    pub rows: usize,
    pub fmt: &'a dyn Format,
}

/// The scales chosen for a site.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Per input channel: inputs are divided by `s`, weight columns multiplied.
    pub s: Vec<f32>,
    /// The exponent used.
    pub alpha: f32,
    /// AWQ: the output error of rounding to nearest with these scales, and
    /// without (s = 1); per calibration token.
    pub loss: Option<(f64, f64)>,
}

/// The scales `scaling` picks for a site whose inputs have statistics `st`
/// and whose matrices are `mats`; `None` for [`Scaling::None`].
pub fn choose(
    scaling: &Scaling,
    st: &InputStats,
    mats: &[SiteMatrix],
) -> Result<Option<Choice>, String> {
    match *scaling {
        Scaling::None => Ok(None),
        Scaling::Awq { .. } => awq_search(st, mats, &scaling.alphas()).map(Some),
        Scaling::SmoothQuant { alpha } => Ok(Some(Choice {
            s: smoothquant_scales(st, mats, alpha),
            alpha,
            loss: None,
        })),
    }
}

/// AWQ's scales for exponent `alpha`: each channel's RMS to the power
/// `alpha`, normalised so that the largest and the smallest multiply to 1.
pub fn awq_scales(st: &InputStats, alpha: f32) -> Vec<f32> {
    let n = st.cols;
    let t = st.tokens.max(1) as f64;
    let rms: Vec<f64> = (0..n)
        .map(|j| (st.xtx[j * n + j].max(0.0) as f64 / t).sqrt())
        .collect();
    let floor = rms
        .iter()
        .copied()
        .filter(|&r| r > 0.0)
        .fold(f64::INFINITY, f64::min);
    let floor = if floor.is_finite() { floor } else { 1.0 };
    let s: Vec<f64> = rms
        .iter()
        .map(|&r| r.max(floor).powf(alpha as f64).max(1e-4))
        .collect();
    let (lo, hi) = s.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    let norm = (lo * hi).sqrt();
    s.iter().map(|&v| (v / norm) as f32).collect()
}

/// SmoothQuant's scales: max|x_j|^α / max|W₍:,j₎|^(1−α), with the weight
/// maximum over every matrix of the site; 1 where either maximum is 0.
pub fn smoothquant_scales(st: &InputStats, mats: &[SiteMatrix], alpha: f32) -> Vec<f32> {
    let n = st.cols;
    let mut wmax = vec![0.0f32; n];
    for m in mats {
        for row in m.w.chunks_exact(n) {
            for (a, v) in wmax.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
    }
    st.absmax
        .iter()
        .zip(&wmax)
        .map(|(&x, &w)| {
            if x > 0.0 && w > 0.0 && x.is_finite() && w.is_finite() {
                let s = (x as f64).powf(alpha as f64) / (w as f64).powf(1.0 - alpha as f64);
                s.clamp(1e-5, 1e5) as f32
            } else {
                1.0
            }
        })
        .collect()
}

/// The output error per calibration token of rounding `m` to nearest after
/// scaling its columns by `s`: tr(ΔW·H·ΔWᵀ), ΔW = Q(W·S)·S⁻¹ − W, where
/// `h` is Σ x·xᵀ / tokens.
pub fn rounding_loss(m: &SiteMatrix, s: &[f32], h: &[f32]) -> Result<f64, String> {
    let cols = s.len();
    let mut ws = m.w.to_vec();
    scale_columns(&mut ws, s);
    let bytes = Rtn.quantize(&ws, m.rows, cols, m.fmt, None)?;
    frugal_kernels::dequantize_rows(m.fmt.ty(), &bytes, &mut ws, cols)
        .map_err(|e| e.to_string())?;
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    ws.par_chunks_mut(cols)
        .zip(m.w.par_chunks(cols))
        .for_each(|(d, w)| {
            for ((d, w), i) in d.iter_mut().zip(w).zip(&inv) {
                *d = *d * i - w;
            }
        });
    Ok(row_errors(&ws, m.rows, h).iter().sum())
}

/// Each row's dᵀ·H·d for the rows `d` of `diff` (`rows × cols`, `h` is
/// `cols × cols`): a weight row's output error under the input statistics
/// `h`, when `d` is its rounding error.
pub fn row_errors(diff: &[f32], rows: usize, h: &[f32]) -> Vec<f64> {
    let cols = diff.len().checked_div(rows).unwrap_or(0);
    debug_assert_eq!(cols * rows, diff.len(), "row_errors: not whole rows");
    if cols == 0 {
        return vec![0.0; rows];
    }
    let mut p = vec![0.0f32; rows * cols];
    sgemm(
        &mut p,
        cols,
        false,
        View::rows(diff, rows, cols),
        View::rows(h, cols, cols),
        1.0,
        true,
    );
    // Each row summed in order, so the result is the same from run to run
    // (AWQ picks between near ties on these).
    p.par_chunks(cols)
        .zip(diff.par_chunks(cols))
        .map(|(p, d)| {
            p.iter()
                .zip(d)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        })
        .collect()
}

/// AWQ: of the scales for each exponent in `alphas`, those with the smallest
/// output error summed over the site's matrices (ties go to the earlier).
pub fn awq_search(st: &InputStats, mats: &[SiteMatrix], alphas: &[f32]) -> Result<Choice, String> {
    let n = st.cols;
    for m in mats {
        if m.w.len() != m.rows * n {
            return Err(format!(
                "a {}-element matrix does not have {} rows of {n}",
                m.w.len(),
                m.rows
            ));
        }
    }
    let t = st.tokens.max(1) as f32;
    let h: Vec<f32> = st.xtx.iter().map(|v| v / t).collect();
    let loss_of =
        |s: &[f32]| -> Result<f64, String> { mats.iter().map(|m| rounding_loss(m, s, &h)).sum() };
    let base = loss_of(&vec![1.0; n])?;
    let mut best: Option<Choice> = None;
    for &alpha in alphas {
        let s = awq_scales(st, alpha);
        let loss = if alpha == 0.0 { base } else { loss_of(&s)? };
        if !loss.is_finite() {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|b| loss < b.loss.map_or(f64::INFINITY, |l| l.0))
        {
            best = Some(Choice {
                s,
                alpha,
                loss: Some((loss, base)),
            });
        }
    }
    Ok(best.unwrap_or(Choice {
        s: vec![1.0; n],
        alpha: 0.0,
        loss: Some((base, base)),
    }))
}

/// Folds the scaling of `site`'s inputs by 1/`s` into a block: the columns
/// of the site's matrices are multiplied by `s`, and what produces the
/// inputs is divided by it: the attention norm (Q, K, V), V's rows (O; only
/// when V has a row per column of O, i.e. without GQA), the FFN norm (gate,
/// up) or up's rows (down). The float block computes the same afterwards.
pub fn fold(site: Site, s: &[f32], w: &mut LayerF32, norms: &mut LayerNorms) -> Result<(), String> {
    let n = s.len();
    let cols = |m: &[f32]| n > 0 && m.len().is_multiple_of(n);
    // For O and down the producer's rows are the site's columns: V must have
    // n rows of n_embd (O's rows), up n rows of n_embd (down's rows).
    let ok = match site {
        Site::Qkv => cols(&w.wq) && cols(&w.wk) && cols(&w.wv) && norms.attn.len() == n,
        Site::AttnOut => cols(&w.wo) && w.wv.len() == w.wo.len(),
        Site::GateUp => cols(&w.w_gate) && cols(&w.w_up) && norms.ffn.len() == n,
        Site::Down => cols(&w.w_down) && w.w_up.len() == w.w_down.len(),
    };
    if !ok {
        return Err(format!(
            "{site:?}: {n} scales do not fit the block's shapes"
        ));
    }
    match site {
        Site::Qkv => {
            for m in [&mut w.wq, &mut w.wk, &mut w.wv] {
                scale_columns(m, s);
            }
            unscale(&mut norms.attn, s);
        }
        Site::AttnOut => {
            scale_columns(&mut w.wo, s);
            unscale_rows(&mut w.wv, s);
        }
        Site::GateUp => {
            scale_columns(&mut w.w_gate, s);
            scale_columns(&mut w.w_up, s);
            unscale(&mut norms.ffn, s);
        }
        Site::Down => {
            scale_columns(&mut w.w_down, s);
            unscale_rows(&mut w.w_up, s);
        }
    }
    Ok(())
}

/// Multiplies each column j of a row-major matrix with `s.len()` columns by `s[j]`.
pub fn scale_columns(w: &mut [f32], s: &[f32]) {
    w.par_chunks_mut(s.len()).for_each(|row| {
        for (v, f) in row.iter_mut().zip(s) {
            *v *= f;
        }
    });
}

/// Divides each row j of a row-major matrix with `s.len()` rows by `s[j]`.
pub fn unscale_rows(w: &mut [f32], s: &[f32]) {
    let cols = w.len() / s.len().max(1);
    w.par_chunks_mut(cols.max(1))
        .zip(s.par_iter())
        .for_each(|(row, f)| {
            for v in row {
                *v /= f;
            }
        });
}

/// Divides a vector (a norm's weights) by `s`, element by element.
pub fn unscale(v: &mut [f32], s: &[f32]) {
    for (v, f) in v.iter_mut().zip(s) {
        *v /= f;
    }
}

/// The statistics of the inputs divided by `s`: xᵀx → S⁻¹·xᵀx·S⁻¹, max|x| → max|x|/s.
pub fn scaled_stats(st: &InputStats, s: &[f32]) -> InputStats {
    let n = st.cols;
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    let mut xtx = st.xtx.clone();
    xtx.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (v, j) in row.iter_mut().zip(&inv) {
            *v *= inv[i] * j;
        }
    });
    InputStats {
        xtx,
        cols: n,
        tokens: st.tokens,
        absmax: st.absmax.iter().zip(&inv).map(|(a, i)| a * i).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::format::TypeFormat;
    use frugal_formats::GgmlType;
    use rand::{Rng, SeedableRng};

    /// Inputs with a few outlier channels, as LLM activations have.
    fn stats(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, InputStats) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let gain: Vec<f32> = (0..cols)
            .map(|j| {
                if j % 37 == 5 {
                    30.0
                } else {
                    rng.gen_range(0.2..2.0)
                }
            })
            .collect();
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| rng.gen_range(-1.0f32..1.0) * gain[i % cols])
            .collect();
        let mut st = InputStats::new(cols);
        for r in x.chunks_exact(cols) {
            for i in 0..cols {
                st.absmax[i] = st.absmax[i].max(r[i].abs());
                for j in 0..cols {
                    st.xtx[i * cols + j] += r[i] * r[j];
                }
            }
        }
        st.tokens = rows;
        (x, st)
    }

    #[test]
    fn awq_never_loses_to_rounding_and_helps_with_outliers() {
        let cols = 128;
        let (_, st) = stats(400, cols, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let w: Vec<f32> = (0..64 * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let fmt = TypeFormat::new(GgmlType::Q4_0).unwrap();
        let m = [SiteMatrix {
            w: &w,
            rows: 64,
            fmt: &fmt,
        }];
        let c = choose(&Scaling::awq(), &st, &m).unwrap().unwrap();
        let (loss, base) = c.loss.unwrap();
        assert!(loss <= base);
        assert!(
            c.alpha > 0.0 && loss < 0.9 * base,
            "α {} loss {loss} vs {base}",
            c.alpha
        );
        // The reported loss is the loss of the returned scales.
        let t = st.tokens as f32;
        let h: Vec<f32> = st.xtx.iter().map(|v| v / t).collect();
        let again = rounding_loss(&m[0], &c.s, &h).unwrap();
        assert!((again - loss).abs() <= 1e-6 * loss.max(1e-12));
    }

    /// Σ over tokens and rows of (ΔW·x)² / tokens, from the inputs themselves.
    fn direct_loss(x: &[f32], w: &[f32], rows: usize, s: &[f32], fmt: &dyn Format) -> f64 {
        let cols = s.len();
        let mut ws = w.to_vec();
        scale_columns(&mut ws, s);
        let b = Rtn.quantize(&ws, rows, cols, fmt, None).unwrap();
        frugal_kernels::dequantize_rows(fmt.ty(), &b, &mut ws, cols).unwrap();
        let mut e = 0.0f64;
        for t in x.chunks_exact(cols) {
            for r in 0..rows {
                let d: f64 = (0..cols)
                    .map(|j| (ws[r * cols + j] / s[j] - w[r * cols + j]) as f64 * t[j] as f64)
                    .sum();
                e += d * d;
            }
        }
        e / (x.len() / cols) as f64
    }

    #[test]
    fn the_loss_is_the_output_error_on_the_inputs() {
        let cols = 64;
        let (x, st) = stats(200, cols, 8);
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let w: Vec<f32> = (0..16 * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let fmt = TypeFormat::new(GgmlType::Q4_1).unwrap();
        let m = SiteMatrix {
            w: &w,
            rows: 16,
            fmt: &fmt,
        };
        let h: Vec<f32> = st.xtx.iter().map(|v| v / st.tokens as f32).collect();
        for alpha in [0.0, 0.3, 0.7] {
            let s = awq_scales(&st, alpha);
            let (got, want) = (
                rounding_loss(&m, &s, &h).unwrap(),
                direct_loss(&x, &w, 16, &s, &fmt),
            );
            assert!(
                (got - want).abs() <= 1e-3 * want,
                "α {alpha}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn folding_into_v_keeps_attention_without_gqa() {
        // O·(P·(V·x)) for attention weights P: scaling V's rows by 1/s and
        // O's columns by s changes nothing.
        let (d, n, t) = (8, 6, 5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut r =
            |k: usize| -> Vec<f32> { (0..k).map(|_| rng.gen_range(-1.0f32..1.0)).collect() };
        let mut w = LayerF32 {
            wq: r(n * d),
            wk: r(n * d),
            wv: r(n * d),
            wo: r(d * n),
            w_gate: Vec::new(),
            w_up: Vec::new(),
            w_down: Vec::new(),
        };
        let x = r(t * d);
        let p: Vec<f32> = r(t * t).iter().map(|v| v.abs()).collect();
        let out = |w: &LayerF32| -> Vec<f32> {
            let v = crate::calib::linear(&x, t, &w.wv, n, None);
            let mut a = vec![0.0f32; t * n];
            for i in 0..t {
                for k in 0..t {
                    for j in 0..n {
                        a[i * n + j] += p[i * t + k] * v[k * n + j];
                    }
                }
            }
            crate::calib::linear(&a, t, &w.wo, d, None)
        };
        let before = out(&w);
        let s: Vec<f32> = (0..n).map(|j| 0.3 + j as f32).collect();
        let mut norms = LayerNorms::default();
        fold(Site::AttnOut, &s, &mut w, &mut norms).unwrap();
        for (a, b) in before.iter().zip(out(&w)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // V with fewer rows than O's columns (GQA) cannot take the scales.
        w.wv.truncate(n / 2 * d);
        assert!(fold(Site::AttnOut, &s, &mut w, &mut norms).is_err());
    }

    #[test]
    fn scaled_stats_are_the_stats_of_scaled_inputs() {
        let cols = 16;
        let (x, st) = stats(50, cols, 4);
        let s: Vec<f32> = (0..cols).map(|j| 0.5 + j as f32 * 0.25).collect();
        let xs: Vec<f32> = x.iter().enumerate().map(|(i, v)| v / s[i % cols]).collect();
        let mut want = InputStats::new(cols);
        for r in xs.chunks_exact(cols) {
            for i in 0..cols {
                want.absmax[i] = want.absmax[i].max(r[i].abs());
                for j in 0..cols {
                    want.xtx[i * cols + j] += r[i] * r[j];
                }
            }
        }
        let got = scaled_stats(&st, &s);
        for (a, b) in got.xtx.iter().zip(&want.xtx) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
        }
        for (a, b) in got.absmax.iter().zip(&want.absmax) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
        }
    }

    #[test]
    fn smoothquant_evens_out_the_activation_maxima() {
        let cols = 128;
        let (_, st) = stats(300, cols, 5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let w: Vec<f32> = (0..32 * cols)
            .map(|_| rng.gen_range(-0.1f32..0.1))
            .collect();
        let fmt = TypeFormat::new(GgmlType::Frugal(frugal_formats::FrugalType::W8Row)).unwrap();
        let m = [SiteMatrix {
            w: &w,
            rows: 32,
            fmt: &fmt,
        }];
        let c = choose(&Scaling::SmoothQuant { alpha: 0.5 }, &st, &m)
            .unwrap()
            .unwrap();
        let spread = |v: &[f32]| {
            let hi = v.iter().copied().fold(0.0f32, f32::max);
            let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
            hi / lo
        };
        let after = scaled_stats(&st, &c.s).absmax;
        assert!(
            spread(&after) < 0.5 * spread(&st.absmax),
            "spread {} -> {}",
            spread(&st.absmax),
            spread(&after)
        );
        // The largest channel shrinks: max|x_j|/s_j = max|x_j|^(1-α)·max|W_j|^(1-α).
        let hi = |v: &[f32]| v.iter().copied().fold(0.0f32, f32::max);
        assert!(hi(&after) < hi(&st.absmax));
    }
}
