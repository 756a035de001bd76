//! Pruning: which weights become zero, and (for SparseGPT) how the weights
//! that stay make up for them.
//!
//! Three criteria score each weight of a `rows × cols` matrix:
//! * magnitude: |W_ij|;
//! * Wanda (Sun et al., 2023): |W_ij|·‖X_j‖, the weight times the norm of
//!   its input channel over the calibration tokens;
//! * SparseGPT (Frantar & Alistarh, 2023): the OBS saliency W_ij²/[H⁻¹]_jj,
//!   chosen block by block during a GPTQ-style column sweep that updates the
//!   remaining weights to absorb each pruned weight's error
//!   (see [`crate::quant::gptq`], which does the sweep).
//!
//! The weights with the lowest scores are pruned *within each output row*
//! (Wanda's comparison group), so every row keeps the same number of weights:
//! that is what lets a sparse storage format give rows a fixed size. With
//! an N:M pattern, every run of M consecutive weights of a row keeps N.

pub mod owl;
pub mod structured;

use crate::quant::gptq::{self, ObsMask};
use crate::quant::InputStats;
use rayon::prelude::*;

/// Which weights of a row may be pruned together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// This fraction of each row, anywhere in it.
    Unstructured(f32),
    /// `n` weights kept out of every `m` consecutive ones (2:4, 4:8).
    NM { n: usize, m: usize },
}

impl Pattern {
    /// Unstructured `ratio` in (0, 1), or `N:M` with 0 < N < M ≤ 64.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if let Some((n, m)) = s.split_once(':') {
            let (n, m) = (
                n.trim().parse::<usize>().map_err(|_| bad_nm(s))?,
                m.trim().parse::<usize>().map_err(|_| bad_nm(s))?,
            );
            let p = Pattern::NM { n, m };
            p.validate()?;
            return Ok(p);
        }
        let r: f32 = s.trim().parse().map_err(|_| {
            format!("sparsity `{s}`: give a fraction such as 0.5, or N:M such as 2:4")
        })?;
        let p = Pattern::Unstructured(r);
        p.validate()?;
        Ok(p)
    }

    /// The pattern's own bounds (a ratio in (0, 1); 0 < N < M ≤ 64).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Pattern::Unstructured(r) if !(r > 0.0 && r < 1.0) => Err(format!(
                "sparsity {r}: the fraction of weights to prune must be in (0, 1)"
            )),
            Pattern::NM { n, m } if n == 0 || n >= m || m > 64 => Err(format!(
                "{n}:{m}: N:M keeps N of every M weights, with 0 < N < M ≤ 64"
            )),
            _ => Ok(()),
        }
    }

    /// Whether rows of `cols` weights can take the pattern.
    pub fn check_cols(&self, cols: usize) -> Result<(), String> {
        match *self {
            Pattern::NM { n, m } if !cols.is_multiple_of(m) => Err(format!(
                "{n}:{m} does not divide rows of {cols} weights into groups of {m}"
            )),
            _ => Ok(()),
        }
    }

    /// The fraction of weights pruned.
    pub fn ratio(&self) -> f32 {
        match *self {
            Pattern::Unstructured(r) => r,
            Pattern::NM { n, m } => 1.0 - n as f32 / m as f32,
        }
    }

    /// Weights pruned among the first `k` of a row (unstructured: rounded
    /// so the counts of consecutive spans add up to the row's).
    pub fn pruned_in_first(&self, k: usize) -> usize {
        match *self {
            Pattern::Unstructured(r) => (r as f64 * k as f64).round() as usize,
            Pattern::NM { n, m } => k / m * (m - n) + (k % m).saturating_sub(n),
        }
    }

    /// Marks in `pruned` the weights to prune among the columns
    /// `from..from + scores.len()` of a row, given their scores (lowest go
    /// first). `from` must start an N:M group.
    pub fn select(&self, scores: &[f32], from: usize, pruned: &mut [bool]) {
        pruned.fill(false);
        match *self {
            Pattern::Unstructured(_) => {
                let k = self.pruned_in_first(from + scores.len()) - self.pruned_in_first(from);
                lowest(scores, k, pruned);
            }
            Pattern::NM { n, m } => {
                for (s, p) in scores.chunks(m).zip(pruned.chunks_mut(m)) {
                    lowest(s, s.len().saturating_sub(n), p);
                }
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Unstructured(r) => write!(f, "{:.0}% unstructured", r * 100.0),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

fn bad_nm(s: &str) -> String {
    format!("`{s}` is not N:M (e.g. 2:4 or 4:8)")
}

/// Marks the `k` lowest of `scores` (ties: the earlier first).
fn lowest(scores: &[f32], k: usize, pruned: &mut [bool]) {
    if k == 0 {
        return;
    }
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let key = |&i: &u32| (scores[i as usize], i);
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |a, b| {
            let (sa, ia) = key(a);
            let (sb, ib) = key(b);
            sa.total_cmp(&sb).then(ia.cmp(&ib))
        });
    }
    for &i in &idx[..k.min(idx.len())] {
        pruned[i as usize] = true;
    }
}

/// How a weight's importance is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criterion {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl Criterion {
    pub fn name(&self) -> &'static str {
        match self {
            Criterion::Magnitude => "magnitude",
            Criterion::Wanda => "wanda",
            Criterion::SparseGpt => "sparsegpt",
        }
    }

    /// Whether the criterion needs calibration statistics.
    pub fn needs_calibration(&self) -> bool {
        !matches!(self, Criterion::Magnitude)
    }
}

/// A pruning: criterion, pattern, and SparseGPT's Hessian damping.
#[derive(Clone, Copy, Debug)]
pub struct Sparsity {
    pub criterion: Criterion,
    pub pattern: Pattern,
    /// SparseGPT: damping of H, as a fraction of its mean diagonal.
    pub damp: f32,
}

impl Sparsity {
    pub fn new(criterion: Criterion, pattern: Pattern) -> Sparsity {
        Sparsity {
            criterion,
            pattern,
            damp: 0.01,
        }
    }

    /// `w` (`rows × cols`, row-major) pruned: the lowest-scoring weights of
    /// each row set to zero; with SparseGPT the others updated too.
    pub fn prune(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        stats: Option<&InputStats>,
    ) -> Result<Vec<f32>, String> {
        self.pattern.validate()?;
        self.pattern.check_cols(cols)?;
        if w.len() != rows * cols {
            return Err(format!("{} weights for a {rows} × {cols} matrix", w.len()));
        }
        let norms = match self.criterion {
            Criterion::Magnitude => None,
            Criterion::Wanda => {
                let st = crate::quant::method::require_stats(stats, cols, "Wanda")?;
                Some(
                    (0..cols)
                        .map(|j| st.xtx[j * cols + j].max(0.0).sqrt())
                        .collect::<Vec<f32>>(),
                )
            }
            Criterion::SparseGpt => {
                let st = crate::quant::method::require_stats(stats, cols, "SparseGPT")?;
                return gptq::obs_values(
                    w,
                    rows,
                    cols,
                    st,
                    ObsMask::Select(self.pattern),
                    self.damp,
                );
            }
        };
        let mut out = w.to_vec();
        out.par_chunks_mut(cols).for_each(|row| {
            let scores: Vec<f32> = match &norms {
                Some(n) => row.iter().zip(n).map(|(w, n)| w.abs() * n).collect(),
                None => row.iter().map(|w| w.abs()).collect(),
            };
            let mut pruned = vec![false; cols];
            self.pattern.select(&scores, 0, &mut pruned);
            for (x, p) in row.iter_mut().zip(&pruned) {
                if *p {
                    *x = 0.0;
                }
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
