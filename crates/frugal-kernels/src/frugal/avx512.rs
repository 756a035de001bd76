//! AVX-512 (F, BW, VL, VNNI) dot products for frugal's types.
//!
//! * Affine · Q8_1: each bit plane is loaded as a 32-bit mask and added
//!   into the codes with a masked byte add (`vpaddb ymm{k}`), so a chunk of
//!   32 codes costs one mask load and one add per bit; `vpdpbusd` (unsigned
//!   codes × signed activations, i32 accumulation without saturation) takes
//!   the integer sums for every bit width, 8 included. The symmetric bias
//!   times the activation sum (also `vpdpbusd`) is subtracted exactly.
//! * W8 · I8: the weights biased to unsigned (`w ^ 0x80` = w + 128) against
//!   the signed activations with `vpdpbusd`, less 128 · Σx (computed here,
//!   not read from the row): exact for any bytes.
//!
//! Public functions are safe: they check the CPU (panicking if it lacks the
//! features; see [`available`]) and the slice lengths; the kernels then read
//! only inside the checked lengths, with unaligned or masked loads
//! (masked-off bytes are never accessed).

use super::scalar::{check_dot, check_w8_dot, w8_scale, Aff, Q8_1_BYTES};
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels of this module.
pub fn available() -> bool {
    crate::legacy::avx512::available()
}

#[inline]
fn require() {
    assert!(
        available(),
        "AVX-512 kernels called on a CPU without AVX-512 F/BW/VL/VNNI"
    );
}

/// Reads the little-endian u32 at `p` (unaligned).
///
/// # Safety
/// `p..p+4` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn ld_u32(p: *const u8) -> u32 {
    // SAFETY: four readable bytes (caller contract); unaligned read.
    u32::from_le(unsafe { p.cast::<u32>().read_unaligned() })
}

/// Reads the f16 at `p` (unaligned) as f32.
///
/// # Safety
/// `p..p+2` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16(p: *const u8) -> f32 {
    // SAFETY: two readable bytes (caller contract); unaligned read.
    let bits = u16::from_le(unsafe { p.cast::<u16>().read_unaligned() });
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The f16 pair at `p` in lanes 0 and 1.
///
/// # Safety
/// `p..p+4` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16x2(p: *const u8) -> __m128 {
    // SAFETY: four readable bytes (caller contract).
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { ld_u32(p) } as i32))
}

/// The 32 codes of one chunk of `B` bit planes at `p`, one per byte.
///
/// # Safety
/// `p..p+4B` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn decode_chunk<const B: u8>(p: *const u8) -> __m256i {
    // SAFETY: plane k < B lies in p..p+4B (caller contract).
    unsafe {
        let mut q = _mm256_maskz_mov_epi8(ld_u32(p), _mm256_set1_epi8(1));
        let mut k = 1;
        while k < B as usize {
            let bit = _mm256_set1_epi8((1u32 << k) as u8 as i8);
            q = _mm256_mask_add_epi8(q, ld_u32(p.add(4 * k)), q, bit);
            k += 1;
        }
        q
    }
}

/// One affine row of `n` elements (groups of `gl`) · `n / 32` Q8_1 blocks.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA, F16C available; `n` and `gl` checked by
/// `check_dot` (`gl` divides `n`, 32 divides `gl`); `w` holds the row's
/// `n / gl` groups and `a` `n / 32` Q8_1 blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_affine<const B: u8, const S: bool>(
    n: usize,
    gl: usize,
    w: *const u8,
    a: *const u8,
) -> f32 {
    let aff = Aff::new(B, 32, S);
    let hdr = aff.header();
    let cb = 4 * B as usize;
    let gb = aff.group_bytes(gl);
    let nc = gl / 32;
    let biasv = _mm256_set1_epi8(aff.bias() as u8 as i8);
    // Two accumulators, swapped after every chunk, to halve the FMA chain.
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    // Lane 1 accumulates m · s (asymmetric types).
    let mut msum = _mm_setzero_ps();
    let mut ab = a;
    for g in 0..n / gl {
        // SAFETY: group g < n/gl lies in the weight row and its chunks'
        // Q8_1 blocks in `a` (caller contract): every pointer below stays
        // inside one of them (header: 2 or 4 bytes; chunk c < nc: 4B bytes;
        // block: 36 bytes).
        unsafe {
            let gp = w.add(g * gb);
            // [d, m] (m only for asymmetric types).
            let dm = if S {
                _mm_set_ss(ld_f16(gp))
            } else {
                ld_f16x2(gp)
            };
            let mut c = 0;
            while c < nc {
                let q = decode_chunk::<B>(gp.add(hdr + c * cb));
                let x = _mm256_loadu_si256(ab.add(4).cast());
                let mut i = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x);
                if S {
                    i = _mm256_sub_epi32(i, _mm256_dpbusd_epi32(_mm256_setzero_si256(), biasv, x));
                }
                // [d_w d_x, m s].
                let sc = _mm_mul_ps(dm, ld_f16x2(ab));
                msum = _mm_add_ps(msum, sc);
                acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_broadcastss_ps(sc), acc0);
                std::mem::swap(&mut acc0, &mut acc1);
                ab = ab.add(Q8_1_BYTES);
                c += 1;
            }
        }
    }
    let s = _mm256_add_ps(acc0, acc1);
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let mut total = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    if !S {
        total += _mm_cvtss_f32(_mm_movehdup_ps(msum));
    }
    total
}

/// Affine type `(B, G, S)` · Q8_1 (see `super::scalar::vec_dot_affine_q8_1`).
pub fn vec_dot_affine_q8_1<const B: u8, const G: u16, const S: bool>(
    n: usize,
    w: &[u8],
    a: &[u8],
) -> f32 {
    require();
    let gl = check_dot(Aff::new(B, G, S), n, w, a);
    if n == 0 {
        return 0.0;
    }
    // SAFETY: features checked by `require`; `check_dot` proved the row
    // holds n/gl groups of gl elements and `a` n/32 Q8_1 blocks.
    unsafe { dot_affine::<B, S>(n, gl, w.as_ptr(), a.as_ptr()) }
}

/// The 16 i32 lanes summed without overflow.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn hsum_epi32_wide(v: __m512i) -> i64 {
    let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v));
    _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi))
}

/// `Σ w x` over `n` (a multiple of 32, at most `W8_MAX_N`) codes.
///
/// # Safety
/// Features available; `n` bytes readable at `w` and `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn w8_isum(n: usize, w: *const u8, x: *const u8) -> i64 {
    let flip = _mm512_set1_epi8(-128);
    let ones = _mm512_set1_epi8(1);
    let (mut acc0, mut acc1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let (mut xs0, mut xs1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let mut i = 0;
    // SAFETY: full loads stay below `n`; the tail's masked loads touch only
    // the bytes below `n` (caller contract).
    unsafe {
        while i + 128 <= n {
            let w0 = _mm512_loadu_si512(w.add(i).cast());
            let x0 = _mm512_loadu_si512(x.add(i).cast());
            let w1 = _mm512_loadu_si512(w.add(i + 64).cast());
            let x1 = _mm512_loadu_si512(x.add(i + 64).cast());
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_xor_si512(w0, flip), x0);
            acc1 = _mm512_dpbusd_epi32(acc1, _mm512_xor_si512(w1, flip), x1);
            xs0 = _mm512_dpbusd_epi32(xs0, ones, x0);
            xs1 = _mm512_dpbusd_epi32(xs1, ones, x1);
            i += 128;
        }
        while i < n {
            // 32 or 64 bytes left; masked-off bytes read as 0 (x = 0: no term).
            let m: __mmask64 = if n - i >= 64 {
                !0
            } else {
                (1u64 << (n - i)) - 1
            };
            let w0 = _mm512_maskz_loadu_epi8(m, w.add(i).cast());
            let x0 = _mm512_maskz_loadu_epi8(m, x.add(i).cast());
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_xor_si512(w0, flip), x0);
            xs0 = _mm512_dpbusd_epi32(xs0, ones, x0);
            i += 64;
        }
    }
    // Σ (w + 128) x - 128 Σ x. Each lane holds at most n/64 · 4 products of
    // ≤ 255·128: fits i32 for n ≤ W8_MAX_N.
    hsum_epi32_wide(acc0) + hsum_epi32_wide(acc1)
        - 128 * (hsum_epi32_wide(xs0) + hsum_epi32_wide(xs1))
}

/// `W8Row · I8Tok` (see `super::scalar::vec_dot_w8`); exact for any codes.
pub fn vec_dot_w8(n: usize, w: &[u8], a: &[u8]) -> f32 {
    require();
    check_w8_dot(n, w, a);
    if n == 0 {
        return 0.0;
    }
    // SAFETY: features checked; `check_w8_dot` proved 8 + n bytes in each row.
    let isum = unsafe { w8_isum(n, w.as_ptr().add(8), a.as_ptr().add(8)) };
    w8_scale(w, a) * isum as f32
}
