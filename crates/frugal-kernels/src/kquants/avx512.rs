//! AVX-512 (F, BW, VL, VNNI) k-quant kernels.
//!
//! Dot products use VNNI `vpdpbusd` (unsigned weight quants x signed Q8_K
//! quants, four products per 32-bit lane). Signed weight quants (Q3_K, Q6_K)
//! are made unsigned by an offset whose contribution is removed once per
//! super-block through the Q8_K group sums (`bsums`), and Q2_K/Q4_K/Q5_K mins
//! go through the same sums. The per-lane dot products always fit in 16 bits,
//! so two vectors of them are packed to 16-bit words (`vpackssdw`) and scaled
//! and summed by a single `vpdpwssd` against the group scales.
//!
//! Every public function checks the CPU and the slice lengths, so it is safe
//! to call anywhere; it panics if the CPU lacks the features ([`is_available`]).

use super::blocks::*;
use super::scalar::check_len;
use std::arch::x86_64::*;
use std::mem::offset_of;
use std::sync::OnceLock;

/// Whether this CPU has everything these kernels use: AVX-512 F/BW/VL/VNNI,
/// AVX2, FMA and F16C.
pub fn is_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[inline(always)]
fn require() {
    assert!(
        is_available(),
        "AVX-512 k-quant kernel called on a CPU without AVX-512 F/BW/VL/VNNI"
    );
}

// ---------------------------------------------------------------------------
// Small helpers. Kernels take blocks as fixed-size byte arrays and load
// through these, so bounds are checked (and folded away for the constant
// offsets used) and the kernels themselves need no `unsafe`.

/// Block `i` of `s` as an array of the block's size.
#[inline(always)]
fn blk<const N: usize>(s: &[u8], i: usize) -> &[u8; N] {
    s[i * N..(i + 1) * N].try_into().expect("block in bounds")
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld128(b: &[u8], off: usize) -> __m128i {
    let s = &b[off..off + 16];
    // SAFETY: `s` is 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld256(b: &[u8], off: usize) -> __m256i {
    let s = &b[off..off + 32];
    // SAFETY: `s` is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld512(b: &[u8], off: usize) -> __m512i {
    let s = &b[off..off + 64];
    // SAFETY: `s` is 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
}

/// 32 bytes at `off`, in both 256-bit halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bcast256(b: &[u8], off: usize) -> __m512i {
    _mm512_broadcast_i64x4(ld256(b, off))
}

/// 32 words as a zmm.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld_words(t: &[i16; 32]) -> __m512i {
    // SAFETY: `t` is 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(t.as_ptr().cast()) }
}

/// The little-endian f16 at `off`, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16_at(b: &[u8], off: usize) -> f32 {
    let bits = u16::from_le_bytes([b[off], b[off + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline(always)]
fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
fn scales12_at(b: &[u8], off: usize) -> [u8; K_SCALE_SIZE] {
    b[off..off + K_SCALE_SIZE].try_into().expect("12 bytes")
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Word indices for scaling `packs(P01, P23)` in the 16-element-group types
/// (Q2_K, Q3_K, Q6_K): 128-bit lane `k` of P01 is group `8h+k`, of P23 group
/// `8h+4+k`; after the pack lane `k` holds 4 words of each.
const fn group16_idx(h: usize) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut k = 0;
    while k < 4 {
        let mut m = 0;
        while m < 4 {
            idx[8 * k + m] = (8 * h + k) as i16;
            idx[8 * k + 4 + m] = (8 * h + 4 + k) as i16;
            m += 1;
        }
        k += 1;
    }
    idx
}
static G16_IDX: [[i16; 32]; 2] = [group16_idx(0), group16_idx(1)];

/// Word indices for scaling `packs(P[2t], P[2t+1])` in Q4_K/Q5_K: the lower
/// half (lanes 0,1) of `P[j]` is sub-block `2j`, the upper half `2j+1`.
const fn sub32_idx(t: usize) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut k = 0;
    while k < 4 {
        let mut m = 0;
        while m < 4 {
            let upper = k / 2; // 0 for lanes 0,1; 1 for lanes 2,3
            idx[8 * k + m] = (4 * t + upper) as i16; // from P[2t]: sub-block 2*(2t) + upper
            idx[8 * k + 4 + m] = (4 * t + 2 + upper) as i16; // from P[2t+1]
            m += 1;
        }
        k += 1;
    }
    idx
}
/// `vpshufb` controls turning the 8 sub-block scale bytes (broadcast to every
/// 64-bit lane) into the words [`sub32_idx`] describes, zero-extended.
const fn sub32_ctrl(t: usize) -> [u8; 64] {
    let idx = sub32_idx(t);
    let mut c = [0u8; 64];
    let mut w = 0;
    while w < 32 {
        c[2 * w] = idx[w] as u8;
        c[2 * w + 1] = 0x80;
        w += 1;
    }
    c
}
static S32_CTRL: [[u8; 64]; 2] = [sub32_ctrl(0), sub32_ctrl(1)];

/// `vpshufb` control turning 8 min bytes (broadcast to every 64-bit lane)
/// into the words `[m0, m0, m1, m1, .., m7, m7]` (one ymm).
const fn mins_ctrl() -> [u8; 32] {
    let mut c = [0u8; 32];
    let mut w = 0;
    while w < 16 {
        c[2 * w] = (w / 2) as u8;
        c[2 * w + 1] = 0x80;
        w += 1;
    }
    c
}
static MINS_CTRL: [u8; 32] = mins_ctrl();

/// Mask of the upper 32 words (upper 256 bits) of a zmm.
const UPPER: __mmask32 = 0xFFFF_0000;

// ---------------------------------------------------------------------------
// Dot products. Each public function checks the CPU and the lengths, then
// runs the `#[target_feature]` kernel.

macro_rules! entry {
    ($(#[$m:meta])* $name:ident, $kernel:ident, $block:ty, $what:literal) => {
        $(#[$m])*
        pub fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            require();
            let nb = check_len::<$block>(n, w, $what);
            check_len::<BlockQ8K>(n, a, $what);
            // SAFETY: require() checked that the CPU has every feature the
            // kernel is compiled for; the kernel itself is safe code.
            unsafe { $kernel(nb, w, a) }
        }
    };
}

entry!(/// Q2_K . Q8_K over `n` elements.
    vec_dot_q2k_q8k, dot_q2k, BlockQ2K, "vec_dot Q2_K");
entry!(/// Q3_K . Q8_K over `n` elements.
    vec_dot_q3k_q8k, dot_q3k, BlockQ3K, "vec_dot Q3_K");
entry!(/// Q4_K . Q8_K over `n` elements.
    vec_dot_q4k_q8k, dot_q4k, BlockQ4K, "vec_dot Q4_K");
entry!(/// Q5_K . Q8_K over `n` elements.
    vec_dot_q5k_q8k, dot_q5k, BlockQ5K, "vec_dot Q5_K");
entry!(/// Q6_K . Q8_K over `n` elements.
    vec_dot_q6k_q8k, dot_q6k, BlockQ6K, "vec_dot Q6_K");

const YQ: usize = offset_of!(BlockQ8K, qs);
const YB: usize = offset_of!(BlockQ8K, bsums);

/// `sum_j m_j * (bsums[2j] + bsums[2j+1])` for the 8 mins of Q4_K/Q5_K, as 8 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mins_k4(mins: u64, ctrl: __m256i, y: &[u8; 292]) -> __m256i {
    let m16 = _mm256_shuffle_epi8(_mm256_set1_epi64x(mins as i64), ctrl);
    _mm256_madd_epi16(ld256(y, YB), m16)
}

/// `[d, dmin] * yd` from the two f16 at the start of a Q4_K/Q5_K block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn d_dmin(x: &[u8], yd: f32) -> __m128 {
    let bits = i32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)), _mm_set1_ps(yd))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q4k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const QS: usize = offset_of!(BlockQ4K, qs);
    const SC: usize = offset_of!(BlockQ4K, scales);
    let m4 = _mm512_set1_epi8(0x0F);
    let sctrl = [ld512(&S32_CTRL[0], 0), ld512(&S32_CTRL[1], 0)];
    let mctrl = ld256(&MINS_CTRL, 0);
    let mut acc = _mm512_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    for i in 0..nb {
        let x: &[u8; 144] = blk(w, i);
        let y: &[u8; 292] = blk(a, i);
        let dm = d_dmin(x, f32_at(y, 0));
        let (sc, mn) = unpack_scales_mins_k4(&scales12_at(x, SC));
        accm = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(_mm_movehdup_ps(dm)),
            _mm256_cvtepi32_ps(mins_k4(mn, mctrl, y)),
            accm,
        );

        // zmm j = [low nibbles | high nibbles] of qs[32j..32j+32]: elements
        // 64j..64j+64, matching 64 contiguous Q8_K quants.
        let p: [__m512i; 4] = std::array::from_fn(|j| {
            let v = bcast256(x, QS + 32 * j);
            let v = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(v, UPPER, v), m4);
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, ld512(y, YQ + 64 * j))
        });
        let sb = _mm512_set1_epi64(sc as i64);
        let sumi = _mm512_dpwssd_epi32(
            _mm512_setzero_si512(),
            _mm512_packs_epi32(p[0], p[1]),
            _mm512_shuffle_epi8(sb, sctrl[0]),
        );
        let sumi = _mm512_dpwssd_epi32(
            sumi,
            _mm512_packs_epi32(p[2], p[3]),
            _mm512_shuffle_epi8(sb, sctrl[1]),
        );
        acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dm), _mm512_cvtepi32_ps(sumi), acc);
    }
    _mm512_reduce_add_ps(acc) - hsum256(accm)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q5k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const QS: usize = offset_of!(BlockQ5K, qs);
    const QH: usize = offset_of!(BlockQ5K, qh);
    const SC: usize = offset_of!(BlockQ5K, scales);
    let m4 = _mm512_set1_epi8(0x0F);
    let b16 = _mm512_set1_epi8(16);
    let sctrl = [ld512(&S32_CTRL[0], 0), ld512(&S32_CTRL[1], 0)];
    let mctrl = ld256(&MINS_CTRL, 0);
    let mut acc = _mm512_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    for i in 0..nb {
        let x: &[u8; 176] = blk(w, i);
        let y: &[u8; 292] = blk(a, i);
        let dm = d_dmin(x, f32_at(y, 0));
        let (sc, mn) = unpack_scales_mins_k4(&scales12_at(x, SC));
        accm = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(_mm_movehdup_ps(dm)),
            _mm256_cvtepi32_ps(mins_k4(mn, mctrl, y)),
            accm,
        );

        // Sub-block s takes bit s of qh. Shift the upper half by 1 so both
        // halves of zmm j find their bit at position 2j.
        let qh = bcast256(x, QH);
        let qh = _mm512_mask_srli_epi16::<1>(qh, UPPER, qh);
        let p: [__m512i; 4] = std::array::from_fn(|j| {
            let v = bcast256(x, QS + 32 * j);
            let v = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(v, UPPER, v), m4);
            let hb = _mm512_test_epi8_mask(qh, _mm512_set1_epi8(1 << (2 * j)));
            let v = _mm512_mask_add_epi8(v, hb, v, b16);
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, ld512(y, YQ + 64 * j))
        });
        let sb = _mm512_set1_epi64(sc as i64);
        let sumi = _mm512_dpwssd_epi32(
            _mm512_setzero_si512(),
            _mm512_packs_epi32(p[0], p[1]),
            _mm512_shuffle_epi8(sb, sctrl[0]),
        );
        let sumi = _mm512_dpwssd_epi32(
            sumi,
            _mm512_packs_epi32(p[2], p[3]),
            _mm512_shuffle_epi8(sb, sctrl[1]),
        );
        acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dm), _mm512_cvtepi32_ps(sumi), acc);
    }
    _mm512_reduce_add_ps(acc) - hsum256(accm)
}

/// Sum of the two 256-bit halves of 16 i32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn fold256(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q6k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const QL: usize = offset_of!(BlockQ6K, ql);
    const QH: usize = offset_of!(BlockQ6K, qh);
    const SC: usize = offset_of!(BlockQ6K, scales);
    const D: usize = offset_of!(BlockQ6K, d);
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    let idx = [ld_words(&G16_IDX[0]), ld_words(&G16_IDX[1])];
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let x: &[u8; 210] = blk(w, i);
        let y: &[u8; 292] = blk(a, i);
        let d = f32_at(y, 0) * f16_at(x, D);
        let sc16 = _mm256_cvtepi8_epi16(ld128(x, SC));
        // Quants are stored +32; remove 32 * sum_g sc_g * bsums_g at the end.
        let corr = _mm256_madd_epi16(sc16, ld256(y, YB));
        let s16 = _mm512_castsi256_si512(sc16);
        let mut sumi = _mm512_setzero_si512();
        for (h, idx_h) in idx.iter().enumerate() {
            // ql[64h..64h+64]: low nibbles are elements 128h..+64, high nibbles 128h+64..+64.
            let ql = ld512(x, QL + 64 * h);
            // qh[32h..32h+32] in both halves, the upper half shifted by 2 so that
            // bits 0-1 / 4-5 hold the high bits of chunk 1 / chunk 3.
            let hh = bcast256(x, QH + 32 * h);
            let hh = _mm512_mask_srli_epi16::<2>(hh, UPPER, hh);
            let hi_a = _mm512_and_si512(_mm512_slli_epi16::<4>(hh), m30);
            let hi_b = _mm512_and_si512(hh, m30);
            // Bitwise (c ? a : b) with c = 0x0F: the nibble from ql, bits 4-5 from hi.
            let qa = _mm512_ternarylogic_epi32::<0xE4>(ql, hi_a, m4);
            let qb = _mm512_ternarylogic_epi32::<0xE4>(_mm512_srli_epi16::<4>(ql), hi_b, m4);
            let pa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, ld512(y, YQ + 128 * h));
            let pb = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qb, ld512(y, YQ + 128 * h + 64));
            let sc = _mm512_permutexvar_epi16(*idx_h, s16);
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_packs_epi32(pa, pb), sc);
        }
        let sumi = _mm256_sub_epi32(fold256(sumi), _mm256_slli_epi32::<5>(corr));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum256(acc)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q3k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const HM: usize = offset_of!(BlockQ3K, hmask);
    const QS: usize = offset_of!(BlockQ3K, qs);
    const SC: usize = offset_of!(BlockQ3K, scales);
    const D: usize = offset_of!(BlockQ3K, d);
    let m3 = _mm512_set1_epi8(3);
    let b4 = _mm512_set1_epi8(4);
    let idx = [ld_words(&G16_IDX[0]), ld_words(&G16_IDX[1])];
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let x: &[u8; 110] = blk(w, i);
        let y: &[u8; 292] = blk(a, i);
        let d = f32_at(y, 0) * f16_at(x, D);
        let [w0, w1, w2, w3] = unpack_scales_q3k_words(&scales12_at(x, SC));
        let sc8 = _mm_sub_epi8(
            _mm_setr_epi32(w0 as i32, w1 as i32, w2 as i32, w3 as i32),
            _mm_set1_epi8(32),
        );
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        // Quants are stored +4 (0..=7); remove 4 * sum_g sc_g * bsums_g at the end.
        let corr = _mm256_madd_epi16(sc16, ld256(y, YB));
        let s16 = _mm512_castsi256_si512(sc16);
        // Chunk c (32 elements) has its high bit at bit c of hmask; shifting
        // the upper half by 1 lets chunks (c, c+1), c even, share bit c.
        let hm = bcast256(x, HM);
        let hm = _mm512_mask_srli_epi16::<1>(hm, UPPER, hm);
        let mut sumi = _mm512_setzero_si512();
        for (h, idx_h) in idx.iter().enumerate() {
            // Chunk 4h+s is bits 2s..2s+2 of qs[32h..32h+32]: with the upper
            // half shifted by 2, chunks (4h, 4h+1) sit at bits 0-1, (4h+2, 4h+3) at 4-5.
            let q = bcast256(x, QS + 32 * h);
            let q = _mm512_mask_srli_epi16::<2>(q, UPPER, q);
            let qa = _mm512_and_si512(q, m3);
            let qb = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m3);
            let ka = _mm512_test_epi8_mask(hm, _mm512_set1_epi8(1 << (4 * h)));
            let kb = _mm512_test_epi8_mask(hm, _mm512_set1_epi8(1 << (4 * h + 2)));
            let qa = _mm512_mask_add_epi8(qa, ka, qa, b4);
            let qb = _mm512_mask_add_epi8(qb, kb, qb, b4);
            let pa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, ld512(y, YQ + 128 * h));
            let pb = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qb, ld512(y, YQ + 128 * h + 64));
            let sc = _mm512_permutexvar_epi16(*idx_h, s16);
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_packs_epi32(pa, pb), sc);
        }
        let sumi = _mm256_sub_epi32(fold256(sumi), _mm256_slli_epi32::<2>(corr));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum256(acc)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q2k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const SC: usize = offset_of!(BlockQ2K, scales);
    const QS: usize = offset_of!(BlockQ2K, qs);
    const D: usize = offset_of!(BlockQ2K, d);
    const _: () = assert!(offset_of!(BlockQ2K, dmin) == D + 2);
    let m3 = _mm512_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0F);
    let idx = [ld_words(&G16_IDX[0]), ld_words(&G16_IDX[1])];
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    for i in 0..nb {
        let x: &[u8; 84] = blk(w, i);
        let y: &[u8; 292] = blk(a, i);
        let dm = d_dmin(&x[D..], f32_at(y, 0));
        let sm = ld128(x, SC);
        let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sm, m4));
        let mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sm), m4));
        let prod = _mm256_madd_epi16(mn16, ld256(y, YB));
        accm = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(_mm_movehdup_ps(dm)),
            _mm256_cvtepi32_ps(prod),
            accm,
        );
        let s16 = _mm512_castsi256_si512(sc16);
        let mut sumi = _mm512_setzero_si512();
        for (h, idx_h) in idx.iter().enumerate() {
            let q = bcast256(x, QS + 32 * h);
            let q = _mm512_mask_srli_epi16::<2>(q, UPPER, q);
            let qa = _mm512_and_si512(q, m3);
            let qb = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m3);
            let pa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, ld512(y, YQ + 128 * h));
            let pb = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qb, ld512(y, YQ + 128 * h + 64));
            let sc = _mm512_permutexvar_epi16(*idx_h, s16);
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_packs_epi32(pa, pb), sc);
        }
        acc = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(dm),
            _mm256_cvtepi32_ps(fold256(sumi)),
            acc,
        );
    }
    hsum256(acc) - hsum256(accm)
}

// ---------------------------------------------------------------------------
// Q8_K quantization

/// Quantize `src` (a multiple of 256 floats) to Q8_K, bit-identical to
/// [`super::scalar::quantize_row_q8k_ref`].
pub fn quantize_row_q8k(src: &[f32], dst: &mut [u8]) {
    require();
    let nb = check_len::<BlockQ8K>(src.len(), dst, "quantize Q8_K");
    for i in 0..nb {
        let x: &[f32; QK_K] = src[i * QK_K..(i + 1) * QK_K]
            .try_into()
            .expect("256 floats");
        let out: &mut [u8; 292] = (&mut dst[i * 292..(i + 1) * 292])
            .try_into()
            .expect("292 bytes");
        // SAFETY: require() checked the CPU features the kernel is compiled for.
        unsafe { quantize_block(x, out) };
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld16f(x: &[f32; QK_K], k: usize) -> __m512 {
    let s = &x[16 * k..16 * k + 16];
    // SAFETY: `s` is 16 readable floats; loadu has no alignment requirement.
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn st512(out: &mut [u8], off: usize, v: __m512i) {
    let s = &mut out[off..off + 64];
    // SAFETY: `s` is 64 writable bytes; storeu has no alignment requirement.
    unsafe { _mm512_storeu_si512(s.as_mut_ptr().cast(), v) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quantize_block(x: &[f32; QK_K], out: &mut [u8; 292]) {
    // Largest magnitude (NaNs are skipped, as in the scalar loop: vmaxps
    // returns its second operand when the first is NaN).
    let mut m = [_mm512_setzero_ps(); 4];
    for k in 0..16 {
        m[k % 4] = _mm512_max_ps(_mm512_abs_ps(ld16f(x, k)), m[k % 4]);
    }
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(
        _mm512_max_ps(m[0], m[1]),
        _mm512_max_ps(m[2], m[3]),
    ));
    if amax == 0.0 {
        out.fill(0);
        return;
    }
    // The first element with that magnitude decides the sign, as in ggml.
    let va = _mm512_set1_ps(amax);
    let mut max = 0.0f32;
    for k in 0..16 {
        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(ld16f(x, k)), va);
        if hit != 0 {
            max = x[16 * k + hit.trailing_zeros() as usize];
            break;
        }
    }
    let iscale = -127.0f32 / max;
    if !iscale.is_finite() || !amax.is_finite() {
        // Degenerate block (infinities, or a largest magnitude so small that
        // 127/max overflows): let the reference define the result.
        out.copy_from_slice(block_bytes(&super::scalar::quantize_block_q8k(x)));
        return;
    }
    let vs = _mm512_set1_ps(iscale);
    // dword j of packs_epi16(packs_epi32(v0, v1), packs_epi32(v2, v3)) holds
    // elements 16*(j%4) + 4*(j/4) .. +4; this permutation puts them in order.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let ones = _mm512_set1_epi8(1);
    let mut part = [_mm512_setzero_si512(); 4];
    for (c, pc) in part.iter_mut().enumerate() {
        let q: [__m512i; 4] = std::array::from_fn(|k| {
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(ld16f(x, 4 * c + k), vs),
            )
        });
        // Saturating packs clamp at 127 like ggml's MIN(127, v) (|v| <= 127 anyway).
        let b = _mm512_packs_epi16(
            _mm512_packs_epi32(q[0], q[1]),
            _mm512_packs_epi32(q[2], q[3]),
        );
        let b = _mm512_permutexvar_epi32(order, b);
        st512(out, YQ + 64 * c, b);
        // Four-byte sums; 128-bit lane k of `pc` is group 4c + k.
        *pc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, b);
    }
    // Sum within 128-bit lanes: lane k of t ends as [g(k), g(4+k), g(8+k), g(12+k)].
    let [p0, p1, p2, p3] = part;
    let s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
    let s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
    let t = _mm512_add_epi32(
        _mm512_unpacklo_epi64(s01, s23),
        _mm512_unpackhi_epi64(s01, s23),
    );
    let sums = _mm512_cvtepi32_epi16(_mm512_permutexvar_epi32(order, t));
    let s = &mut out[YB..YB + 32];
    // SAFETY: `s` is 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), sums) };
    out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
