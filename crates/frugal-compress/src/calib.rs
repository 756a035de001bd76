//! Calibration: token sequences from text, and a layer-by-layer f32 pass
//! of the model over them that exposes every linear layer's inputs.
//!
//! [`LayerPass`] keeps the residual stream of all calibration tokens and
//! runs one transformer block at a time, in the order its matrices are
//! used: attention inputs → Q, K, V → attention output → O → FFN inputs →
//! gate, up → SwiGLU → down. Before each matrix is applied, the caller gets
//! the matrix's input statistics and may replace the matrix (by its
//! quantized version), so later matrices see the errors of earlier ones:
//! GPTQ's "true sequential" order at the cost of one forward pass in all.
//! [`LayerPass::run_layer_with`] also lets the caller change the block's
//! norms and see a site's inputs ahead of time (a preview), which is what a
//! per-channel input scaling (AWQ, SmoothQuant) needs to fold its scales into
//! the layer before.

use crate::quant::InputStats;
use frugal_kernels::sgemm::{mirror_upper, sgemm, syrk_upper, View};
use frugal_model::{rms_norm, swiglu, Layer, Model, ModelError};
use frugal_tokenizer::Tokenizer;
use rayon::prelude::*;

/// Calibration token sequences, each starting with BOS where the model uses one.
pub struct Calibration {
    pub seqs: Vec<Vec<u32>>,
}

impl Calibration {
    /// `n_tokens` tokens of `text` cut into sequences of `seq_len` (the last
    /// may be shorter). An error names the shortfall when the text is too short.
    pub fn from_text(
        tok: &Tokenizer,
        text: &str,
        n_tokens: usize,
        seq_len: usize,
    ) -> Result<Calibration, String> {
        if seq_len < 2 {
            return Err(format!(
                "calibration sequences of {seq_len} tokens are too short"
            ));
        }
        if n_tokens == 0 {
            return Err("calibration needs at least one token".into());
        }
        let bos = tok.bos_to_add();
        let ids = tok.encode(text, false, false);
        let body = seq_len - bos.is_some() as usize;
        let n_seq = n_tokens.div_ceil(seq_len);
        let need = n_tokens - n_seq * bos.is_some() as usize;
        if ids.len() < need {
            return Err(format!(
                "the calibration text has {} tokens; {n_tokens} calibration tokens need {need}",
                ids.len()
            ));
        }
        let mut seqs = Vec::with_capacity(n_seq);
        let mut at = 0;
        let mut left = n_tokens;
        while left > 0 {
            let len = left.min(seq_len);
            let mut s = Vec::with_capacity(len);
            s.extend(bos);
            let take = len - s.len();
            s.extend_from_slice(&ids[at..at + take]);
            at += take;
            left -= len;
            debug_assert!(s.len() <= body + 1);
            seqs.push(s);
        }
        Ok(Calibration { seqs })
    }

    pub fn n_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.len()).sum()
    }

    /// The first `n` tokens (all of them when there are fewer), in the same
    /// sequences; a sequence that would cross `n` is cut there.
    pub fn prefix(&self, n: usize) -> Calibration {
        let mut seqs = Vec::new();
        let mut left = n;
        for s in &self.seqs {
            if left == 0 {
                break;
            }
            let take = s.len().min(left);
            seqs.push(s[..take].to_vec());
            left -= take;
        }
        Calibration { seqs }
    }

    /// The sequences in consecutive groups of at most `max_tokens` tokens
    /// each (a longer sequence is a group of its own), for passes whose
    /// memory grows with the tokens they hold at once.
    pub fn groups(&self, max_tokens: usize) -> Vec<Calibration> {
        let mut out: Vec<Calibration> = Vec::new();
        let mut held = 0;
        for s in &self.seqs {
            match out.last_mut() {
                Some(g) if held + s.len() <= max_tokens => {
                    g.seqs.push(s.clone());
                    held += s.len();
                }
                _ => {
                    out.push(Calibration {
                        seqs: vec![s.clone()],
                    });
                    held = s.len();
                }
            }
        }
        out
    }
}

/// The matrices of one block, in f32 (row-major, rows × cols).
#[derive(Default)]
pub struct LayerF32 {
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

impl LayerF32 {
    /// A model block's matrices in f32 (low-rank ones as the product of
    /// their factors).
    pub fn of(layer: &Layer) -> Result<LayerF32, ModelError> {
        Ok(LayerF32 {
            wq: layer.wq.to_f32()?,
            wk: layer.wk.to_f32()?,
            wv: layer.wv.to_f32()?,
            wo: layer.wo.to_f32()?,
            w_gate: layer.w_gate.to_f32()?,
            w_up: layer.w_up.to_f32()?,
            w_down: layer.w_down.to_f32()?,
        })
    }
}

/// A block's RMSNorm weights, into which a per-channel scaling of the
/// matrices' inputs can be folded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerNorms {
    /// Weights of the norm before Q, K, V.
    pub attn: Vec<f32>,
    /// Weights of the norm before gate and up.
    pub ffn: Vec<f32>,
}

impl LayerNorms {
    /// The norms of a model's block.
    pub fn of(layer: &Layer) -> LayerNorms {
        LayerNorms {
            attn: layer.attn_norm.clone(),
            ffn: layer.ffn_norm.clone(),
        }
    }
}

/// What [`LayerPass::run_layer_with`] shows its callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The site's matrices are about to be used: the callback may replace
    /// them (e.g. by their quantized versions).
    Use(Site),
    /// The inputs the site will get, computed from the block's matrices as
    /// they are now, before the matrices producing those inputs are used.
    Preview(Site),
}

/// The callback of [`LayerPass::run_layer_with`].
pub type StepFn<'a> =
    dyn FnMut(Stage, &InputStats, &mut LayerF32, &mut LayerNorms) -> Result<(), String> + 'a;

/// Which matrices of a block read the same input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// Q, K and V read the attention norm's output.
    Qkv,
    /// O reads the attention output.
    AttnOut,
    /// Gate and up read the FFN norm's output.
    GateUp,
    /// Down reads the SwiGLU output.
    Down,
}

/// Tokens per chunk of the chunked passes (bounds the scratch memory).
const CHUNK: usize = 2048;

/// The residual stream of every calibration token, advanced one block at a time.
/// A clone forks the stream: it can then run the remaining blocks with
/// different matrices from the original.
#[derive(Clone)]
pub struct LayerPass<'m> {
    model: &'m Model,
    seqs: Vec<(usize, usize)>,
    /// n_tok × n_embd.
    x: Vec<f32>,
    n_tok: usize,
}

impl<'m> LayerPass<'m> {
    /// Embeds the calibration tokens.
    pub fn new(model: &'m Model, calib: &Calibration) -> Result<LayerPass<'m>, ModelError> {
        let d = model.config.n_embd;
        let n_tok = calib.n_tokens();
        let mut x = vec![0.0f32; n_tok * d];
        let mut seqs = Vec::new();
        let mut at = 0;
        let t = &model.weights.token_embd;
        let to_float = frugal_kernels::traits(t.ty)
            .ok_or_else(|| ModelError::BadTensor(t.name.clone(), "no kernels".into()))?
            .to_float;
        let rb = t.row_bytes();
        for s in &calib.seqs {
            for (i, &tok) in s.iter().enumerate() {
                if tok as usize >= model.config.n_vocab {
                    return Err(ModelError::Input(format!(
                        "token {tok} outside the vocabulary"
                    )));
                }
                to_float(
                    &t.bytes()[tok as usize * rb..][..rb],
                    &mut x[(at + i) * d..(at + i + 1) * d],
                );
            }
            seqs.push((at, s.len()));
            at += s.len();
        }
        Ok(LayerPass {
            model,
            seqs,
            x,
            n_tok,
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tok
    }

    /// The residual stream (n_tokens × n_embd) after the blocks run so far.
    pub fn hidden(&self) -> &[f32] {
        &self.x
    }

    /// Runs block `li` with the matrices in `w`. Before the matrices of each
    /// [`Site`] are used, `quantize(site, stats, w)` gets their input
    /// statistics and may replace them in `w`.
    pub fn run_layer(
        &mut self,
        li: usize,
        w: &mut LayerF32,
        quantize: &mut dyn FnMut(Site, &InputStats, &mut LayerF32) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut norms = LayerNorms::of(&self.model.weights.layers[li]);
        self.run_layer_with(li, w, &mut norms, &[], &mut |stage, st, w, _| match stage {
            Stage::Use(site) => quantize(site, st, w),
            Stage::Preview(_) => Ok(()),
        })
    }

    /// [`run_layer`](Self::run_layer) with the block's norms taken from
    /// `norms` (which the callback may change, e.g. to fold a per-channel
    /// input scaling into them), and previews: for each site in `previews`
    /// (only [`Site::AttnOut`] and [`Site::Down`] have one), the callback
    /// also gets, as [`Stage::Preview`], that site's input statistics
    /// computed from the block's matrices as they are before the site that
    /// produces the input is used (Q, K, V for AttnOut; gate and up for Down),
    /// so a scaling of that input can be folded into those matrices before
    /// they are quantized.
    pub fn run_layer_with(
        &mut self,
        li: usize,
        w: &mut LayerF32,
        norms: &mut LayerNorms,
        previews: &[Site],
        step: &mut StepFn,
    ) -> Result<(), String> {
        let m = self.model;
        let c = &m.config;
        let layer: &Layer = &m.weights.layers[li];
        let (d, qd, ff) = (c.n_embd, c.n_head * c.head_dim, c.n_ff);
        let n = self.n_tok;
        if norms.attn.len() != d || norms.ffn.len() != d {
            return Err(format!(
                "block {li}: norms of {} and {} values, expected {d}",
                norms.attn.len(),
                norms.ffn.len()
            ));
        }

        // Q, K, V (and a preview of O's input from the matrices not yet quantized).
        if previews.contains(&Site::AttnOut) {
            let att = self.attention(layer, w, &norms.attn);
            let pre = stats_of(&att, n, qd);
            drop(att);
            step(Stage::Preview(Site::AttnOut), &pre, w, norms)?;
        }
        let st = self.normed_stats(&norms.attn);
        step(Stage::Use(Site::Qkv), &st, w, norms)?;

        // Attention, sequence by sequence; its output is kept for O.
        let att = self.attention(layer, w, &norms.attn);
        step(Stage::Use(Site::AttnOut), &stats_of(&att, n, qd), w, norms)?;
        for (a, b) in chunks(n) {
            let o = linear(&att[a * qd..b * qd], b - a, &w.wo, d, layer.bo.as_deref());
            add(&mut self.x[a * d..b * d], &o);
        }
        drop(att);

        // Gate and up (and a preview of down's input from them, not yet quantized).
        if previews.contains(&Site::Down) {
            let (pre, _) = self.swiglu_out(w, &norms.ffn, false);
            step(Stage::Preview(Site::Down), &pre, w, norms)?;
        }
        let st = self.normed_stats(&norms.ffn);
        step(Stage::Use(Site::GateUp), &st, w, norms)?;
        let (st, h) = self.swiglu_out(w, &norms.ffn, true);
        step(Stage::Use(Site::Down), &st, w, norms)?;
        for (a, b) in chunks(n) {
            let o = linear(&h[a * ff..b * ff], b - a, &w.w_down, d, None);
            add(&mut self.x[a * d..b * d], &o);
        }
        Ok(())
    }

    /// Runs block `li` with the matrices in `w` and the block's own norms,
    /// gathering no statistics: for passes that only need the residual stream.
    pub fn run_layer_plain(&mut self, li: usize, w: &LayerF32) {
        let m = self.model;
        let c = &m.config;
        let layer: &Layer = &m.weights.layers[li];
        let (d, qd, ff) = (c.n_embd, c.n_head * c.head_dim, c.n_ff);
        let att = self.attention(layer, w, &layer.attn_norm);
        for (a, b) in chunks(self.n_tok) {
            let o = linear(&att[a * qd..b * qd], b - a, &w.wo, d, layer.bo.as_deref());
            add(&mut self.x[a * d..b * d], &o);
        }
        drop(att);
        // The FFN works token by token, so each chunk can go in place.
        for (a, b) in chunks(self.n_tok) {
            let mut xn = vec![0.0f32; (b - a) * d];
            rms_norm(&self.x[a * d..b * d], &layer.ffn_norm, c.rms_eps, &mut xn);
            let mut g = linear(&xn, b - a, &w.w_gate, ff, None);
            let u = linear(&xn, b - a, &w.w_up, ff, None);
            swiglu(&mut g, &u);
            let o = linear(&g, b - a, &w.w_down, d, None);
            add(&mut self.x[a * d..b * d], &o);
        }
    }

    /// Statistics of the output matrix's input: the residual stream after
    /// the blocks run so far (all of them, for the model's own output),
    /// through the final norm.
    pub fn output_stats(&self) -> InputStats {
        self.normed_stats(&self.model.weights.output_norm)
    }

    /// Statistics of the residual stream through an RMSNorm of weights `norm`.
    fn normed_stats(&self, norm: &[f32]) -> InputStats {
        let (d, eps) = (self.model.config.n_embd, self.model.config.rms_eps);
        let mut st = InputStats::new(d);
        for (a, b) in chunks(self.n_tok) {
            let mut xn = vec![0.0f32; (b - a) * d];
            rms_norm(&self.x[a * d..b * d], norm, eps, &mut xn);
            accumulate(&mut st, &xn);
        }
        finish(st)
    }

    /// The attention output (n_tokens × n_head·head_dim) of the block with
    /// Q, K, V from `w` and the attention norm `norm`.
    fn attention(&self, layer: &Layer, w: &LayerF32, norm: &[f32]) -> Vec<f32> {
        let m = self.model;
        let c = &m.config;
        let (d, qd, kvd) = (c.n_embd, c.n_head * c.head_dim, c.kv_dim());
        let mut att = vec![0.0f32; self.n_tok * qd];
        for &(s0, len) in &self.seqs {
            let mut xn = vec![0.0f32; len * d];
            rms_norm(&self.x[s0 * d..(s0 + len) * d], norm, c.rms_eps, &mut xn);
            let mut q = linear(&xn, len, &w.wq, qd, layer.bq.as_deref());
            let mut k = linear(&xn, len, &w.wk, kvd, layer.bk.as_deref());
            let v = linear(&xn, len, &w.wv, kvd, layer.bv.as_deref());
            m.rope(&mut q, c.n_head, 0);
            m.rope(&mut k, c.n_head_kv, 0);
            causal_attention(m, &q, &k, &v, len, &mut att[s0 * qd..(s0 + len) * qd]);
        }
        att
    }

    /// Statistics of the SwiGLU output with gate and up from `w` and the FFN
    /// norm `norm`; the output itself (n_tokens × n_ff) when `keep`.
    fn swiglu_out(&self, w: &LayerF32, norm: &[f32], keep: bool) -> (InputStats, Vec<f32>) {
        let c = &self.model.config;
        let (d, ff, n) = (c.n_embd, c.n_ff, self.n_tok);
        let mut h = if keep {
            vec![0.0f32; n * ff]
        } else {
            Vec::new()
        };
        let mut st = InputStats::new(ff);
        for (a, b) in chunks(n) {
            let mut xn = vec![0.0f32; (b - a) * d];
            rms_norm(&self.x[a * d..b * d], norm, c.rms_eps, &mut xn);
            let mut g = linear(&xn, b - a, &w.w_gate, ff, None);
            let u = linear(&xn, b - a, &w.w_up, ff, None);
            swiglu(&mut g, &u);
            accumulate(&mut st, &g);
            if keep {
                h[a * ff..b * ff].copy_from_slice(&g);
            }
        }
        (finish(st), h)
    }
}

/// Statistics of `n` rows of `cols` values.
fn stats_of(x: &[f32], n: usize, cols: usize) -> InputStats {
    let mut st = InputStats::new(cols);
    for (a, b) in chunks(n) {
        accumulate(&mut st, &x[a * cols..b * cols]);
    }
    finish(st)
}

fn chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(CHUNK).map(move |a| (a, (a + CHUNK).min(n)))
}

/// xᵀx of a chunk of rows, added into the statistics (upper triangle only:
/// [`finish`] fills in the rest), and the columns' largest magnitudes.
fn accumulate(st: &mut InputStats, x: &[f32]) {
    let cols = st.cols;
    let rows = x.len() / cols;
    syrk_upper(&mut st.xtx, x, rows, cols, true);
    for row in x.chunks_exact(cols) {
        for (m, v) in st.absmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    st.tokens += rows;
}

/// Completes statistics gathered by [`accumulate`].
fn finish(mut st: InputStats) -> InputStats {
    mirror_upper(&mut st.xtx, st.cols);
    st
}

/// `x · wᵀ (+ bias)` for `n` rows of `x`; `w` is `out × cols`.
pub fn linear(x: &[f32], n: usize, w: &[f32], out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let cols = w.len() / out.max(1);
    let mut y = vec![0.0f32; n * out];
    sgemm(
        &mut y,
        out,
        false,
        View::rows(x, n, cols),
        View::transposed(w, out, cols),
        1.0,
        true,
    );
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(out) {
            add(row, b);
        }
    }
    y
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Query rows per block in [`causal_attention`]: each block only multiplies
/// the keys up to its last row, which skips most of the masked half.
const ATT_BLOCK: usize = 64;

/// Causal multi-head attention over one whole sequence (GQA), one head per task.
fn causal_attention(m: &Model, q: &[f32], k: &[f32], v: &[f32], len: usize, out: &mut [f32]) {
    let c = &m.config;
    let (hd, nh, kvd) = (c.head_dim, c.n_head, c.kv_dim());
    let qd = nh * hd;
    let group = nh / c.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let heads: Vec<Vec<f32>> = (0..nh)
        .into_par_iter()
        .map(|h| {
            let kh = h / group;
            let mut o = vec![0.0f32; len * hd];
            let mut s = vec![0.0f32; ATT_BLOCK * len];
            for q0 in (0..len).step_by(ATT_BLOCK) {
                let q1 = (q0 + ATT_BLOCK).min(len);
                let (rows, keys) = (q1 - q0, q1);
                let qv = View {
                    data: &q[q0 * qd + h * hd..],
                    rows,
                    cols: hd,
                    rs: qd,
                    cs: 1,
                };
                let kt = View {
                    data: &k[kh * hd..],
                    rows: hd,
                    cols: keys,
                    rs: 1,
                    cs: kvd,
                };
                let s = &mut s[..rows * keys];
                sgemm(s, keys, false, qv, kt, scale, false);
                for (r, row) in s.chunks_exact_mut(keys).enumerate() {
                    let t = q0 + r;
                    row[t + 1..].fill(0.0);
                    frugal_model::softmax(&mut row[..=t]);
                }
                let vv = View {
                    data: &v[kh * hd..],
                    rows: keys,
                    cols: hd,
                    rs: kvd,
                    cs: 1,
                };
                sgemm(
                    &mut o[q0 * hd..q1 * hd],
                    hd,
                    false,
                    View::rows(s, rows, keys),
                    vv,
                    1.0,
                    false,
                );
            }
            o
        })
        .collect();
    for (h, o) in heads.iter().enumerate() {
        for t in 0..len {
            out[t * qd + h * hd..t * qd + (h + 1) * hd].copy_from_slice(&o[t * hd..(t + 1) * hd]);
        }
    }
}
