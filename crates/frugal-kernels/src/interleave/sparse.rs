//! The interleaved layout of unstructured sparse int8 (`SQ8_{K}of64x16`).
//!
//! A `SQ8_{K}of64` row keeps a different number of codes in each block, so
//! its 16-row group cannot take fixed 64-byte chunks as the dense types do.
//! It takes them in compressed form instead. A group is first, for each
//! block `b`, a fixed part of 96 bytes:
//!
//! * the 16 rows' f16 scales (32 bytes), then
//! * 8 little-endian 64-bit masks, one per chunk `j`: bit `4r + i` says
//!   whether row `r` keeps weight `4j + i` (64 bytes);
//!
//! then the kept codes, block by block, chunk by chunk, each chunk's in the
//! order of its mask's bits, stored `q ^ 0x80` as in `SQ8_{K}of64`; then
//! padding (0x80). One `vpexpandb` under a chunk's mask rebuilds the chunk
//! of the dense `Q8_0x16` layout (0x80, a zero weight, where nothing is
//! kept) and the dense kernel takes it from there. The fixed parts come
//! first so that where the next block's masks lie never waits on loading
//! this block's: only the codes' position runs on from chunk to chunk.
//! Every row's codes fit its
//! row's capacity, so a group's codes fit the group's 16 rows' capacity and
//! the layout is made in place. A row whose bitmaps claim more codes than
//! it holds (a hostile file) leaves the matrix in the row layout.

use super::ROWS;
use crate::legacy::blocks::QK;
use crate::sparse::scalar::{pack_sparse_blocks, unpack_sparse_blocks, SparseBlock, CODE_BIAS};

/// Bytes of a block's fixed part: 16 scales and 8 masks.
pub(super) const BLOCK_HEAD: usize = 32 + 8 * 8;

/// Block `b`'s fixed part and its codes, for each block of the 16-row group
/// `group` of `nb` blocks per row, in order. Panics when the masks claim
/// more codes than the group holds (never, for a group [`interleave`] made).
fn walk(group: &[u8], nb: usize, mut f: impl FnMut(usize, &[u8], &[u8])) {
    let mut at = nb * BLOCK_HEAD;
    for b in 0..nb {
        let head = &group[b * BLOCK_HEAD..(b + 1) * BLOCK_HEAD];
        let n: usize = (0..8).map(|j| mask(head, j).count_ones() as usize).sum();
        f(b, head, &group[at..at + n]);
        at += n;
    }
}

/// Chunk `j`'s mask in a block's fixed part.
#[inline]
fn mask(head: &[u8], j: usize) -> u64 {
    u64::from_le_bytes(head[32 + 8 * j..40 + 8 * j].try_into().expect("8 bytes"))
}

/// Row `lane`'s block out of an interleaved block (`head`, `codes`).
fn lane_block(head: &[u8], codes: &[u8], lane: usize) -> SparseBlock {
    let mut blk = SparseBlock {
        d: [head[2 * lane], head[2 * lane + 1]],
        kept: 0,
        codes: [CODE_BIAS; QK],
    };
    let mut chunk = 0;
    for j in 0..8 {
        let m = mask(head, j);
        // This row's codes follow the lower rows' in the chunk.
        let mut at = chunk + (m & ((1u64 << (4 * lane)) - 1)).count_ones() as usize;
        for i in 0..4 {
            if m >> (4 * lane + i) & 1 == 1 {
                blk.kept |= 1 << (4 * j + i);
                blk.codes[4 * j + i] = codes[at];
                at += 1;
            }
        }
        chunk += m.count_ones() as usize;
    }
    blk
}

/// Lays out one group: `src` holds 16 `SQ8_{K}of64` rows of `nb` blocks,
/// `dst` gets the group (the same number of bytes). Fails on a row whose
/// bitmaps claim more codes than it holds.
pub(super) fn interleave(src: &[u8], nb: usize, dst: &mut [u8]) -> Result<(), String> {
    let rb = src.len() / ROWS;
    let mut blocks = vec![
        SparseBlock {
            d: [0; 2],
            kept: 0,
            codes: [0; QK]
        };
        ROWS * nb
    ];
    for (row, out) in src.chunks_exact(rb).zip(blocks.chunks_exact_mut(nb)) {
        unpack_sparse_blocks(row, out)?;
    }
    let mut c = nb * BLOCK_HEAD;
    for b in 0..nb {
        let lane = |r: usize| &blocks[r * nb + b];
        let at = b * BLOCK_HEAD;
        for r in 0..ROWS {
            dst[at + 2 * r..at + 2 * r + 2].copy_from_slice(&lane(r).d);
        }
        for j in 0..8 {
            let mut m = 0u64;
            for r in 0..ROWS {
                let mut nib = lane(r).kept >> (4 * j) & 0xF;
                m |= (nib as u64) << (4 * r);
                while nib != 0 {
                    dst[c] = lane(r).codes[4 * j + nib.trailing_zeros() as usize];
                    nib &= nib - 1;
                    c += 1;
                }
            }
            dst[at + 32 + 8 * j..at + 40 + 8 * j].copy_from_slice(&m.to_le_bytes());
        }
    }
    dst[c..].fill(CODE_BIAS);
    Ok(())
}

/// Row `lane` of an interleaved group back in the `SQ8_{K}of64` layout
/// (`out`: one row's bytes).
pub(super) fn row_to_ggml(group: &[u8], nb: usize, lane: usize, out: &mut [u8]) {
    let mut blocks = Vec::with_capacity(nb);
    walk(group, nb, |_, head, codes| {
        blocks.push(lane_block(head, codes, lane))
    });
    pack_sparse_blocks(&blocks, out);
}

/// The scalar reference for one group and one token (`a`: its Q8_0 row of
/// `nb` blocks): the 16 rows' dot products, summed as the SIMD kernel does
/// (per block the exact integer sum, then `acc = fma(sum, d_w · d_a, acc)`).
pub(super) fn group_ref(group: &[u8], nb: usize, a: &[u8]) -> [f32; ROWS] {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut acc = [0.0f32; ROWS];
    walk(group, nb, |b, head, codes| {
        let ab = &a[b * 34..(b + 1) * 34];
        let ad = f16(ab);
        for (lane, acc) in acc.iter_mut().enumerate() {
            let blk = lane_block(head, codes, lane);
            let s: i32 = (0..QK)
                .map(|j| (blk.codes[j] ^ CODE_BIAS) as i8 as i32 * ab[2 + j] as i8 as i32)
                .sum();
            *acc = (s as f32).mul_add(f16(&blk.d) * ad, *acc);
        }
    });
    acc
}
