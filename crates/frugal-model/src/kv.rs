//! The key/value cache: for every layer, the rotated keys and the values of
//! every position seen so far, so each new token attends without recomputing
//! the prefix.

use crate::{ModelConfig, ModelError};

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
    /// A cache for `n_ctx` positions, or an error naming the size if it
    /// cannot be allocated.
    pub fn new(cfg: &ModelConfig, n_ctx: usize) -> Result<KvCache, ModelError> {
        let kv_dim = cfg.kv_dim();
        let too_big = || {
            ModelError::Input(format!(
                "a KV cache of {n_ctx} positions does not fit in memory"
            ))
        };
        let per_layer = n_ctx.checked_mul(kv_dim).ok_or_else(too_big)?;
        per_layer
            .checked_mul(2 * cfg.n_layer * std::mem::size_of::<f32>())
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        let layer = || -> Result<Vec<f32>, ModelError> {
            let mut v = Vec::new();
            v.try_reserve_exact(per_layer).map_err(|_| too_big())?;
            v.resize(per_layer, 0.0);
            Ok(v)
        };
        Ok(KvCache {
            n_ctx,
            kv_dim,
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
        self.k.len() == cfg.n_layer && self.kv_dim == cfg.kv_dim()
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
