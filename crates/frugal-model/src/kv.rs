//! The key/value cache: for every layer, the rotated keys and the values of
//! every position seen so far, so each new token attends without recomputing
//! the prefix.
//!
//! Keys and values are stored as computed (f32, the default) or packed to
//! save memory ([`KvType`]): f16, or the ggml blocks Q8_0 / Q4_0 (32 values
//! per block, so a head never shares a block with another). Either way a
//! layer is position-major: position `p` is one row of `n_head_kv × head_dim`
//! values, packed into [`KvCache::row_bytes`] bytes when packed. A row is
//! converted once, when [`Model::forward`](crate::Model::forward) writes it.

use crate::{ModelConfig, ModelError};
use frugal_formats::GgmlType;
use std::fmt;
use std::str::FromStr;

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 4 bytes per value, as computed: the reference.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes per value.
    F16,
    /// ggml Q8_0: blocks of 32 values as 32 × i8 and one f16 scale (34 bytes).
    Q8_0,
    /// ggml Q4_0: blocks of 32 values as 32 × 4 bits and one f16 scale (18 bytes).
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The command-line name: `f32`, `f16`, `q8` or `q4`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8",
            KvType::Q4_0 => "q4",
        }
    }

    /// The GGML type rows are stored in (whose kernels read them).
    pub fn ggml_type(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Values per block: a head's `head_dim` must be a multiple of it.
    pub fn block_values(self) -> usize {
        match self {
            KvType::F32 | KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
            KvType::Q8_0 => 34,
            KvType::Q4_0 => 18,
        }
    }

    /// Bytes of `n` values (`n` a multiple of [`block_values`](Self::block_values)).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_values() * self.block_bytes()
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;

    /// `f32`, `f16`, `q8` (or `q8_0`), `q4` (or `q4_0`), in any case.
    fn from_str(s: &str) -> Result<KvType, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            "q8" | "q8_0" => Ok(KvType::Q8_0),
            "q4" | "q4_0" => Ok(KvType::Q4_0),
            _ => Err(format!(
                "unknown KV cache type `{s}`: expected f32, f16, q8 (Q8_0) or q4 (Q4_0)"
            )),
        }
    }
}

/// One layer's keys or values, `n_ctx` rows.
enum Rows {
    /// As computed.
    F32(Vec<f32>),
    /// Each row packed into `row_bytes` bytes (f16 values or Q8_0/Q4_0 blocks).
    Packed(Vec<u8>),
}

/// One layer of the cache as attention reads it.
pub(crate) enum LayerKv<'a> {
    F32 {
        k: &'a [f32],
        v: &'a [f32],
    },
    Packed {
        ty: KvType,
        k: &'a [u8],
        v: &'a [u8],
        /// Bytes of one position (all heads).
        row_bytes: usize,
        /// Bytes of one head of one position.
        head_bytes: usize,
    },
}

pub struct KvCache {
    ty: KvType,
    n_ctx: usize,
    kv_dim: usize,
    head_dim: usize,
    /// Bytes of one position's keys (or values) in one layer.
    row_bytes: usize,
    k: Vec<Rows>,
    v: Vec<Rows>,
    /// Positions filled.
    len: usize,
}

impl KvCache {
    /// An f32 cache for `n_ctx` positions, or an error naming the size if it
    /// cannot be allocated.
    pub fn new(cfg: &ModelConfig, n_ctx: usize) -> Result<KvCache, ModelError> {
        KvCache::new_typed(cfg, n_ctx, KvType::F32)
    }

    /// A cache of `ty` for `n_ctx` positions. Q8_0 and Q4_0 need a head size
    /// that is a multiple of 32; a model whose heads are not gets an error.
    pub fn new_typed(cfg: &ModelConfig, n_ctx: usize, ty: KvType) -> Result<KvCache, ModelError> {
        let kv_dim = cfg.kv_dim();
        let bv = ty.block_values();
        if !cfg.head_dim.is_multiple_of(bv) {
            return Err(ModelError::Input(format!(
                "a {ty} KV cache packs each head into blocks of {bv} values, but this \
                 model's heads have {} values; use the f16 or f32 KV cache",
                cfg.head_dim
            )));
        }
        let row_bytes = ty.bytes_for(kv_dim);
        let too_big = || {
            ModelError::Input(format!(
                "a {ty} KV cache of {n_ctx} positions does not fit in memory"
            ))
        };
        let per_layer = n_ctx.checked_mul(row_bytes).ok_or_else(too_big)?;
        per_layer
            .checked_mul(2 * cfg.n_layer)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        let layer = || -> Result<Rows, ModelError> {
            Ok(match ty {
                KvType::F32 => Rows::F32(zeroed(n_ctx * kv_dim).ok_or_else(too_big)?),
                _ => Rows::Packed(zeroed(per_layer).ok_or_else(too_big)?),
            })
        };
        Ok(KvCache {
            ty,
            n_ctx,
            kv_dim,
            head_dim: cfg.head_dim,
            row_bytes,
            k: (0..cfg.n_layer)
                .map(|_| layer())
                .collect::<Result<_, _>>()?,
            v: (0..cfg.n_layer)
                .map(|_| layer())
                .collect::<Result<_, _>>()?,
            len: 0,
        })
    }

    /// Whether this cache was made for a model of this shape.
    pub(crate) fn fits(&self, cfg: &ModelConfig) -> bool {
        self.k.len() == cfg.n_layer && self.kv_dim == cfg.kv_dim() && self.head_dim == cfg.head_dim
    }

    /// How keys and values are stored.
    pub fn kv_type(&self) -> KvType {
        self.ty
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget everything (positions restart at 0).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drop positions from `len` on (for example to re-run a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes of one position's keys (or values) in one layer, as stored.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Bytes the cache holds when full.
    pub fn capacity_bytes(&self) -> usize {
        self.n_ctx * self.bytes_per_token()
    }

    /// Bytes of K and V per position, all layers, as stored.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.k.len() * self.row_bytes
    }

    /// Store the keys and values of `k.len() / kv_dim` positions from `pos0`
    /// in `layer`, converting them to the cache's type.
    pub(crate) fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.kv_dim;
        debug_assert_eq!(k.len(), v.len());
        let (ty, kvd, rb) = (self.ty, self.kv_dim, self.row_bytes);
        for (rows, x) in [(&mut self.k[layer], k), (&mut self.v[layer], v)] {
            match rows {
                Rows::F32(r) => r[pos0 * kvd..(pos0 + n) * kvd].copy_from_slice(x),
                // Rows are whole blocks, so all n rows convert in one call.
                Rows::Packed(r) => pack(ty, x, &mut r[pos0 * rb..(pos0 + n) * rb]),
            }
        }
    }

    /// One layer, for attention.
    pub(crate) fn layer(&self, layer: usize) -> LayerKv<'_> {
        match (&self.k[layer], &self.v[layer]) {
            (Rows::F32(k), Rows::F32(v)) => LayerKv::F32 { k, v },
            (Rows::Packed(k), Rows::Packed(v)) => LayerKv::Packed {
                ty: self.ty,
                k,
                v,
                row_bytes: self.row_bytes,
                head_bytes: self.ty.bytes_for(self.head_dim),
            },
            _ => unreachable!("K and V of a layer share one type"),
        }
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

impl LayerKv<'_> {
    /// Positions the layer has room for.
    pub(crate) fn n_ctx(&self, kv_dim: usize) -> usize {
        match self {
            LayerKv::F32 { k, .. } => k.len() / kv_dim,
            LayerKv::Packed { k, row_bytes, .. } => k.len() / row_bytes,
        }
    }
}

/// `n` zeros, or `None` if they cannot be allocated.
fn zeroed<T: Clone + Default>(n: usize) -> Option<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, T::default());
    Some(v)
}

/// Convert `x` (whole blocks of `ty`) into `out`.
fn pack(ty: KvType, x: &[f32], out: &mut [u8]) {
    match ty {
        // The fastest Q8_0 quantizer of this CPU (bit-identical to the reference).
        KvType::Q8_0 => frugal_kernels::legacy::quantize_row_q8_0(x, out),
        _ => {
            let from_float = frugal_kernels::traits(ty.ggml_type())
                .and_then(|t| t.from_float)
                .expect("the kernels quantize every KV cache type");
            from_float(x, out)
        }
    }
}

/// Scratch for widening f16 rows: their bits (aligned for `half`) and values.
#[derive(Default)]
pub(crate) struct F16Scratch {
    bits: Vec<u16>,
    wide: Vec<f32>,
}

impl F16Scratch {
    pub(crate) const fn new() -> F16Scratch {
        F16Scratch {
            bits: Vec::new(),
            wide: Vec::new(),
        }
    }
}

/// `o += w × row` for one head's row of a packed cache (f16 values, or Q8_0
/// or Q4_0 blocks), widening as it goes. f16 rows widen through `scratch`
/// with `half`'s slice conversion (F16C where the CPU has it).
pub(crate) fn axpy_packed(ty: KvType, o: &mut [f32], w: f32, row: &[u8], scratch: &mut F16Scratch) {
    use frugal_kernels::legacy::blocks::{as_blocks, BlockQ4_0, BlockQ8_0, QK};
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    match ty {
        KvType::F16 => {
            let F16Scratch { bits, wide } = scratch;
            // No-ops once the scratch has grown to a head.
            bits.resize(o.len(), 0);
            wide.resize(o.len(), 0.0);
            for (d, b) in bits.iter_mut().zip(row.chunks_exact(2)) {
                *d = u16::from_le_bytes([b[0], b[1]]);
            }
            bits.reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(wide);
            for (o, &v) in o.iter_mut().zip(wide.iter()) {
                *o += w * v;
            }
        }
        KvType::Q8_0 => {
            for (o, b) in o.chunks_exact_mut(QK).zip(as_blocks::<BlockQ8_0>(row)) {
                let wd = w * b.d.to_f32();
                for (o, &q) in o.iter_mut().zip(&b.qs) {
                    *o += wd * q as f32;
                }
            }
        }
        KvType::Q4_0 => {
            for (o, b) in o.chunks_exact_mut(QK).zip(as_blocks::<BlockQ4_0>(row)) {
                let wd = w * b.d.to_f32();
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
                    *l += wd * ((q & 0x0f) as i32 - 8) as f32;
                    *h += wd * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        KvType::F32 => unreachable!("f32 rows are not packed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_axpy_matches_dequantize_then_axpy() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        for ty in [KvType::F16, KvType::Q8_0, KvType::Q4_0] {
            let mut row = vec![0u8; ty.bytes_for(x.len())];
            pack(ty, &x, &mut row);
            let mut deq = vec![0.0f32; x.len()];
            frugal_kernels::dequantize(ty.ggml_type(), &row, &mut deq).unwrap();
            let mut o = vec![1.0f32; x.len()];
            axpy_packed(ty, &mut o, 0.5, &row, &mut F16Scratch::new());
            for (a, d) in o.iter().zip(&deq) {
                assert!((a - (1.0 + 0.5 * d)).abs() < 1e-5, "{ty}: {a} vs {d}");
            }
        }
    }

    #[test]
    fn names_parse_and_print() {
        for ty in KvType::ALL {
            assert_eq!(ty.name().parse::<KvType>().unwrap(), ty);
            assert_eq!(ty.to_string(), ty.name());
        }
        assert_eq!("Q8_0".parse::<KvType>().unwrap(), KvType::Q8_0);
        assert_eq!("q4_0".parse::<KvType>().unwrap(), KvType::Q4_0);
        let e = "q5".parse::<KvType>().unwrap_err();
        assert!(e.contains("`q5`") && e.contains("f32, f16, q8"), "{e}");
    }
}

/// Attention over a packed cache against attention over an f32 cache holding
/// the same (widened) keys and values: they differ only by rounding.
#[cfg(test)]
mod attention_tests {
    use super::*;
    use crate::forward::attention;
    use crate::{Arch, RopeStyle};

    fn config() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            n_vocab: 8,
            n_embd: 256,
            n_layer: 1,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            n_ff: 8,
            n_ctx_train: 64,
            rope_theta: 10000.0,
            rope_dim: 64,
            rope_style: RopeStyle::Interleaved,
            rms_eps: 1e-5,
        }
    }

    /// Deterministic values in about [-1, 1].
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn packed_attention_matches_f32_attention_on_the_same_values() {
        let c = config();
        let (n_ctx, kvd, qd) = (40, c.kv_dim(), c.n_head * c.head_dim);
        let k = values(n_ctx * kvd, 1)
            .iter()
            .map(|x| 3.0 * x)
            .collect::<Vec<_>>();
        let v = values(n_ctx * kvd, 2);
        // A query Q8_0 represents exactly (integers up to ±127 times 2^-6 per
        // block), so only the cache's rounding is left to compare.
        let q: Vec<f32> = values(10 * qd, 3)
            .iter()
            .enumerate()
            .map(|(i, x)| if i % 32 == 0 { 127.0 } else { (x * 127.0).round() } / 64.0)
            .collect();
        for ty in [KvType::F16, KvType::Q8_0, KvType::Q4_0] {
            let mut packed = KvCache::new_typed(&c, n_ctx, ty).unwrap();
            packed.store(0, 0, &k, &v);
            let LayerKv::Packed { k: pk, v: pv, .. } = packed.layer(0) else {
                panic!("{ty} is packed")
            };
            let (mut wk, mut wv) = (vec![0.0; k.len()], vec![0.0; v.len()]);
            frugal_kernels::dequantize(ty.ggml_type(), pk, &mut wk).unwrap();
            frugal_kernels::dequantize(ty.ggml_type(), pv, &mut wv).unwrap();
            let mut wide = KvCache::new(&c, n_ctx).unwrap();
            wide.store(0, 0, &wk, &wv);
            // One decode step at the end, then a batch of 10 (parallel).
            for (pos0, n) in [(n_ctx - 1, 1), (n_ctx - 10, 10)] {
                let q = &q[..n * qd];
                let (mut a, mut b) = (vec![0.0; n * qd], vec![0.0; n * qd]);
                attention(&c, q, packed.layer(0), pos0, n, &mut a);
                attention(&c, q, wide.layer(0), pos0, n, &mut b);
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 1e-4, "{ty}, {n} tokens: {diff}");
                assert!(
                    b.iter().any(|&x| x.abs() > 0.05),
                    "{ty}: attention output is trivial"
                );
            }
        }
    }
}
