//! A whole model through a method into a format: layer by layer, with
//! calibration when the method needs it.
//!
//! The block matrices (Q, K, V, O, gate, up, down) go through the method;
//! the token embedding and the output matrix are rounded to nearest into
//! their own (usually higher-precision) type, as llama.cpp does, unless the
//! output matrix is pruned too ([`Prune::output`]: then it goes through the
//! method after the blocks); vectors (norms, biases) stay f32.
//!
//! With an input scaling ([`Scaling`]: AWQ, SmoothQuant), each site's scales
//! are chosen just before its matrices are rounded and folded into the
//! layer before (see [`super::scales`]); the norms that change are written
//! too, as f32.

use super::format::{Format, TypeFormat};
use super::method::{InputStats, Method};
use super::scales::{self, Scaling, SiteMatrix};
use crate::calib::{Calibration, LayerF32, LayerNorms, LayerPass, Site, Stage};
use crate::prune::Sparsity;
use frugal_formats::{FrugalType, GgmlType, ModelSource, Tensor};
use frugal_model::{tensor_to_f32, Model};

/// What to quantize, and how.
pub struct QuantizeOptions<'a> {
    pub method: &'a dyn Method,
    /// Type of the block matrices.
    pub ty: GgmlType,
    /// Type of the token embedding.
    pub embd_ty: GgmlType,
    /// Type of the output matrix (of the token embedding when the model ties
    /// them and [`Prune::output`] does not split them).
    pub output_ty: GgmlType,
    /// Calibration sequences (required by methods that need statistics).
    pub calib: Option<&'a Calibration>,
    /// Per-tensor types that replace `ty` for the block matrices named
    /// (mixed precision); fallbacks still apply.
    pub tensor_types: std::collections::HashMap<String, GgmlType>,
    /// Per-input-channel scaling of the block matrices before the method
    /// rounds them (needs calibration).
    pub scaling: Scaling,
    /// Pruning of the block matrices (and with [`Prune::output`] the output
    /// matrix), before the method rounds them (or by the method itself, see
    /// [`Prune::by_method`]).
    pub prune: Option<Prune>,
}

/// Pruning in the pipeline.
#[derive(Clone, Debug)]
pub struct Prune {
    pub sparsity: Sparsity,
    /// The method prunes while it rounds (SparseGPT inside GPTQ's sweep,
    /// one Hessian pass for both); the pipeline then leaves the weights to it.
    pub by_method: bool,
    /// Unstructured sparsity of each block, in place of the pattern's
    /// uniform one (OWL, or set by hand).
    pub block_ratios: Option<Vec<f32>>,
    /// Prune the output matrix too, with the pattern's own sparsity, on the
    /// final norm's output after the pruned blocks. Of a tied model, the
    /// pruned copy becomes a separate `output.weight` and the embedding's
    /// lookups keep every weight.
    pub output: bool,
}

impl Prune {
    /// The pruning of block `li`.
    pub fn of_block(&self, li: usize) -> Sparsity {
        match &self.block_ratios {
            Some(r) => Sparsity {
                pattern: crate::prune::Pattern::Unstructured(r[li]),
                ..self.sparsity
            },
            None => self.sparsity,
        }
    }
}

impl QuantizeOptions<'_> {
    /// The type asked for the block matrix `name`.
    pub fn type_of(&self, name: &str) -> GgmlType {
        self.tensor_types.get(name).copied().unwrap_or(self.ty)
    }
}

/// A quantized tensor, ready to write.
pub struct QTensor {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The result: new tensors by name, and notes for the user (type fallbacks).
pub struct Quantized {
    pub tensors: Vec<QTensor>,
    pub notes: Vec<String>,
    /// Zero weights among the pruned matrices (the block matrices, and the
    /// output matrix with [`Prune::output`]), and their weights in all.
    pub zeros: (usize, usize),
}

/// Progress of a long run: `(done, total, what)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// The type a `cols`-wide matrix gets when `want` is asked for: `want` if its
/// blocks divide the rows, otherwise the nearest type that fits (llama.cpp's
/// fallbacks for k-quants; a smaller group for frugal's group-wise types).
pub fn fit_type(want: GgmlType, cols: usize) -> GgmlType {
    use GgmlType::*;
    if want.row_bytes(cols as u64).is_some() {
        return want;
    }
    let next = match want {
        Q2K | Q3K => Q4_0,
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K => Q8_0,
        Frugal(FrugalType::Affine { bits, group, sym }) if group > 32 => {
            Frugal(FrugalType::Affine {
                bits,
                group: group / 2,
                sym,
            })
        }
        _ => return want,
    };
    fit_type(next, cols)
}

/// The pipelines read and write each block matrix as one tensor: a model
/// whose matrices are low-rank factors is refused.
pub(crate) fn require_dense(model: &Model) -> Result<(), String> {
    if model.weights.has_low_rank() {
        return Err(
            "the model's block matrices are low-rank factors (made by `frugal lowrank`); \
                    start from the dense model (`frugal lowrank --type` stores the factors \
                    quantized)"
                .into(),
        );
    }
    Ok(())
}

/// The block matrices of block `li`, by GGUF name, with their site.
pub(crate) fn matrices(li: usize) -> [(String, Site); 7] {
    let n = |s: &str| format!("blk.{li}.{s}.weight");
    [
        (n("attn_q"), Site::Qkv),
        (n("attn_k"), Site::Qkv),
        (n("attn_v"), Site::Qkv),
        (n("attn_output"), Site::AttnOut),
        (n("ffn_gate"), Site::GateUp),
        (n("ffn_up"), Site::GateUp),
        (n("ffn_down"), Site::Down),
    ]
}

pub(crate) fn slot(w: &mut LayerF32, k: usize) -> &mut Vec<f32> {
    match k {
        0 => &mut w.wq,
        1 => &mut w.wk,
        2 => &mut w.wv,
        3 => &mut w.wo,
        4 => &mut w.w_gate,
        5 => &mut w.w_up,
        _ => &mut w.w_down,
    }
}

pub(crate) fn tensor<'s>(src: &'s ModelSource, name: &str) -> Result<&'s Tensor, String> {
    src.tensor(name)
        .ok_or_else(|| format!("the model has no tensor `{name}`"))
}

/// A tensor's values, after which its mapped pages are let go: the pass
/// reads each weight once, so resident memory stays near one layer's worth.
pub(crate) fn to_f32(t: &Tensor) -> Result<Vec<f32>, String> {
    let v = tensor_to_f32(t).map_err(|e| e.to_string())?;
    t.release_pages();
    Ok(v)
}

struct Run<'a> {
    opts: &'a QuantizeOptions<'a>,
    out: Vec<QTensor>,
    notes: Vec<String>,
    zeros: (usize, usize),
}

/// Where a matrix sits, which decides whether the options prune it.
#[derive(Clone, Copy)]
enum Role {
    /// The embedding, or an output matrix left whole.
    Kept,
    /// A block matrix of block `li`.
    Block(usize),
    /// The output matrix, pruned ([`Prune::output`]).
    Output,
}

impl Run<'_> {
    /// Quantizes `w` (a `rows × cols` matrix named `name`) with the method into
    /// `want` (or its fallback), pruned first if its `role` is one the
    /// options prune; returns the dequantized result.
    #[allow(clippy::too_many_arguments)]
    fn matrix(
        &mut self,
        name: &str,
        w: &[f32],
        dims: &[usize],
        want: GgmlType,
        method: &dyn Method,
        stats: Option<&InputStats>,
        role: Role,
    ) -> Result<Vec<f32>, String> {
        let (cols, rows) = (dims[0], dims[1..].iter().product::<usize>());
        let ty = fit_type(want, cols);
        let sparsity = match (self.opts.prune.as_ref(), role) {
            (Some(p), Role::Block(li)) => Some((p, p.of_block(li))),
            (Some(p), Role::Output) => Some((p, p.sparsity)),
            _ => None,
        };
        let pruned;
        let w = match sparsity {
            // A float type takes no method, so nothing else would prune.
            Some((p, sp)) if !p.by_method || ty.is_float() => {
                pruned = sp
                    .prune(w, rows, cols, stats)
                    .map_err(|e| format!("{name}: {e}"))?;
                &pruned[..]
            }
            _ => w,
        };
        if ty != want {
            self.notes.push(format!(
                "{name}: rows of {cols} are not whole {want} blocks; used {ty}"
            ));
        }
        let bytes = if ty.is_float() {
            // Floats take the values as they are (pruning alone).
            let from_float = frugal_kernels::traits(ty)
                .and_then(|t| t.from_float)
                .ok_or_else(|| format!("{name}: frugal cannot write {ty}"))?;
            let rb = ty.row_bytes(cols as u64).expect("float rows") as usize;
            let mut bytes = vec![0u8; rows * rb];
            for (o, x) in bytes.chunks_exact_mut(rb).zip(w.chunks_exact(cols)) {
                from_float(x, o);
            }
            bytes
        } else if let GgmlType::Frugal(
            st @ (FrugalType::SparseQ8 { .. } | FrugalType::Sparse24Q8),
        ) = ty
        {
            // Sparse int8: the method rounds into Q8_0, whose zero codes
            // (the pruned weights) the sparse layout then leaves out.
            let fmt = TypeFormat::new(GgmlType::Q8_0).expect("Q8_0 is a format");
            let q8 = method
                .quantize(w, rows, cols, &fmt, stats)
                .map_err(|e| format!("{name}: {e}"))?;
            let rb = ty
                .row_bytes(cols as u64)
                .ok_or_else(|| format!("{name}: rows of {cols} are not whole {ty} blocks"))?
                as usize;
            let qrb = q8.len() / rows.max(1);
            let mut bytes = vec![0u8; rows * rb];
            for (r, (o, q)) in bytes
                .chunks_exact_mut(rb)
                .zip(q8.chunks_exact(qrb))
                .enumerate()
            {
                frugal_kernels::sparse::pack_q8_0_row(st, q, o).map_err(|e| {
                    format!("{name}, row {r}: {e} (prune it first, to this pattern)")
                })?;
            }
            bytes
        } else {
            let fmt = TypeFormat::new(ty).map_err(|e| format!("{name}: {}", e.0))?;
            method
                .quantize(w, rows, cols, &fmt, stats)
                .map_err(|e| format!("{name}: {e}"))?
        };
        let mut back = vec![0.0f32; rows * cols];
        frugal_kernels::dequantize_rows(ty, &bytes, &mut back, cols)
            .map_err(|e| format!("{name}: {e}"))?;
        if sparsity.is_some() {
            self.zeros.0 += back.iter().filter(|&&v| v == 0.0).count();
            self.zeros.1 += back.len();
        }
        self.out.push(QTensor {
            name: name.to_string(),
            ty,
            dims: dims.to_vec(),
            bytes,
        });
        Ok(back)
    }
}

/// Quantize `model` (loaded from `src`).
pub fn quantize_model(
    src: &ModelSource,
    model: &Model,
    opts: &QuantizeOptions,
    progress: Progress,
) -> Result<Quantized, String> {
    require_dense(model)?;
    let method = opts.method;
    let prune_calib = opts
        .prune
        .as_ref()
        .is_some_and(|p| p.sparsity.criterion.needs_calibration());
    let calibrate = method.needs_calibration() || !opts.scaling.is_none() || prune_calib;
    if calibrate && opts.calib.is_none() {
        let name = match &opts.prune {
            Some(p) if prune_calib => p.sparsity.criterion.name().to_string(),
            _ => opts.scaling.name().unwrap_or_else(|| method.name()),
        };
        return Err(format!("{name} needs calibration text: pass --calib FILE"));
    }
    let n_layer = model.config.n_layer;
    if let Some(r) = opts.prune.as_ref().and_then(|p| p.block_ratios.as_ref()) {
        if r.len() != n_layer {
            return Err(format!(
                "{} block sparsities for the model's {n_layer} blocks",
                r.len()
            ));
        }
    }
    let mut run = Run {
        opts,
        out: Vec::new(),
        notes: Vec::new(),
        zeros: (0, 0),
    };
    let rtn = super::Rtn;

    // Embedding and output: round to nearest (the output matrix after the
    // blocks when it is pruned, on their output).
    let prune_output = opts.prune.as_ref().is_some_and(|p| p.output);
    let tied = model.weights.tied_output;
    let embd = tensor(src, "token_embd.weight")?;
    let embd_ty = if tied && !prune_output {
        opts.output_ty
    } else {
        opts.embd_ty
    };
    run.matrix(
        &embd.name,
        &to_f32(embd)?,
        &embd.dims,
        embd_ty,
        &rtn,
        None,
        Role::Kept,
    )?;
    if !prune_output {
        if let Some(out) = src.tensor("output.weight") {
            run.matrix(
                &out.name,
                &to_f32(out)?,
                &out.dims,
                run.opts.output_ty,
                &rtn,
                None,
                Role::Kept,
            )?;
        }
    }
    progress(0, n_layer, "layers");

    let mut pass = match opts.calib {
        Some(c) if calibrate => Some(LayerPass::new(model, c).map_err(|e| e.to_string())?),
        _ => None,
    };
    model.weights.token_embd.release_pages();
    let mut summary = ScaleSummary::default();
    for li in 0..n_layer {
        let mats = matrices(li);
        let mut w = LayerF32::default();
        for (k, (name, _)) in mats.iter().enumerate() {
            *slot(&mut w, k) = to_f32(tensor(src, name)?)?;
        }
        match pass.as_mut() {
            Some(pass) => {
                let layer = &model.weights.layers[li];
                let mut norms = LayerNorms::of(layer);
                let before = norms.clone();
                // Down's scales fold into up's rows and O's into V's, which
                // are rounded before Down's and O's inputs exist: those
                // scales are chosen on previews. O only without GQA (V's
                // rows then match O's columns one to one), as AutoAWQ does.
                let mut previews = Vec::new();
                if !opts.scaling.is_none() {
                    previews.push(Site::Down);
                    let c = &model.config;
                    if c.n_head == c.n_head_kv && layer.bv.is_none() {
                        previews.push(Site::AttnOut);
                    }
                }
                let mut step = |stage: Stage,
                                st: &InputStats,
                                w: &mut LayerF32,
                                norms: &mut LayerNorms|
                 -> Result<(), String> {
                    let (site, preview) = match stage {
                        Stage::Use(s) => (s, false),
                        Stage::Preview(s) => (s, true),
                    };
                    // Q, K, V and gate, up are scaled where they are used;
                    // O and down on their previews (or not at all).
                    let scale_here = !opts.scaling.is_none()
                        && preview == matches!(site, Site::AttnOut | Site::Down);
                    let mut scaled = None;
                    if scale_here {
                        let choice = choose_scales(src, opts, &mats, site, st, w)?;
                        if let Some(ch) = choice {
                            scales::fold(site, &ch.s, w, norms)?;
                            summary.add(site, &ch);
                            if !preview {
                                scaled = Some(scales::scaled_stats(st, &ch.s));
                            }
                        }
                    }
                    if preview {
                        return Ok(());
                    }
                    let st = scaled.as_ref().unwrap_or(st);
                    for (k, (name, s)) in mats.iter().enumerate() {
                        if *s != site {
                            continue;
                        }
                        let dims = &tensor(src, name)?.dims;
                        let wk = std::mem::take(slot(w, k));
                        let ty = run.opts.type_of(name);
                        *slot(w, k) =
                            run.matrix(name, &wk, dims, ty, method, Some(st), Role::Block(li))?;
                    }
                    Ok(())
                };
                pass.run_layer_with(li, &mut w, &mut norms, &previews, &mut step)?;
                for (name, new, old) in [
                    ("attn_norm", &norms.attn, &before.attn),
                    ("ffn_norm", &norms.ffn, &before.ffn),
                ] {
                    if new != old {
                        let name = format!("blk.{li}.{name}.weight");
                        let dims = tensor(src, &name)?.dims.clone();
                        run.out.push(QTensor {
                            name,
                            ty: GgmlType::F32,
                            dims,
                            bytes: new.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        });
                    }
                }
            }
            None => {
                for (k, (name, _)) in mats.iter().enumerate() {
                    let dims = &tensor(src, name)?.dims;
                    let wk = std::mem::take(slot(&mut w, k));
                    run.matrix(
                        name,
                        &wk,
                        dims,
                        run.opts.type_of(name),
                        method,
                        None,
                        Role::Block(li),
                    )?;
                }
            }
        }
        progress(li + 1, n_layer, "layers");
    }
    if prune_output {
        // The output matrix's input: the final norm of the stream the pruned
        // blocks made. Pruned (or, by the method, pruned while rounded) into
        // the output type.
        let out = src.tensor("output.weight").unwrap_or(embd);
        let stats = pass.as_ref().map(|p| p.output_stats());
        run.matrix(
            "output.weight",
            &to_f32(out)?,
            &out.dims,
            run.opts.output_ty,
            method,
            stats.as_ref(),
            Role::Output,
        )?;
    }
    if let Some(name) = opts.scaling.name() {
        run.notes.extend(summary.notes(&name));
    }
    Ok(Quantized {
        tensors: run.out,
        notes: run.notes,
        zeros: run.zeros,
    })
}

/// The scales `opts.scaling` picks for `site`'s matrices in `w`, each
/// judged in the type it will be stored in.
fn choose_scales(
    src: &ModelSource,
    opts: &QuantizeOptions,
    mats: &[(String, Site); 7],
    site: Site,
    st: &InputStats,
    w: &LayerF32,
) -> Result<Option<scales::Choice>, String> {
    let mut fmts = Vec::new();
    let mut ks = Vec::new();
    for (k, (name, s)) in mats.iter().enumerate() {
        if *s != site {
            continue;
        }
        let dims = &tensor(src, name)?.dims;
        let ty = fit_type(opts.type_of(name), dims[0]);
        fmts.push(TypeFormat::new(ty).map_err(|e| format!("{name}: {}", e.0))?);
        ks.push((k, dims[1..].iter().product::<usize>()));
    }
    let ws: Vec<&[f32]> = ks.iter().map(|&(k, _)| slot_ref(w, k)).collect();
    let sm: Vec<SiteMatrix> = ks
        .iter()
        .zip(&ws)
        .zip(&fmts)
        .map(|((&(_, rows), w), fmt)| SiteMatrix {
            w,
            rows,
            fmt: fmt as &dyn Format,
        })
        .collect();
    scales::choose(&opts.scaling, st, &sm)
}

pub(crate) fn slot_ref(w: &LayerF32, k: usize) -> &[f32] {
    match k {
        0 => &w.wq,
        1 => &w.wk,
        2 => &w.wv,
        3 => &w.wo,
        4 => &w.w_gate,
        5 => &w.w_up,
        _ => &w.w_down,
    }
}

/// What the scaling chose, per kind of site, for the user.
#[derive(Default)]
struct ScaleSummary {
    /// Per site: (sites, Σ α, Σ loss, Σ loss without scaling).
    by_site: [(usize, f64, f64, f64); 4],
}

impl ScaleSummary {
    fn add(&mut self, site: Site, ch: &scales::Choice) {
        let e = &mut self.by_site[site as usize];
        e.0 += 1;
        e.1 += ch.alpha as f64;
        if let Some((l, l0)) = ch.loss {
            e.2 += l;
            e.3 += l0;
        }
    }

    fn notes(&self, name: &str) -> Vec<String> {
        let names = ["q/k/v", "o", "gate/up", "down"];
        let mut parts = Vec::new();
        for (e, n) in self.by_site.iter().zip(names) {
            if e.0 == 0 {
                parts.push(format!("{n} not scaled"));
                continue;
            }
            let mut p = format!("{n} mean α {:.2}", e.1 / e.0 as f64);
            if e.3 > 0.0 {
                p += &format!(" (rounding error {:.2}× RTN's)", e.2 / e.3);
            }
            parts.push(p);
        }
        vec![format!("{name}: {}", parts.join(", "))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_types_follow_llama_cpp() {
        assert_eq!(fit_type(GgmlType::Q4K, 576), GgmlType::Q5_0);
        assert_eq!(fit_type(GgmlType::Q6K, 896), GgmlType::Q8_0);
        assert_eq!(fit_type(GgmlType::Q4K, 1536), GgmlType::Q4K);
        assert_eq!(fit_type(GgmlType::Q4_0, 576), GgmlType::Q4_0);
        let g = |group| {
            GgmlType::Frugal(FrugalType::Affine {
                bits: 3,
                group,
                sym: false,
            })
        };
        assert_eq!(fit_type(g(128), 576), g(64));
        assert_eq!(fit_type(g(256), 896), g(128));
    }
}
