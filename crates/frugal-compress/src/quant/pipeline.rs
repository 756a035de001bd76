//! A whole model through a method into a format: layer by layer, with
//! calibration when the method needs it.
//!
//! The block matrices (Q, K, V, O, gate, up, down) go through the method;
//! the token embedding and the output matrix are rounded to nearest into
//! their own (usually higher-precision) type, as llama.cpp does; vectors
//! (norms, biases) stay f32.

use super::format::{Format, TypeFormat};
use super::method::{InputStats, Method};
use crate::calib::{Calibration, LayerF32, LayerPass, Site};
use frugal_formats::{FrugalType, GgmlType, ModelSource, Tensor};
use frugal_model::{tensor_to_f32, Model};

/// What to quantize, and how.
pub struct QuantizeOptions<'a> {
    pub method: &'a dyn Method,
    /// Type of the block matrices.
    pub ty: GgmlType,
    /// Type of the token embedding.
    pub embd_ty: GgmlType,
    /// Type of the output matrix (of the token embedding when the model ties them).
    pub output_ty: GgmlType,
    /// Calibration sequences (required by methods that need statistics).
    pub calib: Option<&'a Calibration>,
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

/// The block matrices of block `li`, by GGUF name, with their site.
fn matrices(li: usize) -> [(String, Site); 7] {
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

fn slot(w: &mut LayerF32, k: usize) -> &mut Vec<f32> {
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

fn tensor<'s>(src: &'s ModelSource, name: &str) -> Result<&'s Tensor, String> {
    src.tensor(name)
        .ok_or_else(|| format!("the model has no tensor `{name}`"))
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>, String> {
    tensor_to_f32(t).map_err(|e| e.to_string())
}

struct Run<'a> {
    opts: &'a QuantizeOptions<'a>,
    out: Vec<QTensor>,
    notes: Vec<String>,
}

impl Run<'_> {
    /// Quantizes `w` (a `rows × cols` matrix named `name`) with the method into
    /// `want` (or its fallback); returns the dequantized result.
    fn matrix(
        &mut self,
        name: &str,
        w: &[f32],
        dims: &[usize],
        want: GgmlType,
        method: &dyn Method,
        stats: Option<&InputStats>,
    ) -> Result<Vec<f32>, String> {
        let (cols, rows) = (dims[0], dims[1..].iter().product::<usize>());
        let ty = fit_type(want, cols);
        if ty != want {
            self.notes.push(format!(
                "{name}: rows of {cols} are not whole {want} blocks; used {ty}"
            ));
        }
        let fmt = TypeFormat::new(ty).map_err(|e| format!("{name}: {}", e.0))?;
        let bytes = method
            .quantize(w, rows, cols, &fmt, stats)
            .map_err(|e| format!("{name}: {e}"))?;
        let mut back = vec![0.0f32; rows * cols];
        frugal_kernels::dequantize_rows(fmt.ty(), &bytes, &mut back, cols)
            .map_err(|e| format!("{name}: {e}"))?;
        self.out.push(QTensor {
            name: name.to_string(),
            ty: fmt.ty(),
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
    let method = opts.method;
    if method.needs_calibration() && opts.calib.is_none() {
        return Err(format!(
            "{} needs calibration text: pass --calib FILE",
            method.name()
        ));
    }
    let n_layer = model.config.n_layer;
    let mut run = Run {
        opts,
        out: Vec::new(),
        notes: Vec::new(),
    };
    let rtn = super::Rtn;

    // Embedding and output: round to nearest.
    let tied = model.weights.tied_output;
    let embd = tensor(src, "token_embd.weight")?;
    let embd_ty = if tied { opts.output_ty } else { opts.embd_ty };
    run.matrix(&embd.name, &to_f32(embd)?, &embd.dims, embd_ty, &rtn, None)?;
    if let Some(out) = src.tensor("output.weight") {
        run.matrix(
            &out.name,
            &to_f32(out)?,
            &out.dims,
            run.opts.output_ty,
            &rtn,
            None,
        )?;
    }
    progress(0, n_layer, "layers");

    let mut pass = match opts.calib {
        Some(c) if method.needs_calibration() => {
            Some(LayerPass::new(model, c).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    for li in 0..n_layer {
        let mats = matrices(li);
        let mut w = LayerF32 {
            wq: Vec::new(),
            wk: Vec::new(),
            wv: Vec::new(),
            wo: Vec::new(),
            w_gate: Vec::new(),
            w_up: Vec::new(),
            w_down: Vec::new(),
        };
        for (k, (name, _)) in mats.iter().enumerate() {
            *slot(&mut w, k) = to_f32(tensor(src, name)?)?;
        }
        match pass.as_mut() {
            Some(pass) => {
                let ty = run.opts.ty;
                let mut step = |site: Site, st: &InputStats, w: &mut LayerF32| {
                    for (k, (name, s)) in mats.iter().enumerate() {
                        if *s != site {
                            continue;
                        }
                        let dims = &tensor(src, name)?.dims;
                        let wk = std::mem::take(slot(w, k));
                        *slot(w, k) = run.matrix(name, &wk, dims, ty, method, Some(st))?;
                    }
                    Ok(())
                };
                pass.run_layer(li, &mut w, &mut step)?;
            }
            None => {
                for (k, (name, _)) in mats.iter().enumerate() {
                    let dims = &tensor(src, name)?.dims;
                    let wk = std::mem::take(slot(&mut w, k));
                    run.matrix(name, &wk, dims, run.opts.ty, method, None)?;
                }
            }
        }
        progress(li + 1, n_layer, "layers");
    }
    Ok(Quantized {
        tensors: run.out,
        notes: run.notes,
    })
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
