//! OWL (Yin et al., 2024, "Outlier Weighed Layerwise sparsity"): blocks
//! with more outlier weights keep more of them.
//!
//! A block's outlier fraction is the share of its weights whose Wanda
//! score |W_ij|·‖X_j‖ exceeds `m` times the mean score of their matrix.
//! The fractions, rescaled to a spread of 2λ around the target, lower the
//! sparsity of outlier-rich blocks and raise it elsewhere; their mean stays
//! the target (every block has the same number of weights).

use crate::calib::{Calibration, LayerF32, LayerPass, Site};
use crate::quant::InputStats;
use frugal_model::Model;

/// OWL's two knobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Owl {
    /// A score above `m` times its matrix's mean is an outlier (the paper's M, 5).
    pub m: f32,
    /// Block sparsities span the target ± `lambda` (the paper's λ, 0.08).
    pub lambda: f32,
}

impl Default for Owl {
    fn default() -> Owl {
        Owl {
            m: 5.0,
            lambda: 0.08,
        }
    }
}

/// Outliers and weights of a `rows × cols` matrix `w` whose inputs have
/// norms `norms` (one per column).
pub fn outliers(w: &[f32], cols: usize, norms: &[f32], m: f32) -> (usize, usize) {
    let score = |i: usize, x: f32| x.abs() * norms[i % cols];
    let mean = w
        .iter()
        .enumerate()
        .map(|(i, &x)| score(i, x) as f64)
        .sum::<f64>()
        / w.len().max(1) as f64;
    let limit = m as f64 * mean;
    let n = w
        .iter()
        .enumerate()
        .filter(|&(i, &x)| score(i, x) as f64 > limit)
        .count();
    (n, w.len())
}

impl Owl {
    /// Each block's sparsity for a mean of `target`, from the blocks'
    /// outlier fractions; an error when a block would leave (0, 1).
    pub fn block_ratios(&self, fractions: &[f64], target: f32) -> Result<Vec<f32>, String> {
        let (lo, hi) = fractions
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &d| (a.min(d), b.max(d)));
        let spread = if hi > lo { hi - lo } else { 1.0 };
        let scaled: Vec<f64> = fractions
            .iter()
            .map(|&d| (d - lo) / spread * 2.0 * self.lambda as f64)
            .collect();
        let mean = scaled.iter().sum::<f64>() / scaled.len().max(1) as f64;
        let ratios: Vec<f32> = scaled
            .iter()
            .map(|&d| (target as f64 - (d - mean)) as f32)
            .collect();
        if let Some((i, r)) = ratios
            .iter()
            .enumerate()
            .find(|(_, r)| !(**r > 0.0 && **r < 1.0))
        {
            return Err(format!(
                "OWL gives block {i} a sparsity of {r:.3}: lower --owl-lambda"
            ));
        }
        Ok(ratios)
    }
}

/// The outlier fraction of every block of `model` on the calibration text
/// (one pass over the unpruned model; the paper's statistics).
pub fn block_outliers(model: &Model, calib: &Calibration, m: f32) -> Result<Vec<f64>, String> {
    let mut pass = LayerPass::new(model, calib).map_err(|e| e.to_string())?;
    let mut fractions = Vec::with_capacity(model.config.n_layer);
    for li in 0..model.config.n_layer {
        let mut w = LayerF32::of(&model.weights.layers[li]).map_err(|e| e.to_string())?;
        let (mut n, mut total) = (0usize, 0usize);
        let mut count = |site: Site, st: &InputStats, w: &mut LayerF32| {
            let cols = st.cols;
            let norms: Vec<f32> = (0..cols)
                .map(|j| st.xtx[j * cols + j].max(0.0).sqrt())
                .collect();
            let mats: Vec<&Vec<f32>> = match site {
                Site::Qkv => vec![&w.wq, &w.wk, &w.wv],
                Site::AttnOut => vec![&w.wo],
                Site::GateUp => vec![&w.w_gate, &w.w_up],
                Site::Down => vec![&w.w_down],
            };
            for mat in mats {
                let (a, b) = outliers(mat, cols, &norms, m);
                n += a;
                total += b;
            }
            Ok(())
        };
        pass.run_layer(li, &mut w, &mut count)?;
        fractions.push(n as f64 / total.max(1) as f64);
    }
    Ok(fractions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outliers_count_scores_above_m_times_the_mean() {
        // Scores 1, 1, 1, 2, 1, 1, 1, 20 (mean 3.5): 20 is above 5× the
        // mean (17.5), not above 6× (21).
        let w = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0];
        let norms = [1.0, 1.0, 1.0, 2.0];
        assert_eq!(outliers(&w, 4, &norms, 5.0), (1, 8));
        assert_eq!(outliers(&w, 4, &norms, 6.0), (0, 8));
    }

    #[test]
    fn block_ratios_keep_the_mean_and_favour_outlier_rich_blocks() {
        let owl = Owl::default();
        let r = owl.block_ratios(&[0.01, 0.03, 0.02, 0.05], 0.5).unwrap();
        let mean = r.iter().sum::<f32>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-6, "{mean}");
        // Most outliers: the lowest sparsity; the spread is 2λ.
        assert!(r[3] < r[1] && r[1] < r[2] && r[2] < r[0], "{r:?}");
        assert!((r[0] - r[3] - 0.16).abs() < 1e-6, "{r:?}");
        // Equal fractions: uniform.
        assert_eq!(owl.block_ratios(&[0.02; 3], 0.7).unwrap(), vec![0.7; 3]);
        // Out of (0, 1) is refused.
        let wide = Owl { lambda: 0.3, ..owl };
        assert!(wide.block_ratios(&[0.0, 1.0], 0.8).is_err());
    }
}
