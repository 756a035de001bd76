//! Per-token math: log-softmax statistics of a logit row, exact KL over the
//! whole vocabulary, KL against a saved top-k base with one tail bucket, and
//! the top-k extraction that produces what is saved.
//!
//! Loops over the vocabulary run in 8 independent lanes so the compiler
//! vectorizes them; sums are kept in f64 so a 150k-token vocabulary adds up
//! exactly enough for KL values of 1e-4.

use std::collections::BinaryHeap;

const LANES: usize = 8;

/// e^x in f32 without a libm call (Cephes' expf: range reduction by ln 2 and
/// a degree-6 polynomial, relative error about 2e-7), branch-free so loops
/// over it vectorize. Arguments below -87 give 2^-126 instead of 0; those
/// terms are far below anything the sums can see.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits((((n as i32) + 127) << 23) as u32)
}

/// What a logit row's softmax needs: its maximum, the first index holding it,
/// and ln Σ exp(l − max).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStats {
    pub max: f32,
    pub argmax: u32,
    pub ln_sum: f64,
}

impl RowStats {
    /// ln of the softmax normalizer: log p_i = l_i − log_norm.
    pub fn log_norm(&self) -> f64 {
        self.max as f64 + self.ln_sum
    }
}

/// Maximum of `row`, or `None` if the row is empty or holds a NaN or an infinity.
fn finite_max(row: &[f32]) -> Option<f32> {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut s = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
            // A NaN or an infinity anywhere makes this sum non-finite.
            s[l] += c[l] * 0.0;
        }
    }
    for &v in rest {
        m[0] = if v > m[0] { v } else { m[0] };
        s[0] += v * 0.0;
    }
    let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let ok = s.iter().all(|v| *v == 0.0) && max.is_finite();
    ok.then_some(max)
}

/// Σ exp(l − max) over `row`, in f64.
pub fn sum_exp(row: &[f32], max: f32) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += exp_f32(c[l] - max) as f64;
        }
    }
    for &v in rest {
        acc[0] += exp_f32(v - max) as f64;
    }
    acc.iter().sum()
}

/// Max, argmax and log-sum of a logit row; `None` when the row holds a
/// non-finite value (a broken model must not give a finite-looking KLD).
pub fn row_stats(row: &[f32]) -> Option<RowStats> {
    let max = finite_max(row)?;
    let argmax = row.iter().position(|&v| v == max)? as u32;
    Some(RowStats {
        max,
        argmax,
        ln_sum: sum_exp(row, max).ln(),
    })
}

/// The numbers one scored token contributes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenStats {
    /// KL(base ‖ model) in nats.
    pub kld: f64,
    /// −log p_model(correct token).
    pub nll_model: f64,
    /// −log p_base(correct token).
    pub nll_base: f64,
    /// p_model(correct) − p_base(correct).
    pub p_diff: f64,
    /// The model's most likely token is the base's.
    pub same_top: bool,
}

/// Exact KL(base ‖ model) over the whole vocabulary, with the perplexity
/// terms. `None` if either row holds a non-finite logit (or they differ in
/// length).
///
/// One pass after the maxima: with e_i = exp(b_i − max_b), S_b = Σ e_i and
/// c = log Z_b − log Z_m, KL = Σ e_i (b_i − m_i) / S_b − c. The weights are
/// normalized by the very sum they came from, so exp's rounding cancels and
/// the result keeps its digits even for KL near 1e-6.
pub fn exact_token(base: &[f32], model: &[f32], target: u32) -> Option<TokenStats> {
    if base.len() != model.len() {
        return None;
    }
    let mb = finite_max(base)?;
    let mm = finite_max(model)?;
    // Blocks of BLOCK elements sum in f32 lanes, then into f64.
    const BLOCK: usize = 8 * LANES;
    let (mut sb, mut sm, mut x) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
    let bc = base.chunks_exact(BLOCK);
    let mc = model.chunks_exact(BLOCK);
    let (br, mr) = (bc.remainder(), mc.remainder());
    for (bb, mb_) in bc.zip(mc) {
        let (mut fb, mut fm, mut fx) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
        for (b8, m8) in bb.chunks_exact(LANES).zip(mb_.chunks_exact(LANES)) {
            for l in 0..LANES {
                let eb = exp_f32(b8[l] - mb);
                fb[l] += eb;
                fm[l] += exp_f32(m8[l] - mm);
                fx[l] += eb * (b8[l] - m8[l]);
            }
        }
        for l in 0..LANES {
            sb[l] += fb[l] as f64;
            sm[l] += fm[l] as f64;
            x[l] += fx[l] as f64;
        }
    }
    for (&b, &m) in br.iter().zip(mr) {
        let eb = exp_f32(b - mb) as f64;
        sb[0] += eb;
        sm[0] += exp_f32(m - mm) as f64;
        x[0] += eb * (b - m) as f64;
    }
    let (sb, sm, x): (f64, f64, f64) = (sb.iter().sum(), sm.iter().sum(), x.iter().sum());
    let (lzb, lzm) = (mb as f64 + sb.ln(), mm as f64 + sm.ln());
    let kld = x / sb - (lzb - lzm);
    let t = target as usize;
    let nll_model = lzm - model[t] as f64;
    let nll_base = lzb - base[t] as f64;
    let argmax_b = base.iter().position(|&v| v == mb)?;
    let argmax_m = model.iter().position(|&v| v == mm)?;
    Some(TokenStats {
        kld,
        nll_model,
        nll_base,
        p_diff: (-nll_model).exp() - (-nll_base).exp(),
        same_top: argmax_b == argmax_m,
    })
}

/// One scored token of a saved base: the top-k tokens (best first) with
/// their log-probabilities, the log-probability of the correct token, and
/// the log of the probability left outside the top k (−∞ when none is).
#[derive(Clone, Copy, Debug)]
pub struct BaseToken<'a> {
    pub ids: &'a [u32],
    pub lps: &'a [f32],
    pub target_lp: f32,
    pub tail_lp: f32,
}

/// Σ exp(row_i − max) over the indices not in `sorted_ids` (ascending,
/// unique), summed over the gaps between them so no cancellation occurs.
fn sum_exp_outside(row: &[f32], max: f32, sorted_ids: &[u32]) -> f64 {
    let mut start = 0usize;
    let mut s = 0.0f64;
    for &id in sorted_ids {
        let id = id as usize;
        if id > start {
            s += sum_exp(&row[start..id], max);
        }
        start = start.max(id + 1);
    }
    if start < row.len() {
        s += sum_exp(&row[start..], max);
    }
    s
}

/// KL(base ‖ model) with the base known only on its top k plus one tail
/// bucket: Σ_top p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail),
/// q from the model's full softmax. Merging tokens into one bucket can only
/// lower KL (log-sum inequality), so this is a lower bound of the exact KL
/// that tightens as k grows and equals it when the top k hold every token.
/// `scratch` is reused between calls. `None` for a non-finite model logit.
pub fn topk_token(
    base: BaseToken,
    model: &[f32],
    target: u32,
    scratch: &mut Vec<u32>,
) -> Option<TokenStats> {
    let max = finite_max(model)?;
    let argmax = model.iter().position(|&v| v == max)? as u32;
    scratch.clear();
    scratch.extend_from_slice(base.ids);
    scratch.sort_unstable();
    scratch.dedup();
    let tail = sum_exp_outside(model, max, scratch);
    let top: f64 = scratch
        .iter()
        .map(|&i| exp_f32(model[i as usize] - max) as f64)
        .sum();
    let ln_sum = (tail + top).ln();
    let lzm = max as f64 + ln_sum;
    let mut kld = 0.0f64;
    for (&id, &lp) in base.ids.iter().zip(base.lps) {
        let lp = lp as f64;
        kld += lp.exp() * (lp - (model[id as usize] as f64 - lzm));
    }
    let tail_lp = base.tail_lp as f64;
    if tail_lp > f64::NEG_INFINITY {
        kld += tail_lp.exp() * (tail_lp - (tail.ln() - ln_sum));
    }
    let nll_model = lzm - model[target as usize] as f64;
    let nll_base = -(base.target_lp as f64);
    Some(TokenStats {
        kld,
        nll_model,
        nll_base,
        p_diff: (-nll_model).exp() - (-nll_base).exp(),
        same_top: base.ids.first() == Some(&argmax),
    })
}

/// A heap entry ordered so that the heap's top is the worst kept token
/// (lowest logit; among equal logits, the highest id).
#[derive(Clone, Copy, PartialEq)]
struct Worst {
    logit: f32,
    id: u32,
}

impl Eq for Worst {}

impl Ord for Worst {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.logit.total_cmp(&self.logit).then(self.id.cmp(&o.id))
    }
}

impl PartialOrd for Worst {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// What is saved for one token of a base row: appends the top `k` ids (best
/// first, ties by lower id, like an argmax) and their log-probabilities to
/// `ids`/`lps`, and returns (log p(target), log p(tail)). `None` for a
/// non-finite logit. `k` must be at least 1 and at most the row length.
pub fn extract_top_k(
    row: &[f32],
    k: usize,
    target: u32,
    ids: &mut Vec<u32>,
    lps: &mut Vec<f32>,
    scratch: &mut Vec<u32>,
) -> Option<(f32, f32)> {
    let max = finite_max(row)?;
    let k = k.clamp(1, row.len());
    let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
    for (i, &l) in row.iter().enumerate() {
        if heap.len() < k {
            heap.push(Worst {
                logit: l,
                id: i as u32,
            });
        } else if let Some(mut w) = heap.peek_mut() {
            // Scanning ids upwards, an equal logit never beats a kept one.
            if l > w.logit {
                *w = Worst {
                    logit: l,
                    id: i as u32,
                };
            }
        }
    }
    let top = heap.into_sorted_vec();
    scratch.clear();
    scratch.extend(top.iter().map(|w| w.id));
    scratch.sort_unstable();
    let tail = sum_exp_outside(row, max, scratch);
    let top_sum: f64 = top.iter().map(|w| exp_f32(w.logit - max) as f64).sum();
    let ln_sum = (tail + top_sum).ln();
    for w in &top {
        ids.push(w.id);
        lps.push(((w.logit - max) as f64 - ln_sum) as f32);
    }
    let target_lp = ((row[target as usize] - max) as f64 - ln_sum) as f32;
    let tail_lp = if tail > 0.0 {
        (tail.ln() - ln_sum) as f32
    } else {
        f32::NEG_INFINITY
    };
    Some((target_lp, tail_lp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 20.0 {
            let want = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn row_stats_finds_first_max_and_rejects_non_finite() {
        let r = row_stats(&[1.0, 3.0, 2.0, 3.0]).unwrap();
        assert_eq!(r.argmax, 1);
        assert_eq!(r.max, 3.0);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0]
            .iter()
            .map(|v| (v - 3.0).exp())
            .sum();
        assert!((r.ln_sum - z.ln()).abs() < 1e-7);
        let mut long = vec![0.5f32; 37];
        assert!(row_stats(&long).is_some());
        long[33] = f32::NAN;
        assert!(row_stats(&long).is_none());
        long[33] = f32::INFINITY;
        assert!(row_stats(&long).is_none());
        long[33] = f32::NEG_INFINITY;
        assert!(row_stats(&long).is_none());
        assert!(row_stats(&[]).is_none());
    }

    #[test]
    fn extraction_keeps_the_best_with_argmax_ties() {
        let row = [0.0f32, 5.0, 1.0, 5.0, 4.0, -2.0];
        let (mut ids, mut lps, mut s) = (vec![], vec![], vec![]);
        let (t, tail) = extract_top_k(&row, 3, 2, &mut ids, &mut lps, &mut s).unwrap();
        assert_eq!(ids, [1, 3, 4]);
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lps[0] as f64 - (5.0 - z.ln())).abs() < 1e-6);
        assert!((t as f64 - (1.0 - z.ln())).abs() < 1e-6);
        let tail_p = (0f64.exp() + 1f64.exp() + (-2f64).exp()) / z;
        assert!((tail as f64 - tail_p.ln()).abs() < 1e-6);
        // k = vocabulary: no tail.
        ids.clear();
        lps.clear();
        let (_, tail) = extract_top_k(&row, 6, 0, &mut ids, &mut lps, &mut s).unwrap();
        assert_eq!(tail, f32::NEG_INFINITY);
        assert_eq!(ids, [1, 3, 4, 2, 0, 5]);
    }
}
