//! AVX-512 dot products of the sparse int8 types with Q8_0 activations.
//!
//! Both types go by groups of four blocks (128 weights), held like the
//! activations of a `legacy::packed::ActQuad`: lanes 16k..16k+16 of the
//! first register are weights 0..16 of block k, of the second weights
//! 16..32. Integer block sums land four dwords per block, as in the dense
//! Q8_0 kernels, so the matrix-vector kernel [`gemv`] reuses their scheme:
//! four rows at a time share each activation load, their block sums are
//! transposed together so one conversion and one FMA apply all 16 (row,
//! block) scales, and every row is prefetched a few KiB ahead.
//!
//! * `SQ8_{K}of64`: each half group's kept codes are spread back to their
//!   lanes in one instruction (`vpexpandb`, AVX512-VBMI2) under its 64-bit
//!   bitmap, the other lanes filled with 0x80: the codes are stored biased
//!   (`q + 128`), so all 64 lanes are `q + 128` and `vpdpbusd` (unsigned ×
//!   signed) takes them as they are, the bias times the activations' block
//!   sums being subtracted exactly (the dense Q8_0 correction).
//! * `SQ8_2of4`: the weights stay packed; the activations are gathered
//!   instead: the 64 codes' 2-bit positions become byte indices with one
//!   `vpmultishiftqb` (AVX512-VBMI) and a `vpternlogd` adding each code's
//!   base, then one `vpermt2b` picks the 64 matching activations out of the
//!   group's 128 (biased to unsigned, `a + 128`), and `vpdpbusd` multiplies;
//!   the bias times the codes' sum is subtracted exactly.
//!
//! Public functions are safe: they check the CPU (panicking if it lacks the
//! features; see [`available`]) and the slice lengths, and a `SparseQ8` row
//! whose bitmaps claim more codes than the row holds (a hostile file) is
//! handed to the scalar reference, which reads nothing out of bounds.

use super::scalar::{self, A_BLOCK, CODE_BIAS, GROUP, S24_BLOCK, SPARSE_HEADER};
use crate::legacy::blocks::QK;
use crate::legacy::packed::{ActQuad, Lanes16, PackedActs, CORR_BIASES};
use frugal_formats::{FrugalType, GgmlType};
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels of this module.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vbmi")
            && is_x86_feature_detected!("avx512vbmi2")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("popcnt")
    })
}

fn require() {
    assert!(
        available(),
        "AVX-512 sparse kernels called on a CPU without AVX-512 F/BW/VL/VNNI/VBMI/VBMI2"
    );
}

/// Bytes of a whole `Sparse24Q8` group.
const S24_GROUP: usize = GROUP * S24_BLOCK;
/// Bytes of the headers of a whole `SparseQ8` group.
const SQ8_GROUP_HEAD: usize = GROUP * SPARSE_HEADER;
/// The Q8_0 bias correction of the packed activations (bias 128).
const CORR_128: usize = 2;
const _: () = assert!(CORR_BIASES[CORR_128] == CODE_BIAS as i32);

/// The activations of one group: the two registers of an [`ActQuad`].
#[derive(Clone, Copy)]
struct Aq {
    lo: __m512i,
    hi: __m512i,
}

/// Mask of the low `n` bits (n <= 64).
#[inline]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The (lo, hi) bitmaps of a `SparseQ8` group of `M` blocks (headers at `h`).
///
/// # Safety
/// `h` addresses the group's `6 * M` header bytes.
#[inline]
unsafe fn sq8_bitmaps<const M: usize>(h: *const u8) -> (u64, u64) {
    // SAFETY: 4 * M bytes of bitmaps at h (caller contract).
    unsafe {
        match M {
            4 => (
                h.cast::<u64>().read_unaligned(),
                h.add(8).cast::<u64>().read_unaligned(),
            ),
            2 => (
                h.cast::<u32>().read_unaligned() as u64,
                h.add(4).cast::<u32>().read_unaligned() as u64,
            ),
            _ => unreachable!("SparseQ8 groups have 2 or 4 blocks"),
        }
    }
}

/// The 64-bit mask at `p`, loaded straight into a mask register: the
/// compiler would otherwise share one general-register load with the
/// popcount and move it over (`kmovq k, r64`), a shuffle-port µop where the
/// shuffle port is the bottleneck.
///
/// # Safety
/// `p` addresses 8 readable bytes; AVX-512 BW.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(crate) unsafe fn kload64(p: *const u8) -> __mmask64 {
    let m: u64;
    // SAFETY: an 8-byte load from p (contract) into a mask register; no
    // other state is touched.
    unsafe {
        std::arch::asm!(
            "kmovq {m}, qword ptr [{p}]",
            m = out(kreg) m,
            p = in(reg) p,
            options(pure, readonly, nostack, preserves_flags)
        )
    };
    m
}

/// The code counts of a `SparseQ8` group of `M` blocks (headers at `h`):
/// (first half, both halves).
///
/// # Safety
/// `h` addresses the group's headers.
#[inline]
unsafe fn sq8_counts<const M: usize>(h: *const u8) -> (usize, usize) {
    // SAFETY: forwarded contract.
    let (mlo, mhi) = unsafe { sq8_bitmaps::<M>(h) };
    let klo = mlo.count_ones() as usize;
    (klo, klo + mhi.count_ones() as usize)
}

/// One `SparseQ8` row's group of `M` blocks (headers at `h`, codes at `c`,
/// `klo` of them in the first half) against the group's activations: 16 i32
/// block sums (4 per block, their total the block's Σ q·a).
///
/// # Safety
/// The CPU features of this module; `h` addresses the group's headers, `c`
/// the group's codes (as many as its bitmaps count).
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn sq8_group<const M: usize>(
    h: *const u8,
    c: *const u8,
    klo: usize,
    init: __m512i,
    a: Aq,
) -> __m512i {
    // SAFETY: the headers are readable; each expanding load reads
    // popcount(mask) bytes from c (contract).
    unsafe {
        // The bitmaps go straight from memory to mask registers (a load,
        // where a move from a general register would take a shuffle port).
        let (mlo, mhi) = match M {
            4 => (kload64(h), kload64(h.add(8))),
            _ => (
                _load_mask32(h.cast()) as u64,
                _load_mask32(h.add(2 * M).cast()) as u64,
            ),
        };
        let bias = _mm512_set1_epi8(CODE_BIAS as i8);
        let ulo = _mm512_mask_expandloadu_epi8(bias, mlo, c.cast());
        let uhi = _mm512_mask_expandloadu_epi8(bias, mhi, c.add(klo).cast());
        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, ulo, a.lo), uhi, a.hi)
    }
}

/// `vpmultishiftqb` control: byte i of qword j takes the bits of code
/// `8j + i` (lane `16k + c`, k = j / 2, c = 8 (j % 2) + i), at bit
/// `16k + 2i` of the positions' qword j % 2.
const S24_CTRL: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut l = 0;
    while l < 64 {
        t[l] = (16 * (l / 16) + 2 * (l % 8)) as u8;
        l += 1;
    }
    t
};

/// Each code's base index into the group's 128 activations (ActQuad
/// order): code c of block k is weight 4 (c / 2) + position, at
/// 16k + that in the first 64 for c < 8, else 64 + 16k + that − 16.
const S24_BASE: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut l = 0;
    while l < 64 {
        let (k, c) = (l / 16, l % 16);
        t[l] = (16 * k + 64 * (c / 8) + 4 * ((c % 8) / 2)) as u8;
        l += 1;
    }
    t
};

#[inline]
fn const_vec(b: &[u8; 64]) -> __m512i {
    // SAFETY: [u8; 64] and __m512i have the same size; any bits are valid.
    unsafe { std::mem::transmute::<[u8; 64], __m512i>(*b) }
}

/// One `Sparse24Q8` row's group of `M` blocks (at `p`) against the group's
/// activations biased to unsigned (`a + 128`): 16 i32 block sums.
///
/// # Safety
/// The CPU features of this module; `p` addresses the group's `22 * M` bytes.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn s24_group<const M: usize>(p: *const u8, a: Aq) -> __m512i {
    // SAFETY: every load is inside the group's 22 * M bytes or masked to them.
    unsafe {
        let (pos, w) = if M == GROUP {
            (
                _mm_loadu_si128(p.add(2 * M).cast()),
                _mm512_loadu_si512(p.add(6 * M).cast()),
            )
        } else {
            let m = low_bits(2 * M);
            let q0 = _mm_maskz_loadu_epi8(m as u16, p.add(2 * M).cast());
            let q1 = _mm_maskz_loadu_epi8(m as u16, p.add(4 * M).cast());
            (
                _mm_unpacklo_epi64(q0, q1),
                _mm512_maskz_loadu_epi8(low_bits(16 * M), p.add(6 * M).cast()),
            )
        };
        let bits = _mm512_multishift_epi64_epi8(const_vec(&S24_CTRL), _mm512_broadcast_i32x4(pos));
        // (bits & 3) | base
        let idx =
            _mm512_ternarylogic_epi32::<0xEA>(bits, _mm512_set1_epi8(3), const_vec(&S24_BASE));
        let av = _mm512_permutex2var_epi8(a.lo, idx, a.hi);
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), av, w);
        let c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(CODE_BIAS as i8), w);
        _mm512_sub_epi32(s, c)
    }
}

/// The f16 scales of `M` blocks at `p` (2 * M bytes) in the low words.
///
/// # Safety
/// `p` addresses 2 * M readable bytes; AVX-512 BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
#[inline]
unsafe fn ld_scales<const M: usize>(p: *const u8) -> __m128i {
    // SAFETY: 8 bytes when M = 4, else a load masked to 2 * M bytes.
    unsafe {
        if M == GROUP {
            _mm_loadl_epi64(p.cast())
        } else {
            _mm_maskz_loadu_epi8(low_bits(2 * M) as u16, p.cast())
        }
    }
}

/// Row r's block k sum → lane 4k + r (see `legacy::avx512::quad4`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
#[inline]
fn transpose4(s: [__m512i; 4]) -> __m512i {
    let t01 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(s[0], s[1]),
        _mm512_unpackhi_epi32(s[0], s[1]),
    );
    let t23 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(s[2], s[3]),
        _mm512_unpackhi_epi32(s[2], s[3]),
    );
    _mm512_add_epi32(
        _mm512_unpacklo_epi64(t01, t23),
        _mm512_unpackhi_epi64(t01, t23),
    )
}

/// Word 4r + k → word 4k + r, as byte indices (`vpermb`: one µop where
/// `vpermw` may be more).
const SCALE_T: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let w = i / 2;
        t[i] = (2 * (4 * (w % 4) + w / 4) + i % 2) as u8;
        i += 1;
    }
    t
};

/// The scales of four rows' groups of `M` blocks (at `p[r]`), as f32 in
/// lane 4k + r.
///
/// # Safety
/// Each `p[r]` addresses 2 * M readable bytes; the CPU features of this module.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn scales4<const M: usize>(p: [*const u8; 4]) -> __m512 {
    // SAFETY: forwarded contract.
    unsafe {
        let x01 = _mm_unpacklo_epi64(ld_scales::<M>(p[0]), ld_scales::<M>(p[1]));
        let x23 = _mm_unpacklo_epi64(ld_scales::<M>(p[2]), ld_scales::<M>(p[3]));
        let y = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(x01), x23);
        // SAFETY (transmute): same size, any bits valid.
        let t = std::mem::transmute::<[u8; 32], __m256i>(SCALE_T);
        _mm512_cvtph_ps(_mm256_permutexvar_epi8(t, y))
    }
}

/// How far ahead the matrix-vector kernel prefetches: the same place a
/// whole number of 4-row groups on, at least 4 KiB (as the dense kernel).
fn prefetch_distance(row_bytes: usize) -> usize {
    let group = 4 * row_bytes;
    4096usize.div_ceil(group).max(1) * group
}

/// The four pointers `o` bytes on (addresses only). Written out: closures
/// passed to `array::map` are not always inlined into the kernels.
#[inline(always)]
fn offs(p: [*const u8; 4], o: usize) -> [*const u8; 4] {
    [
        p[0].wrapping_add(o),
        p[1].wrapping_add(o),
        p[2].wrapping_add(o),
        p[3].wrapping_add(o),
    ]
}

#[inline]
fn prefetch(p: *const u8) {
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
}

/// Which sparse type a [`gemv`] call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sq8,
    S24,
}

/// The kind of `ty`, if it is a sparse type and this CPU runs [`gemv`].
pub fn gemv_kind(ty: GgmlType) -> Option<Kind> {
    match ty {
        GgmlType::Frugal(FrugalType::SparseQ8 { .. }) if available() => Some(Kind::Sq8),
        GgmlType::Frugal(FrugalType::Sparse24Q8) if available() => Some(Kind::S24),
        _ => None,
    }
}

/// A group position of the 4-row kernels: the activations of quad `q`.
///
/// # Safety
/// `quads`, `corr` address quad q of the token's packed row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
#[inline]
unsafe fn load_aq(quad: *const ActQuad) -> Aq {
    // SAFETY: an ActQuad's 128 code bytes (contract).
    unsafe {
        Aq {
            lo: _mm512_loadu_si512((*quad).qs.as_ptr().cast()),
            hi: _mm512_loadu_si512((*quad).qs.as_ptr().add(64).cast()),
        }
    }
}

/// Lane 4k + r of `acc` summed over k: row r's dot product.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
#[inline]
fn rows_of(acc: __m512) -> __m128 {
    let h = _mm256_add_ps(
        _mm512_castps512_ps256(acc),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc))),
    );
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// Dot products of four `SparseQ8` rows (at `w[r]`, `nb` blocks, `cap` code
/// bytes each) with one token's packed activations (`quads`, `corr`): lane r
/// is row r's. `None` if a row's bitmaps claim more codes than it holds.
///
/// # Safety
/// The CPU features of this module; each `w[r]` addresses a whole row
/// (`nb * 6 + cap` bytes); `quads`, `corr` the token's `ceil(nb / 4)`
/// quads and bias-128 corrections.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
unsafe fn sq8_rows4(
    w: [*const u8; 4],
    nb: usize,
    cap: usize,
    ahead: usize,
    quads: *const ActQuad,
    corr: *const Lanes16<i32>,
) -> Option<__m128> {
    let codes = offs(w, nb * SPARSE_HEADER);
    let mut at = [0usize; 4];
    let mut acc = _mm512_setzero_ps();
    let full = nb / GROUP;
    for g in 0..full {
        // SAFETY: group g < nb / 4 is inside each row and act quad g exists
        // (contract); `sq8_group` checks the codes against cap. Prefetches
        // never fault.
        unsafe {
            let a = load_aq(quads.add(g));
            let init = _mm512_loadu_si512(corr.add(g).cast());
            let h = offs(w, g * SQ8_GROUP_HEAD);
            for r in 0..4 {
                prefetch(h[r].wrapping_add(ahead));
                prefetch(codes[r].wrapping_add(at[r] + ahead));
            }
            let k = [
                sq8_counts::<GROUP>(h[0]),
                sq8_counts::<GROUP>(h[1]),
                sq8_counts::<GROUP>(h[2]),
                sq8_counts::<GROUP>(h[3]),
            ];
            if (0..4).any(|r| at[r] + k[r].1 > cap) {
                return None;
            }
            // Written out: a loop over the rows is not unrolled.
            let s = [
                sq8_group::<GROUP>(h[0], codes[0].add(at[0]), k[0].0, init, a),
                sq8_group::<GROUP>(h[1], codes[1].add(at[1]), k[1].0, init, a),
                sq8_group::<GROUP>(h[2], codes[2].add(at[2]), k[2].0, init, a),
                sq8_group::<GROUP>(h[3], codes[3].add(at[3]), k[3].0, init, a),
            ];
            for r in 0..4 {
                at[r] += k[r].1;
            }
            let dw = scales4::<GROUP>(offs(h, 4 * GROUP));
            let sc = _mm512_mul_ps(dw, _mm512_loadu_ps((*quads.add(g)).d16.as_ptr()));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(transpose4(s)), sc, acc);
        }
    }
    if nb > full * GROUP {
        debug_assert_eq!(nb - full * GROUP, 2, "SparseQ8 rows are whole 64s");
        // SAFETY: as above, for the last group of 2 blocks.
        unsafe {
            let a = load_aq(quads.add(full));
            let init = _mm512_loadu_si512(corr.add(full).cast());
            let h = offs(w, full * SQ8_GROUP_HEAD);
            let mut s = [_mm512_setzero_si512(); 4];
            for r in 0..4 {
                let (klo, k) = sq8_counts::<2>(h[r]);
                if at[r] + k > cap {
                    return None;
                }
                s[r] = sq8_group::<2>(h[r], codes[r].add(at[r]), klo, init, a);
                at[r] += k;
            }
            let dw = scales4::<2>(offs(h, 4 * 2));
            let sc = _mm512_mul_ps(dw, _mm512_loadu_ps((*quads.add(full)).d16.as_ptr()));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(transpose4(s)), sc, acc);
        }
    }
    Some(rows_of(acc))
}

/// The group of `M` blocks at `p[r]` of four `Sparse24Q8` rows against
/// activation quad `quad`, accumulated into `acc` (lane 4k + r).
///
/// # Safety
/// The CPU features of this module; each `p[r]` addresses `22 * M` bytes,
/// `quad` a valid ActQuad.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn s24_quad4<const M: usize>(p: [*const u8; 4], quad: *const ActQuad, acc: &mut __m512) {
    // SAFETY: forwarded contract.
    unsafe {
        let a = load_aq(quad);
        let bias = _mm512_set1_epi8(CODE_BIAS as i8);
        let a = Aq {
            lo: _mm512_xor_si512(a.lo, bias),
            hi: _mm512_xor_si512(a.hi, bias),
        };
        let s = [
            s24_group::<M>(p[0], a),
            s24_group::<M>(p[1], a),
            s24_group::<M>(p[2], a),
            s24_group::<M>(p[3], a),
        ];
        let dw = scales4::<M>(p);
        let sc = _mm512_mul_ps(dw, _mm512_loadu_ps((*quad).d16.as_ptr()));
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(transpose4(s)), sc, *acc);
    }
}

/// Dot products of four `Sparse24Q8` rows (at `w[r]`, `nb` blocks each)
/// with one token's packed activations: lane r is row r's.
///
/// # Safety
/// The CPU features of this module; each `w[r]` addresses a whole row
/// (`nb * 22` bytes); `quads` the token's `ceil(nb / 4)` quads.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
unsafe fn s24_rows4(w: [*const u8; 4], nb: usize, ahead: usize, quads: *const ActQuad) -> __m128 {
    let mut acc = _mm512_setzero_ps();
    let full = nb / GROUP;
    for g in 0..full {
        let p = offs(w, g * S24_GROUP);
        for r in p {
            prefetch(r.wrapping_add(ahead));
        }
        // SAFETY: group g < nb / 4 lies inside each row; act quad g exists.
        unsafe { s24_quad4::<GROUP>(p, quads.add(g), &mut acc) };
    }
    let p = offs(w, full * S24_GROUP);
    // SAFETY: the last nb % 4 blocks lie inside each row; act quad `full`
    // exists when there are any.
    unsafe {
        match nb - full * GROUP {
            0 => {}
            1 => s24_quad4::<1>(p, quads.add(full), &mut acc),
            2 => s24_quad4::<2>(p, quads.add(full), &mut acc),
            _ => s24_quad4::<3>(p, quads.add(full), &mut acc),
        }
    }
    rows_of(acc)
}

/// `out[r] = dot(row r of w, token t)` for `r` in `rows`, four rows at a
/// time: the one-token (matrix-vector) kernel of the sparse types, used by
/// the matmul for decoding (and, token by token over blocks of rows, for
/// prompts). `w`: the matrix (rows of `row_bytes`, `n` weights each);
/// `acts`: the activations packed for the AVX-512 kernels; `a_row`: token
/// t's Q8_0 row (for rows the scalar reference takes: hostile bitmaps).
///
/// # Safety
/// `out` must be valid for writes at `r` for every `r` in `rows`, with no
/// other access to those elements meanwhile. Everything else is checked.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemv(
    kind: Kind,
    w: &[u8],
    row_bytes: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    acts: &PackedActs,
    t: usize,
    a_row: &[u8],
    out: *mut f32,
) {
    require();
    let nb = n / QK;
    assert!(n.is_multiple_of(QK), "rows of whole blocks");
    assert!(rows.end * row_bytes <= w.len(), "sparse gemv: weight bytes");
    assert_eq!(acts.nb, nb, "sparse gemv: activation blocks");
    assert!(t < acts.n_tok, "sparse gemv: token");
    assert_eq!(acts.quads.len(), acts.n_tok * acts.nq, "packed activations");
    assert!(a_row.len() >= nb * A_BLOCK, "sparse gemv: activation row");
    match kind {
        Kind::Sq8 => {
            assert!(n.is_multiple_of(64), "SparseQ8 rows are whole 64s");
            assert!(row_bytes >= nb * SPARSE_HEADER, "SparseQ8 row bytes");
            assert_eq!(
                acts.corr[CORR_128].len(),
                acts.quads.len(),
                "Q8_0 corrections"
            );
        }
        Kind::S24 => assert_eq!(row_bytes, nb * S24_BLOCK, "Sparse24Q8 row bytes"),
    }
    if rows.is_empty() || nb == 0 {
        for r in rows {
            // SAFETY: r in rows (contract).
            unsafe { *out.add(r) = 0.0 };
        }
        return;
    }
    let quads = acts.quads[t * acts.nq..].as_ptr();
    let cap = row_bytes.saturating_sub(nb * SPARSE_HEADER);
    let ahead = prefetch_distance(row_bytes);
    let last = rows.end - 1;
    let mut r = rows.start;
    while r < rows.end {
        // Rows past the end repeat the last one (computed, not stored).
        let idx = [0, 1, 2, 3].map(|i| (r + i).min(last));
        let p = idx.map(|i| w[i * row_bytes..].as_ptr());
        let mut v = [0f32; 4];
        // SAFETY: CPU checked by `require`; each p[i] starts a whole row of
        // `w` (rows.end * row_bytes <= w.len()); token t's quads (and
        // corrections) exist: nq of them from t * nq (checked above).
        let got = unsafe {
            match kind {
                Kind::Sq8 => {
                    let corr = acts.corr[CORR_128][t * acts.nq..].as_ptr();
                    sq8_rows4(p, nb, cap, ahead, quads, corr)
                }
                Kind::S24 => Some(s24_rows4(p, nb, ahead, quads)),
            }
        };
        match got {
            // SAFETY: 4 floats into a local array.
            Some(x) => unsafe { _mm_storeu_ps(v.as_mut_ptr(), x) },
            None => {
                for (o, &i) in v.iter_mut().zip(&idx) {
                    *o = scalar::vec_dot_sparse_q8_0(n, &w[i * row_bytes..][..row_bytes], a_row);
                }
            }
        }
        for (i, &x) in v.iter().enumerate().take(rows.end - r) {
            // SAFETY: r + i < rows.end (contract).
            unsafe { *out.add(r + i) = x };
        }
        r += 4;
    }
}

// ---------------------------------------------------------------- one row, ggml activations

/// The activations of blocks `4g..4g + M` of a Q8_0 row (ggml layout, at
/// `a`) as a group: (lo, hi), and their scales in lanes 4k..4k+4.
///
/// # Safety
/// `a` addresses `M` Q8_0 blocks; the CPU features of this module.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn ggml_group<const M: usize>(a: *const u8) -> (Aq, __m512) {
    let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let mut d = [0f32; 16];
    for k in 0..M {
        // SAFETY: block k's 34 bytes (contract).
        unsafe {
            let b = a.add(k * A_BLOCK);
            let m = 0xF << (4 * k);
            lo = _mm512_mask_broadcast_i32x4(lo, m, _mm_loadu_si128(b.add(2).cast()));
            hi = _mm512_mask_broadcast_i32x4(hi, m, _mm_loadu_si128(b.add(18).cast()));
            d[4 * k..4 * k + 4].fill(half::f16::from_le_bytes([*b, *b.add(1)]).to_f32());
        }
    }
    // SAFETY: 16 floats of a local array.
    (Aq { lo, hi }, unsafe { _mm512_loadu_ps(d.as_ptr()) })
}

/// The scales of one row's group of `M` blocks at `p`, in lanes 4k..4k+4.
///
/// # Safety
/// `p` addresses 2 * M bytes; the CPU features of this module.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn scales1<const M: usize>(p: *const u8) -> __m512 {
    // SAFETY: forwarded contract.
    let d = unsafe { _mm_cvtph_ps(ld_scales::<M>(p)) };
    let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d))
}

/// One `SparseQ8` row's group of `M` blocks against ggml activations,
/// added to `acc`; `None` past the row's codes.
///
/// # Safety
/// As [`sq8_group`], and `a` addresses the group's `M` activation blocks.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn sq8_one<const M: usize>(
    h: *const u8,
    codes: *const u8,
    at: &mut usize,
    cap: usize,
    a: *const u8,
    acc: &mut __m512,
) -> Option<()> {
    // SAFETY: forwarded contract.
    unsafe {
        let (aq, da) = ggml_group::<M>(a);
        // The bias correction: -128 × the activations' sums.
        let bias = _mm512_set1_epi8(CODE_BIAS as i8);
        let c = _mm512_dpbusd_epi32(
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, aq.lo),
            bias,
            aq.hi,
        );
        let init = _mm512_sub_epi32(_mm512_setzero_si512(), c);
        let (klo, k) = sq8_counts::<M>(h);
        if *at + k > cap {
            return None;
        }
        let s = sq8_group::<M>(h, codes.add(*at), klo, init, aq);
        *at += k;
        let sc = _mm512_mul_ps(scales1::<M>(h.add(4 * M)), da);
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, *acc);
        Some(())
    }
}

/// The `SparseQ8` row dot, or `None` if its bitmaps claim more than `cap` codes.
///
/// # Safety
/// The CPU features of this module; `nb` is even; `w` holds `nb` headers
/// then `cap` code bytes, `a` `nb` Q8_0 blocks.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
unsafe fn dot_sparse(nb: usize, w: *const u8, cap: usize, a: *const u8) -> Option<f32> {
    let codes = w.wrapping_add(nb * SPARSE_HEADER);
    let mut at = 0;
    let mut acc = _mm512_setzero_ps();
    let full = nb / GROUP;
    for g in 0..full {
        // SAFETY: group g is inside the row and the activations (contract).
        unsafe {
            sq8_one::<GROUP>(
                w.add(g * SQ8_GROUP_HEAD),
                codes,
                &mut at,
                cap,
                a.add(g * GROUP * A_BLOCK),
                &mut acc,
            )?
        };
    }
    if nb > full * GROUP {
        // SAFETY: the last group (2 blocks: nb is even) is inside both.
        unsafe {
            sq8_one::<2>(
                w.add(full * SQ8_GROUP_HEAD),
                codes,
                &mut at,
                cap,
                a.add(full * GROUP * A_BLOCK),
                &mut acc,
            )?
        };
    }
    Some(_mm512_reduce_add_ps(acc))
}

/// One `Sparse24Q8` group of `M` blocks against ggml activations, added to `acc`.
///
/// # Safety
/// As [`s24_group`], and `a` addresses the group's `M` activation blocks.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
#[inline]
unsafe fn s24_one<const M: usize>(p: *const u8, a: *const u8, acc: &mut __m512) {
    // SAFETY: forwarded contract.
    unsafe {
        let (aq, da) = ggml_group::<M>(a);
        let bias = _mm512_set1_epi8(CODE_BIAS as i8);
        let aq = Aq {
            lo: _mm512_xor_si512(aq.lo, bias),
            hi: _mm512_xor_si512(aq.hi, bias),
        };
        let s = s24_group::<M>(p, aq);
        let sc = _mm512_mul_ps(scales1::<M>(p), da);
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, *acc);
    }
}

/// The `Sparse24Q8` row dot.
///
/// # Safety
/// The CPU features of this module; `w` holds `nb` blocks, `a` `nb` Q8_0 blocks.
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt"
)]
unsafe fn dot_s24(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm512_setzero_ps();
    let full = nb / GROUP;
    for g in 0..full {
        // SAFETY: group g is inside both buffers (contract).
        unsafe { s24_one::<GROUP>(w.add(g * S24_GROUP), a.add(g * GROUP * A_BLOCK), &mut acc) };
    }
    let (p, a) = (
        w.wrapping_add(full * S24_GROUP),
        a.wrapping_add(full * GROUP * A_BLOCK),
    );
    // SAFETY: the last nb % 4 blocks are inside both buffers.
    unsafe {
        match nb - full * GROUP {
            0 => {}
            1 => s24_one::<1>(p, a, &mut acc),
            2 => s24_one::<2>(p, a, &mut acc),
            _ => s24_one::<3>(p, a, &mut acc),
        }
    }
    _mm512_reduce_add_ps(acc)
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
