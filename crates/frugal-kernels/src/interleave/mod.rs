//! Q4_0, Q4_1, Q8_0 and sparse int8 matrices laid out 16 rows at a time
//! for the one-token kernel (`Q4_0x16`, `Q4_1x16`, `Q8_0x16`,
//! `SQ8_2of4x16`, `SQ8_{K}of64x16`): a run-time layout, made in place when a
//! model is read into memory for inference, never written to a file.
//!
//! Why: a decode step reads every weight once, so the kernel must keep up
//! with memory. In ggml's row layout each block's integer sum lands in
//! lanes that must be reduced and transposed before its scale applies. Here
//! block `b` of a group of 16 rows is stored as
//!
//! * the 16 rows' f16 scales `d` (32 bytes), for Q4_1 then their f16
//!   minimums `m` (32 bytes), then
//! * Q4_0, Q4_1: 4 chunks of 64 bytes; in chunk `j`, bytes `4r..4r + 4` are
//!   row `r`'s `qs[4j..4j + 4]` as ggml stores them (low nibbles: quants
//!   `4j..4j + 4`, high nibbles: quants `16 + 4j..`);
//! * Q8_0: 8 chunks of 64 bytes; in chunk `j`, bytes `4r..4r + 4` are row
//!   `r`'s quants `4j..4j + 4`, each stored as `q ^ 0x80` (q + 128 unsigned);
//! * `SQ8_2of4` (2:4 sparse int8): after the scales, the 16 rows' 32-bit
//!   position words (code `c`'s 2-bit position at bits `2c`), then 4 chunks
//!   of 64 bytes: in chunk `j`, bytes `4r..4r + 4` are row `r`'s codes
//!   `4j..4j + 4` (i8). The kernel gathers each lane's activations with
//!   `vpermb` by those positions.
//!
//! so one `vpdpbusd` of a chunk against 4 activation bytes broadcast gives
//! 16 rows' partial sums in 16 lanes, and one FMA applies 16 scales. A group
//! takes exactly the bytes of its 16 ggml rows (288, 320, 544 or 352 per
//! block of 32 columns), so the layout is made in place. Unstructured sparse
//! rows (`SQ8_{K}of64`) keep a different number of codes in each block: their
//! groups hold each chunk compressed under a 64-bit mask, which one
//! `vpexpandb` undoes (the `sparse` module). Measured (BENCHMARKS.md,
//! session 7): SmolLM2's Q8_0 matrices decode at 37 GB/s against 21 GB/s
//! through the row layout, on 2 threads.
//!
//! [`matmul_ref`] is the scalar reference the SIMD kernel (`avx512`) is held
//! to, bit for bit.

#[cfg(target_arch = "x86_64")]
pub mod avx512;
mod sparse;

use crate::legacy::blocks::QK;
use frugal_formats::{FrugalType, GgmlType};

/// Rows per group.
pub const ROWS: usize = 16;

/// Bytes of one ggml block of the base type, and of its interleaved block
/// (16 of them).
fn block_bytes(base: GgmlType) -> usize {
    match base {
        S24 => 22,
        GgmlType::Q4_0 => 18,
        GgmlType::Q4_1 => 20,
        GgmlType::Q8_0 => 34,
        other => panic!("{other} has no interleaved layout"),
    }
}

/// frugal's 2:4 sparse int8 type, whose rows group blocks by 4 (see
/// [`s24_fields`]).
const S24: GgmlType = GgmlType::Frugal(FrugalType::Sparse24Q8);

/// Byte offsets of block `bi`'s scale, its two position words and its 16
/// codes in a `SQ8_2of4` row of `nb` blocks (groups of 4 blocks, the last
/// one possibly shorter: scales, first words, second words, codes).
fn s24_fields(nb: usize, bi: usize) -> (usize, usize, usize, usize) {
    let (g, k) = (bi / 4, bi % 4);
    let m = (nb - 4 * g).min(4);
    let off = 4 * g * 22;
    (
        off + 2 * k,
        off + 2 * m + 2 * k,
        off + 4 * m + 2 * k,
        off + 6 * m + 16 * k,
    )
}

/// Bytes of a ggml block's header: `d`, and `m` for Q4_1. An interleaved
/// block holds 16 headers' fields field by field, then its chunks.
fn header_bytes(base: GgmlType) -> usize {
    if base == GgmlType::Q4_1 {
        4
    } else {
        2
    }
}

/// The base type of an interleaved type, or of a type that has one.
pub(crate) fn base_of(ty: GgmlType) -> GgmlType {
    ty.interleaved_base().unwrap_or(ty)
}

/// Whether a `rows × cols` matrix of `ty` can take the interleaved layout:
/// Q4_0, Q4_1, Q8_0, `SQ8_2of4` or `SQ8_{K}of64`, whole groups of 16 rows.
pub fn can_interleave(ty: GgmlType, rows: usize, cols: usize) -> bool {
    ty.interleaved16().is_some()
        && rows > 0
        && rows.is_multiple_of(ROWS)
        && cols.is_multiple_of(ty.block_size())
        && cols > 0
}

/// Whether `base` is unstructured sparse int8 (`SQ8_{K}of64`), whose
/// groups have a layout of their own (the `sparse` module).
fn is_sq8(base: GgmlType) -> bool {
    matches!(base, GgmlType::Frugal(FrugalType::SparseQ8 { .. }))
}

/// Bytes of one row of `cols` weights of `base`.
fn row_bytes(base: GgmlType, cols: usize) -> usize {
    base.row_bytes(cols as u64).expect("whole blocks") as usize
}

/// Whether this CPU has the interleaved layouts' kernel (x86-64 with
/// AVX-512 F/BW/VL/VNNI, and no `FRUGAL_ISA` asking for less): where it
/// does not, matrices keep ggml's layout.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::detected_isa() == crate::Isa::Avx512 && avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has the kernel of `ty`'s interleaved layout ([`available`];
/// `SQ8_2of4` also needs AVX-512 VBMI, `SQ8_{K}of64` VBMI2), so a matrix of `ty` is worth laying out.
pub fn available_for(ty: GgmlType) -> bool {
    if !available() || ty.interleaved16().is_none() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        match ty {
            S24 => avx512::available_for(avx512::S24),
            GgmlType::Frugal(FrugalType::SparseQ8 { .. }) => avx512::available_for(avx512::SQ8),
            _ => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `ty` is an interleaved layout.
pub fn is_interleaved(ty: GgmlType) -> bool {
    ty.interleaved_base().is_some()
}

/// Calls `f(ggml, interleaved, len, flip)` for each run of bytes that block
/// `b` of the row in lane `lane` takes: its offset in a ggml row of `nb`
/// blocks of `base`, its offset in the interleaved block, its length, and
/// whether it is stored `^ 0x80` (Q8_0 quants). Both directions of the
/// layout walk these runs.
fn spans(
    base: GgmlType,
    nb: usize,
    b: usize,
    lane: usize,
    mut f: impl FnMut(usize, usize, usize, bool),
) {
    if base == S24 {
        let (d, p0, p1, c) = s24_fields(nb, b);
        f(d, 2 * lane, 2, false);
        f(p0, 32 + 4 * lane, 2, false);
        f(p1, 34 + 4 * lane, 2, false);
        for j in 0..4 {
            f(c + 4 * j, 96 + 64 * j + 4 * lane, 4, false);
        }
        return;
    }
    let (bb, hb) = (block_bytes(base), header_bytes(base));
    let at = b * bb;
    for k in 0..hb / 2 {
        f(at + 2 * k, 32 * k + 2 * lane, 2, false);
    }
    for j in 0..(bb - hb) / 4 {
        f(
            at + hb + 4 * j,
            16 * hb + 64 * j + 4 * lane,
            4,
            base == GgmlType::Q8_0,
        );
    }
}

/// Copies `len` bytes, flipping their top bits if `flip`.
fn copy_span(dst: &mut [u8], src: &[u8], flip: bool) {
    for (o, &q) in dst.iter_mut().zip(src) {
        *o = if flip { q ^ 0x80 } else { q };
    }
}

/// Rewrites the ggml rows of a `rows × cols` matrix in `data` (Q4_0, Q4_1,
/// Q8_0, `SQ8_2of4` or `SQ8_{K}of64`) into the interleaved layout, in place;
/// returns the new type. Fails, leaving `data` as it was, on a sparse row
/// whose bitmaps claim more codes than it holds (a hostile file). Panics
/// unless [`can_interleave`] and `data` is the matrix's bytes.
pub fn interleave_in_place(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &mut [u8],
) -> Result<GgmlType, String> {
    assert!(
        can_interleave(ty, rows, cols),
        "{ty} {rows}x{cols}: no interleaved layout"
    );
    let nb = cols / QK;
    let rb = row_bytes(ty, cols);
    assert_eq!(data.len(), rows * rb, "{ty} {rows}x{cols}: byte count");
    if is_sq8(ty) {
        use rayon::prelude::*;
        // Every row is checked before any group is rewritten; groups are
        // unpacked bit by bit, so they go in parallel (Qwen2.5-0.5B: 360M
        // weights at load).
        data.par_chunks_exact(rb)
            .try_for_each(|row| crate::sparse::scalar::check_sparse_row(nb, row))?;
        data.par_chunks_exact_mut(ROWS * rb).for_each_init(
            || vec![0u8; ROWS * rb],
            |rows16, group| {
                rows16.copy_from_slice(group);
                sparse::interleave(rows16, nb, group).expect("rows checked above");
            },
        );
        return Ok(ty.interleaved16().expect("checked"));
    }
    let bb = block_bytes(ty);
    let mut rows16 = vec![0u8; ROWS * rb];
    for group in data.chunks_exact_mut(ROWS * rb) {
        rows16.copy_from_slice(group);
        for b in 0..nb {
            let out = &mut group[b * ROWS * bb..(b + 1) * ROWS * bb];
            for lane in 0..ROWS {
                let row = &rows16[lane * rb..(lane + 1) * rb];
                spans(ty, nb, b, lane, |g, i, n, flip| {
                    copy_span(&mut out[i..i + n], &row[g..g + n], flip)
                });
            }
        }
    }
    Ok(ty.interleaved16().expect("checked"))
}

/// Row `r` of an interleaved `rows × cols` matrix back in ggml's layout
/// (`out`: one row's bytes of the base type). A sparse row's padding comes
/// back as 0x80, what frugal's packer writes.
pub fn row_to_ggml(ty: GgmlType, data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    assert!(is_interleaved(ty), "{ty} is not interleaved");
    let base = base_of(ty);
    let nb = cols / QK;
    let rb = row_bytes(base, cols);
    assert_eq!(out.len(), rb, "one {base} row of {cols}");
    let group = &data[(r / ROWS) * ROWS * rb..][..ROWS * rb];
    if is_sq8(base) {
        sparse::row_to_ggml(group, nb, r % ROWS, out);
        return;
    }
    let bb = block_bytes(base);
    for b in 0..nb {
        let src = &group[b * ROWS * bb..(b + 1) * ROWS * bb];
        spans(base, nb, b, r % ROWS, |g, i, n, flip| {
            copy_span(&mut out[g..g + n], &src[i..i + n], flip)
        });
    }
}

/// The whole interleaved matrix back in ggml's layout: the base type and
/// its bytes (sparse rows padded with 0x80, see [`row_to_ggml`]).
pub fn to_ggml(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> (GgmlType, Vec<u8>) {
    let base = base_of(ty);
    let rb = row_bytes(base, cols);
    let mut out = vec![0u8; rows * rb];
    for (r, row) in out.chunks_exact_mut(rb).enumerate() {
        row_to_ggml(ty, data, cols, r, row);
    }
    (base, out)
}

/// Dequantizes rows `rows` of an interleaved matrix of `cols` columns into
/// `dst` (`rows.len() * cols` floats). Q4_0, Q4_1 and Q8_0 go block by block
/// through a buffer on the stack, so looking up a tied embedding row in the
/// decode loop allocates nothing; sparse rows (grouped blocks) go whole
/// through a row buffer (and an unstructured one walks its group's masks).
pub fn dequantize_rows(
    ty: GgmlType,
    data: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    let base = base_of(ty);
    let to_float = crate::traits(base)
        .expect("the interleaved layouts' base types have kernels")
        .to_float;
    let nb = cols / QK;
    for (r, d) in rows.zip(dst.chunks_exact_mut(cols)) {
        if base == S24 || is_sq8(base) {
            let mut row = vec![0u8; row_bytes(base, cols)];
            row_to_ggml(ty, data, cols, r, &mut row);
            to_float(&row, d);
            continue;
        }
        let bb = block_bytes(base);
        let group = &data[(r / ROWS) * ROWS * nb * bb..][..ROWS * nb * bb];
        let mut blk = [0u8; 34];
        for (b, d) in d.chunks_exact_mut(QK).enumerate() {
            let src = &group[b * ROWS * bb..(b + 1) * ROWS * bb];
            // Offsets of block b within a row; this buffer holds block b alone.
            spans(base, nb, b, r % ROWS, |g, i, n, flip| {
                let g = g - b * bb;
                copy_span(&mut blk[g..g + n], &src[i..i + n], flip)
            });
            to_float(&blk[..bb], d);
        }
    }
}

/// The scalar reference: `out[t * ostride + r - rows.start] = dot(row r,
/// token t)` for the rows `r` of whole groups in `rows` and every token of
/// `acts` (rows of the activation type, Q8_1 for Q4_1 and Q8_0 otherwise,
/// in ggml's layout). Per block: the exact integer sum, then `acc = fma(sum,
/// d_w · d_a, acc)` in f32 (and for Q4_1 `acc = fma(m_w, s_a, acc)`), as the
/// SIMD kernel does, so the two agree bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ref(
    ty: GgmlType,
    data: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    acts: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ostride: usize,
) {
    let base = base_of(ty);
    let nb = cols / QK;
    // Activation blocks: Q8_1 (d, s, 32 quants) for Q4_1, else Q8_0 (d, quants).
    let (abb, ahb) = if base == GgmlType::Q4_1 {
        (36, 4)
    } else {
        (34, 2)
    };
    let arb = nb * abb;
    assert!(
        rows.start.is_multiple_of(ROWS) && rows.end.is_multiple_of(ROWS),
        "whole groups"
    );
    assert_eq!(acts.len(), n_tok * arb, "activation bytes");
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let rb = row_bytes(base, cols);
    for g in rows.start / ROWS..rows.end / ROWS {
        let group = &data[g * ROWS * rb..][..ROWS * rb];
        if is_sq8(base) {
            for t in 0..n_tok {
                let acc = sparse::group_ref(group, nb, &acts[t * arb..(t + 1) * arb]);
                for (lane, v) in acc.iter().enumerate() {
                    out[t * ostride + g * ROWS + lane - rows.start] = *v;
                }
            }
            continue;
        }
        let (bb, hb) = (block_bytes(base), header_bytes(base));
        for t in 0..n_tok {
            let a = &acts[t * arb..(t + 1) * arb];
            let mut acc = [0.0f32; ROWS];
            for b in 0..nb {
                let src = &group[b * ROWS * bb..(b + 1) * ROWS * bb];
                let ab = &a[b * abb..(b + 1) * abb];
                let (ad, aq) = (f16(ab), &ab[ahb..]);
                let asum: i32 = aq.iter().map(|&v| v as i8 as i32).sum();
                for (lane, acc) in acc.iter_mut().enumerate() {
                    let mut s: i32 = 0;
                    if base == S24 {
                        // Code c stands for weight 4⌊c/2⌋ + its 2-bit position.
                        let pos = u32::from_le_bytes(
                            src[32 + 4 * lane..36 + 4 * lane].try_into().unwrap(),
                        );
                        for c in 0..16 {
                            let q = src[96 + 64 * (c / 4) + 4 * lane + c % 4] as i8 as i32;
                            let w = 4 * (c / 2) + (pos >> (2 * c) & 3) as usize;
                            s += q * aq[w] as i8 as i32;
                        }
                        let dw = f16(&src[2 * lane..]);
                        *acc = (s as f32).mul_add(dw * ad, *acc);
                        continue;
                    }
                    for j in 0..bb - hb {
                        // Stored byte j of this lane's block (chunk j / 4).
                        let u = src[16 * hb + 64 * (j / 4) + 4 * lane + j % 4];
                        if base == GgmlType::Q8_0 {
                            s += u as i32 * aq[j] as i8 as i32;
                        } else {
                            s += (u & 0x0F) as i32 * aq[j] as i8 as i32;
                            s += (u >> 4) as i32 * aq[16 + j] as i8 as i32;
                        }
                    }
                    s -= match base {
                        GgmlType::Q8_0 => 128 * asum,
                        GgmlType::Q4_0 => 8 * asum,
                        _ => 0,
                    };
                    let dw = f16(&src[2 * lane..]);
                    *acc = (s as f32).mul_add(dw * ad, *acc);
                    if base == GgmlType::Q4_1 {
                        let mw = f16(&src[32 + 2 * lane..]);
                        *acc = mw.mul_add(f16(&ab[2..]), *acc);
                    }
                }
            }
            for (lane, v) in acc.iter().enumerate() {
                out[t * ostride + g * ROWS + lane - rows.start] = *v;
            }
        }
    }
}
