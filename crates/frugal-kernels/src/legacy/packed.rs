//! Activations re-arranged for the AVX-512 matmul micro-kernel.
//!
//! The micro-kernel decodes four weight blocks (a "quad") into two registers:
//! elements 0..16 of the four blocks, then elements 16..32. [`ActQuad`] holds
//! the matching four activation blocks in that order, with their scales
//! spread to the lanes where the integer dot products land, so the kernel
//! does only full-width loads. The per-type extras (Q8_0: bias corrections;
//! Q8_1: block sums) live in separate arrays so each kernel touches only
//! what it needs. Rows are padded with zero blocks to whole quads.

use super::blocks::*;
use frugal_formats::GgmlType;

/// Four Q8_0 or Q8_1 activation blocks, kernel layout (192 bytes).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuad {
    /// Quants 0..16 of blocks 0..4 (16 each), then quants 16..32 of blocks 0..4.
    pub qs: [i8; 128],
    /// Scale `d` of block k in lanes 4k..4k+4.
    pub d16: [f32; 16],
}

/// 16 lanes of i32 or f32 (one 512-bit register).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lanes16<T>(pub [T; 16]);

/// The biases of [`PackedActs::corr`]: signed weights enter `vpdpbusd` as
/// unsigned `q + bias` (Q4_0: 8, Q5_0: 16, Q8_0: 128).
pub const CORR_BIASES: [i32; 3] = [8, 16, 128];

/// `n_tok` activation rows in the micro-kernel layout; element `(t, q)` of
/// each array is at `t * nq + q`.
#[derive(Default)]
pub struct PackedActs {
    /// Blocks per row and quads per row (`ceil(nb / 4)`).
    pub nb: usize,
    pub nq: usize,
    pub n_tok: usize,
    pub quads: Vec<ActQuad>,
    /// Q8_0 only, per bias of [`CORR_BIASES`]: `-bias * sum(q)` of block k
    /// in lane 4k, other lanes 0.
    pub corr: [Vec<Lanes16<i32>>; 3],
    /// Q8_1 only: block k's sum `s` (as stored, f16 → f32) in lane 4k, other lanes 0.
    pub s16: Vec<Lanes16<f32>>,
}

impl PackedActs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Re-arranges `n_tok` rows of `nb` Q8_0 or Q8_1 blocks (`src`, ggml
    /// layout). Reuses the buffers' allocations.
    pub fn pack(&mut self, dot_ty: GgmlType, src: &[u8], n_tok: usize, nb: usize) {
        let nq = nb.div_ceil(4);
        self.nb = nb;
        self.nq = nq;
        self.n_tok = n_tok;
        self.quads.clear();
        self.s16.clear();
        for c in &mut self.corr {
            c.clear();
        }
        match dot_ty {
            GgmlType::Q8_0 => {
                let blocks = as_blocks::<BlockQ8_0>(&src[..n_tok * nb * 34]);
                for row in blocks.chunks_exact(nb.max(1)).take(n_tok) {
                    for quad in row.chunks(4) {
                        let mut aq = ActQuad::ZERO;
                        let mut corr = [Lanes16([0; 16]); 3];
                        for (k, blk) in quad.iter().enumerate() {
                            put(&mut aq, k, &blk.qs, blk.d.to_f32());
                            let sum: i32 = blk.qs.iter().map(|&v| v as i32).sum();
                            for (c, bias) in corr.iter_mut().zip(CORR_BIASES) {
                                c.0[4 * k] = -bias * sum;
                            }
                        }
                        self.quads.push(aq);
                        for (v, c) in self.corr.iter_mut().zip(corr) {
                            v.push(c);
                        }
                    }
                }
            }
            GgmlType::Q8_1 => {
                let blocks = as_blocks::<BlockQ8_1>(&src[..n_tok * nb * 36]);
                for row in blocks.chunks_exact(nb.max(1)).take(n_tok) {
                    for quad in row.chunks(4) {
                        let mut aq = ActQuad::ZERO;
                        let mut s16 = Lanes16([0.0f32; 16]);
                        for (k, blk) in quad.iter().enumerate() {
                            put(&mut aq, k, &blk.qs, blk.d.to_f32());
                            s16.0[4 * k] = blk.s.to_f32();
                        }
                        self.quads.push(aq);
                        self.s16.push(s16);
                    }
                }
            }
            other => panic!("PackedActs::pack: {other} is not Q8_0 or Q8_1"),
        }
        if nb == 0 {
            self.quads.clear();
        }
        debug_assert_eq!(self.quads.len(), n_tok * nq);
    }
}

impl ActQuad {
    pub const ZERO: ActQuad = ActQuad {
        qs: [0; 128],
        d16: [0.0; 16],
    };
}

#[inline]
fn put(q: &mut ActQuad, k: usize, qs: &[i8; QK], d: f32) {
    q.qs[16 * k..16 * k + 16].copy_from_slice(&qs[..16]);
    q.qs[64 + 16 * k..64 + 16 * k + 16].copy_from_slice(&qs[16..]);
    q.d16[4 * k..4 * k + 4].fill(d);
}
