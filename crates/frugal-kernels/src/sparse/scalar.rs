//! Reference codecs and dot products of the sparse int8 types (see
//! [`frugal_formats::FrugalType::SparseQ8`] and `Sparse24Q8` for the
//! layouts). Activations are Q8_0 blocks (f16 scale, 32 i8 codes).
//!
//! Both layouts go by groups of four blocks (128 weights; a row's last group
//! may hold fewer), the unit the SIMD kernels take at once. Within a group,
//! "lane" `16k + i` of half `h` (0 or 1) is weight `16h + i` of block `k`:
//! the order in which the AVX-512 kernels hold a group in two registers
//! (the activations' order in `legacy::packed::ActQuad`).

use crate::legacy::blocks::QK;
use crate::legacy::scalar::quantize_q8_0_ref;
use half::f16;

/// Bytes of the headers of `SparseQ8` per block (bitmap, scale).
pub const SPARSE_HEADER: usize = 6;
/// Bytes of `Sparse24Q8` per block: f16 scale, u32 of positions, 16 codes.
pub const S24_BLOCK: usize = 22;
/// Bytes of a Q8_0 activation block.
pub const A_BLOCK: usize = 34;
/// Blocks per group.
pub const GROUP: usize = 4;
/// `SparseQ8` codes are stored as `q ^ CODE_BIAS`, i.e. `q + 128` as an
/// unsigned byte.
pub const CODE_BIAS: u8 = 0x80;

#[inline]
pub(crate) fn ld_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Little-endian unsigned integer of the bytes `b` (at most 8).
#[inline]
fn ld_bits(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64)
}

/// Blocks in group `g` of a row of `nb` blocks.
#[inline]
pub fn group_blocks(nb: usize, g: usize) -> usize {
    (nb - g * GROUP).min(GROUP)
}

/// What the layout walkers report, in order: a kept weight's code, then at
/// the end of each group the group's scales.
enum Item<'a> {
    /// Block, weight within the block, code.
    Code(usize, usize, i8),
    /// First block of the group, its f16 scales.
    Scales(usize, &'a [u8]),
}

/// Block and weight (within the block) of lane `l` of half `h`.
#[inline]
fn lane_weight(h: usize, l: usize) -> (usize, usize) {
    (l / 16, 16 * h + l % 16)
}

/// Code bytes a `SparseQ8` row of `n` weights has room for, given its size.
pub fn sparse_capacity(n: usize, row_bytes: usize) -> usize {
    row_bytes - n / QK * SPARSE_HEADER
}

/// Visits the kept weights of a `SparseQ8` row of `nb` blocks, group by
/// group (see [`Item`]). Codes the bitmaps claim beyond the row's
/// bytes (a hostile row) read as 0.
fn sparse_walk<'a>(nb: usize, src: &'a [u8], mut f: impl FnMut(Item<'a>)) {
    let (heads, vals) = src.split_at(nb * SPARSE_HEADER);
    let mut at = 0;
    for g in 0..nb.div_ceil(GROUP) {
        let m = group_blocks(nb, g);
        let h = &heads[g * GROUP * SPARSE_HEADER..][..m * SPARSE_HEADER];
        for half in 0..2 {
            let bits = ld_bits(&h[2 * m * half..][..2 * m]);
            for l in 0..16 * m {
                if bits >> l & 1 == 1 {
                    let (k, j) = lane_weight(half, l);
                    let q = vals.get(at).map_or(0, |&v| (v ^ CODE_BIAS) as i8);
                    f(Item::Code(4 * g + k, j, q));
                    at += 1;
                }
            }
        }
        f(Item::Scales(4 * g, &h[4 * m..]));
    }
}

/// One `SparseQ8` row (`src`, of `dst.len()` weights) into floats.
pub fn dequantize_sparse(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK;
    dst.fill(0.0);
    let mut q = vec![0i8; nb * QK];
    sparse_walk(nb, src, |it| match it {
        Item::Code(k, j, c) => q[k * QK + j] = c,
        Item::Scales(k0, ds) => {
            for (k, d) in (k0..).zip(ds.chunks_exact(2).map(ld_f16)) {
                for (o, &c) in dst[k * QK..][..QK].iter_mut().zip(&q[k * QK..][..QK]) {
                    if c != 0 {
                        *o = d * c as f32;
                    }
                }
            }
        }
    });
}

/// Position (0..4, within its group of 4 weights) of code `c` of block `k`
/// of a `Sparse24Q8` group of `m` blocks whose positions are `pos`.
#[inline]
fn s24_pos(pos: &[u8], m: usize, k: usize, c: usize) -> usize {
    let half = &pos[2 * m * (c / 8) + 2 * k..];
    let bits = u16::from_le_bytes([half[0], half[1]]);
    (bits >> (2 * (c % 8)) & 3) as usize
}

/// Visits the 16 codes of every block of a `Sparse24Q8` row of `nb` blocks,
/// group by group (see [`Item`]).
fn s24_walk<'a>(nb: usize, src: &'a [u8], mut f: impl FnMut(Item<'a>)) {
    let mut off = 0;
    for g in 0..nb.div_ceil(GROUP) {
        let m = group_blocks(nb, g);
        let grp = &src[off..off + m * S24_BLOCK];
        off += m * S24_BLOCK;
        let (ds, rest) = grp.split_at(2 * m);
        let (pos, codes) = rest.split_at(4 * m);
        for k in 0..m {
            for c in 0..16 {
                let j = 4 * (c / 2) + s24_pos(pos, m, k, c);
                f(Item::Code(4 * g + k, j, codes[16 * k + c] as i8));
            }
        }
        f(Item::Scales(4 * g, ds));
    }
}

/// `Sparse24Q8` blocks into floats. A hostile row naming one position twice
/// gets the sum of the two codes there (as its dot products do).
pub fn dequantize_s24(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK;
    dst.fill(0.0);
    let mut q = vec![0i32; nb * QK];
    s24_walk(nb, src, |it| match it {
        Item::Code(k, j, c) => q[k * QK + j] += c as i32,
        Item::Scales(k0, ds) => {
            for (k, d) in (k0..).zip(ds.chunks_exact(2).map(ld_f16)) {
                for (o, &c) in dst[k * QK..][..QK].iter_mut().zip(&q[k * QK..][..QK]) {
                    if c != 0 {
                        *o = d * c as f32;
                    }
                }
            }
        }
    });
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
    let mut x = src.to_vec();
    for g in x.chunks_exact_mut(4) {
        keep_largest(g, 2);
    }
    let mut q = vec![0u8; x.len() / QK * A_BLOCK];
    quantize_q8_0_ref(&x, &mut q);
    pack_s24(&q, dst).expect("two kept per group");
}

/// Packs a row of Q8_0 blocks (`q8`) whose zero codes are the pruned weights
/// into a `SparseQ8` row `out` (its size sets the capacity). Fails if the
/// row has more nonzero codes than fit.
pub fn pack_sparse(q8: &[u8], out: &mut [u8]) -> Result<(), String> {
    let nb = q8.len() / A_BLOCK;
    let n = nb * QK;
    let cap = sparse_capacity(n, out.len());
    let nonzero = (0..nb)
        .map(|b| {
            q8[b * A_BLOCK + 2..][..QK]
                .iter()
                .filter(|&&c| c != 0)
                .count()
        })
        .sum::<usize>();
    if nonzero > cap {
        return Err(format!(
            "a row of {n} weights has more than the {cap} nonzero weights it has room for"
        ));
    }
    // Kept: the nonzero codes; the layout itself is written in one place.
    let blocks: Vec<SparseBlock> = q8
        .chunks_exact(A_BLOCK)
        .map(|b| {
            let mut blk = SparseBlock {
                d: [b[0], b[1]],
                kept: 0,
                codes: [CODE_BIAS; QK],
            };
            for (j, &c) in b[2..].iter().enumerate() {
                if c != 0 {
                    blk.kept |= 1 << j;
                    blk.codes[j] = c ^ CODE_BIAS;
                }
            }
            blk
        })
        .collect();
    pack_sparse_blocks(&blocks, out);
    Ok(())
}

/// Packs Q8_0 blocks whose groups of 4 each hold at most two nonzero codes
/// into `Sparse24Q8` groups. Fails on a group with three or more.
pub fn pack_s24(q8: &[u8], out: &mut [u8]) -> Result<(), String> {
    let nb = q8.len() / A_BLOCK;
    let mut off = 0;
    for g in 0..nb.div_ceil(GROUP) {
        let m = group_blocks(nb, g);
        let o = &mut out[off..off + m * S24_BLOCK];
        off += m * S24_BLOCK;
        for k in 0..m {
            let bi = 4 * g + k;
            let b = &q8[bi * A_BLOCK..][..A_BLOCK];
            o[2 * k..2 * k + 2].copy_from_slice(&b[..2]);
            let mut pos = [0u16; 2];
            for quad in 0..8 {
                let c = &b[2 + 4 * quad..][..4];
                let nz: Vec<usize> = (0..4).filter(|&i| c[i] != 0).collect();
                if nz.len() > 2 {
                    return Err(format!(
                        "block {bi}, group {quad}: {} nonzero weights where 2:4 keeps 2",
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
                for (t, &i) in two.iter().enumerate() {
                    let code = 2 * quad + t;
                    pos[code / 8] |= (i as u16) << (2 * (code % 8));
                    o[6 * m + 16 * k + code] = c[i];
                }
            }
            for (half, p) in pos.iter().enumerate() {
                o[2 * m + 2 * m * half + 2 * k..][..2].copy_from_slice(&p.to_le_bytes());
            }
        }
    }
    Ok(())
}

/// Activation code of weight `j` of block `k` of a Q8_0 row `a`.
#[inline]
fn act(a: &[u8], k: usize, j: usize) -> i32 {
    a[k * A_BLOCK + 2 + j] as i8 as i32
}

/// Adds the blocks of a group (from block `k0`, scales `ds`, integer sums
/// `sums`, reset) to `sum`, rounding as the SIMD kernels do: each block's
/// exact integer sum times d_w · d_a.
#[inline]
fn add_group(sum: &mut f32, sums: &mut [i32; GROUP], k0: usize, ds: &[u8], a: &[u8]) {
    for (i, d) in ds.chunks_exact(2).map(ld_f16).enumerate() {
        *sum += sums[i] as f32 * (d * ld_f16(&a[(k0 + i) * A_BLOCK..]));
        sums[i] = 0;
    }
}

/// Dot product of a `SparseQ8` row of `n` weights with a Q8_0 row.
pub fn vec_dot_sparse_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sums = [0i32; GROUP];
    let mut sum = 0.0f32;
    sparse_walk(n / QK, w, |it| match it {
        Item::Code(k, j, c) => sums[k % GROUP] += c as i32 * act(a, k, j),
        Item::Scales(k0, ds) => add_group(&mut sum, &mut sums, k0, ds, a),
    });
    sum
}

/// Dot product of `n` weights of `Sparse24Q8` with a Q8_0 row.
pub fn vec_dot_s24_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sums = [0i32; GROUP];
    let mut sum = 0.0f32;
    s24_walk(n / QK, w, |it| match it {
        Item::Code(k, j, c) => sums[k % GROUP] += c as i32 * act(a, k, j),
        Item::Scales(k0, ds) => add_group(&mut sum, &mut sums, k0, ds, a),
    });
    sum
}

/// One block of a `SparseQ8` row taken out of its group: the f16 scale's
/// bytes, which of the 32 weights are kept (bit `j`: weight `j`), and the
/// stored codes (`q ^ 0x80`, so 0x80 where nothing is kept). The unit the
/// interleaved layout (`interleave`, `SQ8_{K}of64x16`) regroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseBlock {
    pub d: [u8; 2],
    pub kept: u32,
    pub codes: [u8; QK],
}

/// Fails when the bitmaps of a `SparseQ8` row (`src`, of `nb` blocks)
/// claim more codes than it holds (a hostile row).
pub fn check_sparse_row(nb: usize, src: &[u8]) -> Result<(), String> {
    let claimed = sparse_claimed(nb, src);
    let cap = sparse_capacity(nb * QK, src.len());
    if claimed > cap {
        return Err(format!(
            "a sparse row's bitmaps claim {claimed} codes where it holds {cap}"
        ));
    }
    Ok(())
}

/// The kept codes `SparseQ8` headers of a row of `nb` blocks claim.
fn sparse_claimed(nb: usize, src: &[u8]) -> usize {
    let heads = &src[..nb * SPARSE_HEADER];
    (0..nb.div_ceil(GROUP))
        .map(|g| {
            let m = group_blocks(nb, g);
            let h = &heads[g * GROUP * SPARSE_HEADER..][..4 * m];
            ld_bits(&h[..2 * m]).count_ones() as usize + ld_bits(&h[2 * m..]).count_ones() as usize
        })
        .sum()
}

/// The blocks of a `SparseQ8` row of `out.len()` blocks (`src`: its bytes).
/// Fails, writing nothing, when the bitmaps claim more codes than the row
/// holds (a hostile row).
pub fn unpack_sparse_blocks(src: &[u8], out: &mut [SparseBlock]) -> Result<(), String> {
    let nb = out.len();
    check_sparse_row(nb, src)?;
    let (heads, vals) = src.split_at(nb * SPARSE_HEADER);
    let mut at = 0;
    for g in 0..nb.div_ceil(GROUP) {
        let m = group_blocks(nb, g);
        let h = &heads[g * GROUP * SPARSE_HEADER..][..m * SPARSE_HEADER];
        for (k, blk) in out[4 * g..4 * g + m].iter_mut().enumerate() {
            blk.d = [h[4 * m + 2 * k], h[4 * m + 2 * k + 1]];
            blk.kept = 0;
            blk.codes = [CODE_BIAS; QK];
        }
        for half in 0..2 {
            let mut bits = ld_bits(&h[2 * m * half..][..2 * m]);
            // Set bits only: this runs over every weight of a model at load.
            while bits != 0 {
                let (k, j) = lane_weight(half, bits.trailing_zeros() as usize);
                bits &= bits - 1;
                let blk = &mut out[4 * g + k];
                blk.kept |= 1 << j;
                blk.codes[j] = vals[at];
                at += 1;
            }
        }
    }
    Ok(())
}

/// The inverse of [`unpack_sparse_blocks`]: a `SparseQ8` row (`out`, whose
/// size sets the capacity, padded with 0x80) of `blocks`. Panics when the
/// blocks keep more codes than fit.
pub fn pack_sparse_blocks(blocks: &[SparseBlock], out: &mut [u8]) {
    let nb = blocks.len();
    let (heads, vals) = out.split_at_mut(nb * SPARSE_HEADER);
    let mut at = 0;
    for g in 0..nb.div_ceil(GROUP) {
        let m = group_blocks(nb, g);
        let h = &mut heads[g * GROUP * SPARSE_HEADER..][..m * SPARSE_HEADER];
        for half in 0..2 {
            let mut bits = 0u64;
            for l in 0..16 * m {
                let (k, j) = lane_weight(half, l);
                let blk = &blocks[4 * g + k];
                if blk.kept >> j & 1 == 1 {
                    bits |= 1 << l;
                    vals[at] = blk.codes[j];
                    at += 1;
                }
            }
            h[2 * m * half..][..2 * m].copy_from_slice(&bits.to_le_bytes()[..2 * m]);
        }
        for k in 0..m {
            h[4 * m + 2 * k..][..2].copy_from_slice(&blocks[4 * g + k].d);
        }
    }
    vals[at..].fill(CODE_BIAS);
}
