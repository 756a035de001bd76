//! The k-quant super-block layouts, byte for byte as ggml stores them
//! (`ggml-common.h`), and safe ways to read them out of unaligned bytes.
//!
//! Every block is `#[repr(C)]` with no padding (checked at compile time: the
//! size equals the sum of the field sizes) and every bit pattern of every
//! field is a valid value (`u8`, `i8`, `i16`, `f32`, and [`half::f16`], which
//! is `#[repr(transparent)]` over `u16`). That is what [`KBlock`] promises
//! and what makes reading a block out of arbitrary bytes sound.
//!
//! Weight data come from a memory map with no alignment guarantee, so blocks
//! are never borrowed in place unless the pointer happens to be aligned
//! ([`cast_blocks`]); kernels copy a block out with [`read_block`] or read
//! fields through raw pointers with unaligned loads.

use half::f16;
use std::mem::{align_of, size_of};

/// Elements per super-block (the one constant, shared with the type table).
pub use frugal_formats::QK_K;
/// Bytes of packed 6-bit scales and mins in Q4_K / Q5_K (and 6-bit scales in Q3_K).
pub const K_SCALE_SIZE: usize = 12;

/// Q2_K: 16 groups of 16 weights, `x = d*sc*q - dmin*m` with 4-bit `sc`, `m`
/// (low / high nibble of `scales[g]`) and 2-bit `q`. 2.625 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ2K {
    /// Low nibble: scale of group `g`; high nibble: its min.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants: element `128*h + 32*s + l` is bits `2s..2s+2` of `qs[32*h + l]`.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
}

/// Q3_K: 16 groups of 16 weights, `x = d*(sc-32)*(q-4)` with 6-bit `sc` and
/// 3-bit `q` (2 low bits in `qs`, the high bit in `hmask`). 3.4375 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ3K {
    /// High bit of element `32*m + l` is bit `m` of `hmask[l]`.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits, laid out as in Q2_K.
    pub qs: [u8; QK_K / 4],
    /// 16 6-bit scales: low nibbles in bytes 0..8, high 2-bit pairs in bytes 8..12.
    pub scales: [u8; K_SCALE_SIZE],
    /// Super-block scale.
    pub d: f16,
}

/// Q4_K: 8 sub-blocks of 32 weights, `x = d*sc*q - dmin*m` with 6-bit `sc`,
/// `m` and 4-bit `q`. 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    /// 8 scales and 8 mins, 6 bits each (see [`scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// Element `64*j + l` is the low nibble of `qs[32*j + l]`, element
    /// `64*j + 32 + l` the high nibble.
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: like Q4_K with a fifth bit per weight in `qh`. 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    /// Bit 4 of element `32*s + l` is bit `s` of `qh[l]`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits, laid out as in Q4_K.
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 groups of 16 weights, `x = d*sc*(q-32)` with signed 8-bit `sc`
/// and 6-bit `q`. 6.5625 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    /// Low 4 bits. For half `h` and `l < 32`: elements `128h+l`, `128h+32+l`,
    /// `128h+64+l`, `128h+96+l` are the low nibble of `ql[64h+l]`, low nibble
    /// of `ql[64h+32+l]`, high nibble of `ql[64h+l]`, high nibble of `ql[64h+32+l]`.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of those four elements: bits 0-1, 2-3, 4-5, 6-7 of `qh[32h+l]`.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Q8_K: the activation format k-quant dot products take. `x = d*q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sum of `qs` over each group of 16.
    pub bsums: [i16; QK_K / 16],
}

// Sizes as in ggml-common.h, and no padding: each size is the sum of the fields.
const _: () = assert!(size_of::<BlockQ2K>() == 84 && size_of::<BlockQ2K>() == 16 + 64 + 2 + 2);
const _: () = assert!(size_of::<BlockQ3K>() == 110 && size_of::<BlockQ3K>() == 32 + 64 + 12 + 2);
const _: () = assert!(size_of::<BlockQ4K>() == 144 && size_of::<BlockQ4K>() == 2 + 2 + 12 + 128);
const _: () =
    assert!(size_of::<BlockQ5K>() == 176 && size_of::<BlockQ5K>() == 2 + 2 + 12 + 32 + 128);
const _: () = assert!(size_of::<BlockQ6K>() == 210 && size_of::<BlockQ6K>() == 128 + 64 + 16 + 2);
const _: () = assert!(size_of::<BlockQ8K>() == 292 && size_of::<BlockQ8K>() == 4 + 256 + 32);
const _: () = assert!(size_of::<f16>() == 2 && align_of::<f16>() == 2);

/// A plain-old-data block.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have no padding bytes, and accept every
/// bit pattern in every field, so that any `size_of::<Self>()` bytes are a
/// valid value and every value's bytes are initialized.
pub unsafe trait KBlock: Copy + 'static {
    /// The ggml type this block belongs to.
    const TYPE: frugal_formats::GgmlType;
}

// SAFETY: all six are #[repr(C)], their sizes are asserted above to equal the
// sum of their field sizes (no padding), and their fields are integers, f32 or
// f16 (repr(transparent) over u16), for which every bit pattern is valid.
unsafe impl KBlock for BlockQ2K {
    const TYPE: frugal_formats::GgmlType = frugal_formats::GgmlType::Q2K;
}
// SAFETY: see BlockQ2K.
unsafe impl KBlock for BlockQ3K {
    const TYPE: frugal_formats::GgmlType = frugal_formats::GgmlType::Q3K;
}
// SAFETY: see BlockQ2K.
unsafe impl KBlock for BlockQ4K {
    const TYPE: frugal_formats::GgmlType = frugal_formats::GgmlType::Q4K;
}
// SAFETY: see BlockQ2K.
unsafe impl KBlock for BlockQ5K {
    const TYPE: frugal_formats::GgmlType = frugal_formats::GgmlType::Q5K;
}
// SAFETY: see BlockQ2K.
unsafe impl KBlock for BlockQ6K {
    const TYPE: frugal_formats::GgmlType = frugal_formats::GgmlType::Q6K;
}
// SAFETY: see BlockQ2K.
unsafe impl KBlock for BlockQ8K {
    const TYPE: frugal_formats::GgmlType = frugal_formats::GgmlType::Q8K;
}

/// Copy block `i` out of `bytes` (any alignment). Panics if out of range.
#[inline(always)]
pub fn read_block<T: KBlock>(bytes: &[u8], i: usize) -> T {
    let sz = size_of::<T>();
    let chunk = &bytes[i * sz..(i + 1) * sz];
    // SAFETY: `chunk` is exactly size_of::<T>() readable bytes; read_unaligned
    // has no alignment requirement, and T: KBlock accepts any bit pattern.
    unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<T>()) }
}

/// Write `block` as block `i` of `bytes` (any alignment). Panics if out of range.
#[inline(always)]
pub fn write_block<T: KBlock>(bytes: &mut [u8], i: usize, block: &T) {
    bytes[i * size_of::<T>()..(i + 1) * size_of::<T>()].copy_from_slice(block_bytes(block));
}

/// The bytes of one block.
#[inline(always)]
pub fn block_bytes<T: KBlock>(block: &T) -> &[u8] {
    blocks_as_bytes(std::slice::from_ref(block))
}

/// The bytes of a slice of blocks (what a GGUF file stores).
pub fn blocks_as_bytes<T: KBlock>(blocks: &[T]) -> &[u8] {
    // SAFETY: T: KBlock has no padding, so all size_of_val(blocks) bytes are
    // initialized; u8 has alignment 1 and the lifetime is tied to `blocks`.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// Borrow `bytes` as blocks in place, if the length is a whole number of
/// blocks and the pointer is aligned for `T`; `None` otherwise (then use
/// [`read_block`]).
pub fn cast_blocks<T: KBlock>(bytes: &[u8]) -> Option<&[T]> {
    let sz = size_of::<T>();
    if !bytes.len().is_multiple_of(sz) || bytes.as_ptr().align_offset(align_of::<T>()) != 0 {
        return None;
    }
    // SAFETY: the pointer is aligned for T (checked), the length covers
    // exactly bytes.len()/sz blocks inside `bytes`, T: KBlock accepts any bit
    // pattern, and the borrow keeps the lifetime and immutability of `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / sz) })
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block, as ggml's
/// `get_scale_min_k4`: sub-blocks 0-3 keep 6 bits in bytes 0-3 (scales) and
/// 4-7 (mins); sub-blocks 4-7 keep their low 4 bits in the nibbles of bytes
/// 8-11 and their top 2 bits in the top bits of bytes 0-7.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All 8 scales and 8 mins of a Q4_K / Q5_K block, as two little-endian u64
/// (byte `j` = sub-block `j`). Same values as [`scale_min_k4`], in a few word
/// operations, for the SIMD kernels.
#[inline(always)]
pub fn unpack_scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> (u64, u64) {
    let w0 = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    let w1 = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
    let w2 = u32::from_le_bytes([q[8], q[9], q[10], q[11]]);
    // (b >> 6) << 4 for every byte b of a word is (word >> 2) & 0x30..30: the
    // two bits shifted in from the next byte land in bits 6-7 and are masked off.
    let sc_lo = w0 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030);
    let m_lo = w1 & 0x3f3f_3f3f;
    let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030);
    (
        u64::from(sc_lo) | (u64::from(sc_hi) << 32),
        u64::from(m_lo) | (u64::from(m_hi) << 32),
    )
}

/// The 16 6-bit scales of a Q3_K block as stored (0..=63, i.e. scale + 32),
/// four per little-endian word: byte `b` of word `k` is scale `4k + b`.
/// Scale `j` has its low 4 bits in the low (j < 8) or high (j >= 8) nibble of
/// byte `j % 8`, and its top 2 bits at bits `2*(j/4)` of byte `8 + j%4`.
#[inline(always)]
pub fn unpack_scales_q3k_words(q: &[u8; K_SCALE_SIZE]) -> [u32; 4] {
    let a0 = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    let a1 = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
    let t = u32::from_le_bytes([q[8], q[9], q[10], q[11]]);
    const LO: u32 = 0x0f0f_0f0f;
    const HI: u32 = 0x0303_0303;
    [
        (a0 & LO) | ((t & HI) << 4),
        (a1 & LO) | (((t >> 2) & HI) << 4),
        ((a0 >> 4) & LO) | (((t >> 4) & HI) << 4),
        ((a1 >> 4) & LO) | (((t >> 6) & HI) << 4),
    ]
}

/// The 16 signed scales of a Q3_K block, already minus 32 (range -32..=31).
#[inline(always)]
pub fn unpack_scales_q3k(q: &[u8; K_SCALE_SIZE]) -> [i8; 16] {
    let words = unpack_scales_q3k_words(q);
    std::array::from_fn(|j| (words[j / 4] >> (8 * (j % 4))) as u8 as i8 - 32)
}

/// Pack 16 Q3_K scales (each already offset by +32, so 0..=63) into 12 bytes.
#[inline]
pub fn pack_scales_q3k(ls: &[u8; 16]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            s[j] = l & 0xF;
        } else {
            s[j - 8] |= (l & 0xF) << 4;
        }
        s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    s
}

/// Pack 8 scales and 8 mins (6 bits each) into the Q4_K / Q5_K layout.
#[inline]
pub fn pack_scales_mins_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k4_unpack_matches_per_index() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..1000 {
            let mut q = [0u8; 12];
            for b in q.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let (sc, m) = unpack_scales_mins_k4(&q);
            for j in 0..8 {
                let (s1, m1) = scale_min_k4(j, &q);
                assert_eq!((sc >> (8 * j)) as u8, s1);
                assert_eq!((m >> (8 * j)) as u8, m1);
            }
            let ls: [u8; 8] = std::array::from_fn(|j| scale_min_k4(j, &q).0);
            let lm: [u8; 8] = std::array::from_fn(|j| scale_min_k4(j, &q).1);
            assert_eq!(pack_scales_mins_k4(&ls, &lm), q);
            let s3 = unpack_scales_q3k(&q);
            let ls3: [u8; 16] = std::array::from_fn(|j| (s3[j] + 32) as u8);
            assert_eq!(pack_scales_q3k(&ls3), q);
        }
    }

    #[test]
    fn q3k_scales_by_definition() {
        let q: [u8; 12] = [
            0x10,
            0x32,
            0x54,
            0x76,
            0x98,
            0xba,
            0xdc,
            0xfe,
            0b11_10_01_00,
            0,
            0xff,
            0x1b,
        ];
        let s = unpack_scales_q3k(&q);
        for (j, &sj) in s.iter().enumerate() {
            let low = if j < 8 { q[j] & 0xF } else { q[j - 8] >> 4 };
            let high = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
            assert_eq!(sj as i32, (low | (high << 4)) as i32 - 32, "scale {j}");
        }
    }

    #[test]
    fn cast_needs_alignment() {
        let buf = vec![0u8; 2 * 292 + 4];
        let base = buf.as_ptr().align_offset(4);
        let aligned = &buf[base..base + 292];
        assert!(cast_blocks::<BlockQ8K>(aligned).is_some());
        assert!(cast_blocks::<BlockQ8K>(&buf[base + 1..base + 293]).is_none());
        assert!(cast_blocks::<BlockQ8K>(&buf[base..base + 291]).is_none());
        let b: BlockQ8K = read_block(&buf[base + 1..], 0);
        assert_eq!(b.d, 0.0);
    }
}
