//! AVX2 + FMA + F16C dot products for frugal's types.
//!
//! * Affine · Q8_1: each bit plane is broadcast, its bytes spread so that
//!   byte i holds plane byte i/8, masked with bit i%8 and compared: 32 codes
//!   are rebuilt one plane at a time (Horner, top plane first). Codes below
//!   128 (bits ≤ 7) go through `maddubs` (at most 2·127·128 per pair: no
//!   saturation); 8-bit codes are widened to i16 and use `madd`. The
//!   symmetric bias is taken off in the integer sums.
//! * W8 · I8: `maddubs(|w|, sign(x, w))`, exact for any weight byte when the
//!   activation codes avoid -128 (the I8Tok quantizer clamps to ±127).
//!
//! Public functions are safe: they check the CPU (panicking without the
//! features; see [`available`]) and the slice lengths; the kernels then read
//! only inside the checked lengths with unaligned loads.

use super::scalar::{check_dot, check_w8_dot, w8_scale, Aff, Q8_1_BYTES};
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels of this module.
pub fn available() -> bool {
    crate::legacy::avx2::available()
}

#[inline]
fn require() {
    assert!(
        available(),
        "AVX2/FMA/F16C kernels called on a CPU without them"
    );
}

/// Reads the little-endian u32 at `p` (unaligned).
///
/// # Safety
/// `p..p+4` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_u32(p: *const u8) -> u32 {
    // SAFETY: four readable bytes (caller contract); unaligned read.
    u32::from_le(unsafe { p.cast::<u32>().read_unaligned() })
}

/// Reads the f16 at `p` (unaligned) as f32.
///
/// # Safety
/// `p..p+2` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16(p: *const u8) -> f32 {
    // SAFETY: two readable bytes (caller contract); unaligned read.
    let bits = u16::from_le(unsafe { p.cast::<u16>().read_unaligned() });
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The f16 pair (e.g. Q8_1's `d`, `s`, or an affine header's `d`, `m`) at
/// `p` in lanes 0 and 1.
///
/// # Safety
/// `p..p+4` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16x2(p: *const u8) -> __m128 {
    // SAFETY: four readable bytes (caller contract).
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { ld_u32(p) } as i32))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The eight i32 lanes summed without overflow.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_epi32_wide(v: __m256i) -> i64 {
    let lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v));
    let hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v));
    let s = _mm256_add_epi64(lo, hi);
    let s = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    _mm_cvtsi128_si64(s) + _mm_extract_epi64::<1>(s)
}

/// The 32 codes of one chunk of `B` bit planes at `p`, one per byte.
///
/// # Safety
/// `p..p+4B` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn decode_chunk<const B: u8>(p: *const u8) -> __m256i {
    // Byte i of a lane takes byte i/8 of the plane (lane 1: elements 16..32).
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let mut q = _mm256_setzero_si256();
    let mut k = B as usize;
    while k > 0 {
        k -= 1;
        // SAFETY: plane k < B lies in p..p+4B (caller contract).
        let plane = _mm256_set1_epi32(unsafe { ld_u32(p.add(4 * k)) } as i32);
        let set = _mm256_cmpeq_epi8(
            _mm256_and_si256(_mm256_shuffle_epi8(plane, spread), bit),
            bit,
        );
        // q = 2q + bit (set is -1 where the bit is 1).
        q = _mm256_sub_epi8(_mm256_add_epi8(q, q), set);
    }
    q
}

/// 8 lanes of `Σ (q - bias) x` over one chunk: `q` the codes, `x` at `xp`
/// the 32 Q8_1 values. Exact.
///
/// # Safety
/// `xp..xp+32` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn chunk_isum<const B: u8, const S: bool>(q: __m256i, xp: *const u8) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let bias = if S { 1i32 << (B - 1) } else { 0 };
    if B < 8 {
        // SAFETY: 32 readable bytes (caller contract).
        let x = unsafe { _mm256_loadu_si256(xp.cast()) };
        // Pairs: |q·x + q·x| ≤ 2·127·128 and |bias·(x + x)| ≤ 64·256: no saturation,
        // and their difference (|q - bias| ≤ 64 when S) fits i16.
        let mut p = _mm256_maddubs_epi16(q, x);
        if S {
            p = _mm256_sub_epi16(p, _mm256_maddubs_epi16(_mm256_set1_epi8(bias as i8), x));
        }
        _mm256_madd_epi16(p, ones)
    } else {
        // SAFETY: 2 × 16 readable bytes (caller contract).
        let (xl, xh) = unsafe {
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(xp.cast())),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(xp.add(16).cast())),
            )
        };
        let mut ql = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(q));
        let mut qh = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(q));
        if S {
            let b = _mm256_set1_epi16(bias as i16);
            ql = _mm256_sub_epi16(ql, b);
            qh = _mm256_sub_epi16(qh, b);
        }
        _mm256_add_epi32(_mm256_madd_epi16(ql, xl), _mm256_madd_epi16(qh, xh))
    }
}

/// One affine row of `n` elements (groups of `gl`) · `n / 32` Q8_1 blocks.
///
/// # Safety
/// AVX2, FMA, F16C available; `n` and `gl` checked by `check_dot` (`gl`
/// divides `n`, 32 divides `gl`); `w` holds the row's `n / gl` groups and
/// `a` `n / 32` Q8_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
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
    // Two accumulators, swapped after every group, to halve the FMA chain.
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
                let i = chunk_isum::<B, S>(q, ab.add(4));
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
    let mut total = hsum_ps(_mm256_add_ps(acc0, acc1));
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

/// 8 lanes of `Σ w x` over 32 codes at `w`, `x`.
///
/// # Safety
/// 32 bytes readable at each pointer.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn w8_chunk(w: *const u8, x: *const u8) -> __m256i {
    // SAFETY: 32 readable bytes at each (caller contract).
    let (wv, xv) = unsafe { (_mm256_loadu_si256(w.cast()), _mm256_loadu_si256(x.cast())) };
    // |w| ≤ 128 as u8, |sign(x, w)| ≤ 127: pairs ≤ 2·128·127, no saturation.
    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// `Σ w x` over `n` (a multiple of 32, at most `W8_MAX_N`) codes.
///
/// # Safety
/// AVX2 available; `n` bytes readable at `w` and `x`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn w8_isum(n: usize, w: *const u8, x: *const u8) -> i64 {
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let mut i = 0;
    // SAFETY: every chunk read is below `n` (caller contract).
    unsafe {
        while i + 64 <= n {
            acc0 = _mm256_add_epi32(acc0, w8_chunk(w.add(i), x.add(i)));
            acc1 = _mm256_add_epi32(acc1, w8_chunk(w.add(i + 32), x.add(i + 32)));
            i += 64;
        }
        if i < n {
            acc0 = _mm256_add_epi32(acc0, w8_chunk(w.add(i), x.add(i)));
        }
    }
    // Each lane holds at most n/32 · 4 products of ≤ 128·127: fits i32 for n ≤ W8_MAX_N.
    hsum_epi32_wide(acc0) + hsum_epi32_wide(acc1)
}

/// `W8Row · I8Tok` (see `super::scalar::vec_dot_w8`). Activation codes must
/// avoid -128 (the I8Tok quantizer never writes it).
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
