//! The decoder's weights, taken from a [`ModelSource`] by GGUF tensor name and
//! checked against the config. Matrices stay in their stored format (usually
//! memory-mapped quantized blocks); only the small norm and bias vectors are
//! converted to f32.

use crate::{ModelConfig, ModelError};
use frugal_formats::{ModelSource, Tensor};
use frugal_kernels::matmul::QMatrix;
use frugal_kernels::sgemm::View;

/// A linear layer's weights (`out × in`): one matrix, or two low-rank factors.
#[derive(Clone, Debug)]
pub enum Linear {
    Dense(Tensor),
    /// W ≈ b · a: `a` (r × in) maps the input to r values, `b` (out × r)
    /// maps those to the outputs.
    LowRank {
        a: Tensor,
        b: Tensor,
    },
}

impl Linear {
    /// Outputs.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Dense(w) => w.n_rows(),
            Linear::LowRank { b, .. } => b.n_rows(),
        }
    }

    /// Inputs.
    pub fn cols(&self) -> usize {
        match self {
            Linear::Dense(w) => w.row_len(),
            Linear::LowRank { a, .. } => a.row_len(),
        }
    }

    /// The inner dimension r of factors; `None` for a dense matrix.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Linear::Dense(_) => None,
            Linear::LowRank { a, .. } => Some(a.n_rows()),
        }
    }

    /// The stored tensors: the matrix, or `a` then `b`.
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Linear::Dense(w) => vec![w],
            Linear::LowRank { a, b } => vec![a, b],
        }
    }

    /// Bytes read to apply the layer once.
    pub fn bytes(&self) -> usize {
        self.tensors().iter().map(|t| t.bytes().len()).sum()
    }

    /// Stored weights (multiplications per input row).
    pub fn params(&self) -> usize {
        self.tensors().iter().map(|t| t.n_elements()).sum()
    }

    /// The `rows × cols` matrix in f32, row-major (b · a for factors).
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        match self {
            Linear::Dense(w) => tensor_to_f32(w),
            Linear::LowRank { a, b } => {
                let (fa, fb) = (tensor_to_f32(a)?, tensor_to_f32(b)?);
                let (r, cols, rows) = (a.n_rows(), a.row_len(), b.n_rows());
                let mut w = vec![0.0f32; rows * cols];
                frugal_kernels::sgemm::sgemm(
                    &mut w,
                    cols,
                    false,
                    View::rows(&fb, rows, r),
                    View::rows(&fa, r, cols),
                    1.0,
                    true,
                );
                Ok(w)
            }
        }
    }

    /// Lets the mapped pages of the stored tensors go (see [`Tensor::release_pages`]).
    pub fn release_pages(&self) {
        for t in self.tensors() {
            t.release_pages();
        }
    }
}

/// GGUF names of the two factors that may stand for the matrix `name`
/// (`blk.N.X.weight` → `blk.N.X_a.weight`, `blk.N.X_b.weight`).
pub fn factor_names(name: &str) -> (String, String) {
    let stem = name.strip_suffix(".weight").unwrap_or(name);
    (format!("{stem}_a.weight"), format!("{stem}_b.weight"))
}

/// GGUF short names of a block's seven matrices (`blk.N.{name}.weight`),
/// in [`Layer::matrices`]' order.
pub const BLOCK_MATRIX_NAMES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// One transformer block.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub bo: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
}

impl Layer {
    /// The seven block matrices, in the order they are used.
    pub fn matrices(&self) -> [&Linear; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
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

    /// A block matrix with `cols` inputs and `rows` outputs: the matrix
    /// `name`, or its two low-rank factors (see [`factor_names`]).
    fn linear(&self, name: &str, cols: usize, rows: usize) -> Result<Linear, ModelError> {
        let (na, nb) = factor_names(name);
        let has = |n: &str| self.src.tensor(n).is_some();
        match (has(name), has(&na), has(&nb)) {
            (true, false, false) => Ok(Linear::Dense(self.matrix(name, cols, rows)?)),
            (false, true, true) => {
                let r = self.get(&na)?.n_rows();
                if r == 0 || r > cols.min(rows) {
                    return Err(ModelError::BadTensor(
                        na,
                        format!("rank {r} of a {rows} × {cols} matrix"),
                    ));
                }
                Ok(Linear::LowRank {
                    a: self.matrix(&na, cols, r)?,
                    b: self.matrix(&nb, r, rows)?,
                })
            }
            (false, false, false) => Err(ModelError::MissingTensor(name.to_string())),
            (true, _, _) => Err(ModelError::BadTensor(
                name.to_string(),
                "stored both dense and as low-rank factors".into(),
            )),
            (false, a, _) => Err(ModelError::MissingTensor(if a { nb } else { na })),
        }
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
        let dot_ty = frugal_kernels::vec_dot_type(t.ty).ok_or_else(|| {
            ModelError::BadTensor(name.to_string(), format!("no kernels for type {}", t.ty))
        })?;
        if !cols.is_multiple_of(dot_ty.block_size()) {
            return Err(ModelError::BadTensor(
                name.to_string(),
                format!("row length {cols} is not a multiple of the {dot_ty} block size"),
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
                wq: l.linear(&n("attn_q.weight"), d, qd)?,
                wk: l.linear(&n("attn_k.weight"), d, kvd)?,
                wv: l.linear(&n("attn_v.weight"), d, kvd)?,
                wo: l.linear(&n("attn_output.weight"), qd, d)?,
                bq: l.opt_vector(&n("attn_q.bias"), qd)?,
                bk: l.opt_vector(&n("attn_k.bias"), kvd)?,
                bv: l.opt_vector(&n("attn_v.bias"), kvd)?,
                bo: l.opt_vector(&n("attn_output.bias"), d)?,
                ffn_norm: l.vector(&n("ffn_norm.weight"), d)?,
                w_gate: l.linear(&n("ffn_gate.weight"), d, cfg.n_ff)?,
                w_up: l.linear(&n("ffn_up.weight"), d, cfg.n_ff)?,
                w_down: l.linear(&n("ffn_down.weight"), cfg.n_ff, d)?,
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

    /// Bytes of weights read for one decoded token: every matrix (or both
    /// its factors) once, plus one embedding row.
    pub fn bytes_per_token(&self) -> usize {
        let mats: usize = self
            .layers
            .iter()
            .flat_map(|l| l.matrices())
            .map(Linear::bytes)
            .sum();
        mats + self.output.bytes().len() + self.token_embd.row_bytes()
    }

    /// Weights multiplied for one token: the block matrices (or their
    /// factors) and the output matrix.
    pub fn matmul_params(&self) -> usize {
        let mats: usize = self
            .layers
            .iter()
            .flat_map(|l| l.matrices())
            .map(Linear::params)
            .sum();
        mats + self.output.n_elements()
    }

    /// The largest rank of the low-rank block matrices (0 if none).
    pub fn max_rank(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.matrices())
            .filter_map(Linear::rank)
            .max()
            .unwrap_or(0)
    }

    /// Whether any block matrix is stored as low-rank factors.
    pub fn has_low_rank(&self) -> bool {
        self.layers
            .iter()
            .flat_map(|l| l.matrices())
            .any(|m| m.rank().is_some())
    }
}
