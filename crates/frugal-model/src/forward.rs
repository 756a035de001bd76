//! The forward pass: embeddings, then for each block RMSNorm → attention (with
//! RoPE, GQA and the KV cache) → RMSNorm → SwiGLU feed-forward, then the final
//! norm and the output projection.
//!
//! One call handles a batch of consecutive tokens: prefill passes the whole
//! prompt (matrix-matrix), decode passes one token (matrix-vector). All
//! buffers live in [`State`], allocated once, so decoding allocates nothing.

use crate::kv::{axpy_packed, F16Scratch, LayerKv};
use crate::weights::{qmatrix, Linear, Weights};
use crate::{KvCache, KvType, ModelConfig, ModelError, RopeStyle};
use frugal_formats::{GgmlType, ModelSource, Tensor};
use frugal_kernels::matmul::{matmul, matmul_many, QMatrix, QuantizedActs};
use std::cell::RefCell;

/// Which positions of a batch get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token (generation).
    Last,
    /// Every token (perplexity, evaluation).
    All,
    /// Tokens from this batch index on: evaluation that scores only the end of
    /// a batch skips the output matmul (a fifth of a small model's work) for the rest.
    From(usize),
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    /// RoPE inverse frequencies, one per rotated pair.
    inv_freq: Vec<f32>,
}

/// Activations quantized for the matmul kernels, one slot per activation type,
/// so Q, K and V (or gate and up) quantize their shared input only once.
#[derive(Default)]
struct ActCache {
    slots: Vec<(GgmlType, QuantizedActs, bool)>,
    /// The r values per token between a low-rank layer's two factors
    /// (room for the largest rank times the state's capacity).
    mid: Vec<f32>,
    /// `mid` quantized for the second factor: its own buffer, since it is
    /// used once and must not disturb the cached layer input.
    mid_acts: QuantizedActs,
}

impl ActCache {
    /// `out = x · Wᵀ` for a dense or low-rank layer. Factors multiply twice:
    /// x (quantized once per input, as for a dense matrix) by `a`, then the
    /// r-wide result by `b`.
    fn linear(&mut self, w: &Linear, x: &[f32], n: usize, out: &mut [f32]) {
        match w {
            Linear::Dense(t) => self.matmul(t, x, n, out),
            Linear::LowRank { a, b } => {
                let r = a.n_rows();
                let mut mid = std::mem::take(&mut self.mid);
                self.matmul(a, x, n, &mut mid[..n * r]);
                let qb = qmatrix(b);
                let dot_ty = frugal_kernels::vec_dot_type(b.ty)
                    .expect("weights are checked for kernels at load");
                self.mid_acts.quantize(dot_ty, &mid[..n * r], n, r);
                matmul(&qb, &self.mid_acts, &mut out[..n * qb.rows]);
                self.mid = mid;
            }
        }
    }

    /// [`ActCache::linear`] for several layers reading the same `x`; dense
    /// ones share one parallel region (see [`ActCache::matmul_many`]).
    fn linear_many(&mut self, ws: &[&Linear], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        use Linear::Dense;
        match ws {
            [Dense(a), Dense(b)] => self.matmul_many(&[a, b], x, n, outs),
            [Dense(a), Dense(b), Dense(c)] => self.matmul_many(&[a, b, c], x, n, outs),
            _ => {
                for (w, out) in ws.iter().zip(outs.iter_mut()) {
                    self.linear(w, x, n, out);
                }
            }
        }
    }

    fn invalidate(&mut self) {
        for s in &mut self.slots {
            s.2 = false;
        }
    }

    /// `out = x · Wᵀ` for `n` rows of `x`, quantizing `x` for `w` unless already done.
    fn matmul(&mut self, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
        let qm = qmatrix(w);
        let dot_ty =
            frugal_kernels::vec_dot_type(w.ty).expect("weights are checked for kernels at load");
        let i = match self.slots.iter().position(|s| s.0 == dot_ty) {
            Some(i) => i,
            None => {
                self.slots.push((dot_ty, QuantizedActs::new(), false));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[i];
        if !slot.2 {
            slot.1.quantize(dot_ty, &x[..n * qm.cols], n, qm.cols);
            slot.2 = true;
        }
        matmul(&qm, &slot.1, &mut out[..n * qm.rows]);
    }

    /// [`ActCache::matmul`] for several matrices reading the same `x`: one
    /// parallel region when they share an activation type.
    fn matmul_many(&mut self, ws: &[&Tensor], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        let dot_ty = |w: &Tensor| {
            frugal_kernels::vec_dot_type(w.ty).expect("weights are checked for kernels at load")
        };
        if ws.len() > 3 || ws.iter().any(|w| dot_ty(w) != dot_ty(ws[0])) {
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                self.matmul(w, x, n, out);
            }
            return;
        }
        // Quantizes x once (into the cache slot) through the first matrix.
        let q0 = qmatrix(ws[0]);
        let i = match self.slots.iter().position(|s| s.0 == dot_ty(ws[0])) {
            Some(i) => i,
            None => {
                self.slots
                    .push((dot_ty(ws[0]), QuantizedActs::new(), false));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[i];
        if !slot.2 {
            slot.1.quantize(slot.0, &x[..n * q0.cols], n, q0.cols);
            slot.2 = true;
        }
        let mut qms = [q0; 3];
        for (q, w) in qms.iter_mut().zip(ws) {
            *q = qmatrix(w);
        }
        for (o, q) in outs.iter_mut().zip(&qms) {
            let full = std::mem::take(o);
            *o = &mut full[..n * q.rows];
        }
        let refs: [&QMatrix; 3] = [&qms[0], &qms[1], &qms[2]];
        matmul_many(&refs[..ws.len()], &slot.1, outs);
    }
}

/// Scratch buffers for up to `cap` tokens per forward call.
pub struct State {
    cap: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
    acts: ActCache,
}

impl State {
    /// Largest batch one forward call accepts.
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

thread_local! {
    /// Attention scores of one (token, head), reused across calls on each thread.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Scratch of attention over a packed cache, reused like `SCORES`.
    static PACKED: RefCell<PackedScratch> = const { RefCell::new(PackedScratch::new()) };
}

/// One query head quantized to Q8_0 (for the dot products with Q8_0 and
/// Q4_0 keys), and room to widen f16 values.
struct PackedScratch {
    query: Vec<u8>,
    f16: F16Scratch,
}

impl PackedScratch {
    const fn new() -> PackedScratch {
        PackedScratch {
            query: Vec::new(),
            f16: F16Scratch::new(),
        }
    }
}

impl Model {
    pub fn from_source(src: &ModelSource) -> Result<Model, ModelError> {
        let config = ModelConfig::from_source(src)?;
        let weights = Weights::from_source(src, &config)?;
        let half = config.rope_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                config
                    .rope_theta
                    .powf(-2.0 * i as f32 / config.rope_dim as f32)
            })
            .collect();
        Ok(Model {
            config,
            weights,
            inv_freq,
        })
    }

    /// Scratch for batches of up to `cap` tokens. Logits for all tokens of a
    /// batch need `cap × n_vocab` floats; pass `all_logits = false` when only
    /// the last token's logits are wanted.
    pub fn new_state(&self, cap: usize, all_logits: bool) -> State {
        let c = &self.config;
        let cap = cap.max(1);
        let qd = c.n_head * c.head_dim;
        State {
            cap,
            x: vec![0.0; cap * c.n_embd],
            xn: vec![0.0; cap * c.n_embd.max(qd)],
            q: vec![0.0; cap * qd],
            k: vec![0.0; cap * c.kv_dim()],
            v: vec![0.0; cap * c.kv_dim()],
            att: vec![0.0; cap * qd],
            gate: vec![0.0; cap * c.n_ff],
            up: vec![0.0; cap * c.n_ff],
            logits: vec![0.0; if all_logits { cap } else { 1 } * c.n_vocab],
            acts: ActCache {
                mid: vec![0.0; cap * self.weights.max_rank()],
                ..ActCache::default()
            },
        }
    }

    /// An f32 KV cache for `n_ctx` positions; an error if it cannot be allocated.
    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache, ModelError> {
        KvCache::new(&self.config, n_ctx)
    }

    /// A KV cache of `kv_type` for `n_ctx` positions; an error if it cannot be
    /// allocated or this model's heads do not fit the type's blocks.
    pub fn new_cache_typed(&self, n_ctx: usize, kv_type: KvType) -> Result<KvCache, ModelError> {
        KvCache::new_typed(&self.config, n_ctx, kv_type)
    }

    /// Run `tokens` (at most `st.capacity()`) at the next positions of `kv`.
    /// Returns the logits of the tokens `mode` asks for (row-major).
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        st: &'s mut State,
        mode: Logits,
    ) -> Result<&'s [f32], ModelError> {
        let rows = self.blocks(tokens, kv, st, mode, true)?;
        st.acts.invalidate();
        st.acts
            .matmul(&self.weights.output, &st.xn, rows, &mut st.logits);
        Ok(&st.logits[..rows * self.config.n_vocab])
    }

    /// Like [`forward`](Self::forward), but returns the final hidden states
    /// (after the output norm, `n_embd` per token) instead of logits: what
    /// `weights.output` turns into logits. KL divergence saves these so a
    /// base's logits can be rebuilt exactly without rerunning the base.
    pub fn forward_hidden<'s>(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        st: &'s mut State,
        mode: Logits,
    ) -> Result<&'s [f32], ModelError> {
        let rows = self.blocks(tokens, kv, st, mode, false)?;
        Ok(&st.xn[..rows * self.config.n_embd])
    }

    /// Everything up to the output matmul: leaves the normed hidden states of
    /// the rows `mode` asks for in `st.xn` and returns how many rows.
    fn blocks(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        st: &mut State,
        mode: Logits,
        logits: bool,
    ) -> Result<usize, ModelError> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::Input("no tokens to run".into()));
        }
        if n > st.cap {
            return Err(ModelError::Input(format!(
                "batch of {n} tokens exceeds the state's capacity {}",
                st.cap
            )));
        }
        let (first, rows) = match mode {
            Logits::Last => (n - 1, 1),
            Logits::All => (0, n),
            Logits::From(i) if i < n => (i, n - i),
            Logits::From(i) => {
                return Err(ModelError::Input(format!(
                    "logits from index {i} asked of a batch of {n} tokens"
                )))
            }
        };
        if logits && st.logits.len() < rows * c.n_vocab {
            return Err(ModelError::Input(
                "state was made without room for all logits".into(),
            ));
        }
        if !kv.fits(c) || st.x.len() != st.cap * c.n_embd {
            return Err(ModelError::Input(
                "the KV cache or state was made for a different model".into(),
            ));
        }
        let pos0 = kv.len();
        if pos0 + n > kv.n_ctx() {
            return Err(ModelError::ContextFull {
                n_ctx: kv.n_ctx(),
                needed: pos0 + n,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.n_vocab
            )));
        }

        let d = c.n_embd;
        let qd = c.n_head * c.head_dim;
        let kvd = c.kv_dim();
        let ff = c.n_ff;
        self.embed(tokens, &mut st.x[..n * d]);

        for (li, layer) in self.weights.layers.iter().enumerate() {
            // Attention.
            rms_norm(
                &st.x[..n * d],
                &layer.attn_norm,
                c.rms_eps,
                &mut st.xn[..n * d],
            );
            st.acts.invalidate();
            st.acts.linear_many(
                &[&layer.wq, &layer.wk, &layer.wv],
                &st.xn,
                n,
                &mut [&mut st.q, &mut st.k, &mut st.v],
            );
            add_bias(&mut st.q[..n * qd], layer.bq.as_deref());
            add_bias(&mut st.k[..n * kvd], layer.bk.as_deref());
            add_bias(&mut st.v[..n * kvd], layer.bv.as_deref());
            self.rope(&mut st.q[..n * qd], c.n_head, pos0);
            self.rope(&mut st.k[..n * kvd], c.n_head_kv, pos0);
            kv.store(li, pos0, &st.k[..n * kvd], &st.v[..n * kvd]);
            attention(
                c,
                &st.q[..n * qd],
                kv.layer(li),
                pos0,
                n,
                &mut st.att[..n * qd],
            );
            st.acts.invalidate();
            st.acts.linear(&layer.wo, &st.att, n, &mut st.xn);
            add_bias(&mut st.xn[..n * d], layer.bo.as_deref());
            add_assign(&mut st.x[..n * d], &st.xn[..n * d]);

            // Feed-forward (SwiGLU).
            rms_norm(
                &st.x[..n * d],
                &layer.ffn_norm,
                c.rms_eps,
                &mut st.xn[..n * d],
            );
            st.acts.invalidate();
            st.acts.linear_many(
                &[&layer.w_gate, &layer.w_up],
                &st.xn,
                n,
                &mut [&mut st.gate, &mut st.up],
            );
            swiglu(&mut st.gate[..n * ff], &st.up[..n * ff]);
            st.acts.invalidate();
            st.acts.linear(&layer.w_down, &st.gate, n, &mut st.xn);
            add_assign(&mut st.x[..n * d], &st.xn[..n * d]);
        }
        kv.advance(n);

        rms_norm(
            &st.x[first * d..n * d],
            &self.weights.output_norm,
            c.rms_eps,
            &mut st.xn[..rows * d],
        );
        Ok(rows)
    }

    /// Look up (dequantize) the embedding row of each token.
    fn embed(&self, tokens: &[u32], out: &mut [f32]) {
        let t = &self.weights.token_embd;
        let d = self.config.n_embd;
        if frugal_kernels::interleave::is_interleaved(t.ty) {
            // A tied embedding laid out for the output matmul.
            for (i, &tok) in tokens.iter().enumerate() {
                let r = tok as usize;
                frugal_kernels::interleave::dequantize_rows(
                    t.ty,
                    t.bytes(),
                    d,
                    r..r + 1,
                    &mut out[i * d..(i + 1) * d],
                );
            }
            return;
        }
        let to_float = frugal_kernels::traits(t.ty)
            .expect("weights are checked for kernels at load")
            .to_float;
        let rb = t.row_bytes();
        for (i, &tok) in tokens.iter().enumerate() {
            let row = &t.bytes()[tok as usize * rb..][..rb];
            to_float(row, &mut out[i * d..(i + 1) * d]);
        }
    }

    /// Rotate each head of `x` (n tokens × heads × head_dim) by its position
    /// (`pos0` for the first token).
    pub fn rope(&self, x: &mut [f32], heads: usize, pos0: usize) {
        let hd = self.config.head_dim;
        let half = self.config.rope_dim / 2;
        let style = self.config.rope_style;
        for (t, tok) in x.chunks_exact_mut(heads * hd).enumerate() {
            let p = (pos0 + t) as f32;
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let (sin, cos) = (p * f).sin_cos();
                for head in tok.chunks_exact_mut(hd) {
                    let (a, b) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
    }

    /// Bytes of weights read per decoded token.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.weights.bytes_per_token()
    }
}

/// Causal multi-head attention with grouped K/V heads, for `n` new tokens at
/// positions `pos0..pos0+n` against the cache (which already holds them).
///
/// f32 keys take the f32 dot product with the query; f16 keys the f16 one
/// (the query stays f32); Q8_0 and Q4_0 keys are dotted with the query
/// quantized to Q8_0 once per head, as ggml does. Packed values are widened
/// block by block while they are summed.
pub(crate) fn attention(
    c: &ModelConfig,
    q: &[f32],
    kv: LayerKv<'_>,
    pos0: usize,
    n: usize,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let kvd = c.kv_dim();
    let group = c.n_head / c.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_head = c.n_head;
    let n_ctx = kv.n_ctx(kvd);
    let key_ty = match kv {
        LayerKv::F32 { .. } => KvType::F32,
        LayerKv::Packed { ty, .. } => ty,
    };
    // The keys' dot product of the kernels crate: SIMD where the CPU has it.
    let kernels =
        frugal_kernels::traits(key_ty.ggml_type()).expect("the kernels cover every KV cache type");
    let dot = kernels.vec_dot;
    // What the query is converted to below.
    assert_eq!(
        kernels.vec_dot_type,
        match key_ty {
            KvType::F32 | KvType::F16 => GgmlType::F32,
            KvType::Q8_0 | KvType::Q4_0 => GgmlType::Q8_0,
        },
        "{key_ty} keys: the kernels' dot product takes another query type"
    );
    let one = |(i, o): (usize, &mut [f32])| {
        let (t, h) = (i / n_head, i % n_head);
        let kvh = h / group;
        let p = pos0 + t;
        let qh = &q[t * n_head * hd + h * hd..][..hd];
        SCORES.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < p + 1 {
                // Room for the whole cache at once, so decoding never grows it.
                s.resize(n_ctx, 0.0);
            }
            let s = &mut s[..=p];
            match kv {
                LayerKv::F32 { k: kc, v: vc } => {
                    for (j, sj) in s.iter_mut().enumerate() {
                        let k = &kc[j * kvd + kvh * hd..][..hd];
                        *sj = dot(hd, bytemuck::cast_slice(k), bytemuck::cast_slice(qh)) * scale;
                    }
                    softmax(s);
                    o.fill(0.0);
                    for (j, &w) in s.iter().enumerate() {
                        axpy(o, w, &vc[j * kvd + kvh * hd..][..hd]);
                    }
                }
                LayerKv::Packed {
                    ty,
                    k: kc,
                    v: vc,
                    row_bytes,
                    head_bytes,
                } => {
                    // Where position j's bytes of this K/V head start.
                    let at = |j: usize| j * row_bytes + kvh * head_bytes;
                    PACKED.with(|ps| {
                        let ps = &mut *ps.borrow_mut();
                        let qa: &[u8] = if ty == KvType::F16 {
                            bytemuck::cast_slice(qh)
                        } else {
                            ps.query.resize(KvType::Q8_0.bytes_for(hd), 0);
                            frugal_kernels::legacy::quantize_row_q8_0(qh, &mut ps.query);
                            &ps.query
                        };
                        for (j, sj) in s.iter_mut().enumerate() {
                            *sj = dot(hd, &kc[at(j)..][..head_bytes], qa) * scale;
                        }
                        softmax(s);
                        o.fill(0.0);
                        for (j, &w) in s.iter().enumerate() {
                            axpy_packed(ty, o, w, &vc[at(j)..][..head_bytes], &mut ps.f16);
                        }
                    });
                }
            }
        });
    };
    // Parallel only when there is enough work to pay for the hand-off.
    let work = n * n_head * (pos0 + n) * hd;
    if work >= 1 << 14 {
        frugal_kernels::team::for_each_chunk_mut(out, hd, &|i, o| one((i, o)));
    } else {
        out.chunks_mut(hd).enumerate().for_each(one);
    }
}

/// Root-mean-square norm of each row of `x`, times `w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            add_assign(row, b);
        }
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// gate ← silu(gate) · up
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    frugal_kernels::activation::silu_mul(gate, up);
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    frugal_kernels::activation::softmax(x);
}

fn axpy(o: &mut [f32], w: f32, v: &[f32]) {
    for (o, &v) in o.iter_mut().zip(v) {
        *o += w * v;
    }
}
