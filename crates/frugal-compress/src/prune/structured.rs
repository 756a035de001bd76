//! Structured pruning: whole attention heads, FFN channels and blocks go,
//! so the matrices really shrink and a smaller dense model comes out (a
//! GGUF llama.cpp loads), faster on any hardware.
//!
//! Every block keeps the same number of query heads and FFN channels, so the
//! model stays describable by the usual scalar hyper-parameters; which ones
//! a block keeps is its own choice. Heads go in equal numbers from each GQA
//! group (query heads sharing one K/V head), so the groups stay the same
//! size and the K/V projections stay whole.
//!
//! Importance ([`Scoring`]):
//! * magnitude: the squared norm of the weights reading each head or
//!   channel out (O's columns, down's columns); no calibration;
//! * activation: the energy of each head's or channel's contribution to the
//!   residual stream on calibration text, ‖W_:,j x_j‖² summed over tokens,
//!   from the input statistics the calibration pass gathers (for a head,
//!   tr(W_hᵀW_h · Σ x_h x_hᵀ));
//! * activation with refit: the same choice, then O's and down's kept
//!   columns are refitted by least squares to make up for the removed ones
//!   on the calibration inputs: W_K += W_R · C_RK · C_KK⁻¹ with C = Σ x xᵀ
//!   (the optimal brain surgeon update for removing whole columns).
//!
//! Blocks are ranked by how little they change the residual stream (one
//! minus the cosine between a token's hidden state before and after the
//! block, averaged over the calibration tokens: ShortGPT's block influence);
//! the least influential go.
//!
//! The pass is sequential like quantization's: each block is pruned on the
//! inputs that the already pruned blocks before it produce.

use crate::calib::{Calibration, LayerF32, LayerPass, Site};
use crate::quant::pipeline::QTensor;
use crate::quant::InputStats;
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use frugal_formats::{GgmlType, MetaValue};
use frugal_model::{Model, ModelConfig};

/// How much to remove: per block, query heads and FFN channels; and whole blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    /// Query heads removed from every block (a multiple of the K/V heads).
    pub heads: usize,
    /// FFN channels removed from every block.
    pub ffn: usize,
    /// Blocks removed.
    pub layers: usize,
}

/// FFN widths are kept multiples of this, so quantized rows of the down
/// projection (one value per channel) stay whole blocks.
pub const FFN_ALIGN: usize = 32;

/// Parameters of one block's seven matrices.
fn block_params(c: &ModelConfig) -> usize {
    let (d, qd, kvd) = (c.n_embd, c.n_head * c.head_dim, c.kv_dim());
    2 * d * qd + 2 * d * kvd + 3 * d * c.n_ff
}

impl Spec {
    /// Errors for a spec the model cannot take, naming the limit.
    pub fn check(&self, c: &ModelConfig) -> Result<(), String> {
        if self.heads >= c.n_head {
            return Err(format!(
                "cannot prune {} heads per block: the model has {} (at least one must stay)",
                self.heads, c.n_head
            ));
        }
        if !self.heads.is_multiple_of(c.n_head_kv) {
            return Err(format!(
                "{} heads per block do not split evenly over the {} GQA groups \
                 ({} query heads each): prune a multiple of {}",
                self.heads,
                c.n_head_kv,
                c.n_head / c.n_head_kv,
                c.n_head_kv
            ));
        }
        if self.ffn >= c.n_ff {
            return Err(format!(
                "cannot prune {} FFN channels per block: the model has {}",
                self.ffn, c.n_ff
            ));
        }
        if self.layers >= c.n_layer {
            return Err(format!(
                "cannot prune {} blocks: the model has {} (at least one must stay)",
                self.layers, c.n_layer
            ));
        }
        Ok(())
    }

    /// FFN channels to remove so that `fraction` of them goes, rounded so
    /// the kept width is a multiple of [`FFN_ALIGN`] (when it can be).
    pub fn ffn_for_fraction(c: &ModelConfig, fraction: f64) -> Result<usize, String> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(format!("FFN fraction {fraction} is outside (0, 1)"));
        }
        let keep = c.n_ff as f64 * (1.0 - fraction);
        let keep = if c.n_ff >= FFN_ALIGN {
            ((keep / FFN_ALIGN as f64).round() as usize * FFN_ALIGN).clamp(FFN_ALIGN, c.n_ff)
        } else {
            (keep.round() as usize).clamp(1, c.n_ff)
        };
        Ok(c.n_ff - keep)
    }

    /// The spec that removes `shrink` of the model's parameters, counted
    /// over the whole model as LLM-Pruner does (`other_params` are those
    /// outside the blocks: embedding, output, final norm; they are not
    /// pruned, so the blocks lose a larger share): `layers` whole blocks,
    /// then `heads` query heads per block (by default the blocks' share of
    /// each GQA group, rounded down, leaving at least one), then FFN
    /// channels for the rest.
    pub fn for_shrink(
        c: &ModelConfig,
        shrink: f64,
        heads: Option<usize>,
        layers: usize,
        other_params: usize,
    ) -> Result<Spec, String> {
        if !(shrink > 0.0 && shrink < 1.0) {
            return Err(format!("shrink {shrink} is outside (0, 1)"));
        }
        let per_block = block_params(c) as f64;
        let blocks = per_block * c.n_layer as f64;
        let target = shrink * (blocks + other_params as f64);
        if target >= blocks {
            return Err(format!(
                "removing {shrink} of the parameters would take every block \
                 ({:.0}% of the model is embedding and output, which stay)",
                100.0 * other_params as f64 / (blocks + other_params as f64)
            ));
        }
        let group = c.n_head / c.n_head_kv;
        let heads = heads.unwrap_or_else(|| {
            ((target / blocks * group as f64).floor() as usize).min(group - 1) * c.n_head_kv
        });
        let mut spec = Spec {
            heads,
            ffn: 0,
            layers,
        };
        spec.check(c)?;
        let kept_blocks = (c.n_layer - layers) as f64;
        let by_heads = kept_blocks * (2 * c.n_embd * c.head_dim * heads) as f64;
        let left = target - layers as f64 * per_block - by_heads;
        if left > 0.0 {
            let channels = left / (kept_blocks * 3.0 * c.n_embd as f64);
            if channels >= c.n_ff as f64 {
                return Err(format!(
                    "removing {shrink} of the parameters would take every FFN channel: \
                     remove more blocks or heads"
                ));
            }
            spec.ffn = Spec::ffn_for_fraction(c, channels / c.n_ff as f64)?;
        }
        spec.check(c)?;
        Ok(spec)
    }

    /// Fraction of the model's parameters this spec removes (of the
    /// block matrices' alone when `other_params` is 0).
    pub fn removed_fraction(&self, c: &ModelConfig, other_params: usize) -> f64 {
        let blocks = c.n_layer * block_params(c);
        let small = ModelConfig {
            n_head: c.n_head - self.heads,
            n_ff: c.n_ff - self.ffn,
            ..c.clone()
        };
        let kept = (c.n_layer - self.layers) * block_params(&small);
        (blocks - kept) as f64 / (blocks + other_params) as f64
    }
}

/// How heads, channels and blocks are ranked (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scoring {
    Magnitude,
    Activation,
    /// Activation importance, then a least-squares refit with this damping
    /// (a fraction of the mean diagonal of the inputs' Gram matrix).
    ActivationRefit {
        damp: f32,
    },
}

impl Scoring {
    pub fn needs_calibration(self) -> bool {
        !matches!(self, Scoring::Magnitude)
    }
}

/// What one kept block keeps, and its matrices after pruning (f32,
/// row-major, already cut to the kept heads and channels).
pub struct KeptBlock {
    /// Index of the block in the source model.
    pub src: usize,
    /// Kept query heads, ascending.
    pub heads: Vec<usize>,
    /// Kept FFN channels, ascending.
    pub channels: Vec<usize>,
    pub w: LayerF32,
    /// Q's bias cut to the kept heads (Qwen2).
    pub bq: Option<Vec<f32>>,
}

/// The pruned model's blocks, and the hyper-parameters that change.
pub struct Shrunk {
    pub blocks: Vec<KeptBlock>,
    /// Source indices of the removed blocks, ascending.
    pub removed_blocks: Vec<usize>,
    pub n_head: usize,
    pub n_ff: usize,
}

impl Shrunk {
    /// The pruned blocks' tensors, named for their new (renumbered)
    /// positions: matrices in `ty` (a float type), vectors in f32.
    pub fn block_tensors(&self, model: &Model, ty: GgmlType) -> Result<Vec<QTensor>, String> {
        let from_float = frugal_kernels::traits(ty)
            .and_then(|t| t.from_float)
            .filter(|_| ty.is_float())
            .ok_or_else(|| format!("structured pruning writes F32, F16 or BF16, not {ty}"))?;
        let c = &model.config;
        let (d, hd) = (c.n_embd, c.head_dim);
        let (qd, kvd) = (self.n_head * hd, c.kv_dim());
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let name = |s: &str| format!("blk.{i}.{s}");
            let src = &model.weights.layers[b.src];
            let matrices: [(&str, &Vec<f32>, usize, usize); 7] = [
                ("attn_q.weight", &b.w.wq, d, qd),
                ("attn_k.weight", &b.w.wk, d, kvd),
                ("attn_v.weight", &b.w.wv, d, kvd),
                ("attn_output.weight", &b.w.wo, qd, d),
                ("ffn_gate.weight", &b.w.w_gate, d, self.n_ff),
                ("ffn_up.weight", &b.w.w_up, d, self.n_ff),
                ("ffn_down.weight", &b.w.w_down, self.n_ff, d),
            ];
            for (n, w, cols, rows) in matrices {
                debug_assert_eq!(w.len(), rows * cols, "{n}");
                let rb = ty.row_bytes(cols as u64).expect("float rows") as usize;
                let mut bytes = vec![0u8; rows * rb];
                for (o, x) in bytes.chunks_exact_mut(rb).zip(w.chunks_exact(cols)) {
                    from_float(x, o);
                }
                out.push(QTensor {
                    name: name(n),
                    ty,
                    dims: vec![cols, rows],
                    bytes,
                });
            }
            let vectors: [(&str, Option<&Vec<f32>>); 6] = [
                ("attn_norm.weight", Some(&src.attn_norm)),
                ("ffn_norm.weight", Some(&src.ffn_norm)),
                ("attn_q.bias", b.bq.as_ref()),
                ("attn_k.bias", src.bk.as_ref()),
                ("attn_v.bias", src.bv.as_ref()),
                ("attn_output.bias", src.bo.as_ref()),
            ];
            for (n, v) in vectors {
                if let Some(v) = v {
                    out.push(QTensor {
                        name: name(n),
                        ty: GgmlType::F32,
                        dims: vec![v.len()],
                        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Metadata of the pruned model (for the keys of architecture `arch`):
    /// the new block count, head count and FFN width, and the head size
    /// spelled out (it no longer follows from the embedding width).
    pub fn metadata(&self, c: &ModelConfig) -> Vec<(String, MetaValue)> {
        let a = c.arch.name();
        let u = |v: usize| MetaValue::U32(v as u32);
        vec![
            (format!("{a}.block_count"), u(self.blocks.len())),
            (format!("{a}.attention.head_count"), u(self.n_head)),
            (format!("{a}.attention.head_count_kv"), u(c.n_head_kv)),
            (format!("{a}.feed_forward_length"), u(self.n_ff)),
            (format!("{a}.attention.key_length"), u(c.head_dim)),
            (format!("{a}.attention.value_length"), u(c.head_dim)),
            (format!("{a}.rope.dimension_count"), u(c.rope_dim)),
        ]
    }
}

/// Progress of a long run: `(done, total, what)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Prunes `model` by `spec`, ranking by `scoring` (with `calib` when it
/// needs calibration, and always when blocks are removed).
pub fn prune_structured(
    model: &Model,
    spec: Spec,
    scoring: Scoring,
    calib: Option<&Calibration>,
    progress: Progress,
) -> Result<Shrunk, String> {
    let c = &model.config;
    spec.check(c)?;
    let needs_calib = scoring.needs_calibration() || spec.layers > 0;
    let calib = match calib {
        Some(cal) => Some(cal),
        None if needs_calib => {
            let why = if spec.layers > 0 {
                "ranking blocks"
            } else {
                "activation importance"
            };
            return Err(format!("{why} needs calibration text: pass --calib FILE"));
        }
        None => None,
    };
    let n_layer = c.n_layer;
    let steps = n_layer * (1 + (spec.layers > 0) as usize);
    let mut done = 0;

    // Blocks first: their influence on the unpruned model.
    let mut removed_blocks = Vec::new();
    if spec.layers > 0 {
        let cal = calib.expect("checked above");
        let mut pass = LayerPass::new(model, cal).map_err(|e| e.to_string())?;
        let mut influence = Vec::with_capacity(n_layer);
        for li in 0..n_layer {
            let before = pass.hidden().to_vec();
            let mut w = LayerF32::of(&model.weights.layers[li]).map_err(|e| e.to_string())?;
            pass.run_layer(li, &mut w, &mut |_, _, _| Ok(()))?;
            influence.push((block_influence(&before, pass.hidden(), c.n_embd), li));
            done += 1;
            progress(done, steps, "ranking blocks");
        }
        influence.sort_by(|a, b| a.0.total_cmp(&b.0));
        removed_blocks = influence[..spec.layers].iter().map(|&(_, li)| li).collect();
        removed_blocks.sort_unstable();
    }

    let mut pass = match calib {
        Some(cal) if scoring.needs_calibration() => {
            Some(LayerPass::new(model, cal).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let mut blocks = Vec::new();
    for li in 0..n_layer {
        if removed_blocks.contains(&li) {
            // The residual stream passes the removed block unchanged.
            done += 1;
            progress(done, steps, "pruning blocks");
            continue;
        }
        let mut w = LayerF32::of(&model.weights.layers[li]).map_err(|e| e.to_string())?;
        let mut heads = Vec::new();
        let mut channels = Vec::new();
        match pass.as_mut() {
            Some(pass) => {
                let mut step = |site: Site, st: &InputStats, w: &mut LayerF32| {
                    match site {
                        Site::AttnOut => heads = prune_heads(c, w, Some(st), spec.heads, scoring)?,
                        Site::Down => channels = prune_channels(c, w, Some(st), spec.ffn, scoring)?,
                        Site::Qkv | Site::GateUp => {}
                    }
                    Ok(())
                };
                pass.run_layer(li, &mut w, &mut step)?;
            }
            None => {
                heads = prune_heads(c, &mut w, None, spec.heads, scoring)?;
                channels = prune_channels(c, &mut w, None, spec.ffn, scoring)?;
            }
        }
        let bq = model.weights.layers[li]
            .bq
            .as_ref()
            .map(|b| gather_rows(b, c.head_dim, &heads));
        blocks.push(KeptBlock {
            src: li,
            w: cut(c, &w, &heads, &channels),
            heads,
            channels,
            bq,
        });
        done += 1;
        progress(done, steps, "pruning blocks");
    }
    Ok(Shrunk {
        blocks,
        removed_blocks,
        n_head: c.n_head - spec.heads,
        n_ff: c.n_ff - spec.ffn,
    })
}

/// One minus the mean cosine similarity of each token's hidden state
/// before and after a block (rows of `d` values).
fn block_influence(before: &[f32], after: &[f32], d: usize) -> f64 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (a, b) in before.chunks_exact(d).zip(after.chunks_exact(d)) {
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in a.iter().zip(b) {
            ab += x as f64 * y as f64;
            aa += x as f64 * x as f64;
            bb += y as f64 * y as f64;
        }
        if aa > 0.0 && bb > 0.0 {
            sum += 1.0 - ab / (aa.sqrt() * bb.sqrt());
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

/// Importance of each group of `width` consecutive columns of `w`
/// (`rows × cols`, row-major): ‖W_g‖² (magnitude) or tr(W_gᵀ W_g · C_gg)
/// with C the inputs' Gram matrix (activation).
fn column_group_importance(
    w: &[f32],
    cols: usize,
    width: usize,
    stats: Option<&InputStats>,
) -> Vec<f64> {
    let groups = cols / width;
    let mut imp = vec![0.0f64; groups];
    for (g, v) in imp.iter_mut().enumerate() {
        let c0 = g * width;
        match stats {
            None => {
                for row in w.chunks_exact(cols) {
                    *v += row[c0..c0 + width]
                        .iter()
                        .map(|&x| (x as f64) * (x as f64))
                        .sum::<f64>();
                }
            }
            Some(st) => {
                // Σ_rows w_g C_gg w_gᵀ: the energy of the group's output.
                for row in w.chunks_exact(cols) {
                    let wg = &row[c0..c0 + width];
                    for (i, &wi) in wg.iter().enumerate() {
                        if wi == 0.0 {
                            continue;
                        }
                        let crow = &st.xtx[(c0 + i) * st.cols + c0..][..width];
                        let s: f64 = crow
                            .iter()
                            .zip(wg)
                            .map(|(&cij, &wj)| cij as f64 * wj as f64)
                            .sum();
                        *v += wi as f64 * s;
                    }
                }
            }
        }
    }
    imp
}

/// The `remove` lowest-scoring indices of each run of `group` consecutive
/// scores; returns the kept indices, ascending.
fn keep_top(scores: &[f64], group: usize, remove: usize) -> Vec<usize> {
    let mut keep = Vec::new();
    for g0 in (0..scores.len()).step_by(group) {
        let mut idx: Vec<usize> = (g0..g0 + group).collect();
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        keep.extend_from_slice(&idx[remove..]);
    }
    keep.sort_unstable();
    keep
}

/// Chooses the query heads to keep (the same number from each GQA group)
/// and zeroes O's columns of the others (refitting the kept ones when the
/// scoring says so), so the rest of the block's pass sees them gone.
fn prune_heads(
    c: &ModelConfig,
    w: &mut LayerF32,
    stats: Option<&InputStats>,
    remove: usize,
    scoring: Scoring,
) -> Result<Vec<usize>, String> {
    let (hd, nh) = (c.head_dim, c.n_head);
    if remove == 0 {
        return Ok((0..nh).collect());
    }
    let qd = nh * hd;
    let imp = column_group_importance(&w.wo, qd, hd, stats);
    let group = nh / c.n_head_kv;
    let keep = keep_top(&imp, group, remove / c.n_head_kv);
    let cols: Vec<usize> = keep.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect();
    drop_columns(&mut w.wo, qd, &cols, stats, scoring)?;
    Ok(keep)
}

/// [`prune_heads`] for FFN channels (down's columns).
fn prune_channels(
    c: &ModelConfig,
    w: &mut LayerF32,
    stats: Option<&InputStats>,
    remove: usize,
    scoring: Scoring,
) -> Result<Vec<usize>, String> {
    let ff = c.n_ff;
    if remove == 0 {
        return Ok((0..ff).collect());
    }
    let imp = match stats {
        // Diagonal only: one channel is one column.
        Some(st) => {
            let mut imp = column_group_importance(&w.w_down, ff, 1, None);
            for (j, v) in imp.iter_mut().enumerate() {
                *v *= st.xtx[j * ff + j] as f64;
            }
            imp
        }
        None => column_group_importance(&w.w_down, ff, 1, None),
    };
    let keep = keep_top(&imp, ff, remove);
    drop_columns(&mut w.w_down, ff, &keep, stats, scoring)?;
    Ok(keep)
}

/// Zeroes the columns of `w` (`rows × cols`) not in `keep`; with a refit,
/// first adds to the kept columns the least-squares stand-in for the
/// removed ones on the calibration inputs: W_K += W_R · C_RK · C_KK⁻¹.
fn drop_columns(
    w: &mut [f32],
    cols: usize,
    keep: &[usize],
    stats: Option<&InputStats>,
    scoring: Scoring,
) -> Result<(), String> {
    let mut kept = vec![false; cols];
    for &k in keep {
        kept[k] = true;
    }
    let removed: Vec<usize> = (0..cols).filter(|&j| !kept[j]).collect();
    if let (Scoring::ActivationRefit { damp }, Some(st)) = (scoring, stats) {
        let (nk, nr) = (keep.len(), removed.len());
        let c = |i: usize, j: usize| st.xtx[i * cols + j] as f64;
        let mean_diag = keep.iter().map(|&k| c(k, k)).sum::<f64>() / nk.max(1) as f64;
        let lambda = damp as f64 * mean_diag.max(f64::MIN_POSITIVE);
        let ckk = Mat::<f64>::from_fn(nk, nk, |i, j| {
            c(keep[i], keep[j]) + if i == j { lambda } else { 0.0 }
        });
        let ckr = Mat::<f64>::from_fn(nk, nr, |i, j| c(keep[i], removed[j]));
        let llt = ckk
            .llt(Side::Lower)
            .map_err(|_| "the calibration inputs' Gram matrix is not positive definite even damped: raise --damp".to_string())?;
        // X = C_KK⁻¹ C_KR (nk × nr); the update of a row is X · w_R.
        let x = llt.solve(&ckr);
        let rows = w.len() / cols;
        let wr = Mat::<f64>::from_fn(nr, rows, |j, r| w[r * cols + removed[j]] as f64);
        let delta = &x * &wr; // nk × rows
        for r in 0..rows {
            for (i, &k) in keep.iter().enumerate() {
                w[r * cols + k] += delta[(i, r)] as f32;
            }
        }
    }
    for row in w.chunks_exact_mut(cols) {
        for &j in &removed {
            row[j] = 0.0;
        }
    }
    Ok(())
}

/// Rows `idx·width .. (idx+1)·width` of `v` for each `idx` in `keep`.
fn gather_rows(v: &[f32], width: usize, keep: &[usize]) -> Vec<f32> {
    keep.iter()
        .flat_map(|&i| v[i * width..(i + 1) * width].iter().copied())
        .collect()
}

/// Columns `keep` of `w` (`rows × cols`).
fn gather_cols(w: &[f32], cols: usize, keep: &[usize]) -> Vec<f32> {
    w.chunks_exact(cols)
        .flat_map(|row| keep.iter().map(move |&j| row[j]))
        .collect()
}

/// The block's matrices cut to its kept heads and channels: Q's rows and
/// O's columns of the heads, gate's and up's rows and down's columns of
/// the channels. K and V stay whole (every GQA group keeps query heads).
fn cut(c: &ModelConfig, w: &LayerF32, heads: &[usize], channels: &[usize]) -> LayerF32 {
    let (d, hd, qd) = (c.n_embd, c.head_dim, c.n_head * c.head_dim);
    let head_cols: Vec<usize> = heads.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect();
    LayerF32 {
        wq: gather_rows(&w.wq, hd * d, heads),
        wk: w.wk.clone(),
        wv: w.wv.clone(),
        wo: gather_cols(&w.wo, qd, &head_cols),
        w_gate: gather_rows(&w.w_gate, d, channels),
        w_up: gather_rows(&w.w_up, d, channels),
        w_down: gather_cols(&w.w_down, c.n_ff, channels),
    }
}

#[cfg(test)]
mod tests;
