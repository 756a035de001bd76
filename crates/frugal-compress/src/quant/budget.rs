//! Mixed precision under a bit budget (`--budget-bpw`).
//!
//! Each block matrix gets the type that buys the most accuracy per byte:
//!
//! 1. [`measure`] runs the float model over calibration text once and, for
//!    every matrix and every candidate type, rounds the matrix to nearest and
//!    estimates the squared output error that adds, Σⱼ Hⱼⱼ·‖ΔW₍:,ⱼ₎‖², with
//!    Hⱼⱼ the mean square of input channel j (the Hessian's diagonal). The
//!    error is divided by the mean square of the residual stream entering the
//!    layer, so layers are compared by the error relative to their signal.
//!    [`weigh_by_kld`] then puts these proxies on one scale that
//!    follows the model's output: for each matrix it rounds the matrix alone
//!    to a reference type (~4.5 bits), runs the rest of the model in f32 over
//!    a short calibration text and measures the KL divergence of the output
//!    distribution from the float model's. The KLD per unit of proxy error
//!    becomes the matrix's weight. The proxy is blind to where an error
//!    goes next: Q and K feed a softmax, O and down add to the residual
//!    directly, and later layers amplify or damp what earlier ones add.
//! 2. [`allocate`] starts every matrix at its cheapest type and spends the
//!    budget greedily on the upgrades with the largest error drop per extra
//!    byte (along each matrix's lower convex hull of bytes against error).

use super::format::TypeFormat;
use super::method::{InputStats, Method, Rtn};
use super::pipeline::{fit_type, matrices, slot, slot_ref, Progress};
use crate::calib::{linear, Calibration, LayerF32, LayerPass, Site};
use frugal_formats::{GgmlType, ModelSource};
use frugal_kernels::activation::exp;
use frugal_model::{rms_norm, tensor_to_f32, Model};
use rayon::prelude::*;
use std::collections::{BinaryHeap, HashMap};

/// One matrix's choices: `(type, bytes, relative output error)`, by bytes.
#[derive(Clone, Debug)]
pub struct Sensitivity {
    pub name: String,
    pub elements: usize,
    pub options: Vec<(GgmlType, usize, f64)>,
}

/// The default candidates: every ggml type llama.cpp reads, from 2 to 8 bits.
pub const GGML_LADDER: [GgmlType; 10] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4_0,
    GgmlType::Q4K,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5K,
    GgmlType::Q5_1,
    GgmlType::Q6K,
    GgmlType::Q8_0,
];

/// The squared output error of replacing `w` by `q` (both `rows × cols`),
/// weighted by each input channel's mean square `h`.
fn weighted_error(w: &[f32], q: &[f32], h: &[f64], cols: usize) -> f64 {
    let mut col = vec![0.0f64; cols];
    for (wr, qr) in w.chunks_exact(cols).zip(q.chunks_exact(cols)) {
        for ((c, a), b) in col.iter_mut().zip(wr).zip(qr) {
            let d = (a - b) as f64;
            *c += d * d;
        }
    }
    col.iter().zip(h).map(|(c, h)| c * h).sum()
}

/// Each matrix's error for each candidate type, from one float pass over `calib`.
pub fn measure(
    src: &ModelSource,
    model: &Model,
    calib: &Calibration,
    candidates: &[GgmlType],
    progress: Progress,
) -> Result<Vec<Sensitivity>, String> {
    super::pipeline::require_dense(model)?;
    let mut pass = LayerPass::new(model, calib).map_err(|e| e.to_string())?;
    let n_layer = model.config.n_layer;
    let mut out = Vec::new();
    progress(0, n_layer, "sensitivity");
    for li in 0..n_layer {
        let mats = matrices(li);
        let mut w = LayerF32::default();
        let mut dims = Vec::with_capacity(7);
        for (k, (name, _)) in mats.iter().enumerate() {
            let t = src
                .tensor(name)
                .ok_or_else(|| format!("the model has no tensor `{name}`"))?;
            *slot(&mut w, k) = tensor_to_f32(t).map_err(|e| e.to_string())?;
            dims.push(t.dims.clone());
            t.release_pages();
        }
        let hidden = pass.hidden();
        let signal = hidden.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()
            / (hidden.len().max(1) as f64);
        let signal = if signal > 0.0 { signal } else { 1.0 };
        let mut step = |site: Site, st: &InputStats, w: &mut LayerF32| -> Result<(), String> {
            let n = st.cols;
            let h: Vec<f64> = (0..n)
                .map(|j| st.xtx[j * n + j] as f64 / st.tokens.max(1) as f64)
                .collect();
            for (k, (name, s)) in mats.iter().enumerate() {
                if *s != site {
                    continue;
                }
                let (cols, rows) = (dims[k][0], dims[k][1..].iter().product::<usize>());
                let mut options: Vec<(GgmlType, usize, f64)> = Vec::new();
                for &want in candidates {
                    let ty = fit_type(want, cols);
                    if options.iter().any(|o| o.0 == ty) {
                        continue;
                    }
                    let Ok(fmt) = TypeFormat::new(ty) else {
                        continue;
                    };
                    if ty.row_bytes(cols as u64).is_none() {
                        continue;
                    }
                    let bytes = Rtn
                        .quantize(slot_ref(w, k), rows, cols, &fmt, None)
                        .map_err(|e| format!("{name}: {e}"))?;
                    let mut back = vec![0.0f32; rows * cols];
                    frugal_kernels::dequantize_rows(ty, &bytes, &mut back, cols)
                        .map_err(|e| format!("{name}: {e}"))?;
                    let err = weighted_error(slot_ref(w, k), &back, &h, cols) / signal;
                    options.push((ty, bytes.len(), err));
                }
                if options.is_empty() {
                    return Err(format!("{name}: no candidate type fits rows of {cols}"));
                }
                options.sort_by_key(|o| o.1);
                out.push(Sensitivity {
                    name: name.clone(),
                    elements: rows * cols,
                    options,
                });
            }
            Ok(())
        };
        pass.run_layer(li, &mut w, &mut step)?;
        progress(li + 1, n_layer, "sensitivity");
    }
    Ok(out)
}

/// The option whose effect [`weigh_by_kld`] measures: the largest one of at
/// most 4.5 bits per weight (the region where a budget's choices are made),
/// and of those the one with the largest error, so that a type that happens
/// to give the source back (a dequantized base's own grid) is not the yardstick.
fn reference(s: &Sensitivity) -> usize {
    let bpw = |o: &(GgmlType, usize, f64)| o.1 as f64 * 8.0 / s.elements.max(1) as f64;
    let fits: Vec<usize> = (0..s.options.len())
        .filter(|&i| bpw(&s.options[i]) <= 4.5 + 1e-9)
        .collect();
    let Some(&top) = fits.iter().max_by_key(|&&i| s.options[i].1) else {
        return 0; // options are sorted by bytes: the cheapest
    };
    let size = s.options[top].1;
    fits.into_iter()
        .filter(|&i| s.options[i].1 == size)
        .max_by(|&a, &b| s.options[a].2.total_cmp(&s.options[b].2))
        .unwrap_or(top)
}

/// Row-wise `log Σ exp(z)`.
fn log_sum_exp(z: &[f32]) -> f64 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = z.iter().map(|&v| exp(v - max) as f64).sum();
    max as f64 + sum.ln()
}

/// Logits of the final residual stream `x` (n × n_embd), `ROWS` tokens at a
/// time, handed to `f(first_token, logits)`.
fn for_logits(model: &Model, out: &[f32], x: &[f32], f: &mut dyn FnMut(usize, &[f32])) {
    const ROWS: usize = 64;
    let c = &model.config;
    let (d, vocab) = (c.n_embd, c.n_vocab);
    let n = x.len() / d;
    let mut xn = vec![0.0f32; ROWS * d];
    for a in (0..n).step_by(ROWS) {
        let b = (a + ROWS).min(n);
        let xn = &mut xn[..(b - a) * d];
        rms_norm(&x[a * d..b * d], &model.weights.output_norm, c.rms_eps, xn);
        let z = linear(xn, b - a, out, vocab, None);
        f(a, &z);
    }
}

/// Calibration tokens that [`weigh_by_kld`] runs through the model at once:
/// more are measured group by group, so memory does not grow with them.
pub const KLD_GROUP_TOKENS: usize = 512;

/// Bytes that [`weigh_by_kld`] holds at its peak over `calib` with
/// `n_matrices` measured matrices: for its largest group of tokens, a
/// residual stream per matrix and one for the float model, and the float
/// model's next-token probabilities; and the output matrix in f32.
pub fn kld_memory_bytes(model: &Model, calib: &Calibration, n_matrices: usize) -> u64 {
    let c = &model.config;
    let n = calib
        .groups(KLD_GROUP_TOKENS)
        .iter()
        .map(|g| g.n_tokens())
        .max()
        .unwrap_or(0) as u64;
    let (d, vocab) = (c.n_embd as u64, c.n_vocab as u64);
    4 * ((n_matrices as u64 + 1) * n * d + n * vocab + vocab * d)
}

/// Puts every matrix's proxy errors on the scale of the model's output: the
/// matrix is rounded alone to its [`reference`] type, the float model runs
/// on from there over `calib`, and the mean KL divergence of the next-token
/// distributions from the float model's, divided by the reference's proxy
/// error, scales all of the matrix's options. A matrix whose reference
/// error is zero gets the median scale; none gets less than a thousandth of
/// it, so that a measured KLD of about zero still orders the matrix's
/// options instead of flattening them.
pub fn weigh_by_kld(
    src: &ModelSource,
    model: &Model,
    calib: &Calibration,
    sens: &mut [Sensitivity],
    progress: Progress,
) -> Result<(), String> {
    super::pipeline::require_dense(model)?;
    let groups = calib.groups(KLD_GROUP_TOKENS);
    // Steps per group: one per block, then one per matrix's logits and KLD.
    let per_group = model.config.n_layer + sens.len();
    let steps = groups.len() * per_group;
    progress(0, steps, "kld sensitivity");
    // Per matrix: its reference error and the summed KLD over all tokens.
    let mut sums: Vec<Option<(f64, f64)>> = vec![None; sens.len()];
    let out = tensor_to_f32(&model.weights.output).map_err(|e| e.to_string())?;
    for (g, group) in groups.iter().enumerate() {
        let mut step = |s: usize| progress(g * per_group + s, steps, "kld sensitivity");
        for (i, err, kld) in kld_sums(src, model, &out, group, sens, &mut step)? {
            sums[i].get_or_insert((err, 0.0)).1 += kld;
        }
    }
    progress(steps, steps, "kld sensitivity");
    let n = calib.n_tokens().max(1) as f64;
    let scale: Vec<Option<f64>> = sums
        .into_iter()
        .map(|s| match s {
            Some((err, kld)) if err > 0.0 => Some((kld / n).max(0.0) / err),
            _ => None,
        })
        .collect();
    let mut known: Vec<f64> = scale.iter().flatten().copied().collect();
    known.sort_by(f64::total_cmp);
    let median = known.get(known.len() / 2).copied().unwrap_or(1.0);
    let floor = median * 1e-3;
    for (s, c) in sens.iter_mut().zip(scale) {
        let c = c.unwrap_or(median).max(floor);
        for o in s.options.iter_mut() {
            o.2 *= c;
        }
    }
    Ok(())
}

/// For one group of calibration sequences: per measured matrix, (its index
/// in `sens`, its reference error, the KL divergence summed over the
/// group's tokens). All forks advance together, one block at a time, so each
/// block's weights are read once; memory is one residual stream per matrix.
/// `out` is the output matrix in f32.
fn kld_sums(
    src: &ModelSource,
    model: &Model,
    out: &[f32],
    calib: &Calibration,
    sens: &[Sensitivity],
    step: &mut dyn FnMut(usize),
) -> Result<Vec<(usize, f64, f64)>, String> {
    let n_layer = model.config.n_layer;
    let index: HashMap<&str, usize> = sens
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut base = LayerPass::new(model, calib).map_err(|e| e.to_string())?;
    // (matrix, its reference error, the stream with it rounded).
    let mut forks: Vec<(usize, f64, LayerPass)> = Vec::new();
    for li in 0..n_layer {
        let mats = matrices(li);
        let mut w = LayerF32::default();
        for (k, (name, _)) in mats.iter().enumerate() {
            let t = src
                .tensor(name)
                .ok_or_else(|| format!("the model has no tensor `{name}`"))?;
            *slot(&mut w, k) = tensor_to_f32(t).map_err(|e| e.to_string())?;
            t.release_pages();
        }
        let mut born = Vec::new();
        for (k, (name, _)) in mats.iter().enumerate() {
            let Some(&i) = index.get(name.as_str()) else {
                continue;
            };
            let (ty, _, err) = sens[i].options[reference(&sens[i])];
            let cols = src.tensor(name).map(|t| t.dims[0]).unwrap_or(0);
            let rows = slot_ref(&w, k).len() / cols.max(1);
            let fmt = TypeFormat::new(ty).map_err(|_| format!("{name}: {ty} has no quantizer"))?;
            let bytes = Rtn
                .quantize(slot_ref(&w, k), rows, cols, &fmt, None)
                .map_err(|e| format!("{name}: {e}"))?;
            let mut back = vec![0.0f32; rows * cols];
            frugal_kernels::dequantize_rows(ty, &bytes, &mut back, cols)
                .map_err(|e| format!("{name}: {e}"))?;
            let float = std::mem::replace(slot(&mut w, k), back);
            let mut fork = base.clone();
            fork.run_layer_plain(li, &w);
            *slot(&mut w, k) = float;
            born.push((i, err, fork));
        }
        for (_, _, f) in forks.iter_mut() {
            f.run_layer_plain(li, &w);
        }
        base.run_layer_plain(li, &w);
        forks.append(&mut born);
        step(li + 1);
    }

    // The float model's next-token distributions p (stored in f32), and per
    // token Σ p·ln p and Σ p, the latter so that p's rounding does not bias
    // the small divergences of insensitive matrices.
    let vocab = model.config.n_vocab;
    let n = base.n_tokens();
    let mut p = vec![0.0f32; n * vocab];
    let mut neg_entropy = vec![0.0f64; n];
    let mut mass = vec![0.0f64; n];
    for_logits(model, out, base.hidden(), &mut |a, z| {
        let rows = z.len() / vocab;
        p[a * vocab..(a + rows) * vocab]
            .par_chunks_exact_mut(vocab)
            .zip(z.par_chunks_exact(vocab))
            .zip(neg_entropy[a..a + rows].par_iter_mut())
            .zip(mass[a..a + rows].par_iter_mut())
            .for_each(|(((pr, row), ne), m)| {
                let lse = log_sum_exp(row);
                let (mut s, mut sum) = (0.0f64, 0.0f64);
                for (pv, &zv) in pr.iter_mut().zip(row) {
                    let lp = zv as f64 - lse;
                    *pv = exp(lp as f32);
                    s += *pv as f64 * lp;
                    sum += *pv as f64;
                }
                *ne = s;
                *m = sum;
            });
    });
    drop(base);

    // KL(p‖q) = Σ p ln p − Σ p·z + (Σ p)·log Σ exp(z), per token.
    let mut sums = Vec::with_capacity(forks.len());
    for (j, (i, err, fork)) in forks.into_iter().enumerate() {
        let mut kld = 0.0f64;
        for_logits(model, out, fork.hidden(), &mut |a, z| {
            kld += z
                .par_chunks_exact(vocab)
                .enumerate()
                .map(|(r, row)| {
                    let pr = &p[(a + r) * vocab..(a + r + 1) * vocab];
                    let pz: f64 = pr.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum();
                    neg_entropy[a + r] - pz + mass[a + r] * log_sum_exp(row)
                })
                .sum::<f64>();
        });
        if !kld.is_finite() {
            return Err(format!(
                "{}: the KL divergence with it rounded is {kld} (the model's output overflows)",
                sens[i].name
            ));
        }
        sums.push((i, err, kld));
        step(n_layer + j + 1);
    }
    Ok(sums)
}

/// The options of one matrix on the lower convex hull of (bytes, error):
/// the only ones a greedy spender should step through.
fn hull(options: &[(GgmlType, usize, f64)]) -> Vec<usize> {
    let mut h: Vec<usize> = Vec::new();
    for (i, o) in options.iter().enumerate() {
        // Dominated: no cheaper in error than something no bigger.
        if let Some(&last) = h.last() {
            if o.2 >= options[last].2 {
                continue;
            }
            if o.1 == options[last].1 {
                h.pop();
            }
        }
        while h.len() >= 2 {
            let (a, b) = (&options[h[h.len() - 2]], &options[h[h.len() - 1]]);
            // Slope a→b must be steeper (more error saved per byte) than b→o.
            let s_ab = (a.2 - b.2) / (b.1 - a.1) as f64;
            let s_bo = (b.2 - o.2) / (o.1 - b.1) as f64;
            if s_bo >= s_ab {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

struct Step {
    gain: f64,
    matrix: usize,
}

impl PartialEq for Step {
    fn eq(&self, o: &Self) -> bool {
        self.gain == o.gain && self.matrix == o.matrix
    }
}
impl Eq for Step {}
impl PartialOrd for Step {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Step {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.gain
            .total_cmp(&o.gain)
            .then(o.matrix.cmp(&self.matrix))
    }
}

/// A type per matrix with at most `bpw` bits per weight over all of them,
/// spending the bits where they cut the most error. Errors if even the
/// cheapest types exceed the budget.
pub fn allocate(sens: &[Sensitivity], bpw: f64) -> Result<HashMap<String, GgmlType>, String> {
    let elements: usize = sens.iter().map(|s| s.elements).sum();
    let budget = (bpw * elements as f64 / 8.0).floor() as usize;
    let hulls: Vec<Vec<usize>> = sens.iter().map(|s| hull(&s.options)).collect();
    let mut at = vec![0usize; sens.len()];
    let mut used: usize = sens
        .iter()
        .zip(&hulls)
        .map(|(s, h)| s.options[h[0]].1)
        .sum();
    if used > budget {
        return Err(format!(
            "--budget-bpw {bpw}: the smallest candidate types already need {:.2} bits per weight",
            used as f64 * 8.0 / elements as f64
        ));
    }
    let gain = |m: usize, at: usize| -> Option<Step> {
        let h = &hulls[m];
        let (a, b) = (
            sens[m].options[*h.get(at)?],
            sens[m].options[*h.get(at + 1)?],
        );
        Some(Step {
            gain: (a.2 - b.2) / (b.1 - a.1) as f64,
            matrix: m,
        })
    };
    let mut heap: BinaryHeap<Step> = (0..sens.len()).filter_map(|m| gain(m, 0)).collect();
    while let Some(Step { matrix: m, .. }) = heap.pop() {
        let h = &hulls[m];
        let extra = sens[m].options[h[at[m] + 1]].1 - sens[m].options[h[at[m]]].1;
        if used + extra > budget {
            continue;
        }
        used += extra;
        at[m] += 1;
        if let Some(s) = gain(m, at[m]) {
            heap.push(s);
        }
    }
    Ok(sens
        .iter()
        .zip(&hulls)
        .zip(&at)
        .map(|((s, h), &i)| (s.name.clone(), s.options[h[i]].0))
        .collect())
}

/// Bits per weight of an allocation.
pub fn allocated_bpw(sens: &[Sensitivity], types: &HashMap<String, GgmlType>) -> f64 {
    let mut bytes = 0usize;
    let mut elements = 0usize;
    for s in sens {
        if let Some(o) = s.options.iter().find(|o| Some(&o.0) == types.get(&s.name)) {
            bytes += o.1;
            elements += s.elements;
        }
    }
    bytes as f64 * 8.0 / elements.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    fn sens(name: &str, errs: [f64; 3]) -> Sensitivity {
        // 1024 elements at 4.5, 5.5 and 8.5 bits per weight.
        Sensitivity {
            name: name.into(),
            elements: 1024,
            options: vec![
                (Q4_0, 576, errs[0]),
                (Q5_0, 704, errs[1]),
                (Q8_0, 1088, errs[2]),
            ],
        }
    }

    #[test]
    fn spends_bits_on_the_sensitive_matrix() {
        let s = vec![sens("a", [1.0, 0.5, 0.1]), sens("b", [100.0, 20.0, 1.0])];
        // Budget for one matrix at 8.5 and one at 4.5 bits.
        let t = allocate(&s, 6.5).unwrap();
        assert_eq!(t["a"], Q4_0);
        assert_eq!(t["b"], Q8_0);
        assert!(allocated_bpw(&s, &t) <= 6.5);
        // A budget with room for everything takes the best type everywhere.
        let t = allocate(&s, 9.0).unwrap();
        assert_eq!((t["a"], t["b"]), (Q8_0, Q8_0));
        // One below the cheapest is refused with the bits it would need.
        let e = allocate(&s, 4.0).unwrap_err();
        assert!(e.contains("4.50"), "{e}");
    }

    #[test]
    fn skips_options_that_do_not_pay() {
        // Q5_0 is no better than Q4_0 here, so it is never chosen.
        let s = vec![sens("a", [1.0, 1.0, 0.1])];
        assert_eq!(hull(&s[0].options), vec![0, 2]);
        let t = allocate(&s, 6.0).unwrap();
        assert_eq!(t["a"], Q4_0, "the only upgrade worth having does not fit");
    }
}
