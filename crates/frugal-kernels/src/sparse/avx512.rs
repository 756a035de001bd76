//! AVX-512 dot products of the sparse int8 types with Q8_0 activations.
//!
//! Each block's kept codes are spread back to their 32 positions in one
//! instruction (`vpexpandb`, AVX512-VBMI2), under the block's bitmap (stored
//! for `SparseQ8`, looked up from the 2-bit positions for `Sparse24Q8`).
//! Signed × signed products go through `vpdpbusd` as |w| × (a·sign w).
//! Only the kept codes are read: that is where the bytes are saved.
//!
//! Public functions are safe: they check the CPU (panicking if it lacks the
//! features; see [`available`]) and the slice lengths, and a `SparseQ8` row
//! whose bitmaps claim more codes than the row holds (a hostile file) is
//! handed to the scalar reference, which reads nothing out of bounds.

use super::scalar::{self, A_BLOCK, S24_BLOCK, SPARSE_HEADER};
use crate::legacy::blocks::QK;
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels of this module.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vbmi2")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

fn require() {
    assert!(
        available(),
        "AVX-512 sparse kernels called on a CPU without AVX-512 F/BW/VL/VNNI/VBMI2"
    );
}

/// f16 at `p` as f32.
///
/// # Safety
/// `p` addresses two readable bytes; F16C available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi2,avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16(p: *const u8) -> f32 {
    // SAFETY: two bytes at p (caller contract).
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            p.cast::<u16>().read_unaligned() as i32,
        )))
    }
}

/// Σ over the 32 lanes of `w · a` (both i8) into 8 i32 lanes, as floats
/// times `scale`, added to `acc`.
///
/// # Safety
/// The CPU features of this module.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi2,avx2,fma,f16c")]
#[inline]
unsafe fn mac(acc: __m256, w: __m256i, a: __m256i, scale: f32) -> __m256 {
    let s = _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        _mm256_abs_epi8(w),
        _mm256_sign_epi8(a, w),
    );
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale), acc)
}

/// The `SparseQ8` row dot, or `None` if its bitmaps claim more than `cap` codes.
/// Blocks go in pairs: their codes are adjacent, so one expanding load
/// under the two bitmaps side by side spreads both into a 512-bit register.
///
/// # Safety
/// The CPU features of this module; `nb` is even; `heads` holds `nb`
/// headers, `vals` `cap` bytes, `a` `nb` Q8_0 blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi2,avx2,fma,f16c")]
unsafe fn dot_sparse(
    nb: usize,
    heads: *const u8,
    vals: *const u8,
    cap: usize,
    a: *const u8,
) -> Option<f32> {
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut at = 0usize;
    let mut b = 0;
    while b + 2 <= nb {
        // SAFETY: headers b, b+1 and activation blocks b, b+1 are inside
        // their buffers; the expanding load reads popcount(mask) bytes from
        // vals[at..], checked against cap first.
        unsafe {
            let h = heads.add(b * SPARSE_HEADER);
            let m0 = h.cast::<u32>().read_unaligned() as u64;
            let m1 = h.add(SPARSE_HEADER).cast::<u32>().read_unaligned() as u64;
            let mask = m0 | m1 << 32;
            let k = mask.count_ones() as usize;
            if at + k > cap {
                return None;
            }
            let w = _mm512_maskz_expandloadu_epi8(mask, vals.add(at).cast());
            at += k;
            let a0 = a.add(b * A_BLOCK);
            let a1 = a0.add(A_BLOCK);
            let av = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(a0.add(2).cast())),
                _mm256_loadu_si256(a1.add(2).cast()),
            );
            // |w| × (a · sign w): vpdpbusd multiplies unsigned by signed.
            let sa = _mm512_mask_sub_epi8(av, _mm512_movepi8_mask(w), _mm512_setzero_si512(), av);
            let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sa);
            let c0 = ld_f16(h.add(4)) * ld_f16(a0);
            let c1 = ld_f16(h.add(SPARSE_HEADER + 4)) * ld_f16(a1);
            let sc = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(c0), _mm512_set1_ps(c1));
            // Two accumulators, swapped each pair, halve the FMA chain.
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc0);
            std::mem::swap(&mut acc0, &mut acc1);
        }
        b += 2;
    }
    debug_assert_eq!(b, nb, "rows are whole 64-weight pairs of blocks");
    Some(_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)))
}

/// The `Sparse24Q8` row dot, two blocks at a time as for `SparseQ8`.
///
/// # Safety
/// The CPU features of this module; `w` holds `nb` blocks, `a` `nb` Q8_0 blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi2,avx2,fma,f16c")]
unsafe fn dot_s24(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut b = 0;
    while b + 2 <= nb {
        // SAFETY: blocks b and b+1 of each buffer are inside it (caller contract).
        unsafe {
            let w0 = w.add(b * S24_BLOCK);
            let w1 = w0.add(S24_BLOCK);
            let m0 = scalar::s24_mask(w0.add(2).cast::<u32>().read_unaligned()) as u64;
            let m1 = scalar::s24_mask(w1.add(2).cast::<u32>().read_unaligned()) as u64;
            let packed = _mm256_set_m128i(
                _mm_loadu_si128(w1.add(6).cast()),
                _mm_loadu_si128(w0.add(6).cast()),
            );
            let wv = _mm512_maskz_expand_epi8(m0 | m1 << 32, _mm512_castsi256_si512(packed));
            let a0 = a.add(b * A_BLOCK);
            let a1 = a0.add(A_BLOCK);
            let av = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(a0.add(2).cast())),
                _mm256_loadu_si256(a1.add(2).cast()),
            );
            let sa = _mm512_mask_sub_epi8(av, _mm512_movepi8_mask(wv), _mm512_setzero_si512(), av);
            let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), sa);
            let c0 = ld_f16(w0) * ld_f16(a0);
            let c1 = ld_f16(w1) * ld_f16(a1);
            let sc = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(c0), _mm512_set1_ps(c1));
            // Two accumulators, swapped each pair, halve the FMA chain.
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc0);
            std::mem::swap(&mut acc0, &mut acc1);
        }
        b += 2;
    }
    let mut tail = _mm256_setzero_ps();
    if b < nb {
        // SAFETY: the last block of each buffer is inside it.
        unsafe {
            let wb = w.add(b * S24_BLOCK);
            let mask = scalar::s24_mask(wb.add(2).cast::<u32>().read_unaligned());
            let packed = _mm256_castsi128_si256(_mm_loadu_si128(wb.add(6).cast()));
            let wv = _mm256_maskz_expand_epi8(mask, packed);
            let ab = a.add(b * A_BLOCK);
            let av = _mm256_loadu_si256(ab.add(2).cast());
            tail = mac(tail, wv, av, ld_f16(wb) * ld_f16(ab));
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + hsum(tail)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi2,avx2,fma,f16c")]
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
    let (heads, vals) = w.split_at(nb * SPARSE_HEADER);
    // SAFETY: features checked; lengths checked above (vals.len() is the cap).
    unsafe { dot_sparse(nb, heads.as_ptr(), vals.as_ptr(), vals.len(), a.as_ptr()) }
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
