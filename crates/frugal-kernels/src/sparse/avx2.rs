//! AVX2 dot products of the sparse int8 types with Q8_0 activations, for
//! CPUs without the AVX-512 kernels (`super::avx512`): one row at a time,
//! a block (32 weights) per 256-bit register.
//!
//! * `SQ8_{K}of64`: `vpexpandb` is emulated with `vpshufb`: each byte of a
//!   bitmap (8 lanes) indexes a table of 8 shuffle indices, 0x80 (zero) for
//!   the pruned lanes; a half block (16 lanes) takes 16 code bytes at once.
//! * `SQ8_2of4`: the activations are gathered: each byte of positions (4
//!   codes) indexes a table of their 4 byte offsets, plus each code's base,
//!   and `vpshufb` picks the 16 kept weights' activations of a block.
//!
//! Products are signed × signed through `vpmaddubsw` as |w| × (a · sign w)
//! (at most 2 · 127 · 128 per 16-bit pair: no saturation). Public functions
//! are safe: they check the CPU and the lengths; a `SparseQ8` row whose
//! bitmaps claim more codes than it holds goes to the scalar reference.

use super::scalar::{self, A_BLOCK, CODE_BIAS, GROUP, S24_BLOCK, SPARSE_HEADER};
use crate::legacy::blocks::QK;
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels of this module.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("popcnt")
    })
}

fn require() {
    assert!(
        available(),
        "AVX2 sparse kernels called on a CPU without AVX2/FMA/F16C/POPCNT"
    );
}

/// For each bitmap byte: the `vpshufb` indices that spread its set lanes'
/// codes (packed from index 0) to their lanes, 0x80 for the others.
static EXPAND: [[u8; 8]; 256] = {
    let mut t = [[0x80u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut k = 0;
        let mut i = 0;
        while i < 8 {
            if m >> i & 1 == 1 {
                t[m][i] = k;
                k += 1;
            }
            i += 1;
        }
        m += 1;
    }
    t
};

/// For each byte of 2:4 positions (4 codes, 2 bits each): the 4 positions
/// as bytes, little-endian.
static POS4: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = 0u32;
        let mut i = 0;
        while i < 4 {
            v |= ((b as u32 >> (2 * i)) & 3) << (8 * i);
            i += 1;
        }
        t[b] = v;
        b += 1;
    }
    t
};

/// f16 at `p` as f32.
///
/// # Safety
/// `p` addresses two readable bytes; F16C available.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16(p: *const u8) -> f32 {
    // SAFETY: two bytes at p (caller contract).
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            p.cast::<u16>().read_unaligned() as i32,
        )))
    }
}

/// Σ of `w · a` (signed bytes) in 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot32(w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// 16 code bytes from `c[off..]`, of which `cap - off` exist: a plain load
/// when all 16 do, else a copy (the rest zero).
///
/// # Safety
/// `c` addresses `cap` readable bytes, `off <= cap`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn codes16(c: *const u8, off: usize, cap: usize) -> __m128i {
    // SAFETY: 16 bytes at c + off when off + 16 <= cap; else only the
    // cap - off bytes that exist are copied.
    unsafe {
        if off + 16 <= cap {
            _mm_loadu_si128(c.add(off).cast())
        } else {
            let mut b = [0u8; 16];
            std::ptr::copy_nonoverlapping(c.add(off), b.as_mut_ptr(), cap - off);
            _mm_loadu_si128(b.as_ptr().cast())
        }
    }
}

/// The expanded signed codes of 16 lanes (bitmap bits `m`, codes at
/// `c[off..]`, as many as `m` has bits).
///
/// # Safety
/// As [`codes16`], with the popcount of `m` codes within `cap`.
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
#[inline]
unsafe fn expand16(m: u16, c: *const u8, off: usize, cap: usize) -> __m128i {
    // SAFETY: forwarded contract; the tables are indexed by bytes.
    unsafe {
        let v = _mm_xor_si128(codes16(c, off, cap), _mm_set1_epi8(CODE_BIAS as i8));
        let (b0, b1) = (m as u8, (m >> 8) as u8);
        let lo = u64::from_le_bytes(EXPAND[b0 as usize]);
        // Indices of the second 8 lanes start after the first 8's codes;
        // 0x80 + k keeps bit 7 set (zero) for the others.
        let hi = u64::from_le_bytes(EXPAND[b1 as usize])
            .wrapping_add(0x0101_0101_0101_0101 * b0.count_ones() as u64);
        _mm_shuffle_epi8(v, _mm_set_epi64x(hi as i64, lo as i64))
    }
}

/// The `SparseQ8` row dot, or `None` if its bitmaps claim more than `cap` codes.
///
/// # Safety
/// The CPU features of this module; `nb` is even; `w` holds `nb` headers
/// then `cap` code bytes, `a` `nb` Q8_0 blocks.
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn dot_sparse(nb: usize, w: *const u8, cap: usize, a: *const u8) -> Option<f32> {
    let codes = w.wrapping_add(nb * SPARSE_HEADER);
    let mut at = 0usize;
    let mut acc = _mm256_setzero_ps();
    for g in 0..nb.div_ceil(GROUP) {
        let m = scalar::group_blocks(nb, g);
        // SAFETY: the group's headers lie inside the row's (contract); each
        // 16-lane expansion reads only codes counted by the bitmaps, checked
        // against cap first; activation block 4g + k exists.
        unsafe {
            let h = w.add(g * GROUP * SPARSE_HEADER);
            let bits = |half: usize| {
                let mut b = [0u8; 8];
                std::ptr::copy_nonoverlapping(h.add(2 * m * half), b.as_mut_ptr(), 2 * m);
                u64::from_le_bytes(b)
            };
            let (mlo, mhi) = (bits(0), bits(1));
            let klo = mlo.count_ones() as usize;
            let k = klo + mhi.count_ones() as usize;
            if at + k > cap {
                return None;
            }
            let (mut plo, mut phi) = (at, at + klo);
            for blk in 0..m {
                let (lo, hi) = ((mlo >> (16 * blk)) as u16, (mhi >> (16 * blk)) as u16);
                let wv =
                    _mm256_set_m128i(expand16(hi, codes, phi, cap), expand16(lo, codes, plo, cap));
                plo += lo.count_ones() as usize;
                phi += hi.count_ones() as usize;
                let ab = a.add((g * GROUP + blk) * A_BLOCK);
                let av = _mm256_loadu_si256(ab.add(2).cast());
                let s = dot32(wv, av);
                let sc = ld_f16(h.add(4 * m + 2 * blk)) * ld_f16(ab);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(sc), acc);
            }
            at += k;
        }
    }
    Some(hsum(acc))
}

/// The `vpshufb` indices gathering block activations for 16 codes whose
/// positions are `p0` (codes 0..8) and `p1` (codes 8..16): lane 0 picks
/// from weights 0..16, lane 1 from weights 16..32; each code's byte is at
/// the same place in both lanes, the other lane's zeroed.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn s24_index(p0: u16, p1: u16) -> __m256i {
    let q = |p: u16| {
        (POS4[(p & 0xFF) as usize] as u64 | (POS4[(p >> 8) as usize] as u64) << 32)
            // Code c's base: 4 ⌊c / 2⌋ within its half block.
            | 0x0C0C_0808_0404_0000
    };
    let (i0, i1) = (q(p0) as i64, q(p1) as i64);
    let z = 0x8080_8080_8080_8080u64 as i64;
    _mm256_set_epi64x(i1, z, z, i0)
}

/// The `Sparse24Q8` row dot.
///
/// # Safety
/// The CPU features of this module; `w` holds `nb` blocks, `a` `nb` Q8_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_s24(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for g in 0..nb.div_ceil(GROUP) {
        let m = scalar::group_blocks(nb, g);
        // SAFETY: the group's 22 m bytes and activation blocks 4g..4g+m lie
        // inside their buffers (contract).
        unsafe {
            let p = w.add(g * GROUP * S24_BLOCK);
            for blk in 0..m {
                let ld16 = |o: usize| p.add(o).cast::<u16>().read_unaligned();
                let idx = s24_index(ld16(2 * m + 2 * blk), ld16(4 * m + 2 * blk));
                let ab = a.add((g * GROUP + blk) * A_BLOCK);
                let av = _mm256_loadu_si256(ab.add(2).cast());
                // Both lanes hold the block's 32 activations' halves: lane
                // 0 gathers codes 0..8 from the first, lane 1 codes 8..16
                // from the second; then the two lanes are merged into one.
                let g2 = _mm256_shuffle_epi8(av, idx);
                let gathered = _mm_or_si128(
                    _mm256_castsi256_si128(g2),
                    _mm256_extracti128_si256::<1>(g2),
                );
                let wv = _mm_loadu_si128(p.add(6 * m + 16 * blk).cast());
                let prod = _mm_maddubs_epi16(_mm_abs_epi8(wv), _mm_sign_epi8(gathered, wv));
                let s = _mm_madd_epi16(prod, _mm_set1_epi16(1));
                let sc = ld_f16(p.add(2 * blk)) * ld_f16(ab);
                let s = _mm256_castsi128_si256(s);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(sc), acc);
            }
        }
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

fn check(n: usize, a: &[u8]) -> usize {
    assert!(
        n.is_multiple_of(QK),
        "dot of {n} elements: not whole blocks"
    );
    let nb = n / QK;
    assert!(
        a.len() >= nb * A_BLOCK,
        "activation row: {} bytes < {nb} blocks",
        a.len()
    );
    nb
}

/// Dot product of a `SparseQ8` row of `n` weights (`w`: the whole row) with a Q8_0 row.
pub fn vec_dot_sparse_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    require();
    let nb = check(n, a);
    assert!(
        n.is_multiple_of(64),
        "sparse rows are whole multiples of 64"
    );
    assert!(
        w.len() >= nb * SPARSE_HEADER,
        "sparse row: {} bytes < its headers",
        w.len()
    );
    let cap = w.len() - nb * SPARSE_HEADER;
    // SAFETY: features and lengths checked above.
    unsafe { dot_sparse(nb, w.as_ptr(), cap, a.as_ptr()) }
        .unwrap_or_else(|| scalar::vec_dot_sparse_q8_0(n, w, a))
}

/// Dot product of `n` weights of `Sparse24Q8` with a Q8_0 row.
pub fn vec_dot_s24_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    require();
    let nb = check(n, a);
    assert!(
        w.len() >= nb * S24_BLOCK,
        "2:4 row: {} bytes < {nb} blocks",
        w.len()
    );
    // SAFETY: features and lengths checked above.
    unsafe { dot_s24(nb, w.as_ptr(), a.as_ptr()) }
}
