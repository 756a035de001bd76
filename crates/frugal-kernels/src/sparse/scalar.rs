//! Reference codecs and dot products of the sparse int8 types (see
//! [`frugal_formats::FrugalType::SparseQ8`] and `Sparse24Q8` for the
//! layouts). Activations are Q8_0 blocks (f16 scale, 32 i8 codes).

use crate::legacy::blocks::QK;
use crate::legacy::scalar::quantize_q8_0_ref;
use half::f16;

/// Bytes of a block header of `SparseQ8`: u32 bitmap, f16 scale.
pub const SPARSE_HEADER: usize = 6;
/// Bytes of a `Sparse24Q8` block: f16 scale, u32 positions, 16 codes.
pub const S24_BLOCK: usize = 22;
/// Bytes of a Q8_0 activation block.
pub const A_BLOCK: usize = 34;

#[inline]
pub(crate) fn ld_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

#[inline]
pub(crate) fn ld_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// For each of the 256 values of a byte of 2:4 positions (two groups: low
/// nibble `i0 | i1 << 2` for the first, high nibble for the second), the
/// byte of the two groups' 4-bit masks.
pub(crate) static S24_MASK: [u8; 256] = {
    const fn nib(n: usize) -> u8 {
        (1u8 << (n & 3)) | (1u8 << ((n >> 2) & 3))
    }
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = nib(b & 15) | (nib(b >> 4) << 4);
        b += 1;
    }
    t
};

/// The 32-bit mask of a 2:4 block's kept weights, from its positions.
#[inline]
pub fn s24_mask(pos: u32) -> u32 {
    let b = pos.to_le_bytes();
    S24_MASK[b[0] as usize] as u32
        | (S24_MASK[b[1] as usize] as u32) << 8
        | (S24_MASK[b[2] as usize] as u32) << 16
        | (S24_MASK[b[3] as usize] as u32) << 24
}

/// Code bytes a `SparseQ8` row of `n` weights has room for, given its size.
pub fn sparse_capacity(n: usize, row_bytes: usize) -> usize {
    row_bytes - n / QK * SPARSE_HEADER
}

/// One `SparseQ8` row (`src`, of `dst.len()` weights) into floats.
pub fn dequantize_sparse(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK;
    let (heads, vals) = src.split_at(nb * SPARSE_HEADER);
    let mut at = 0;
    for (h, out) in heads
        .chunks_exact(SPARSE_HEADER)
        .zip(dst.chunks_exact_mut(QK))
    {
        let (mask, d) = (ld_u32(h), ld_f16(&h[4..]));
        for (j, o) in out.iter_mut().enumerate() {
            *o = if mask >> j & 1 == 1 {
                at += 1;
                // A hostile row may claim more codes than it holds: zeros.
                d * vals.get(at - 1).copied().unwrap_or(0) as i8 as f32
            } else {
                0.0
            };
        }
    }
}

/// `Sparse24Q8` blocks into floats.
pub fn dequantize_s24(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(S24_BLOCK).zip(dst.chunks_exact_mut(QK)) {
        let (d, mask) = (ld_f16(b), s24_mask(ld_u32(&b[2..])));
        let mut k = 0;
        for (j, o) in out.iter_mut().enumerate() {
            *o = if mask >> j & 1 == 1 {
                k += 1;
                d * b[6 + k - 1] as i8 as f32
            } else {
                0.0
            };
        }
    }
}

/// Keeps the `keep` largest |x| of `x` (ties: the earlier) and zeroes the rest.
fn keep_largest(x: &mut [f32], keep: usize) {
    if keep >= x.len() {
        return;
    }
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
    for &i in &idx[keep..] {
        x[i] = 0.0;
    }
}

/// Reference quantizer of `SparseQ8`: one row of `src.len()` weights into
/// `dst` (its size sets the row's capacity). When the row has more nonzero
/// weights than fit, the smallest are pruned (magnitude pruning); the rest
/// are rounded by Q8_0's reference quantizer.
pub fn quantize_sparse(src: &[f32], dst: &mut [u8]) {
    let n = src.len();
    let cap = sparse_capacity(n, dst.len());
    let mut x = src.to_vec();
    keep_largest(&mut x, cap);
    let mut q = vec![0u8; n / QK * A_BLOCK];
    quantize_q8_0_ref(&x, &mut q);
    pack_sparse(&q, dst).expect("pruned to capacity");
}

/// Reference quantizer of `Sparse24Q8`: in every group of 4 the two
/// largest |x| are kept (ties: the earlier), rounded by Q8_0's reference quantizer.
pub fn quantize_s24(src: &[f32], dst: &mut [u8]) {
    for (x, o) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(S24_BLOCK)) {
        let mut x: [f32; QK] = x.try_into().expect("a block");
        for g in x.chunks_exact_mut(4) {
            keep_largest(g, 2);
        }
        let mut q = [0u8; A_BLOCK];
        quantize_q8_0_ref(&x, &mut q);
        pack_s24(&q, o).expect("two kept per group");
    }
}

/// Packs a row of Q8_0 blocks (`q8`) whose zero codes are the pruned weights
/// into a `SparseQ8` row `out` (its size sets the capacity). Fails if the
/// row has more nonzero codes than fit.
pub fn pack_sparse(q8: &[u8], out: &mut [u8]) -> Result<(), String> {
    let nb = q8.len() / A_BLOCK;
    let n = nb * QK;
    let cap = sparse_capacity(n, out.len());
    let (heads, vals) = out.split_at_mut(nb * SPARSE_HEADER);
    let mut at = 0;
    for (b, h) in q8
        .chunks_exact(A_BLOCK)
        .zip(heads.chunks_exact_mut(SPARSE_HEADER))
    {
        let mut mask = 0u32;
        for (j, &c) in b[2..].iter().enumerate() {
            if c != 0 {
                if at == cap {
                    return Err(format!(
                        "a row of {n} weights has more than the {cap} nonzero weights it has room for"
                    ));
                }
                mask |= 1 << j;
                vals[at] = c;
                at += 1;
            }
        }
        h[..4].copy_from_slice(&mask.to_le_bytes());
        h[4..6].copy_from_slice(&b[..2]);
    }
    vals[at..].fill(0);
    Ok(())
}

/// Packs Q8_0 blocks whose groups of 4 each hold at most two nonzero codes
/// into `Sparse24Q8` blocks. Fails on a group with three or more.
pub fn pack_s24(q8: &[u8], out: &mut [u8]) -> Result<(), String> {
    for (bi, (b, o)) in q8
        .chunks_exact(A_BLOCK)
        .zip(out.chunks_exact_mut(S24_BLOCK))
        .enumerate()
    {
        o[..2].copy_from_slice(&b[..2]);
        let mut pos = 0u32;
        for g in 0..8 {
            let c = &b[2 + 4 * g..][..4];
            let nz: Vec<usize> = (0..4).filter(|&i| c[i] != 0).collect();
            if nz.len() > 2 {
                return Err(format!(
                    "block {bi}, group {g}: {} nonzero weights where 2:4 keeps 2",
                    nz.len()
                ));
            }
            // Fill up with zero weights, keeping positions ascending.
            let mut two: Vec<usize> = nz.clone();
            for i in 0..4 {
                if two.len() == 2 {
                    break;
                }
                if !two.contains(&i) {
                    two.push(i);
                }
            }
            two.sort_unstable();
            for (k, &i) in two.iter().enumerate() {
                pos |= (i as u32) << (2 * (2 * g + k));
                o[6 + 2 * g + k] = c[i];
            }
        }
        o[2..6].copy_from_slice(&pos.to_le_bytes());
    }
    Ok(())
}

/// Σ over a block of kept codes times activation codes.
#[inline]
fn block_sum(mask: u32, vals: &[u8], a: &[u8]) -> (i32, usize) {
    let mut s = 0i32;
    let mut k = 0;
    for (j, &av) in a.iter().enumerate().take(QK) {
        if mask >> j & 1 == 1 {
            s += vals.get(k).copied().unwrap_or(0) as i8 as i32 * av as i8 as i32;
            k += 1;
        }
    }
    (s, k)
}

/// Dot product of a `SparseQ8` row of `n` weights with a Q8_0 row.
pub fn vec_dot_sparse_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK;
    let (heads, vals) = w.split_at(nb * SPARSE_HEADER);
    let mut at = 0;
    let mut sum = 0.0f32;
    for (h, ab) in heads
        .chunks_exact(SPARSE_HEADER)
        .zip(a.chunks_exact(A_BLOCK))
    {
        let (s, k) = block_sum(ld_u32(h), vals.get(at..).unwrap_or(&[]), &ab[2..]);
        at += k;
        sum += s as f32 * ld_f16(&h[4..]) * ld_f16(ab);
    }
    sum
}

/// Dot product of `n` weights of `Sparse24Q8` with a Q8_0 row.
pub fn vec_dot_s24_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, ab) in w
        .chunks_exact(S24_BLOCK)
        .zip(a.chunks_exact(A_BLOCK))
        .take(n / QK)
    {
        let (s, _) = block_sum(s24_mask(ld_u32(&b[2..])), &b[6..], &ab[2..]);
        sum += s as f32 * ld_f16(b) * ld_f16(ab);
    }
    sum
}
