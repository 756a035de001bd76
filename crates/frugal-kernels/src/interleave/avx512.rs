//! AVX-512 VNNI kernel of the interleaved layouts (see the parent module):
//! per block of a 16-row group, each 64-byte chunk meets 4 activation bytes
//! broadcast in one `vpdpbusd` (16 rows at once), starting from the
//! activation's bias correction; one FMA per token applies the 16 rows'
//! scales (a second, Q4_1, their minimums). Up to 4 tokens share each chunk
//! load (prompts).
//!
//! Activations come from [`PackedActs`] (the legacy micro-kernel's layout,
//! already built for Q8_0 and Q8_1 activations on AVX-512): block `4q + k`'s
//! quants 0..16 at `qs[16k..]` and 16..32 at `qs[64 + 16k..]` of quad `q`,
//! its scale in `d16[4k]`; Q8_0: `-bias · Σq` in lane `4k` of `corr`; Q8_1:
//! its sum `s` in lane `4k` of `s16`. The 2:4 kernel ([`group_s24`]) reads
//! each block's 32 quants from the Q8_0 rows in ggml's layout instead, one
//! register to gather from. The unstructured sparse kernel ([`group_sq8`])
//! is the Q8_0 one, each chunk first rebuilt from its kept codes by one
//! `vpexpandb` under its mask.

use super::ROWS;
use crate::legacy::packed::PackedActs;
use std::arch::x86_64::*;

/// How far ahead (bytes) the kernel prefetches the weight stream into L1,
/// about four Q8_0 blocks of a group. From a C prototype of this kernel on 2
/// threads: a 145 MB Q8_0 matrix read at 33 GB/s with 2 KiB, 31 with 1 KiB,
/// 25 without; a 77 MB Q4_0 one 15 % slower with 4 KiB than with 2 KiB.
const PREFETCH: usize = 2048;

/// How far ahead every kernel also asks for the weight stream into L2
/// (`prefetcht1`), so that a line is on its way from memory well before
/// [`PREFETCH`] wants it in L1. Whole-model decode, interleaved rounds
/// (BENCHMARKS.md, issue 5 session 9): SmolLM2 Q8_0 9 % faster, Qwen's
/// Q8_0 unchanged, its 2:4 file 2.5 % faster; 16 KiB within noise of this.
const PREFETCH_FAR: usize = 8192;

/// How far ahead [`group_sq8`] prefetches its codes into L1 (about 32 bytes
/// per chunk at 50 %), with [`PREFETCH_FAR`] for L2 beside it. The fixed
/// parts (scales and masks) are fetched a whole group ahead instead: the
/// codes' addresses are sums of the masks' bit counts, so a fixed part that
/// misses the cache stalls every load after it. Measured with both in
/// place, on Qwen2.5-0.5B 50 % (all matrices sparse): 1 KiB ≥ 2 and 3 KiB >
/// 4 KiB > 8 and 16 KiB > none (75.7, 72.9–74.5, 71.0, 69.4–70.0, 67.5 t/s).
const PREFETCH_SQ8_CODES: usize = 1024;

/// Which base type (const generic and [`matmul`]'s `kind`): Q4_0, Q4_1, Q8_0.
pub const Q4: u8 = 0;
pub const Q8: u8 = 1;
pub const Q4M: u8 = 2;
/// `SQ8_2of4x16`.
pub const S24: u8 = 3;
/// `SQ8_{K}of64x16`.
pub const SQ8: u8 = 4;

/// The [`PackedActs::corr`] index of each base type's bias (8, 128; `SQ8`
/// takes Q8_0's).
const fn corr_index(ty: u8) -> usize {
    if ty == Q8 || ty == SQ8 {
        2
    } else {
        0
    }
}

const fn block_bytes(ty: u8) -> usize {
    match ty {
        Q8 => ROWS * 34,
        S24 => ROWS * 22,
        Q4M => ROWS * 20,
        _ => ROWS * 18,
    }
}

/// Where an interleaved block's chunks start (after its scales and minimums).
const fn chunks_at(ty: u8) -> usize {
    if ty == Q4M {
        64
    } else {
        32
    }
}

/// Whether this CPU can run the kernel (the legacy kernels' features).
pub fn available() -> bool {
    crate::legacy::avx512::available()
}

/// Byte offset in an activation quad of quants `4j..4j + 4` of its block `k`.
#[inline(always)]
fn act_offset(k: usize, j: usize) -> usize {
    if j < 4 {
        16 * k + 4 * j
    } else {
        64 + 16 * k + 4 * (j - 4)
    }
}

/// One group of 16 rows (at `g`, `nb` blocks) against tokens `t0..t0 + T`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, F16C and FMA available; `g` holds `nb` interleaved
/// blocks of type `TY`; `acts` holds tokens `t0..t0 + T` packed from Q8_0
/// rows of `nb` blocks with the bias corrections (Q4_1: Q8_1 rows with
/// sums); `out.add(t * ostride + i)` is writable for those tokens and
/// `i < 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn group<const TY: u8, const T: usize>(
    g: *const u8,
    nb: usize,
    acts: &PackedActs,
    t0: usize,
    out: *mut f32,
    ostride: usize,
) {
    let nq = acts.nq;
    let quads = acts.quads.as_ptr();
    let corr = acts.corr[corr_index(TY)].as_ptr();
    let sums = acts.s16.as_ptr();
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    // SAFETY: every weight load lies inside block b < nb of the group, every
    // activation read inside quad b / 4 of a token t0 + t < n_tok (contract);
    // prefetches never fault.
    unsafe {
        for b in 0..nb {
            let p = g.add(b * block_bytes(TY));
            let (q, k) = (b / 4, b % 4);
            let mut s = [_mm512_setzero_si512(); T];
            let mut qa = [std::ptr::null::<i8>(); T];
            let mut ad = [0.0f32; T];
            let mut sa = [0.0f32; T];
            for t in 0..T {
                let i = (t0 + t) * nq + q;
                if TY == Q4M {
                    sa[t] = (*sums.add(i)).0[4 * k];
                } else {
                    s[t] = _mm512_set1_epi32((*corr.add(i)).0[4 * k]);
                }
                qa[t] = (*quads.add(i)).qs.as_ptr();
                ad[t] = (*quads.add(i)).d16[4 * k];
            }
            let bcast = |t: usize, j: usize| {
                _mm512_set1_epi32(std::ptr::read_unaligned(
                    qa[t].add(act_offset(k, j)).cast::<i32>(),
                ))
            };
            if TY == Q8 {
                for j in 0..8 {
                    let c = p.add(32 + 64 * j);
                    _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(PREFETCH).cast());
                    _mm_prefetch::<_MM_HINT_T1>(c.wrapping_add(PREFETCH_FAR).cast());
                    let v = _mm512_loadu_si512(c.cast());
                    for (t, s) in s.iter_mut().enumerate() {
                        *s = _mm512_dpbusd_epi32(*s, v, bcast(t, j));
                    }
                }
            } else {
                for j in 0..4 {
                    let c = p.add(chunks_at(TY) + 64 * j);
                    _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(PREFETCH).cast());
                    _mm_prefetch::<_MM_HINT_T1>(c.wrapping_add(PREFETCH_FAR).cast());
                    let v = _mm512_loadu_si512(c.cast());
                    let lo = _mm512_and_si512(v, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                    for (t, s) in s.iter_mut().enumerate() {
                        *s = _mm512_dpbusd_epi32(*s, lo, bcast(t, j));
                        *s = _mm512_dpbusd_epi32(*s, hi, bcast(t, j + 4));
                    }
                }
            }
            let wd = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            for t in 0..T {
                let sc = _mm512_mul_ps(wd, _mm512_set1_ps(ad[t]));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), sc, acc[t]);
            }
            if TY == Q4M {
                let wm = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32).cast()));
                for t in 0..T {
                    acc[t] = _mm512_fmadd_ps(wm, _mm512_set1_ps(sa[t]), acc[t]);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add((t0 + t) * ostride), *a);
        }
    }
}

/// One group of 16 `SQ8_{K}of64x16` rows (at `g`, `nb` blocks, `gbytes`
/// bytes) against tokens `t0..t0 + T`: the `Q8_0x16` kernel, each chunk
/// rebuilt by one `vpexpandb` of its kept codes under its mask (0x80, the
/// biased zero, elsewhere). Panics when the masks claim codes beyond the
/// group (never, for a group `interleave_in_place` made).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI/VBMI2, F16C, FMA and POPCNT available; `g`
/// addresses `gbytes` readable bytes, and 64 more unless `TAIL` (the
/// matrix's last group), which loads no further than the group's end;
/// `acts` holds tokens `t0..t0 + T` packed from Q8_0 rows of `nb` blocks
/// with the bias corrections; `out.add(t * ostride + i)` is writable for
/// those tokens and `i < 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi2,avx2,fma,f16c,popcnt")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_sq8<const T: usize, const TAIL: bool>(
    g: *const u8,
    nb: usize,
    gbytes: usize,
    acts: &PackedActs,
    t0: usize,
    out: *mut f32,
    ostride: usize,
) {
    use super::sparse::BLOCK_HEAD;
    use crate::sparse::avx512::kload64;
    let nq = acts.nq;
    let quads = acts.quads.as_ptr();
    let corr = acts.corr[corr_index(SQ8)].as_ptr();
    let bias = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); T];
    assert!(nb * BLOCK_HEAD <= gbytes, "corrupt SQ8 interleaved group");
    let mut at = nb * BLOCK_HEAD;
    let end = g.wrapping_add(gbytes);
    // SAFETY: each block's fixed part and codes are checked to lie inside
    // the group's `gbytes` before they are read; a chunk's 64-byte load from
    // its first code reaches at most 64 bytes past the group's end, readable
    // unless TAIL, where it is masked to the chunk's own codes (contract);
    // activation reads lie inside quad b / 4 of a token t0 + t < n_tok
    // (contract); prefetches never fault.
    unsafe {
        for b in 0..nb {
            let p = g.add(b * BLOCK_HEAD);
            // The next group's fixed parts (groups lie end to end), one
            // block's per block: the codes' addresses depend on them.
            let nh = end.wrapping_add(b * BLOCK_HEAD);
            // Its first and last byte: every line it touches when a group
            // is a multiple of 32 bytes long (an even keep, or an even
            // number of 64-weight blocks per row); else one may span three
            // lines and miss the middle one. A third prefetch cost 6 % on
            // Qwen's 50 % file (four rounds).
            _mm_prefetch::<_MM_HINT_T0>(nh.cast());
            _mm_prefetch::<_MM_HINT_T0>(nh.wrapping_add(BLOCK_HEAD - 1).cast());
            let n = |j: usize| {
                p.add(32 + 8 * j)
                    .cast::<u64>()
                    .read_unaligned()
                    .count_ones() as usize
            };
            let (n0, n1, n2, n3, n4, n5, n6, n7) = (n(0), n(1), n(2), n(3), n(4), n(5), n(6), n(7));
            let codes = n0 + n1 + n2 + n3 + n4 + n5 + n6 + n7;
            assert!(at + codes <= gbytes, "corrupt SQ8 interleaved group");
            let (q, k) = (b / 4, b % 4);
            // Even and odd chunks sum apart: two shorter dependency chains.
            let mut s = [_mm512_setzero_si512(); T];
            let mut s2 = [_mm512_setzero_si512(); T];
            let mut qa = [std::ptr::null::<i8>(); T];
            let mut ad = [0.0f32; T];
            for t in 0..T {
                let i = (t0 + t) * nq + q;
                s[t] = _mm512_set1_epi32((*corr.add(i)).0[4 * k]);
                qa[t] = (*quads.add(i)).qs.as_ptr();
                ad[t] = (*quads.add(i)).d16[4 * k];
            }
            let mut c = g.add(at);
            macro_rules! chunk {
                ($j:literal, $n:expr, $s:ident) => {{
                    // About one line of codes per two chunks.
                    if $j % 2 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(PREFETCH_SQ8_CODES).cast());
                        _mm_prefetch::<_MM_HINT_T1>(c.wrapping_add(PREFETCH_FAR).cast());
                    }
                    // Expanding from a register: 23 % less time than
                    // `vpexpandb`'s memory form here (BENCHMARKS.md). Only the
                    // matrix's last group may end within 64 bytes of its end.
                    let raw = if !TAIL || c.wrapping_add(64) <= end {
                        _mm512_loadu_si512(c.cast())
                    } else {
                        _mm512_maskz_loadu_epi8(low_bits($n), c.cast())
                    };
                    let v = _mm512_mask_expand_epi8(bias, kload64(p.add(32 + 8 * $j)), raw);
                    c = c.add($n);
                    for t in 0..T {
                        let a =
                            std::ptr::read_unaligned(qa[t].add(act_offset(k, $j)).cast::<i32>());
                        $s[t] = _mm512_dpbusd_epi32($s[t], v, _mm512_set1_epi32(a));
                    }
                }};
            }
            chunk!(0, n0, s);
            chunk!(1, n1, s2);
            chunk!(2, n2, s);
            chunk!(3, n3, s2);
            chunk!(4, n4, s);
            chunk!(5, n5, s2);
            chunk!(6, n6, s);
            chunk!(7, n7, s2);
            let _ = c;
            let wd = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            for t in 0..T {
                let sc = _mm512_mul_ps(wd, _mm512_set1_ps(ad[t]));
                let st = _mm512_add_epi32(s[t], s2[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(st), sc, acc[t]);
            }
            at += codes;
        }
        for (t, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add((t0 + t) * ostride), *a);
        }
    }
}

/// Mask of the low `n` bits (n <= 64).
#[inline(always)]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Bit offsets (`vpmultishiftqb` controls) of chunk `j`'s 2-bit positions:
/// byte `i` of lane `r` (a qword holds lanes `2q`, `2q + 1`) takes bits
/// `8j + 2i` of that lane's position word.
const fn s24_shifts(j: usize) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut b = 0;
    while b < 64 {
        let (h, i) = ((b % 8) / 4, b % 4);
        a[b] = (32 * h + 8 * j + 2 * i) as u8;
        b += 1;
    }
    a
}

/// Chunk `j`'s code `4j + i` stands for weight `8j + 4⌊i/2⌋ + position`.
const fn s24_bases(j: usize) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut b = 0;
    while b < 64 {
        a[b] = (8 * j + 4 * ((b % 4) / 2)) as u8;
        b += 1;
    }
    a
}

/// Loads 64 constant bytes.
#[target_feature(enable = "avx512f")]
#[inline]
fn bytes64(a: &[u8; 64]) -> __m512i {
    // SAFETY: `a` is 64 readable bytes; unaligned load.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// One group of 16 `SQ8_2of4x16` rows against tokens `t0..t0 + T`: each
/// chunk's 4 codes per row meet activations gathered per lane (`vpermb`
/// by 2-bit position), biased to unsigned; `128 · Σ codes` comes off.
///
/// # Safety
/// As [`group`], plus AVX-512 VBMI; `a` points at token 0's Q8_0 row
/// (`arb` bytes per token, `nb` blocks of 34 bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_s24<const T: usize>(
    g: *const u8,
    nb: usize,
    acts: &PackedActs,
    a: *const u8,
    arb: usize,
    t0: usize,
    out: *mut f32,
    ostride: usize,
) {
    let nq = acts.nq;
    let quads = acts.quads.as_ptr();
    let three = _mm512_set1_epi8(3);
    let flip = _mm256_set1_epi8(-128);
    let bias = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); T];
    // SAFETY: weight loads lie inside block b < nb of the group; activation
    // loads inside block b of a token t0 + t < n_tok's row (contract).
    unsafe {
        for b in 0..nb {
            let p = g.add(b * block_bytes(S24));
            let pos = _mm512_loadu_si512(p.add(32).cast());
            let mut au = [_mm512_setzero_si512(); T];
            let mut ad = [0.0f32; T];
            for t in 0..T {
                let row = a.add((t0 + t) * arb + 34 * b + 2);
                let v = _mm256_xor_si256(_mm256_loadu_si256(row.cast()), flip);
                au[t] = _mm512_castsi256_si512(v);
                ad[t] = (*quads.add((t0 + t) * nq + b / 4)).d16[4 * (b % 4)];
            }
            let mut s = [_mm512_setzero_si512(); T];
            let mut c = _mm512_setzero_si512();
            macro_rules! chunk {
                ($j:literal) => {{
                    let w = _mm512_loadu_si512(p.add(96 + 64 * $j).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p.add(96 + 64 * $j).wrapping_add(PREFETCH).cast());
                    _mm_prefetch::<_MM_HINT_T1>(
                        p.add(96 + 64 * $j).wrapping_add(PREFETCH_FAR).cast(),
                    );
                    let sh = _mm512_multishift_epi64_epi8(bytes64(&const { s24_shifts($j) }), pos);
                    let idx = _mm512_add_epi8(
                        _mm512_and_si512(sh, three),
                        bytes64(&const { s24_bases($j) }),
                    );
                    c = _mm512_dpbusd_epi32(c, bias, w);
                    for (t, s) in s.iter_mut().enumerate() {
                        *s = _mm512_dpbusd_epi32(*s, _mm512_permutexvar_epi8(idx, au[t]), w);
                    }
                }};
            }
            chunk!(0);
            chunk!(1);
            chunk!(2);
            chunk!(3);
            let wd = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            for t in 0..T {
                let sc = _mm512_mul_ps(wd, _mm512_set1_ps(ad[t]));
                let st = _mm512_sub_epi32(s[t], c);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(st), sc, acc[t]);
            }
        }
        for (t, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add((t0 + t) * ostride), *v);
        }
    }
}

/// Whether this CPU can run [`matmul`] for `kind` (`S24` also needs VBMI,
/// `SQ8` VBMI2 and POPCNT).
pub fn available_for(kind: u8) -> bool {
    available()
        && match kind {
            S24 => is_x86_feature_detected!("avx512vbmi"),
            SQ8 => is_x86_feature_detected!("avx512vbmi2") && is_x86_feature_detected!("popcnt"),
            _ => true,
        }
}

/// `out[t * ostride + r] = dot(row r, token t)` for the rows of `groups`
/// (16 rows each) of an interleaved matrix at `w` (`wlen` bytes; `nb`
/// blocks, `rb` bytes per row) and every token of `acts`, tokens 4 at a time.
///
/// # Safety
/// [`available_for`] `kind`; `w` addresses `wlen` readable bytes, at least `groups.end` groups of 16
/// rows of `nb` blocks of the type `kind` ([`Q4`]: Q4_0x16, [`Q8`]: Q8_0x16,
/// [`Q4M`]: Q4_1x16, [`S24`]: SQ8_2of4x16, [`SQ8`]: SQ8_{K}of64x16); `acts` packed from rows of `nb` blocks of
/// its activation type, which `rows` holds in ggml's layout; `out.add(t *
/// ostride + r)` writable for every token and row of the groups, and not
/// accessed by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    kind: u8,
    w: *const u8,
    wlen: usize,
    nb: usize,
    rb: usize,
    groups: std::ops::Range<usize>,
    acts: &PackedActs,
    rows: &[u8],
    out: *mut f32,
    ostride: usize,
) {
    assert!(
        available_for(kind),
        "interleaved kernel on a CPU without its AVX-512 features"
    );
    assert_eq!(acts.nb, nb, "activations of another width");
    assert_eq!(acts.quads.len(), acts.n_tok * acts.nq, "packed activations");
    match kind {
        Q4M => assert_eq!(acts.s16.len(), acts.quads.len(), "Q8_1 block sums"),
        S24 => assert_eq!(rows.len(), acts.n_tok * nb * 34, "Q8_0 activation rows"),
        _ => assert_eq!(
            acts.corr[corr_index(kind)].len(),
            acts.quads.len(),
            "Q8_0 bias corrections"
        ),
    }
    assert!(groups.end * ROWS * rb <= wlen, "groups beyond the matrix");
    if kind != SQ8 {
        assert_eq!(ROWS * rb, nb * block_bytes(kind), "row bytes of {kind}");
    }
    let n = acts.n_tok;
    let arb = nb * 34;
    for gi in groups {
        // SAFETY: group gi is inside `w` (contract); tokens t0..t0 + T < n
        // are packed, and their rows in `rows` (checked above); outputs as
        // the caller promised.
        unsafe {
            let g = w.add(gi * ROWS * rb);
            let o = out.add(gi * ROWS);
            let a = rows.as_ptr();
            let mut t0 = 0;
            macro_rules! run {
                ($t:literal) => {
                    match kind {
                        Q8 => group::<Q8, $t>(g, nb, acts, t0, o, ostride),
                        Q4M => group::<Q4M, $t>(g, nb, acts, t0, o, ostride),
                        S24 => group_s24::<$t>(g, nb, acts, a, arb, t0, o, ostride),
                        SQ8 if (gi + 1) * ROWS * rb + 64 <= wlen => {
                            group_sq8::<$t, false>(g, nb, ROWS * rb, acts, t0, o, ostride)
                        }
                        SQ8 => group_sq8::<$t, true>(g, nb, ROWS * rb, acts, t0, o, ostride),
                        _ => group::<Q4, $t>(g, nb, acts, t0, o, ostride),
                    }
                };
            }
            while t0 + 4 <= n {
                run!(4);
                t0 += 4;
            }
            match n - t0 {
                3 => run!(3),
                2 => run!(2),
                1 => run!(1),
                _ => {}
            }
        }
    }
}
