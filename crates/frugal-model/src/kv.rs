//! The key/value cache: for every layer, the rotated keys and the values of
//! every position seen so far, so each new token attends without recomputing
//! the prefix.

use crate::ModelConfig;

pub struct KvCache {
    n_ctx: usize,
    kv_dim: usize,
    /// Per layer, `n_ctx * kv_dim` keys then values (position-major).
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Positions filled.
    len: usize,
}

impl KvCache {
    /// A cache for `n_ctx` positions. Memory is zero-initialised lazily by the
    /// allocator, so untouched positions cost no resident memory.
    pub fn new(cfg: &ModelConfig, n_ctx: usize) -> KvCache {
        let kv_dim = cfg.kv_dim();
        KvCache {
            n_ctx,
            kv_dim,
            k: (0..cfg.n_layer)
                .map(|_| vec![0.0; n_ctx * kv_dim])
                .collect(),
            v: (0..cfg.n_layer)
                .map(|_| vec![0.0; n_ctx * kv_dim])
                .collect(),
            len: 0,
        }
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

    /// Bytes the cache holds when full.
    pub fn capacity_bytes(&self) -> usize {
        2 * self.k.len() * self.n_ctx * self.kv_dim * std::mem::size_of::<f32>()
    }

    /// Bytes of K and V per position, all layers.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.k.len() * self.kv_dim * std::mem::size_of::<f32>()
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.k[layer], &mut self.v[layer])
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
