//! A whole model through a low-rank decomposition: layer by layer, and with
//! calibration for the whitened SVD, whose statistics of each site's inputs
//! come from a model whose earlier matrices are already factored (and
//! rounded to the factors' type).
//!
//! Each factored matrix `blk.N.X.weight` becomes `blk.N.X_a.weight` and
//! `blk.N.X_b.weight` (see [`frugal_model::factor_names`]); a matrix the
//! target leaves dense is stored as it was, in the factors' type. The token
//! embedding and the output matrix are not factored, only re-rounded when
//! asked to; the vectors are not touched.

use super::{rank_for_energy, rank_keeping, Decomposed, Decomposition, Factors, Target, Whitening};
use crate::calib::{Calibration, LayerF32, LayerPass, Site};
use crate::quant::format::TypeFormat;
use crate::quant::pipeline::{
    fit_type, matrices, require_dense, slot, tensor, to_f32, Progress, QTensor,
};
use crate::quant::{InputStats, Method, Rtn};
use frugal_formats::{GgmlType, ModelSource};
use frugal_model::{factor_names, Model};

/// The block matrices by their short names, in [`matrices`]' order.
pub const KINDS: [&str; 7] = frugal_model::BLOCK_MATRIX_NAMES;

/// What to factor, and how.
pub struct LowRankOptions<'a> {
    pub method: Decomposition,
    pub target: Target,
    /// Storage type of the factors (and of the matrices left dense).
    pub ty: GgmlType,
    /// Calibration sequences (required by [`Decomposition::Whitened`]).
    pub calib: Option<&'a Calibration>,
    /// Damping of XᵀX, as a fraction of its mean diagonal.
    pub damp: f32,
    /// Which of the [`KINDS`] may be factored.
    pub kinds: [bool; 7],
    /// Type the output matrix (the embedding, when the model ties them) is
    /// rounded into; `None` keeps it as it is. Decode reads the whole
    /// output matrix every token, so a quantized model wants it quantized.
    pub output_ty: Option<GgmlType>,
    /// Type an untied token embedding is rounded into; `None` keeps it.
    pub embd_ty: Option<GgmlType>,
}

/// The result: what replaces each block matrix, and a summary.
pub struct LowRanked {
    /// Per source tensor name: the tensors written in its place (two factors,
    /// or the matrix itself when it stays dense).
    pub replaced: Vec<(String, Vec<QTensor>)>,
    pub notes: Vec<String>,
    /// Weights of the block matrices before and after.
    pub params: (usize, usize),
    /// Matrices factored, and block matrices in all.
    pub factored: (usize, usize),
    /// Per kind ([`KINDS`]): the sum of ranks and how many were factored.
    pub ranks: [(usize, usize); 7],
}

impl LowRanked {
    /// Fraction of the block matrices' weights removed.
    pub fn reduction(&self) -> f64 {
        1.0 - self.params.1 as f64 / self.params.0.max(1) as f64
    }

    /// Mean rank per kind of matrix, for the user: `attn_q 224, ...`.
    pub fn rank_summary(&self) -> String {
        KINDS
            .iter()
            .zip(&self.ranks)
            .map(|(k, &(sum, n))| match n {
                0 => format!("{k} dense"),
                n => format!("{k} {}", sum / n),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Run<'a> {
    opts: &'a LowRankOptions<'a>,
    out: LowRanked,
    /// Weights of the matrices that may be factored, so far: before and
    /// after (what a ratio's rank rounding is carried over).
    eligible: (usize, usize),
}

impl Run<'_> {
    /// Factors (or keeps) the `rows × cols` matrix `name` (kind `k`) and
    /// returns what the model now computes with: b·a of the stored
    /// factors, or the stored matrix.
    fn matrix(
        &mut self,
        name: &str,
        k: usize,
        w: &[f32],
        rows: usize,
        cols: usize,
        white: Option<&Whitening>,
    ) -> Result<Vec<f32>, String> {
        let ctx = |e: String| format!("{name}: {e}");
        self.out.params.0 += rows * cols;
        self.out.factored.1 += 1;
        let mut factors: Option<Factors> = None;
        if self.opts.kinds[k] {
            let d = Decomposed::new(w, rows, cols, white).map_err(ctx)?;
            let rank = match self.opts.target {
                // The rank that brings the weights kept so far nearest to
                // (1 − ratio) of those seen so far.
                Target::Ratio(ratio) => rank_keeping(
                    rows,
                    cols,
                    (1.0 - ratio as f64) * (self.eligible.0 + rows * cols) as f64
                        - self.eligible.1 as f64,
                ),
                Target::Energy(e) => rank_for_energy(rows, cols, d.singular_values(), e),
            };
            self.eligible.0 += rows * cols;
            self.eligible.1 += rank.map_or(rows * cols, |r| r * (rows + cols));
            factors = rank.map(|r| d.factors(r, white));
        }
        let Some(f) = factors else {
            self.out.params.1 += rows * cols;
            return self.store_dense(name, w, rows, cols, self.opts.ty);
        };
        let r = f.rank;
        let (na, nb) = factor_names(name);
        let (ta, a, a_back) = encode(&f.a, r, cols, self.opts.ty).map_err(ctx)?;
        let (tb, b, b_back) = encode(&f.b, rows, r, self.opts.ty).map_err(ctx)?;
        self.note_fallback(&na, cols, ta, self.opts.ty);
        self.note_fallback(&nb, r, tb, self.opts.ty);
        self.out.params.1 += r * (rows + cols);
        self.out.factored.0 += 1;
        self.out.ranks[k].0 += r;
        self.out.ranks[k].1 += 1;
        self.out.replaced.push((
            name.to_string(),
            vec![
                QTensor {
                    name: na,
                    ty: ta,
                    dims: vec![cols, r],
                    bytes: a,
                },
                QTensor {
                    name: nb,
                    ty: tb,
                    dims: vec![r, rows],
                    bytes: b,
                },
            ],
        ));
        Ok(super::product(&b_back, &a_back, rows, r, cols))
    }

    /// Stores `w` (`rows × cols`) whole, as `want` or its fallback, in place
    /// of `name`; returns the values the model now computes with.
    fn store_dense(
        &mut self,
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
        want: GgmlType,
    ) -> Result<Vec<f32>, String> {
        let (ty, bytes, back) = encode(w, rows, cols, want).map_err(|e| format!("{name}: {e}"))?;
        self.note_fallback(name, cols, ty, want);
        self.out.replaced.push((
            name.to_string(),
            vec![QTensor {
                name: name.to_string(),
                ty,
                dims: vec![cols, rows],
                bytes,
            }],
        ));
        Ok(back)
    }

    fn note_fallback(&mut self, name: &str, cols: usize, ty: GgmlType, want: GgmlType) {
        if ty != want {
            self.out.notes.push(format!(
                "{name}: rows of {cols} are not whole {want} blocks; used {ty}"
            ));
        }
    }
}

/// `w` (`rows × cols`) stored as `want` (or its fallback for rows of
/// `cols`), rounded to nearest: the type, the bytes, and the values back.
fn encode(
    w: &[f32],
    rows: usize,
    cols: usize,
    want: GgmlType,
) -> Result<(GgmlType, Vec<u8>, Vec<f32>), String> {
    let ty = fit_type(want, cols);
    let bytes = if ty.is_float() {
        let from_float = frugal_kernels::traits(ty)
            .and_then(|t| t.from_float)
            .ok_or_else(|| format!("frugal cannot write {ty}"))?;
        let rb = ty.row_bytes(cols as u64).expect("float rows") as usize;
        let mut bytes = vec![0u8; rows * rb];
        for (o, x) in bytes.chunks_exact_mut(rb).zip(w.chunks_exact(cols)) {
            from_float(x, o);
        }
        bytes
    } else {
        let fmt = TypeFormat::new(ty).map_err(|e| e.0)?;
        Rtn.quantize(w, rows, cols, &fmt, None)?
    };
    let mut back = vec![0.0f32; rows * cols];
    frugal_kernels::dequantize_rows(ty, &bytes, &mut back, cols).map_err(|e| e.to_string())?;
    Ok((ty, bytes, back))
}

/// Factor the block matrices of `model` (loaded from `src`).
pub fn lowrank_model(
    src: &ModelSource,
    model: &Model,
    opts: &LowRankOptions,
    progress: Progress,
) -> Result<LowRanked, String> {
    require_dense(model)?;
    opts.target.validate()?;
    if !(0.0..1.0).contains(&opts.damp) {
        return Err(format!("damping {}: use a fraction in [0, 1)", opts.damp));
    }
    let calibrate = opts.method.needs_calibration();
    if calibrate && opts.calib.is_none() {
        return Err(format!(
            "{} needs calibration text: pass --calib FILE",
            opts.method.name()
        ));
    }
    let n_layer = model.config.n_layer;
    let mut run = Run {
        opts,
        out: LowRanked {
            replaced: Vec::new(),
            notes: Vec::new(),
            params: (0, 0),
            factored: (0, 0),
            ranks: [(0, 0); 7],
        },
        eligible: (0, 0),
    };
    progress(0, n_layer, "layers");
    let mut pass = match opts.calib {
        Some(c) if calibrate => Some(LayerPass::new(model, c).map_err(|e| e.to_string())?),
        _ => None,
    };
    model.weights.token_embd.release_pages();
    for li in 0..n_layer {
        let mats = matrices(li);
        let mut dims = Vec::with_capacity(7);
        let mut w = LayerF32::default();
        for (k, (name, _)) in mats.iter().enumerate() {
            let t = tensor(src, name)?;
            dims.push((t.n_rows(), t.row_len()));
            *slot(&mut w, k) = to_f32(t)?;
        }
        match pass.as_mut() {
            Some(pass) => {
                let mut step = |site: Site,
                                st: &InputStats,
                                w: &mut LayerF32|
                 -> Result<(), String> {
                    let site_kinds: Vec<usize> = (0..7).filter(|&k| mats[k].1 == site).collect();
                    let white = if site_kinds.iter().any(|&k| opts.kinds[k]) {
                        let ws = Whitening::new(st, opts.damp)
                            .map_err(|e| format!("block {li}, {site:?} inputs: {e}"))?;
                        if ws.damp > opts.damp as f64 {
                            run.out.notes.push(format!(
                                "block {li}, {site:?} inputs: XᵀX is not positive \
                                     definite; damped by {:.0e} of its mean diagonal",
                                ws.damp
                            ));
                        }
                        Some(ws)
                    } else {
                        None
                    };
                    for k in site_kinds {
                        let (rows, cols) = dims[k];
                        let wk = std::mem::take(slot(w, k));
                        *slot(w, k) = run.matrix(&mats[k].0, k, &wk, rows, cols, white.as_ref())?;
                    }
                    Ok(())
                };
                pass.run_layer(li, &mut w, &mut step)?;
            }
            None => {
                for (k, (name, _)) in mats.iter().enumerate() {
                    let (rows, cols) = dims[k];
                    let wk = std::mem::take(slot(&mut w, k));
                    run.matrix(name, k, &wk, rows, cols, None)?;
                }
            }
        }
        progress(li + 1, n_layer, "layers");
    }
    let tied = model.weights.tied_output;
    let ends = [
        ("output.weight", if tied { None } else { opts.output_ty }),
        (
            "token_embd.weight",
            if tied { opts.output_ty } else { opts.embd_ty },
        ),
    ];
    for (name, want) in ends {
        let Some(want) = want else { continue };
        let t = tensor(src, name)?;
        if t.ty == want {
            continue;
        }
        run.store_dense(name, &to_f32(t)?, t.n_rows(), t.row_len(), want)?;
    }
    Ok(run.out)
}
