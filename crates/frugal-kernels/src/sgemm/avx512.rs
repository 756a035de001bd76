//! The AVX-512 path of [`super::sgemm`]: a BLIS-style packed GEMM.
//!
//! `k` is cut into blocks of at most [`KC`] and `n` into blocks of at most
//! [`NC`] columns. For each (column block, depth block) B is packed once into
//! `NR`-column panels (`kb × NR`, k-major, zero-padded, 64-byte aligned),
//! shared by every thread; then each row panel of `MR` rows of A is packed
//! (`kb × MR`, k-major) and multiplied against every B panel of the block by
//! the microkernel, which keeps an `MR × NR` tile of C in zmm registers
//! (A values broadcast, B rows loaded) and writes it once, scaled by alpha and
//! added to C unless this is the first depth block of a non-accumulating
//! product. The A panel stays in L1, the B block in L2. Edge tiles use masked
//! loads and stores. With `parallel`, tiles are split over the rayon pool by
//! row panels (by column panels too when there are few rows).

use super::View;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Largest depth of a packed block: an A panel (`MR × KC` floats, 18 KiB)
/// stays in L1. (Measured: 256..512 all within a few percent.)
const KC: usize = 384;
/// Largest width of a packed B block (`KC × NC` floats, 1.5 MiB, in L2).
const NC: usize = 1024;
/// Below this many multiply-adds a parallel call runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 21;

thread_local! {
    /// Packing buffers, reused across calls (taken out while in use, so a
    /// nested or re-entrant call just allocates its own).
    static A_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static B_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A 64-byte aligned slice of `len` floats out of `buf` (grown as needed).
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    let off = buf.as_ptr().align_offset(64).min(16);
    &mut buf[off..off + len]
}

/// The output pointer shared by the tasks of one call.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks only write disjoint tiles of C through it (see `tiles`), and
// the `&mut [f32]` it was made from outlives every task (they are joined
// before `gemm` returns).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// `c = (accumulate ? c : 0) + alpha · a · b` (see [`super::sgemm`]), in
/// tiles of 12 × 32, or of 8 × 48 where those pad fewer rows and columns
/// (64-row blocks of `syrk_upper`, for instance).
///
/// The caller has checked that the three views lie inside their slices,
/// that `m`, `n`, `k` are all non-zero, and that the CPU has AVX-512F.
pub(super) fn sgemm(
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    alpha: f32,
    parallel: bool,
) {
    let (m, n) = (a.rows, b.cols);
    let used = |mr: usize, nr: usize| {
        (m * n) as f64 / (m.next_multiple_of(mr) * n.next_multiple_of(nr)) as f64
    };
    if used(8, 48) > used(12, 32) + 0.02 {
        gemm::<8, 3>(c, c_rs, accumulate, a, b, alpha, parallel);
    } else {
        gemm::<12, 2>(c, c_rs, accumulate, a, b, alpha, parallel);
    }
}

/// [`sgemm`] in tiles of `MR × 16·NV`.
///
/// The caller has checked that the three views lie inside their slices,
/// that `m`, `n`, `k` are all non-zero, and that the CPU has AVX-512F.
pub(super) fn gemm<const MR: usize, const NV: usize>(
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    alpha: f32,
    parallel: bool,
) {
    let nr = 16 * NV;
    let (m, n, k) = (a.rows, b.cols, a.cols);
    debug_assert!(m > 0 && n > 0 && k > 0 && a.cols == b.rows);
    debug_assert!((m - 1) * c_rs + n <= c.len());
    let parallel = parallel && rayon::current_num_threads() > 1 && m * n * k >= PAR_MIN_WORK;
    // Balanced blocks: 576 deep is two blocks of 288, not 384 + 192.
    let kc = k.div_ceil(k.div_ceil(KC));
    let nc = n.div_ceil(n.div_ceil(NC)).next_multiple_of(nr);
    let out = OutPtr(c.as_mut_ptr());
    let mut bbuf = B_BUF.with(Cell::take);
    for j0 in (0..n).step_by(nc) {
        let nb = nc.min(n - j0);
        let panels = nb.div_ceil(nr);
        for p0 in (0..k).step_by(kc) {
            let kb = kc.min(k - p0);
            let packed = aligned(&mut bbuf, panels * kb * nr);
            let pack = |(jp, dst): (usize, &mut [f32])| {
                let j = j0 + jp * nr;
                // SAFETY: the caller of `gemm` checked for AVX-512F.
                unsafe { pack_b::<NV>(dst, b, p0, kb, j, nr.min(n - j)) };
            };
            if parallel {
                packed.par_chunks_mut(kb * nr).enumerate().for_each(pack);
            } else {
                packed.chunks_mut(kb * nr).enumerate().for_each(pack);
            }
            let blk = Block {
                out,
                c_rs,
                a,
                alpha,
                beta: accumulate || p0 > 0,
                p0,
                kb,
                j0,
                n,
                packed: &*packed,
            };
            let mp = m.div_ceil(MR);
            if parallel {
                // Row panels are independent (each packs its own A); split
                // columns as well only when there are few rows.
                let want = 4 * rayon::current_num_threads();
                let rg = mp.min(want);
                let cg = panels.min(want.div_ceil(rg));
                (0..rg * cg).into_par_iter().for_each(|t| {
                    let (r, q) = (t / cg, t % cg);
                    blk.tiles::<MR, NV>(
                        mp * r / rg..mp * (r + 1) / rg,
                        panels * q / cg..panels * (q + 1) / cg,
                    );
                });
            } else {
                blk.tiles::<MR, NV>(0..mp, 0..panels);
            }
        }
    }
    B_BUF.with(|cell| cell.set(bbuf));
}

/// One (column block, depth block) step of [`gemm`], with B packed.
#[derive(Clone, Copy)]
struct Block<'a> {
    out: OutPtr,
    c_rs: usize,
    a: View<'a>,
    alpha: f32,
    /// Add to C (false only for the first depth block without `accumulate`).
    beta: bool,
    p0: usize,
    kb: usize,
    j0: usize,
    n: usize,
    /// B rows `p0..p0 + kb`, columns from `j0`, in panels of `kb × NR`.
    packed: &'a [f32],
}

impl Block<'_> {
    /// The tiles of row panels `rows` × column panels `cols` of this block.
    /// Distinct (rows, cols) ranges write disjoint parts of C.
    fn tiles<const MR: usize, const NV: usize>(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        let nr = 16 * NV;
        let (m, kb) = (self.a.rows, self.kb);
        let mut abuf = A_BUF.with(Cell::take);
        let apanel = aligned(&mut abuf, kb * MR);
        for ip in rows {
            let i0 = ip * MR;
            let h = MR.min(m - i0);
            // SAFETY: the caller of `gemm` checked for AVX-512F.
            unsafe { pack_a::<MR>(apanel, self.a, i0, h, self.p0, kb) };
            for jp in cols.clone() {
                let j = self.j0 + jp * nr;
                let w = nr.min(self.n - j);
                let bpanel = &self.packed[jp * kb * nr..(jp + 1) * kb * nr];
                // SAFETY: the CPU has AVX-512F (checked by the caller of
                // `gemm`). `apanel` holds `kb × MR` and `bpanel` `kb × NR`
                // floats, all the kernel reads from them. The tile written,
                // rows i0..i0 + h and columns j..j + w of C, lies inside the
                // output slice (checked by `sgemm`: i0 + h ≤ m, j + w ≤ n),
                // which `gemm` borrows mutably for the whole call. Tasks get
                // disjoint (row panel, column panel) ranges and rows of C do
                // not overlap (`sgemm` checked c_rs ≥ n when m > 1), so no
                // two tasks touch the same element.
                unsafe {
                    kernel::<MR, NV>(
                        kb,
                        apanel.as_ptr(),
                        bpanel.as_ptr(),
                        self.out.0.add(i0 * self.c_rs + j),
                        self.c_rs,
                        h,
                        w,
                        self.alpha,
                        self.beta,
                    );
                }
            }
        }
        A_BUF.with(|cell| cell.set(abuf));
    }
}

/// The mask of the first `n` lanes (n ≤ 16).
fn lanes(n: usize) -> __mmask16 {
    debug_assert!(n <= 16);
    ((1u32 << n) - 1) as __mmask16
}

/// The first `n ≤ 16` floats of `src` in the low lanes of a vector, zeros
/// above.
#[inline]
#[target_feature(enable = "avx512f")]
fn load_part(src: &[f32], n: usize) -> __m512 {
    let n = n.min(src.len()).min(16);
    // SAFETY: only the first n lanes are read, and n ≤ src.len(); a masked
    // load does not touch (or fault on) the lanes it leaves out.
    unsafe { _mm512_maskz_loadu_ps(lanes(n), src.as_ptr()) }
}

/// Stores the first `n` lanes of `v` into `dst[..n]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn store_part(dst: &mut [f32], v: __m512, n: usize) {
    let n = n.min(dst.len()).min(16);
    // SAFETY: only the first n lanes are written, and n ≤ dst.len().
    unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), lanes(n), v) }
}

/// Transposes a 16 × 16 block held as 16 rows.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        let pd = _mm512_castps_pd;
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
    }
    for h in 0..2 {
        for i in 0..4 {
            t[8 * h + i] = _mm512_shuffle_f32x4::<0x88>(r[8 * h + i], r[8 * h + 4 + i]);
            t[8 * h + 4 + i] = _mm512_shuffle_f32x4::<0xdd>(r[8 * h + i], r[8 * h + 4 + i]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[8 + i]);
        r[8 + i] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[8 + i]);
    }
}

/// Packs rows `i0..i0 + h` (h ≤ MR), columns `p0..p0 + kb` of `a` into `dst`
/// (`kb × MR`, k-major: `dst[p * MR + i] = a[i0 + i][p0 + p]`), zero rows
/// past `h`. Every access is bounds-checked (through slices).
#[target_feature(enable = "avx512f")]
fn pack_a<const MR: usize>(dst: &mut [f32], a: View, i0: usize, h: usize, p0: usize, kb: usize) {
    const { assert!(MR <= 16) };
    let dst = &mut dst[..kb * MR];
    if a.rs == 1 {
        // Column-major (a transposed matrix): each k step is contiguous.
        for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
            let s = (p0 + p) * a.cs + i0;
            store_part(d, load_part(&a.data[s..s + h], h), MR);
        }
    } else if a.cs == 1 {
        // Row-major: transpose 16 k steps of the MR rows at a time.
        let rows: [&[f32]; MR] = std::array::from_fn(|i| {
            let s = (i0 + i) * a.rs + p0;
            if i < h {
                &a.data[s..s + kb]
            } else {
                &[]
            }
        });
        // (Rows past h stay zero.)
        for (q, d) in dst.chunks_mut(16 * MR).enumerate() {
            let p = 16 * q;
            let len = (kb - p).min(16);
            let mut t = [_mm512_setzero_ps(); 16];
            for (t, row) in t.iter_mut().zip(&rows[..h]) {
                *t = load_part(&row[p..], len);
            }
            transpose16(&mut t);
            for (v, d) in t.iter().zip(d.chunks_exact_mut(MR)) {
                store_part(d, *v, MR);
            }
        }
    } else {
        dst.fill(0.0);
        for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
            for (i, x) in d[..h].iter_mut().enumerate() {
                *x = a.data[(i0 + i) * a.rs + (p0 + p) * a.cs];
            }
        }
    }
}

/// Packs rows `p0..p0 + kb`, columns `j..j + w` (w ≤ NR) of `b` into `dst`
/// (`kb × NR`, k-major: `dst[p * NR + jj] = b[p0 + p][j + jj]`), zero columns
/// past `w`. Every access is bounds-checked (through slices).
#[target_feature(enable = "avx512f")]
fn pack_b<const NV: usize>(dst: &mut [f32], b: View, p0: usize, kb: usize, j: usize, w: usize) {
    let nr = 16 * NV;
    let dst = &mut dst[..kb * nr];
    if b.cs == 1 {
        for (p, d) in dst.chunks_exact_mut(nr).enumerate() {
            let s = (p0 + p) * b.rs + j;
            let src = &b.data[s..s + w];
            for (v, d) in d.chunks_exact_mut(16).enumerate() {
                let from = (16 * v).min(w);
                store_part(d, load_part(&src[from..], w - from), 16);
            }
        }
    } else if b.rs == 1 {
        // Row-major transposed weights: each column is contiguous in k;
        // transpose 16 columns × 16 k steps at a time.
        let cols: [&[f32]; 16] = std::array::from_fn(|_| &[][..]);
        for v in 0..NV {
            let mut cols = cols;
            for (jj, col) in cols.iter_mut().enumerate() {
                let c = 16 * v + jj;
                if c < w {
                    let s = (j + c) * b.cs + p0;
                    *col = &b.data[s..s + kb];
                }
            }
            for p in (0..kb).step_by(16) {
                let len = (kb - p).min(16);
                let mut t = [_mm512_setzero_ps(); 16];
                for (t, col) in t.iter_mut().zip(&cols) {
                    *t = load_part(&col[p.min(col.len())..], len);
                }
                transpose16(&mut t);
                for (q, t) in t.iter().take(len).enumerate() {
                    let d = &mut dst[(p + q) * nr + 16 * v..][..16];
                    store_part(d, *t, 16);
                }
            }
        }
    } else {
        dst.fill(0.0);
        for (p, d) in dst.chunks_exact_mut(nr).enumerate() {
            for (jj, x) in d[..w].iter_mut().enumerate() {
                *x = b.data[(p0 + p) * b.rs + (j + jj) * b.cs];
            }
        }
    }
}

/// The microkernel: `acc = Σ_p a[p] ⊗ b[p]` over `kb` steps for an
/// `MR × 16·NV` tile, then `c = (beta ? c : 0) + alpha · acc` on its first
/// `h` rows and `w` columns (row stride `c_rs`).
///
/// # Safety
/// The CPU has AVX-512F; `a` is readable for `kb · MR` floats, `b` for
/// `kb · 16 · NV`; `c` is valid for reads and writes of rows `0..h` ×
/// columns `0..w` with row stride `c_rs`, with h ≤ MR and w ≤ 16 · NV.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn kernel<const MR: usize, const NV: usize>(
    kb: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    c_rs: usize,
    h: usize,
    w: usize,
    alpha: f32,
    beta: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kb {
        let mut bv = [_mm512_setzero_ps(); NV];
        for v in 0..NV {
            // SAFETY: within the kb · 16 · NV floats of `b` (contract).
            bv[v] = unsafe { _mm512_loadu_ps(b.add(16 * v)) };
        }
        for i in 0..MR {
            // SAFETY: within the kb · MR floats of `a` (contract).
            let ai = _mm512_set1_ps(unsafe { *a.add(i) });
            for v in 0..NV {
                acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
            }
        }
        // SAFETY: one step on, at most one past the end after the last step.
        unsafe {
            a = a.add(MR);
            b = b.add(16 * NV);
        }
    }
    let va = _mm512_set1_ps(alpha);
    if h == MR && w == 16 * NV {
        for i in 0..MR {
            for v in 0..NV {
                // SAFETY: a full tile: row i < h, columns 16v..16v + 16 ≤ w.
                unsafe {
                    let p = c.add(i * c_rs + 16 * v);
                    let r = if beta {
                        _mm512_fmadd_ps(acc[i][v], va, _mm512_loadu_ps(p))
                    } else {
                        _mm512_mul_ps(acc[i][v], va)
                    };
                    _mm512_storeu_ps(p, r);
                }
            }
        }
    } else {
        for i in 0..MR {
            if i >= h {
                break;
            }
            for v in 0..NV {
                let left = w.saturating_sub(16 * v).min(16);
                if left == 0 {
                    break;
                }
                let mask = ((1u32 << left) - 1) as __mmask16;
                // SAFETY: row i < h; the masked lanes are columns
                // 16v..16v + left ≤ w, and lane 0 is one of them, so `p` is
                // in bounds; masked-off lanes are neither read nor written.
                unsafe {
                    let p = c.add(i * c_rs + 16 * v);
                    let r = if beta {
                        _mm512_fmadd_ps(acc[i][v], va, _mm512_maskz_loadu_ps(mask, p))
                    } else {
                        _mm512_mul_ps(acc[i][v], va)
                    };
                    _mm512_mask_storeu_ps(p, mask, r);
                }
            }
        }
    }
}
