//! AVX2 (+FMA, F16C) k-quant kernels.
//!
//! Dot products multiply unsigned weight quants by signed Q8_K quants with
//! `vpmaddubsw` (pairs of products, which never saturate here: at most
//! 2*63*128), then scale and widen with `vpmaddwd` against 16-bit group
//! scales. Signed weight quants (Q3_K, Q6_K) are kept unsigned (+4 / +32) and
//! the offset is removed once per super-block through the Q8_K group sums
//! (`bsums`), which is also how the Q2_K/Q4_K/Q5_K mins are applied.
//!
//! Every public function checks the CPU and the slice lengths, so it is safe
//! to call anywhere; it panics if the CPU lacks the features ([`is_available`]).

use super::blocks::*;
use super::scalar::check_len;
use std::arch::x86_64::*;
use std::mem::offset_of;
use std::sync::OnceLock;

/// Whether this CPU has AVX2, FMA and F16C.
pub fn is_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[inline(always)]
fn require() {
    assert!(
        is_available(),
        "AVX2 k-quant kernel called on a CPU without AVX2/FMA/F16C"
    );
}

// ---------------------------------------------------------------------------
// Helpers: kernels take blocks as fixed-size byte arrays and load through
// these, so bounds are checked (and folded away for constant offsets).

#[inline(always)]
fn blk<const N: usize>(s: &[u8], i: usize) -> &[u8; N] {
    s[i * N..(i + 1) * N].try_into().expect("block in bounds")
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld128(b: &[u8], off: usize) -> __m128i {
    let s = &b[off..off + 16];
    // SAFETY: `s` is 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld256(b: &[u8], off: usize) -> __m256i {
    let s = &b[off..off + 32];
    // SAFETY: `s` is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `vpshufb` controls broadcasting byte `k` of each 64-bit lane as a
/// zero-extended word (Q4_K/Q5_K: sub-block scale `k` from the broadcast
/// scale bytes, in both lanes).
const fn byte_to_words(k: usize) -> [u8; 32] {
    let mut c = [0u8; 32];
    let mut i = 0;
    while i < 16 {
        c[2 * i] = k as u8;
        c[2 * i + 1] = 0x80;
        i += 1;
    }
    c
}
static K4_CTRL: [[u8; 32]; 8] = [
    byte_to_words(0),
    byte_to_words(1),
    byte_to_words(2),
    byte_to_words(3),
    byte_to_words(4),
    byte_to_words(5),
    byte_to_words(6),
    byte_to_words(7),
];

/// `vpshufb` control turning 8 min bytes (broadcast to every 64-bit lane)
/// into the words `[m0, m0, m1, m1, .., m7, m7]`.
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

/// `vpshufb` controls for 16-element groups: chunk `k` (32 elements) of a
/// 128-element half takes word `2k` of the lane in its lower 128 bits and
/// word `2k+1` in its upper 128 bits (groups `8h+2k`, `8h+2k+1`).
const fn group_pair(k: usize) -> [u8; 32] {
    let mut c = [0u8; 32];
    let mut i = 0;
    while i < 8 {
        c[2 * i] = 4 * k as u8;
        c[2 * i + 1] = 4 * k as u8 + 1;
        c[16 + 2 * i] = 4 * k as u8 + 2;
        c[16 + 2 * i + 1] = 4 * k as u8 + 3;
        i += 1;
    }
    c
}
static G16_CTRL: [[u8; 32]; 4] = [group_pair(0), group_pair(1), group_pair(2), group_pair(3)];

/// The 16 16-bit group scales `sc16`, as two vectors with groups 0-7 (`[0]`)
/// and 8-15 (`[1]`) in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_scale_lanes(sc16: __m256i) -> [__m256i; 2] {
    [
        _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc16)),
        _mm256_broadcastsi128_si256(_mm256_extracti128_si256::<1>(sc16)),
    ]
}

const YQ: usize = offset_of!(BlockQ8K, qs);
const YB: usize = offset_of!(BlockQ8K, bsums);

// ---------------------------------------------------------------------------
// Dot products

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

/// `sum_j m_j * (bsums[2j] + bsums[2j+1])` for the 8 mins of Q4_K/Q5_K, as 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mins_k4(mins: u64, ctrl: __m256i, y: &[u8; 292]) -> __m256i {
    let m16 = _mm256_shuffle_epi8(_mm256_set1_epi64x(mins as i64), ctrl);
    _mm256_madd_epi16(ld256(y, YB), m16)
}

/// `[d, dmin] * yd` from the two f16 at the start of a Q4_K/Q5_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn d_dmin(x: &[u8], yd: f32) -> __m128 {
    let bits = i32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)), _mm_set1_ps(yd))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ctrl(c: &[u8; 32]) -> __m256i {
    ld256(c, 0)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const QS: usize = offset_of!(BlockQ4K, qs);
    const SC: usize = offset_of!(BlockQ4K, scales);
    let m4 = _mm256_set1_epi8(0x0F);
    let mctrl = ld256(&MINS_CTRL, 0);
    let mut acc = _mm256_setzero_ps();
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
        let scales = _mm256_set1_epi64x(sc as i64);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let v = ld256(x, QS + 32 * j);
            let lo = _mm256_and_si256(v, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            let pl = _mm256_maddubs_epi16(lo, ld256(y, YQ + 64 * j));
            let ph = _mm256_maddubs_epi16(hi, ld256(y, YQ + 64 * j + 32));
            let pl = _mm256_madd_epi16(pl, _mm256_shuffle_epi8(scales, ctrl(&K4_CTRL[2 * j])));
            let ph = _mm256_madd_epi16(ph, _mm256_shuffle_epi8(scales, ctrl(&K4_CTRL[2 * j + 1])));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum256(acc) - hsum256(accm)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const QS: usize = offset_of!(BlockQ5K, qs);
    const QH: usize = offset_of!(BlockQ5K, qh);
    const SC: usize = offset_of!(BlockQ5K, scales);
    let m4 = _mm256_set1_epi8(0x0F);
    let b16 = _mm256_set1_epi8(0x10);
    let mctrl = ld256(&MINS_CTRL, 0);
    let mut acc = _mm256_setzero_ps();
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
        let scales = _mm256_set1_epi64x(sc as i64);
        // Sub-block s takes bit s of qh; after j shifts by 2, sub-blocks 2j
        // and 2j+1 find theirs at bits 0 and 1.
        let mut qh = ld256(x, QH);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let v = ld256(x, QS + 32 * j);
            let lo = _mm256_or_si256(
                _mm256_and_si256(v, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), b16),
            );
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
                _mm256_and_si256(_mm256_slli_epi16::<3>(qh), b16),
            );
            qh = _mm256_srli_epi16::<2>(qh);
            let pl = _mm256_maddubs_epi16(lo, ld256(y, YQ + 64 * j));
            let ph = _mm256_maddubs_epi16(hi, ld256(y, YQ + 64 * j + 32));
            let pl = _mm256_madd_epi16(pl, _mm256_shuffle_epi8(scales, ctrl(&K4_CTRL[2 * j])));
            let ph = _mm256_madd_epi16(ph, _mm256_shuffle_epi8(scales, ctrl(&K4_CTRL[2 * j + 1])));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum256(acc) - hsum256(accm)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const QL: usize = offset_of!(BlockQ6K, ql);
    const QH: usize = offset_of!(BlockQ6K, qh);
    const SC: usize = offset_of!(BlockQ6K, scales);
    const D: usize = offset_of!(BlockQ6K, d);
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let x: &[u8; 210] = blk(w, i);
        let y: &[u8; 292] = blk(a, i);
        let d = f32_at(y, 0) * f16_at(x, D);
        let sc16 = _mm256_cvtepi8_epi16(ld128(x, SC));
        // Quants are used +32 (0..=63); remove 32 * sum_g sc_g * bsums_g at the end.
        let corr = _mm256_madd_epi16(sc16, ld256(y, YB));
        let lanes = group_scale_lanes(sc16);
        let mut sumi = _mm256_setzero_si256();
        for (h, sl) in lanes.iter().enumerate() {
            let qa = ld256(x, QL + 64 * h);
            let qb = ld256(x, QL + 64 * h + 32);
            let hh = ld256(x, QH + 32 * h);
            let q: [__m256i; 4] = [
                _mm256_or_si256(
                    _mm256_and_si256(qa, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(hh), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(qb, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(hh), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qa), m4),
                    _mm256_and_si256(hh, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qb), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(hh), m30),
                ),
            ];
            for (k, qk) in q.iter().enumerate() {
                let p = _mm256_maddubs_epi16(*qk, ld256(y, YQ + 128 * h + 32 * k));
                let p = _mm256_madd_epi16(p, _mm256_shuffle_epi8(*sl, ctrl(&G16_CTRL[k])));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(corr));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum256(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q3k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const HM: usize = offset_of!(BlockQ3K, hmask);
    const QS: usize = offset_of!(BlockQ3K, qs);
    const SC: usize = offset_of!(BlockQ3K, scales);
    const D: usize = offset_of!(BlockQ3K, d);
    let m3 = _mm256_set1_epi8(3);
    let b4 = _mm256_set1_epi8(4);
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
        // Quants are used +4 (0..=7); remove 4 * sum_g sc_g * bsums_g at the end.
        let corr = _mm256_madd_epi16(sc16, ld256(y, YB));
        let lanes = group_scale_lanes(sc16);
        // Chunk c's high bit is bit c of hmask; shifted right by c, then left by 2.
        let mut hm = ld256(x, HM);
        let mut sumi = _mm256_setzero_si256();
        for (h, sl) in lanes.iter().enumerate() {
            let mut q = ld256(x, QS + 32 * h);
            for (k, c) in G16_CTRL.iter().enumerate() {
                let low = _mm256_and_si256(q, m3);
                let high = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), b4);
                q = _mm256_srli_epi16::<2>(q);
                hm = _mm256_srli_epi16::<1>(hm);
                let p = _mm256_maddubs_epi16(
                    _mm256_or_si256(low, high),
                    ld256(y, YQ + 128 * h + 32 * k),
                );
                let p = _mm256_madd_epi16(p, _mm256_shuffle_epi8(*sl, ctrl(c)));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(corr));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum256(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q2k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    const SC: usize = offset_of!(BlockQ2K, scales);
    const QS: usize = offset_of!(BlockQ2K, qs);
    const D: usize = offset_of!(BlockQ2K, d);
    const _: () = assert!(offset_of!(BlockQ2K, dmin) == D + 2);
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0F);
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
        let lanes = group_scale_lanes(sc16);
        let mut sumi = _mm256_setzero_si256();
        for (h, sl) in lanes.iter().enumerate() {
            let mut q = ld256(x, QS + 32 * h);
            for (k, c) in G16_CTRL.iter().enumerate() {
                let p =
                    _mm256_maddubs_epi16(_mm256_and_si256(q, m3), ld256(y, YQ + 128 * h + 32 * k));
                q = _mm256_srli_epi16::<2>(q);
                let p = _mm256_madd_epi16(p, _mm256_shuffle_epi8(*sl, ctrl(c)));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(sumi), acc);
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
#[target_feature(enable = "avx2,fma,f16c")]
fn ld8f(x: &[f32; QK_K], k: usize) -> __m256 {
    let s = &x[8 * k..8 * k + 8];
    // SAFETY: `s` is 8 readable floats; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn st256(out: &mut [u8], off: usize, v: __m256i) {
    let s = &mut out[off..off + 32];
    // SAFETY: `s` is 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn st128(out: &mut [u8], off: usize, v: __m128i) {
    let s = &mut out[off..off + 16];
    // SAFETY: `s` is 16 writable bytes; storeu has no alignment requirement.
    unsafe { _mm_storeu_si128(s.as_mut_ptr().cast(), v) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block(x: &[f32; QK_K], out: &mut [u8; 292]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    // Largest magnitude; vmaxps returns its second operand when the first is
    // NaN, so NaNs are skipped as in the scalar loop.
    let mut m = [_mm256_setzero_ps(); 4];
    for k in 0..32 {
        m[k % 4] = _mm256_max_ps(_mm256_and_ps(ld8f(x, k), abs_mask), m[k % 4]);
    }
    let m = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    if amax == 0.0 {
        out.fill(0);
        return;
    }
    // The first element with that magnitude decides the sign, as in ggml.
    let va = _mm256_set1_ps(amax);
    let mut max = 0.0f32;
    for k in 0..32 {
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            _mm256_and_ps(ld8f(x, k), abs_mask),
            va,
        ));
        if hit != 0 {
            max = x[8 * k + hit.trailing_zeros() as usize];
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
    let vs = _mm256_set1_ps(iscale);
    // packs_epi16(packs_epi32(v0, v1), packs_epi32(v2, v3)) leaves dwords in
    // the order v0[0..4] v1[0..4] v2[0..4] v3[0..4] v0[4..8] ...; this undoes it.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let mut r = [_mm256_setzero_si256(); 8];
    for (c, rc) in r.iter_mut().enumerate() {
        // vcvtps2dq rounds to nearest even (Rust keeps the default MXCSR),
        // like ggml's nearest_int.
        let q: [__m256i; 4] =
            std::array::from_fn(|k| _mm256_cvtps_epi32(_mm256_mul_ps(ld8f(x, 4 * c + k), vs)));
        // Saturating packs clamp at 127 like ggml's MIN(127, v) (|v| <= 127 anyway).
        let b = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let b = _mm256_permutevar8x32_epi32(b, order);
        st256(out, offset_of!(BlockQ8K, qs) + 32 * c, b);
        // Four-byte sums: dwords 0-3 are group 2c, dwords 4-7 group 2c+1.
        *rc = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, b), ones16);
    }
    let h01 = _mm256_hadd_epi32(r[0], r[1]);
    let h23 = _mm256_hadd_epi32(r[2], r[3]);
    let h45 = _mm256_hadd_epi32(r[4], r[5]);
    let h67 = _mm256_hadd_epi32(r[6], r[7]);
    // Lane 0: groups 0,2,4,6 | 8,10,12,14; lane 1: the odd groups.
    let p = _mm256_packs_epi32(_mm256_hadd_epi32(h01, h23), _mm256_hadd_epi32(h45, h67));
    let (even, odd) = (_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
    st128(out, YB, _mm_unpacklo_epi16(even, odd));
    st128(out, YB + 16, _mm_unpackhi_epi16(even, odd));
    out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
