//! AVX-512 (F, BW, VL, VNNI) kernels for the legacy formats.
//!
//! * `vec_dot_*`: one weight row against one activation row in ggml's layout,
//!   two blocks per 512-bit register, integer products with `vpdpbusd`.
//! * `quantize_row_q8_*`: the activation quantizers, bit-identical to the
//!   references.
//! * `tile`: the matmul engine's micro-kernel. It reads activations
//!   pre-arranged in [`ActQuad`]s (see `super::packed`), decodes four weight
//!   blocks ("a quad") into two registers once, and applies them to up to 8
//!   tokens while they are in registers.
//! * `gemv`: the one-token kernel (also BITALG + VBMI). Four rows at a time:
//!   each activation quad is loaded once for the four, the integer block
//!   sums of the four rows are transposed together so that one conversion
//!   and one FMA per quad apply all 16 (row, block) scales (gathered with a
//!   single byte permute per row pair), Q5 high bits come from
//!   `vpshufbitqmb`, and each row is prefetched 4 KiB ahead.
//!
//! Signed weights (Q4_0, Q5_0 and Q8_0) are fed to `vpdpbusd` (unsigned ×
//! signed) biased to unsigned — nibbles as stored, Q8_0 xor 0x80 — and the
//! bias times the activation sum is subtracted in exact integer arithmetic.
//!
//! Public functions are safe: they check the CPU (panicking if it lacks the
//! features; see [`available`]) and the slice lengths; the `#[target_feature]`
//! kernels then read only inside the checked lengths, with unaligned or
//! masked loads (masked-off bytes are never accessed).

use super::blocks::QK;
use super::packed::{ActQuad, Lanes16};
use super::scalar::check_dot;
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels of this module.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[inline]
fn require() {
    assert!(
        available(),
        "AVX-512 kernels called on a CPU without AVX-512 F/BW/VL/VNNI"
    );
}

// Weight type codes for const generics.
pub(crate) const Q4_0: u8 = 0;
pub(crate) const Q4_1: u8 = 1;
pub(crate) const Q5_0: u8 = 2;
pub(crate) const Q5_1: u8 = 3;
pub(crate) const Q8_0: u8 = 4;

const fn wsize(ty: u8) -> usize {
    match ty {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}
/// Whether the type has a per-block minimum (dot with Q8_1 activations).
const fn has_min(ty: u8) -> bool {
    matches!(ty, Q4_1 | Q5_1)
}
/// The bias that makes signed quants unsigned (0 for the unsigned types).
const fn bias(ty: u8) -> i8 {
    match ty {
        Q4_0 => 8,
        Q5_0 => 16,
        Q8_0 => -128, // 128 as a u8
        _ => 0,
    }
}
/// Index of the bias correction in [`PackedActs::corr`](super::packed::PackedActs::corr).
const fn corr_index(ty: u8) -> usize {
    match ty {
        Q4_0 => 0,
        Q5_0 => 1,
        _ => 2,
    }
}

// ---------------------------------------------------------------- helpers

/// Reads the f16 at `p` (unaligned) as f32.
///
/// # Safety
/// `p..p+2` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16(p: *const u8) -> f32 {
    // SAFETY: two readable bytes (caller contract); unaligned read.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// # Safety
/// `p..p+2` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn ld_u16(p: *const u8) -> u64 {
    // SAFETY: two readable bytes (caller contract); unaligned read.
    u16::from_le(unsafe { p.cast::<u16>().read_unaligned() }) as u64
}

/// # Safety
/// `p..p+4` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn ld_u32(p: *const u8) -> u64 {
    // SAFETY: four readable bytes (caller contract); unaligned read.
    u32::from_le(unsafe { p.cast::<u32>().read_unaligned() }) as u64
}

/// A 512-bit constant from 32 u16 lanes.
const fn c16(a: [u16; 32]) -> __m512i {
    // SAFETY: [u16; 32] and __m512i have the same size and no invalid bit patterns.
    unsafe { std::mem::transmute(a) }
}
/// A 512-bit constant from 16 i32 lanes.
const fn c32(a: [i32; 16]) -> __m512i {
    // SAFETY: [i32; 16] and __m512i have the same size and no invalid bit patterns.
    unsafe { std::mem::transmute(a) }
}

/// Permutations spreading four floats over four lanes each: lane i takes
/// float `i / 4` (SPREAD1), `2 * (i / 4)` (SPREAD2: the d of [d0 m0 d1 m1 ..]),
/// or `2 * (i / 4) + 1` (SPREAD2M: the m).
const SPREAD1: __m512i = c32([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
const SPREAD2: __m512i = c32([0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6]);
const SPREAD2M: __m512i = c32([1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7]);

// ---------------------------------------------------------------- vec_dot (ggml layout)

/// Two weight blocks at `x0`, `x1` as 64 unsigned bytes in element order
/// (biased for signed types).
///
/// # Safety
/// Both pointers must address a whole block of type `TY`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn weight_pair<const TY: u8>(x0: *const u8, x1: *const u8) -> __m512i {
    // SAFETY: every load stays inside one of the two blocks (caller contract).
    unsafe {
        if TY == Q8_0 {
            let v = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(x0.add(2).cast())),
                _mm256_loadu_si256(x1.add(2).cast()),
            );
            return _mm512_xor_si512(v, _mm512_set1_epi8(-128));
        }
        let qs_off = match TY {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            _ => 8,
        };
        let q0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(x0.add(qs_off).cast()));
        let q1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(x1.add(qs_off).cast()));
        // [q0, q0, q1, q1]; the second copy of each takes the high nibbles.
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1);
        let v = _mm512_mask_srli_epi16::<4>(v, 0xFF00_FF00, v);
        let v = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
        if TY == Q5_0 || TY == Q5_1 {
            let qh_off = if TY == Q5_0 { 2 } else { 4 };
            let m = ld_u32(x0.add(qh_off)) | (ld_u32(x1.add(qh_off)) << 32);
            return _mm512_mask_add_epi8(v, m, v, _mm512_set1_epi8(0x10));
        }
        v
    }
}

/// One weight row of `nb` blocks of `TY` against `nb` activation blocks (Q8_0
/// or Q8_1, by type) in ggml's layout.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA, F16C available; `w` holds `nb` weight
/// blocks and `a` `nb` activation blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot<const TY: u8>(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let ws = wsize(TY);
    let asz = if has_min(TY) { 36 } else { 34 };
    let aoff = asz - QK;
    let biasv = _mm512_set1_epi8(bias(TY));
    let mut acc = _mm512_setzero_ps();
    let mut summs = 0.0f32;
    // The last odd block is paired with a zero block (d = 0, quants 0) in a stack copy.
    let mut wtail = [0u8; 2 * 34];
    let mut atail = [0u8; 2 * 36];
    let mut i = 0;
    while i < nb {
        // SAFETY: blocks i and i+1 are inside the buffers, or block i is and
        // the pair is read from the zero-padded stack copies, which hold two blocks.
        unsafe {
            let (x0, y0) = if i + 2 <= nb {
                (w.add(i * ws), a.add(i * asz))
            } else {
                std::ptr::copy_nonoverlapping(w.add(i * ws), wtail.as_mut_ptr(), ws);
                std::ptr::copy_nonoverlapping(a.add(i * asz), atail.as_mut_ptr(), asz);
                (wtail.as_ptr(), atail.as_ptr())
            };
            let (x1, y1) = (x0.add(ws), y0.add(asz));
            let wq = weight_pair::<TY>(x0, x1);
            let aq = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(y0.add(aoff).cast())),
                _mm256_loadu_si256(y1.add(aoff).cast()),
            );
            let mut s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, aq);
            if bias(TY) != 0 {
                s = _mm512_sub_epi32(s, _mm512_dpbusd_epi32(_mm512_setzero_si512(), biasv, aq));
            }
            let c0 = ld_f16(x0) * ld_f16(y0);
            let c1 = ld_f16(x1) * ld_f16(y1);
            let sc = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(c0), _mm512_set1_ps(c1));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc);
            if has_min(TY) {
                summs +=
                    ld_f16(x0.add(2)) * ld_f16(y0.add(2)) + ld_f16(x1.add(2)) * ld_f16(y1.add(2));
            }
        }
        i += 2;
    }
    _mm512_reduce_add_ps(acc) + summs
}

macro_rules! safe_dot {
    ($(#[$doc:meta])* $name:ident, $ty:expr, $asize:expr) => {
        $(#[$doc])*
        pub fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            require();
            let nb = check_dot(n, w, wsize($ty), a, $asize);
            // SAFETY: features checked by `require`; `check_dot` proved both
            // slices hold `nb` blocks, which is all the kernel reads.
            unsafe { dot::<{ $ty }>(nb, w.as_ptr(), a.as_ptr()) }
        }
    };
}

safe_dot!(
    /// Q4_0 · Q8_0.
    vec_dot_q4_0_q8_0, Q4_0, 34
);
safe_dot!(
    /// Q4_1 · Q8_1.
    vec_dot_q4_1_q8_1, Q4_1, 36
);
safe_dot!(
    /// Q5_0 · Q8_0.
    vec_dot_q5_0_q8_0, Q5_0, 34
);
safe_dot!(
    /// Q5_1 · Q8_1.
    vec_dot_q5_1_q8_1, Q5_1, 36
);
safe_dot!(
    /// Q8_0 · Q8_0.
    vec_dot_q8_0_q8_0, Q8_0, 34
);

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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn round_away(v: __m512) -> __m512 {
    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    // v - t is exact (|v| < 2^23 or already integral).
    let frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
    // ±1 with the sign of v.
    let one = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN)),
        _mm512_castps_si512(_mm512_set1_ps(1.0)),
    ));
    _mm512_mask_add_ps(t, up, t, one)
}

/// f32 to f16 bits, round to nearest even (as `half` and ggml's `GGML_FP32_TO_FP16`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn f32_to_f16(x: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
}

/// # Safety
/// Features available; `x` holds `nb * 32` floats, `y` `nb` output blocks
/// (34 bytes for Q8_0, 36 for Q8_1 when `S`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quantize_q8<const S: bool>(nb: usize, x: *const f32, y: *mut u8) {
    let bsize = if S { 36 } else { 34 };
    let qoff = bsize - QK;
    for i in 0..nb {
        // SAFETY: block i < nb: 32 floats at x + 32i and `bsize` bytes at
        // y + bsize*i are inside the buffers (caller contract); accesses are unaligned-safe.
        unsafe {
            let v0 = _mm512_loadu_ps(x.add(i * QK));
            let v1 = _mm512_loadu_ps(x.add(i * QK + 16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm512_set1_ps(id);
            let q0 = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(v0, idv)));
            let q1 = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(v1, idv)));
            let dst = y.add(i * bsize);
            dst.cast::<u16>().write_unaligned(f32_to_f16(d).to_le());
            if S {
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                dst.add(2)
                    .cast::<u16>()
                    .write_unaligned(f32_to_f16(sum as f32 * d).to_le());
            }
            _mm_storeu_si128(dst.add(qoff).cast(), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(dst.add(qoff + 16).cast(), _mm512_cvtepi32_epi8(q1));
        }
    }
}

// ---------------------------------------------------------------- matmul micro-kernel

/// Bytes of four blocks.
const fn quad_bytes(ty: u8) -> usize {
    4 * wsize(ty)
}

/// Four weight blocks decoded for the micro-kernel.
#[derive(Clone, Copy)]
struct Quad {
    /// Elements 0..16 of blocks 0..4 (16 bytes each), unsigned (biased).
    lo: __m512i,
    /// Elements 16..32 of blocks 0..4.
    hi: __m512i,
    /// The scale of block k in lanes 4k..4k+4.
    dw16: __m512,
    /// The minimum of block k in lanes 4k..4k+4 (types with a minimum; else unused).
    mw16: __m512,
}

// Word (u16) indices of the quants of four blocks, for vpermt2w: block k's 16
// bytes are words `first + k * stride .. +8`.
const fn qs_words(first: u16, stride: u16) -> __m512i {
    let mut a = [0u16; 32];
    let mut k = 0;
    while k < 4 {
        let mut j = 0;
        while j < 8 {
            a[k * 8 + j] = first + k as u16 * stride + j as u16;
            j += 1;
        }
        k += 1;
    }
    c16(a)
}
// Dword indices, for vpermt2d: block k's 16 bytes are dwords `first + k * stride .. +4`.
const fn qs_dwords(first: i32, stride: i32) -> __m512i {
    let mut a = [0i32; 16];
    let mut k = 0;
    while k < 4 {
        let mut j = 0;
        while j < 4 {
            a[k * 4 + j] = first + k as i32 * stride + j as i32;
            j += 1;
        }
        k += 1;
    }
    c32(a)
}

const Q4_0_QS: __m512i = qs_words(1, 9);
const Q4_0_D: __m512i = c16([
    0, 9, 18, 27, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0,
]);
const Q4_1_QS: __m512i = qs_dwords(1, 5);
const Q4_1_DM: __m512i = c32([0, 5, 10, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
const Q5_0_QS: __m512i = qs_words(3, 11);
// Words: d0..d3, pad, then qh low words of blocks 0..3, qh high words of blocks 0..3.
const Q5_0_META: __m512i = c16([
    0, 11, 22, 33, 0, 0, 0, 0, 1, 12, 23, 34, 2, 13, 24, 35, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0,
]);
const Q5_1_QS: __m512i = qs_dwords(2, 6);
// Words: d0 m0 d1 m1 d2 m2 d3 m3, then qh low words, qh high words.
const Q5_1_META: __m512i = c16([
    0, 1, 12, 13, 24, 25, 36, 37, 2, 14, 26, 38, 3, 15, 27, 39, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0,
]);

/// Splits 16 bytes of nibbles per block into low/high element halves.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn split_nibbles(qs: __m512i) -> (__m512i, __m512i) {
    let m = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(qs, m),
        _mm512_and_si512(_mm512_srli_epi16::<4>(qs), m),
    )
}

/// Sets bit 4 of the elements whose qh bits are set; `meta` lanes 4..8 (128-bit
/// lane 1) hold the low qh words of the four blocks, then the high words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn add_high_bits(lo: __m512i, hi: __m512i, meta: __m512i) -> (__m512i, __m512i) {
    let qh = _mm512_extracti32x4_epi32::<1>(meta);
    let mlo = _mm_cvtsi128_si64(qh) as u64;
    let mhi = _mm_extract_epi64::<1>(qh) as u64;
    let b4 = _mm512_set1_epi8(0x10);
    (
        _mm512_mask_add_epi8(lo, mlo, lo, b4),
        _mm512_mask_add_epi8(hi, mhi, hi, b4),
    )
}

/// Bit mask of the first `n` bytes (n may exceed 64).
#[inline]
fn byte_mask(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The 32 quants of Q8_0 block `k` of the quad at `p` (zero if `k >= nblk`).
///
/// # Safety
/// As [`decode`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q8_quants(p: *const u8, k: usize, nblk: usize) -> __m256i {
    let m = if k < nblk { u32::MAX } else { 0 };
    // SAFETY: block k < nblk is readable; otherwise the load is fully masked
    // off and touches nothing (its address is only computed, with wrapping_add).
    unsafe { _mm256_maskz_loadu_epi8(m, p.wrapping_add(34 * k + 2).cast()) }
}

/// The f16 scale bits of Q8_0 block `k` of the quad at `p`, shifted to lane
/// `k` of a u64 (zero if `k >= nblk`).
///
/// # Safety
/// As [`decode`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q8_scale(p: *const u8, k: usize, nblk: usize) -> u64 {
    if k < nblk {
        // SAFETY: block k < nblk is readable.
        unsafe { ld_u16(p.add(34 * k)) << (16 * k) }
    } else {
        0
    }
}

/// Decodes the first `nblk` (1..=4) blocks of `TY` at `p` as a quad; missing
/// blocks read as zero blocks (zero scale and quants). Whole quads (the
/// common case, `nblk == 4` known at compile time) use plain loads for the
/// first 64 bytes.
///
/// # Safety
/// `p..p + nblk * wsize(TY)` must be readable. Nothing past it is accessed:
/// loads beyond it are masked off (AVX-512 masked loads do not touch, nor
/// fault on, masked-off bytes), and their addresses are formed with
/// `wrapping_add`, never dereferenced.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn decode<const TY: u8>(p: *const u8, nblk: usize) -> Quad {
    let valid = nblk * wsize(TY);
    let zero_ps = _mm512_setzero_ps();
    // SAFETY: see the function contract; every access is a load inside the
    // `valid` bytes or masked to them.
    unsafe {
        if TY == Q8_0 {
            let p01 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(q8_quants(p, 0, nblk)),
                q8_quants(p, 1, nblk),
            );
            let p23 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(q8_quants(p, 2, nblk)),
                q8_quants(p, 3, nblk),
            );
            let flip = _mm512_set1_epi8(-128);
            let lo = _mm512_xor_si512(_mm512_shuffle_i64x2::<0x88>(p01, p23), flip);
            let hi = _mm512_xor_si512(_mm512_shuffle_i64x2::<0xDD>(p01, p23), flip);
            let dbits = q8_scale(p, 0, nblk)
                | q8_scale(p, 1, nblk)
                | q8_scale(p, 2, nblk)
                | q8_scale(p, 3, nblk);
            let d4 = _mm_cvtph_ps(_mm_cvtsi64_si128(dbits as i64));
            let dw16 = _mm512_permutexvar_ps(SPREAD1, _mm512_castps128_ps512(d4));
            return Quad {
                lo,
                hi,
                dw16,
                mw16: zero_ps,
            };
        }
        // The quad's bytes as two registers: bytes 0..64 and 64..quad_bytes.
        let a = if valid >= 64 {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi8(byte_mask(valid), p.cast())
        };
        let b = _mm512_maskz_loadu_epi8(
            byte_mask(valid.saturating_sub(64)),
            p.wrapping_add(64).cast(),
        );
        match TY {
            Q4_0 => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi16(a, Q4_0_QS, b));
                let d4 = _mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi16(Q4_0_D, a)));
                let dw16 = _mm512_permutexvar_ps(SPREAD1, _mm512_castps128_ps512(d4));
                Quad {
                    lo,
                    hi,
                    dw16,
                    mw16: zero_ps,
                }
            }
            Q4_1 => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi32(a, Q4_1_QS, b));
                let dm = _mm512_castsi512_si128(_mm512_permutexvar_epi32(Q4_1_DM, a));
                let dm8 = _mm512_castps256_ps512(_mm256_cvtph_ps(dm));
                let dw16 = _mm512_permutexvar_ps(SPREAD2, dm8);
                let mw16 = _mm512_permutexvar_ps(SPREAD2M, dm8);
                Quad { lo, hi, dw16, mw16 }
            }
            Q5_0 => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi16(a, Q5_0_QS, b));
                let meta = _mm512_permutex2var_epi16(a, Q5_0_META, b);
                let (lo, hi) = add_high_bits(lo, hi, meta);
                let d4 = _mm_cvtph_ps(_mm512_castsi512_si128(meta));
                let dw16 = _mm512_permutexvar_ps(SPREAD1, _mm512_castps128_ps512(d4));
                Quad {
                    lo,
                    hi,
                    dw16,
                    mw16: zero_ps,
                }
            }
            _ => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi32(a, Q5_1_QS, b));
                let meta = _mm512_permutex2var_epi16(a, Q5_1_META, b);
                let (lo, hi) = add_high_bits(lo, hi, meta);
                let dm8 = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm512_castsi512_si128(meta)));
                let dw16 = _mm512_permutexvar_ps(SPREAD2, dm8);
                let mw16 = _mm512_permutexvar_ps(SPREAD2M, dm8);
                Quad { lo, hi, dw16, mw16 }
            }
        }
    }
}

/// Pointers to the activation quads of one quad position of token 0; token
/// `t`'s are `t * nq` elements further.
#[derive(Clone, Copy)]
struct Acts {
    quads: *const ActQuad,
    /// The bias corrections for this weight type (Q4_0/Q5_0/Q8_0), else unused.
    corr: *const Lanes16<i32>,
    /// The Q8_1 block sums (Q4_1/Q5_1), else unused.
    s16: *const Lanes16<f32>,
    nq: usize,
}

impl Acts {
    /// The same for quad position `q`. Addresses only (`wrapping_add`): the
    /// arrays a type does not use may be empty.
    #[inline]
    fn at(self, q: usize) -> Acts {
        Acts {
            quads: self.quads.wrapping_add(q),
            corr: self.corr.wrapping_add(q),
            s16: self.s16.wrapping_add(q),
            nq: self.nq,
        }
    }
}

/// Applies one decoded weight quad to the activation quads of `T` tokens.
///
/// # Safety
/// For `t < T`, `a.quads + t * nq` must point to a valid [`ActQuad`], and
/// `a.corr + t * nq` (types with a bias) or `a.s16 + t * nq` (types with a
/// minimum) to valid corrections / sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn apply<const TY: u8, const T: usize>(wq: &Quad, a: Acts, acc: &mut [__m512; T]) {
    for (t, acc) in acc.iter_mut().enumerate() {
        // SAFETY: caller contract; all fields are read with unaligned loads
        // inside the pointed-to structs.
        unsafe {
            let aq = a.quads.wrapping_add(t * a.nq);
            let init = if bias(TY) != 0 {
                _mm512_loadu_si512(a.corr.wrapping_add(t * a.nq).cast())
            } else {
                _mm512_setzero_si512()
            };
            let a_lo = _mm512_loadu_si512((*aq).qs.as_ptr().cast());
            let a_hi = _mm512_loadu_si512((*aq).qs.as_ptr().add(64).cast());
            let s = _mm512_dpbusd_epi32(init, wq.lo, a_lo);
            let s = _mm512_dpbusd_epi32(s, wq.hi, a_hi);
            let sc = _mm512_mul_ps(wq.dw16, _mm512_loadu_ps((*aq).d16.as_ptr()));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, *acc);
            if has_min(TY) {
                // m_k * s_k lands in lane 4k (s16 is zero in the other lanes).
                let s16 = _mm512_loadu_ps(a.s16.wrapping_add(t * a.nq).cast());
                *acc = _mm512_fmadd_ps(wq.mw16, s16, *acc);
            }
        }
    }
}

/// Dot products of one weight row (`nb` blocks at `w`) with `T` tokens' activations.
///
/// # Safety
/// Features available; `w` holds `nb` blocks of `TY`; `a` (token 0, quad 0)
/// satisfies [`apply`]'s contract for every quad `q < ceil(nb / 4)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row_dot<const TY: u8, const T: usize>(w: *const u8, nb: usize, a: Acts) -> [f32; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    let full = nb / 4;
    let qb = quad_bytes(TY);
    for q in 0..full {
        // SAFETY: quad q < nb/4 is inside the row; act quad q exists (contract).
        unsafe {
            let wq = decode::<TY>(w.add(q * qb), 4);
            apply::<TY, T>(&wq, a.at(q), &mut acc);
        }
    }
    let rem = nb - full * 4;
    if rem > 0 {
        // The last blocks as a partial quad (missing blocks read as zero, and
        // meet zero activation padding).
        // SAFETY: `rem` blocks remain in the row; act quad `full` exists.
        unsafe {
            let wq = decode::<TY>(w.add(full * qb), rem);
            apply::<TY, T>(&wq, a.at(full), &mut acc);
        }
    }
    let mut out = [0.0f32; T];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(a);
    }
    out
}

/// Rows `rows` × `T` tokens from `t0`, written to `out[(t0 + i) * ostride + r]`.
///
/// # Safety
/// As [`tile`], for rows `rows` (within `g.rows`) and tokens `t0..t0+T`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_tokens<const TY: u8, const T: usize>(
    g: &TileArgs,
    rows: std::ops::Range<usize>,
    t0: usize,
) {
    let p = &g.acts;
    let corr = if bias(TY) != 0 {
        p.corr[corr_index(TY)].as_ptr()
    } else {
        std::ptr::null()
    };
    let a = Acts {
        quads: p.quads.as_ptr(),
        corr,
        s16: p.s16.as_ptr(),
        nq: p.nq,
    }
    .at(t0 * p.nq);
    for r in rows {
        // SAFETY: row r < total rows is inside `w`; tokens t0..t0+T < n_tok
        // have packed act rows (of this type's extras); out index
        // (t0+i)*ostride + r is in bounds and owned by this call (caller contract).
        unsafe {
            let v = row_dot::<TY, T>(g.w.add(r * g.row_bytes), p.nb, a);
            for (i, x) in v.iter().enumerate() {
                *g.out.add((t0 + i) * g.ostride + r) = *x;
            }
        }
    }
}

/// Tokens per pass of the prefill micro-kernel (one weight quad decoded,
/// applied to this many tokens).
const TB: usize = 8;

/// Weight bytes per row block in prefill: a block stays in L2 while every
/// token group passes over it.
const ROW_BLOCK_BYTES: usize = 128 * 1024;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_typed<const TY: u8>(g: &TileArgs) {
    // The extras this type reads must be there (they are when the
    // activations were packed from this type's activation type).
    let extra = if has_min(TY) {
        g.acts.s16.len()
    } else {
        g.acts.corr[corr_index(TY)].len()
    };
    assert_eq!(
        extra,
        g.acts.quads.len(),
        "activations packed for another type"
    );
    let n_tok = g.acts.n_tok;
    let rb = (ROW_BLOCK_BYTES / g.row_bytes.max(1)).max(16);
    let mut r0 = g.rows.start;
    while r0 < g.rows.end {
        let rows = r0..(r0 + rb).min(g.rows.end);
        let mut t0 = 0;
        // SAFETY: each call covers rows inside g.rows and tokens inside
        // 0..n_tok (caller contract of `tile`).
        unsafe {
            while t0 + TB <= n_tok {
                tile_tokens::<TY, TB>(g, rows.clone(), t0);
                t0 += TB;
            }
            if t0 + 4 <= n_tok {
                tile_tokens::<TY, 4>(g, rows.clone(), t0);
                t0 += 4;
            }
            if t0 + 2 <= n_tok {
                tile_tokens::<TY, 2>(g, rows.clone(), t0);
                t0 += 2;
            }
            if t0 < n_tok {
                tile_tokens::<TY, 1>(g, rows.clone(), t0);
            }
        }
        r0 = rows.end;
    }
}

/// Arguments of [`tile`].
pub(crate) struct TileArgs<'a> {
    /// The whole weight matrix.
    pub w: *const u8,
    pub row_bytes: usize,
    /// The rows this call computes.
    pub rows: std::ops::Range<usize>,
    /// The activations, packed for this weight type's activation type.
    pub acts: &'a super::packed::PackedActs,
    /// Output: element (t, r) at `out[t * ostride + r]`.
    pub out: *mut f32,
    pub ostride: usize,
}

/// The weight types [`tile`] handles.
pub(crate) fn tile_type(ty: frugal_formats::GgmlType) -> Option<u8> {
    use frugal_formats::GgmlType as G;
    match ty {
        G::Q4_0 => Some(Q4_0),
        G::Q4_1 => Some(Q4_1),
        G::Q5_0 => Some(Q5_0),
        G::Q5_1 => Some(Q5_1),
        G::Q8_0 => Some(Q8_0),
        _ => None,
    }
}

/// Computes `out[t * ostride + r] = dot(weight row r, token t)` for `r` in
/// `g.rows` and every token of `g.acts`.
///
/// # Safety
/// The AVX-512 features are available ([`available`]); `ty` is a code of
/// [`tile_type`]; `g.w` holds at least `g.rows.end` rows of
/// `g.row_bytes = g.acts.nb * wsize` bytes of that type; `g.acts` was packed
/// from the activation type of that weight type (Q8_0 for Q4_0/Q5_0/Q8_0,
/// Q8_1 for Q4_1/Q5_1); `g.out` is valid for writes at every index above,
/// and no other thread accesses those elements during the call.
pub(crate) unsafe fn tile(ty: u8, g: &TileArgs) {
    assert_eq!(
        g.acts.quads.len(),
        g.acts.n_tok * g.acts.nq,
        "packed activations"
    );
    // SAFETY: forwarded caller contract.
    unsafe {
        match ty {
            Q4_0 => tile_typed::<Q4_0>(g),
            Q4_1 => tile_typed::<Q4_1>(g),
            Q5_0 => tile_typed::<Q5_0>(g),
            Q5_1 => tile_typed::<Q5_1>(g),
            _ => tile_typed::<Q8_0>(g),
        }
    }
}

// ---------------------------------------------------------------- matrix-vector kernel

/// Rows decoded together by the one-token kernel: each activation quad is
/// loaded once for all of them, and their accumulators are independent.
const GEMV_ROWS: usize = 4;

/// At least this many bytes ahead, the one-token kernel prefetches weights.
/// Far enough to cover the memory latency several rows ahead (a near
/// prefetch, 512 bytes, gains nothing over the hardware prefetchers; this
/// one is worth ~30% of decode speed on models that do not fit in L2).
const GEMV_PREFETCH: usize = 4096;

/// How far ahead [`rows4_dot`] prefetches: the same column a whole number of
/// 4-row groups on, at least [`GEMV_PREFETCH`] bytes. A fixed distance would
/// land inside the group being read once rows exceed 1 KiB (FFN down
/// projections: 2.7 KiB rows on Qwen2.5-0.5B), fetching nothing new.
fn gemv_prefetch_distance(row_bytes: usize) -> usize {
    let group = GEMV_ROWS * row_bytes;
    GEMV_PREFETCH.div_ceil(group).max(1) * group
}

/// Applies the decoded quads of `R` rows to one activation quad.
///
/// # Safety
/// As [`apply`] for one token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn apply_rows<const TY: u8, const R: usize>(
    wq: &[Quad; R],
    a: Acts,
    acc: &mut [__m512; R],
    accm: &mut [__m512; R],
) {
    // SAFETY: caller contract; all fields are read with unaligned loads
    // inside the pointed-to structs.
    unsafe {
        let aq = a.quads;
        let init = if bias(TY) != 0 {
            _mm512_loadu_si512(a.corr.cast())
        } else {
            _mm512_setzero_si512()
        };
        let a_lo = _mm512_loadu_si512((*aq).qs.as_ptr().cast());
        let a_hi = _mm512_loadu_si512((*aq).qs.as_ptr().add(64).cast());
        let ad16 = _mm512_loadu_ps((*aq).d16.as_ptr());
        let s16 = if has_min(TY) {
            _mm512_loadu_ps(a.s16.cast())
        } else {
            _mm512_setzero_ps()
        };
        for i in 0..R {
            let s = _mm512_dpbusd_epi32(init, wq[i].lo, a_lo);
            let s = _mm512_dpbusd_epi32(s, wq[i].hi, a_hi);
            let sc = _mm512_mul_ps(wq[i].dw16, ad16);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[i]);
            if has_min(TY) {
                accm[i] = _mm512_fmadd_ps(wq[i].mw16, s16, accm[i]);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn zero_quad() -> Quad {
    Quad {
        lo: _mm512_setzero_si512(),
        hi: _mm512_setzero_si512(),
        dw16: _mm512_setzero_ps(),
        mw16: _mm512_setzero_ps(),
    }
}

/// Dot products of `R` consecutive weight rows (from `w`, `row_bytes` apart)
/// with one token's activations.
///
/// # Safety
/// Features available; `w` holds `R` rows of `nb` blocks of `TY`, `row_bytes`
/// apart; `a` (quad 0) satisfies [`apply`]'s contract for one token and every
/// quad `q < ceil(nb / 4)`.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bitalg,avx512vbmi,avx2,fma,f16c"
)]
#[inline]
unsafe fn rows_dot<const TY: u8, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    a: Acts,
) -> [__m512; R] {
    let mut acc = [_mm512_setzero_ps(); R];
    let mut accm = [_mm512_setzero_ps(); R];
    let full = nb / 4;
    let qb = quad_bytes(TY);
    for q in 0..full {
        // SAFETY: quad q < nb/4 is inside each row; act quad q exists
        // (contract). Prefetches never fault, whatever the address.
        unsafe {
            let mut wq = [zero_quad(); R];
            for (i, wq) in wq.iter_mut().enumerate() {
                let p = w.add(i * row_bytes + q * qb);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(GEMV_PREFETCH).cast());
                *wq = decode::<TY>(p, 4);
            }
            apply_rows::<TY, R>(&wq, a.at(q), &mut acc, &mut accm);
        }
    }
    let rem = nb - full * 4;
    if rem > 0 {
        // The last blocks as a partial quad (missing blocks read as zero, and
        // meet zero activation padding).
        // SAFETY: `rem` blocks remain in each row; act quad `full` exists.
        unsafe {
            let mut wq = [zero_quad(); R];
            for (i, wq) in wq.iter_mut().enumerate() {
                *wq = decode::<TY>(w.add(i * row_bytes + full * qb), rem);
            }
            apply_rows::<TY, R>(&wq, a.at(full), &mut acc, &mut accm);
        }
    }
    if has_min(TY) {
        for (a, m) in acc.iter_mut().zip(accm) {
            *a = _mm512_add_ps(*a, m);
        }
    }
    acc
}

#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bitalg,avx512vbmi,avx2,fma,f16c"
)]
unsafe fn gemv_typed<const TY: u8>(g: &TileArgs) {
    let p = g.acts;
    let extra = if has_min(TY) {
        p.s16.len()
    } else {
        p.corr[corr_index(TY)].len()
    };
    assert_eq!(extra, p.quads.len(), "activations packed for another type");
    assert_eq!(p.n_tok, 1, "gemv: one token");
    let corr = if bias(TY) != 0 {
        p.corr[corr_index(TY)].as_ptr()
    } else {
        std::ptr::null()
    };
    let a = Acts {
        quads: p.quads.as_ptr(),
        corr,
        s16: p.s16.as_ptr(),
        nq: p.nq,
    };
    let mut r = g.rows.start;
    while r + GEMV_ROWS <= g.rows.end {
        // SAFETY: rows r..r+4 lie inside g.rows, inside `w`; token 0 has
        // packed act rows with this type's extras (checked above); the
        // outputs out[r..r+4] (token 0) are in bounds and owned by this call
        // (caller contract of `gemv`).
        unsafe {
            let v = rows4_dot::<TY>(g.w.add(r * g.row_bytes), g.row_bytes, p.nb, a);
            _mm_storeu_ps(g.out.add(r), v);
        }
        r += GEMV_ROWS;
    }
    while r < g.rows.end {
        // SAFETY: as above, for row r alone.
        unsafe {
            let acc = rows_dot::<TY, 1>(g.w.add(r * g.row_bytes), g.row_bytes, p.nb, a);
            *g.out.add(r) = _mm512_reduce_add_ps(acc[0]);
        }
        r += 1;
    }
}

/// Whether this CPU can run [`gemv`]: [`available`] plus AVX-512 BITALG and VBMI.
pub(crate) fn gemv_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        available()
            && is_x86_feature_detected!("avx512bitalg")
            && is_x86_feature_detected!("avx512vbmi")
    })
}

/// The one-token (matrix-vector) kernel: `out[r] = dot(weight row r, token
/// 0)` for `r` in `g.rows`, four rows at a time.
///
/// # Safety
/// As [`tile`], with `g.acts` holding exactly one token, and
/// [`gemv_available`].
pub(crate) unsafe fn gemv(ty: u8, g: &TileArgs) {
    assert_eq!(g.acts.quads.len(), g.acts.nq, "packed activations");
    // SAFETY: forwarded caller contract.
    unsafe {
        match ty {
            Q4_0 => gemv_typed::<Q4_0>(g),
            Q4_1 => gemv_typed::<Q4_1>(g),
            Q5_0 => gemv_typed::<Q5_0>(g),
            Q5_1 => gemv_typed::<Q5_1>(g),
            _ => gemv_typed::<Q8_0>(g),
        }
    }
}

/// A vpermt2w index vector as the equivalent vpermt2b one (word i: bytes
/// 2i, 2i+1), which is one µop where vpermt2w is three on Intel cores.
const fn word_to_byte_index(v: __m512i) -> __m512i {
    // SAFETY: __m512i and [u16; 32] have the same size and no invalid bit patterns.
    let w: [u16; 32] = unsafe { std::mem::transmute::<__m512i, [u16; 32]>(v) };
    let mut b = [0u8; 64];
    let mut i = 0;
    while i < 32 {
        b[2 * i] = (2 * w[i]) as u8;
        b[2 * i + 1] = (2 * w[i] + 1) as u8;
        i += 1;
    }
    // SAFETY: as above, for [u8; 64].
    unsafe { std::mem::transmute::<[u8; 64], __m512i>(b) }
}

/// Word position of block `k`'s scale `d` (`m`: its minimum) in the word
/// source [`decode_raw`] returns.
const fn scale_word(ty: u8, k: u16, m: bool) -> u16 {
    let m = if m && has_min(ty) { 1 } else { 0 };
    match ty {
        Q4_0 => 9 * k,
        Q4_1 => 10 * k + m,
        Q5_0 | Q5_1 => 8 * k + 2 + m, // in the gemv meta
        _ => k,                       // Q8_0 (dbits)
    }
}

/// vpermt2w indices gathering, from the word sources of rows `2 * pair` and
/// `2 * pair + 1`, the scale of (row r, block k) into word `4k + r` and its
/// minimum into word `16 + 4k + r` (other words: don't care).
const fn scale_gather(ty: u8, pair: u16) -> __m512i {
    let mut a = [0u16; 32];
    let mut w = 0;
    while w < 32 {
        let j = (w % 16) as u16;
        let (k, r) = (j / 4, j % 4);
        let pos = scale_word(ty, k, w >= 16);
        if r == 2 * pair {
            a[w] = pos;
        } else if r == 2 * pair + 1 {
            a[w] = 32 + pos;
        }
        w += 1;
    }
    c16(a)
}

/// Lane i takes lane `4 * (i / 4)`: block k's Q8_1 sum (lane 4k of `s16`) to lanes 4k..4k+4.
const SPREAD_S: __m512i = c32([0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12]);

/// Decodes the first `nblk` (1..=4) blocks of `TY` at `p` (missing blocks
/// read as zero): the quants as [`Quad::lo`]/[`Quad::hi`], and a register
/// whose words hold the scales (and minimums) at [`scale_word`].
///
/// # Safety
/// As [`decode`].
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bitalg,avx512vbmi,avx2,fma,f16c"
)]
#[inline]
unsafe fn decode_raw<const TY: u8>(p: *const u8, nblk: usize) -> (__m512i, __m512i, __m512i) {
    let valid = nblk * wsize(TY);
    // SAFETY: see `decode`: every access is a load inside the `valid` bytes
    // or masked to them.
    unsafe {
        if TY == Q8_0 {
            let p01 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(q8_quants(p, 0, nblk)),
                q8_quants(p, 1, nblk),
            );
            let p23 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(q8_quants(p, 2, nblk)),
                q8_quants(p, 3, nblk),
            );
            let flip = _mm512_set1_epi8(-128);
            let lo = _mm512_xor_si512(_mm512_shuffle_i64x2::<0x88>(p01, p23), flip);
            let hi = _mm512_xor_si512(_mm512_shuffle_i64x2::<0xDD>(p01, p23), flip);
            let dbits = q8_scale(p, 0, nblk)
                | q8_scale(p, 1, nblk)
                | q8_scale(p, 2, nblk)
                | q8_scale(p, 3, nblk);
            let src = _mm512_castsi128_si512(_mm_cvtsi64_si128(dbits as i64));
            return (lo, hi, src);
        }
        let a = if valid >= 64 {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi8(byte_mask(valid), p.cast())
        };
        let b = _mm512_maskz_loadu_epi8(
            byte_mask(valid.saturating_sub(64)),
            p.wrapping_add(64).cast(),
        );
        match TY {
            Q4_0 => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi8(
                    a,
                    const { word_to_byte_index(Q4_0_QS) },
                    b,
                ));
                (lo, hi, a)
            }
            Q4_1 => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi32(a, Q4_1_QS, b));
                (lo, hi, a)
            }
            Q5_0 => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi8(
                    a,
                    const { word_to_byte_index(Q5_0_QS) },
                    b,
                ));
                let meta = _mm512_permutex2var_epi8(a, const { word_to_byte_index(Q5_0_GMETA) }, b);
                let (lo, hi) = high_bits_shuffled(lo, hi, meta);
                (lo, hi, meta)
            }
            _ => {
                let (lo, hi) = split_nibbles(_mm512_permutex2var_epi32(a, Q5_1_QS, b));
                let meta = _mm512_permutex2var_epi8(a, const { word_to_byte_index(Q5_1_GMETA) }, b);
                let (lo, hi) = high_bits_shuffled(lo, hi, meta);
                (lo, hi, meta)
            }
        }
    }
}

/// The gemv meta register of a Q5 quad: qword `2k` and `2k + 1` hold block
/// k's `qh` (32 bits), its `d` and (Q5_1) `m` (words `8k + 2`, `8k + 3`).
const fn q5_gmeta(block_words: u16, qh_word: u16) -> __m512i {
    let mut a = [0u16; 32];
    let mut l = 0;
    while l < 8 {
        let k = (l / 2) as u16;
        let base = k * block_words;
        a[4 * l] = base + qh_word;
        a[4 * l + 1] = base + qh_word + 1;
        a[4 * l + 2] = base;
        a[4 * l + 3] = base + 1;
        l += 1;
    }
    c16(a)
}
const Q5_0_GMETA: __m512i = q5_gmeta(11, 1);
const Q5_1_GMETA: __m512i = q5_gmeta(12, 2);

/// Byte j selects bit `j % 16` (`LO`) or `16 + j % 16` (`HI`) of its qword.
const fn bit_select(first: u8) -> __m512i {
    let mut a = [0u8; 64];
    let mut j = 0;
    while j < 64 {
        a[j] = first + (j % 16) as u8;
        j += 1;
    }
    // SAFETY: [u8; 64] and __m512i have the same size and no invalid bit patterns.
    unsafe { std::mem::transmute::<[u8; 64], __m512i>(a) }
}
const BITS_LO: __m512i = bit_select(0);
const BITS_HI: __m512i = bit_select(16);

/// Sets bit 4 of the elements whose qh bits are set, from a gemv meta
/// register (the qh of the block of each quant's qword, there).
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bitalg,avx512vbmi,avx2,fma,f16c"
)]
#[inline]
fn high_bits_shuffled(lo: __m512i, hi: __m512i, meta: __m512i) -> (__m512i, __m512i) {
    let mlo = _mm512_bitshuffle_epi64_mask(meta, BITS_LO);
    let mhi = _mm512_bitshuffle_epi64_mask(meta, BITS_HI);
    let b4 = _mm512_set1_epi8(0x10);
    (
        _mm512_mask_add_epi8(lo, mlo, lo, b4),
        _mm512_mask_add_epi8(hi, mhi, hi, b4),
    )
}

/// One quad position of four rows (quads at `p[r]`, `nblk` blocks each)
/// against one activation quad, accumulated per (block, row) in lane `4k + r`.
///
/// # Safety
/// As [`decode`] for each `p[r]`; `a` as [`apply`] for one token.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bitalg,avx512vbmi,avx2,fma,f16c"
)]
#[inline]
unsafe fn quad4<const TY: u8>(
    p: [*const u8; 4],
    nblk: usize,
    a: Acts,
    acc: &mut __m512,
    accm: &mut __m512,
) {
    // SAFETY: caller contract; activation fields are read with unaligned
    // loads inside the pointed-to structs.
    unsafe {
        let aq = a.quads;
        let init = if bias(TY) != 0 {
            _mm512_loadu_si512(a.corr.cast())
        } else {
            _mm512_setzero_si512()
        };
        let a_lo = _mm512_loadu_si512((*aq).qs.as_ptr().cast());
        let a_hi = _mm512_loadu_si512((*aq).qs.as_ptr().add(64).cast());
        let mut s = [_mm512_setzero_si512(); 4];
        let mut src = [_mm512_setzero_si512(); 4];
        for r in 0..4 {
            let (lo, hi, sc) = decode_raw::<TY>(p[r], nblk);
            s[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, a_lo), hi, a_hi);
            src[r] = sc;
        }
        // Block sums: 128-bit lane k of `u` = [row 0, row 1, row 2, row 3].
        let t01 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(s[0], s[1]),
            _mm512_unpackhi_epi32(s[0], s[1]),
        );
        let t23 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(s[2], s[3]),
            _mm512_unpackhi_epi32(s[2], s[3]),
        );
        let u = _mm512_add_epi32(
            _mm512_unpacklo_epi64(t01, t23),
            _mm512_unpackhi_epi64(t01, t23),
        );
        // Scales (and minimums) of (row r, block k) in word 4k + r (16 + 4k + r).
        let x = _mm512_permutex2var_epi8(
            src[0],
            const { word_to_byte_index(scale_gather(TY, 0)) },
            src[1],
        );
        let y = _mm512_permutex2var_epi8(
            src[2],
            const { word_to_byte_index(scale_gather(TY, 1)) },
            src[3],
        );
        let z = _mm512_mask_blend_epi16(0xCCCC_CCCC, x, y);
        let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(z));
        let ad16 = _mm512_loadu_ps((*aq).d16.as_ptr());
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(u), _mm512_mul_ps(dw, ad16), *acc);
        if has_min(TY) {
            let mw = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(z));
            let s16 = _mm512_permutexvar_ps(SPREAD_S, _mm512_loadu_ps(a.s16.cast()));
            *accm = _mm512_fmadd_ps(mw, s16, *accm);
        }
    }
}

/// Dot products of four consecutive weight rows (from `w`, `row_bytes`
/// apart, `nb` blocks each) with one token: lane r of the result is row r's.
///
/// # Safety
/// As [`rows_dot`] with `R = 4`.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bitalg,avx512vbmi,avx2,fma,f16c"
)]
unsafe fn rows4_dot<const TY: u8>(w: *const u8, row_bytes: usize, nb: usize, a: Acts) -> __m128 {
    let mut acc = _mm512_setzero_ps();
    let mut accm = _mm512_setzero_ps();
    let full = nb / 4;
    let qb = quad_bytes(TY);
    let rows = [
        w,
        w.wrapping_add(row_bytes),
        w.wrapping_add(2 * row_bytes),
        w.wrapping_add(3 * row_bytes),
    ];
    let ahead = gemv_prefetch_distance(row_bytes);
    for q in 0..full {
        let p = rows.map(|r| r.wrapping_add(q * qb));
        for r in p {
            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(ahead).cast());
        }
        // SAFETY: quad q < nb/4 is inside each of the four rows; act quad q
        // exists (contract). Prefetches never fault, whatever the address.
        unsafe { quad4::<TY>(p, 4, a.at(q), &mut acc, &mut accm) };
    }
    let rem = nb - full * 4;
    if rem > 0 {
        // SAFETY: `rem` blocks remain in each row; act quad `full` exists.
        unsafe {
            quad4::<TY>(
                rows.map(|r| r.wrapping_add(full * qb)),
                rem,
                a.at(full),
                &mut acc,
                &mut accm,
            )
        };
    }
    if has_min(TY) {
        acc = _mm512_add_ps(acc, accm);
    }
    let h = _mm256_add_ps(
        _mm512_castps512_ps256(acc),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc))),
    );
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}
