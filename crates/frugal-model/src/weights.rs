//! The decoder's weights, taken from a [`ModelSource`] by GGUF tensor name and
//! checked against the config. Matrices stay in their stored format (usually
//! memory-mapped quantized blocks); only the small norm and bias vectors are
//! converted to f32.

use crate::{ModelConfig, ModelError};
use frugal_formats::{ModelSource, Tensor};
use frugal_kernels::matmul::QMatrix;

/// One transformer block.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub bo: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
}

pub struct Weights {
    pub token_embd: Tensor,
    pub output_norm: Vec<f32>,
    /// The output projection; the token embedding itself when the model ties them.
    pub output: Tensor,
    pub tied_output: bool,
    pub layers: Vec<Layer>,
}

/// View a 2-D tensor as a matrix of `dims[1]` rows by `dims[0]` columns.
pub fn qmatrix(t: &Tensor) -> QMatrix<'_> {
    QMatrix {
        ty: t.ty,
        rows: t.n_rows(),
        cols: t.row_len(),
        data: t.bytes(),
    }
}

/// Dequantize any tensor to f32.
pub fn tensor_to_f32(t: &Tensor) -> Result<Vec<f32>, ModelError> {
    let mut out = vec![0.0f32; t.n_elements()];
    frugal_kernels::dequantize_rows(t.ty, t.bytes(), &mut out, t.row_len())
        .map_err(|e| ModelError::BadTensor(t.name.clone(), e.to_string()))?;
    Ok(out)
}

struct Loader<'a> {
    src: &'a ModelSource,
    /// Names of the tensors taken so far.
    used: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl Loader<'_> {
    fn get(&self, name: &str) -> Result<&Tensor, ModelError> {
        let t = self
            .src
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    /// A matrix with `cols` inputs and `rows` outputs, in a type frugal has kernels for.
    fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Tensor, ModelError> {
        let t = self.get(name)?;
        if t.dims != [cols, rows] {
            return Err(ModelError::BadTensor(
                name.to_string(),
                format!("shape {:?}, expected [{cols}, {rows}]", t.dims),
            ));
        }
        let tr = frugal_kernels::traits(t.ty).ok_or_else(|| {
            ModelError::BadTensor(name.to_string(), format!("no kernels for type {}", t.ty))
        })?;
        if !cols.is_multiple_of(tr.vec_dot_type.block_size()) {
            return Err(ModelError::BadTensor(
                name.to_string(),
                format!(
                    "row length {cols} is not a multiple of the {} block size",
                    tr.vec_dot_type
                ),
            ));
        }
        Ok(t.clone())
    }

    /// A vector of `n` values, converted to f32.
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.get(name)?;
        if t.n_elements() != n {
            return Err(ModelError::BadTensor(
                name.to_string(),
                format!("{} elements, expected {n}", t.n_elements()),
            ));
        }
        tensor_to_f32(t)
    }

    fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.src.tensor(name).is_some() {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Weights {
    pub fn from_source(src: &ModelSource, cfg: &ModelConfig) -> Result<Weights, ModelError> {
        let l = Loader {
            src,
            used: Default::default(),
        };
        let d = cfg.n_embd;
        let qd = cfg.n_head * cfg.head_dim;
        let kvd = cfg.kv_dim();
        let token_embd = l.matrix("token_embd.weight", d, cfg.n_vocab)?;
        let (output, tied_output) = match src.tensor("output.weight") {
            Some(_) => (l.matrix("output.weight", d, cfg.n_vocab)?, false),
            None => (token_embd.clone(), true),
        };
        let mut layers = Vec::new();
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: l.vector(&n("attn_norm.weight"), d)?,
                wq: l.matrix(&n("attn_q.weight"), d, qd)?,
                wk: l.matrix(&n("attn_k.weight"), d, kvd)?,
                wv: l.matrix(&n("attn_v.weight"), d, kvd)?,
                wo: l.matrix(&n("attn_output.weight"), qd, d)?,
                bq: l.opt_vector(&n("attn_q.bias"), qd)?,
                bk: l.opt_vector(&n("attn_k.bias"), kvd)?,
                bv: l.opt_vector(&n("attn_v.bias"), kvd)?,
                bo: l.opt_vector(&n("attn_output.bias"), d)?,
                ffn_norm: l.vector(&n("ffn_norm.weight"), d)?,
                w_gate: l.matrix(&n("ffn_gate.weight"), d, cfg.n_ff)?,
                w_up: l.matrix(&n("ffn_up.weight"), d, cfg.n_ff)?,
                w_down: l.matrix(&n("ffn_down.weight"), cfg.n_ff, d)?,
            });
        }
        let output_norm = l.vector("output_norm.weight", d)?;
        // A tensor the decoder does not use means a feature it does not
        // implement: refuse rather than compute something else.
        let used = l.used.borrow();
        if let Some(t) = src.tensors.iter().find(|t| !used.contains(&t.name)) {
            return Err(ModelError::BadTensor(
                t.name.clone(),
                format!(
                    "not used by the {} decoder (an unsupported feature or layer)",
                    cfg.arch.name()
                ),
            ));
        }
        Ok(Weights {
            token_embd,
            output_norm,
            output,
            tied_output,
            layers,
        })
    }

    /// Bytes of weights read for one decoded token: every matrix once, plus one embedding row.
    pub fn bytes_per_token(&self) -> usize {
        let mats: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|t| t.bytes().len())
                    .sum::<usize>()
            })
            .sum();
        mats + self.output.bytes().len() + self.token_embd.row_bytes()
    }
}
