//! AVX2 + FMA + F16C kernels for the legacy formats: dot products and the
//! Q8_0/Q8_1 activation quantizers.
//!
//! Each public function is safe: it checks the CPU features (panicking if
//! they are missing — call only when [`available`] is true) and the slice
//! lengths, then runs the `#[target_feature]` kernel, which reads through raw
//! pointers with unaligned loads only inside the checked lengths.

use super::blocks::QK;
use super::scalar::check_dot;
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels of this module.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[inline]
fn require() {
    assert!(
        available(),
        "AVX2/FMA/F16C kernels called on a CPU without them"
    );
}

// ---------------------------------------------------------------- helpers

/// f16 bits to f32 with F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// f32 to f16 bits, round to nearest even (as `half` and ggml's `GGML_FP32_TO_FP16`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
}

/// Reads the f16 at `p` (unaligned).
///
/// # Safety
/// `p..p+2` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes; read_unaligned needs no alignment.
    f16_to_f32(unsafe { p.cast::<u16>().read_unaligned() })
}

/// Reads the little-endian u32 at `p` (unaligned).
///
/// # Safety
/// `p..p+4` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_u32(p: *const u8) -> u32 {
    // SAFETY: the caller guarantees four readable bytes.
    u32::from_le(unsafe { p.cast::<u32>().read_unaligned() })
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 32 nibbles of 16 bytes at `p`, as bytes in element order: low
/// nibbles (elements 0..16) in the low half, high nibbles in the high half.
///
/// # Safety
/// `p..p+16` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: 16 readable bytes guaranteed by the caller; loadu is unaligned.
    let q = unsafe { _mm_loadu_si128(p.cast()) };
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
    _mm256_set_m128i(hi, lo)
}

/// Byte `j` is 0x10 where bit `j` of `qh` is set, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn high_bits(qh: u32) -> __m256i {
    let v = _mm256_set1_epi32(qh as i32);
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let b = _mm256_and_si256(_mm256_shuffle_epi8(v, spread), bit);
    _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(0x10))
}

/// 8 lanes of sums of 4 products `u[i] * s[i]` (u unsigned, s signed; no
/// overflow for |u| <= 255, |s| <= 127... as long as 2*u*s fits i16).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_us(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Signed × signed via |x| and sign transfer. Requires `y != -128`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_ss(x: __m256i, y: __m256i) -> __m256i {
    dot_us(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x))
}

// ---------------------------------------------------------------- dot products

macro_rules! safe_dot {
    ($(#[$doc:meta])* $name:ident, $inner:ident, $wsize:expr, $asize:expr) => {
        $(#[$doc])*
        pub fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            require();
            let nb = check_dot(n, w, $wsize, a, $asize);
            // SAFETY: features checked by `require`; `check_dot` proved both
            // slices hold `nb` blocks, which is all the kernel reads.
            unsafe { $inner(nb, w.as_ptr(), a.as_ptr()) }
        }
    };
}

safe_dot!(
    /// Q4_0 · Q8_0. Activation quants must be in [-127, 127] (as the quantizers make them).
    vec_dot_q4_0_q8_0, dot_q4_0, 18, 34
);
safe_dot!(
    /// Q4_1 · Q8_1.
    vec_dot_q4_1_q8_1, dot_q4_1, 20, 36
);
safe_dot!(
    /// Q5_0 · Q8_0. Activation quants must be in [-127, 127].
    vec_dot_q5_0_q8_0, dot_q5_0, 22, 34
);
safe_dot!(
    /// Q5_1 · Q8_1.
    vec_dot_q5_1_q8_1, dot_q5_1, 24, 36
);
safe_dot!(
    /// Q8_0 · Q8_0. Activation quants must be in [-127, 127].
    vec_dot_q8_0_q8_0, dot_q8_0, 34, 34
);

/// # Safety
/// AVX2/FMA/F16C available; `w` holds `nb` Q4_0 blocks, `a` `nb` Q8_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let eight = _mm256_set1_epi8(8);
    for i in 0..nb {
        // SAFETY: block i < nb lies inside both buffers (caller contract).
        unsafe {
            let x = w.add(i * 18);
            let y = a.add(i * 34);
            let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
            let qx = _mm256_sub_epi8(nibbles(x.add(2)), eight);
            let qy = _mm256_loadu_si256(y.add(2).cast());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_ss(qx, qy)), acc);
        }
    }
    hsum_ps(acc)
}

/// # Safety
/// AVX2/FMA/F16C available; `w` holds `nb` Q4_1 blocks, `a` `nb` Q8_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for i in 0..nb {
        // SAFETY: block i < nb lies inside both buffers (caller contract).
        unsafe {
            let x = w.add(i * 20);
            let y = a.add(i * 36);
            summs += ld_f16(x.add(2)) * ld_f16(y.add(2));
            let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
            let qx = nibbles(x.add(4));
            let qy = _mm256_loadu_si256(y.add(4).cast());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us(qx, qy)), acc);
        }
    }
    hsum_ps(acc) + summs
}

/// # Safety
/// AVX2/FMA/F16C available; `w` holds `nb` Q5_0 blocks, `a` `nb` Q8_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let sixteen = _mm256_set1_epi8(16);
    for i in 0..nb {
        // SAFETY: block i < nb lies inside both buffers (caller contract).
        unsafe {
            let x = w.add(i * 22);
            let y = a.add(i * 34);
            let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
            let q = _mm256_or_si256(nibbles(x.add(6)), high_bits(ld_u32(x.add(2))));
            let qx = _mm256_sub_epi8(q, sixteen);
            let qy = _mm256_loadu_si256(y.add(2).cast());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_ss(qx, qy)), acc);
        }
    }
    hsum_ps(acc)
}

/// # Safety
/// AVX2/FMA/F16C available; `w` holds `nb` Q5_1 blocks, `a` `nb` Q8_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for i in 0..nb {
        // SAFETY: block i < nb lies inside both buffers (caller contract).
        unsafe {
            let x = w.add(i * 24);
            let y = a.add(i * 36);
            summs += ld_f16(x.add(2)) * ld_f16(y.add(2));
            let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
            let qx = _mm256_or_si256(nibbles(x.add(8)), high_bits(ld_u32(x.add(4))));
            let qy = _mm256_loadu_si256(y.add(4).cast());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us(qx, qy)), acc);
        }
    }
    hsum_ps(acc) + summs
}

/// # Safety
/// AVX2/FMA/F16C available; `w` and `a` hold `nb` Q8_0 blocks each.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: block i < nb lies inside both buffers (caller contract).
        unsafe {
            let x = w.add(i * 34);
            let y = a.add(i * 34);
            let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
            let qx = _mm256_loadu_si256(x.add(2).cast());
            let qy = _mm256_loadu_si256(y.add(2).cast());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_ss(qx, qy)), acc);
        }
    }
    hsum_ps(acc)
}

// ---------------------------------------------------------------- quantizers

/// Q8_0 quantizer, bit-identical to the reference (`quantize_q8_0_ref`).
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    require();
    let nb = super::check_q8(x, out, 34);
    // SAFETY: features checked; `check_q8` proved `x` has nb*32 floats and `out` nb*34 bytes.
    unsafe { quantize_q8::<false>(nb, x.as_ptr(), out.as_mut_ptr()) }
}

/// Q8_1 quantizer, bit-identical to the reference (`quantize_q8_1_ref`).
pub fn quantize_row_q8_1(x: &[f32], out: &mut [u8]) {
    require();
    let nb = super::check_q8(x, out, 36);
    // SAFETY: features checked; `check_q8` proved `x` has nb*32 floats and `out` nb*36 bytes.
    unsafe { quantize_q8::<true>(nb, x.as_ptr(), out.as_mut_ptr()) }
}

/// `roundf(v)`: nearest integer, ties away from zero, exactly.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_away(v: __m256) -> __m256 {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let sign = _mm256_set1_ps(-0.0);
    // v - t is exact (|v| < 2^23 or already integral).
    let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
    _mm256_add_ps(t, _mm256_and_ps(up, one))
}

/// # Safety
/// AVX2/FMA/F16C available; `x` holds `nb * 32` floats, `y` `nb` output blocks
/// (34 bytes for Q8_0, 36 for Q8_1 when `S`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8<const S: bool>(nb: usize, x: *const f32, y: *mut u8) {
    let bsize = if S { 36 } else { 34 };
    let qoff = if S { 4 } else { 2 };
    let sign = _mm256_set1_ps(-0.0);
    for i in 0..nb {
        // SAFETY: block i < nb: 32 floats at x + 32i and `bsize` bytes at
        // y + bsize*i are inside the buffers (caller contract); all accesses are unaligned-safe.
        unsafe {
            let src = x.add(i * QK);
            let v = [
                _mm256_loadu_ps(src),
                _mm256_loadu_ps(src.add(8)),
                _mm256_loadu_ps(src.add(16)),
                _mm256_loadu_ps(src.add(24)),
            ];
            let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
            let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
            let amax = hmax_ps(_mm256_max_ps(m01, m23));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let q = [
                _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[0], idv))),
                _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[1], idv))),
                _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[2], idv))),
                _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[3], idv))),
            ];
            let dst = y.add(i * bsize);
            dst.cast::<u16>().write_unaligned(f32_to_f16(d).to_le());
            if S {
                let sum = hsum_epi32(_mm256_add_epi32(
                    _mm256_add_epi32(q[0], q[1]),
                    _mm256_add_epi32(q[2], q[3]),
                ));
                dst.add(2)
                    .cast::<u16>()
                    .write_unaligned(f32_to_f16(sum as f32 * d).to_le());
            }
            let p01 = _mm256_packs_epi32(q[0], q[1]);
            let p23 = _mm256_packs_epi32(q[2], q[3]);
            let b = _mm256_packs_epi16(p01, p23);
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(dst.add(qoff).cast(), b);
        }
    }
}
