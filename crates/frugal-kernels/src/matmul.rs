//! Threaded matmul: a weight matrix against one (decode) or many (prefill)
//! activation rows.
//!
//! Activations are quantized once to the weight type's `vec_dot_type`
//! ([`QuantizedActs`]) and reused by every matrix that reads the same input.
//! Rows of the weight matrix are split into chunks run on the rayon pool
//! (2 chunks per thread for one token, 4 for prompts; multiples of 16 rows,
//! at least ~32 KiB of weights each); each chunk computes its rows for every
//! token, so no two tasks write the same output element, and every element
//! is computed the same way whatever the thread count.
//!
//! Kernels: on AVX-512 CPUs the legacy formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) go through a micro-kernel that decodes four weight blocks once and
//! applies them to up to 8 tokens (`legacy::avx512`), over row blocks that
//! stay in L2 while all tokens pass; for one token (decode) they go through
//! a matrix-vector kernel (`legacy::avx512::gemv`) that takes four rows at
//! once, sharing each activation load, reduces their block sums together and
//! prefetches the weights well ahead. The sparse int8 types (`sparse`) have
//! a kernel of the same kind (`sparse::avx512::gemv`, also VBMI and VBMI2),
//! run token by token over blocks of 16 rows for prompts. Q4_0, Q4_1, Q8_0
//! and sparse int8 matrices a model laid out 16 rows at a time (`Q4_0x16`,
//! …, see [`crate::interleave`]) run `interleave::avx512::matmul`, up to 4
//! tokens per weight load, for decode and prompts alike. Every other type
//! (floats, k-quants, frugal's own types, …) runs its traits `vec_dot` per
//! (row, token), in blocks of 16 rows that stay in cache across all tokens
//! (prefetching the next block for one token).
//!
//! [`matmul_many`] runs several matrices that read the same activations
//! (Q/K/V, gate/up) in one parallel region, saving the pool's wake-ups.
//!
//! Threads: as many as rayon's current pool (the global pool, or the one a
//! caller `install`ed), but the row chunks run on a [`crate::team`] whose
//! workers spin between calls: a decode step's ~100 matmuls, a few µs apart,
//! would otherwise wake a sleeping rayon worker each time.

use crate::interleave;
use crate::legacy::packed::PackedActs;
use crate::traits::{detected_isa, traits, Isa, VecDot};
use frugal_formats::{FrugalType, GgmlType};
use rayon::prelude::*;

/// A weight matrix: `rows` rows of `cols` elements of type `ty`, each row a run of blocks.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` is exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Self {
        let m = QMatrix {
            ty,
            rows,
            cols,
            data,
        };
        assert_eq!(
            data.len(),
            rows * m.row_bytes(),
            "{ty} matrix {rows}x{cols}: wrong byte count"
        );
        m
    }

    /// Bytes of one row. Panics if `cols` is not whole blocks of `ty`.
    pub fn row_bytes(&self) -> usize {
        self.ty
            .row_bytes(self.cols as u64)
            .unwrap_or_else(|| panic!("{} columns is not whole {} blocks", self.cols, self.ty))
            as usize
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Activations (n_tok rows of `cols` floats) quantized once to a vec_dot type,
/// reused by every matrix that reads the same input. Reuses its buffers: no
/// allocation once warm.
pub struct QuantizedActs {
    dot_ty: GgmlType,
    n_tok: usize,
    cols: usize,
    row_bytes: usize,
    /// `n_tok` rows in ggml's layout of `dot_ty`.
    data: Vec<u8>,
    /// The same rows in the AVX-512 micro-kernel layout (Q8_0/Q8_1 on AVX-512 only).
    packed: PackedActs,
    has_packed: bool,
}

impl Default for QuantizedActs {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantizedActs {
    pub fn new() -> Self {
        QuantizedActs {
            dot_ty: GgmlType::F32,
            n_tok: 0,
            cols: 0,
            row_bytes: 0,
            data: Vec::new(),
            packed: PackedActs::new(),
            has_packed: false,
        }
    }

    /// Quantize `x` (n_tok × cols, row-major) to `dot_ty`. Always does the
    /// work: the caller decides when an input can be reused. Types with a
    /// header per row (frugal's `I8Tok`) are quantized one token at a time.
    pub fn quantize(&mut self, dot_ty: GgmlType, x: &[f32], n_tok: usize, cols: usize) {
        assert_eq!(
            x.len(),
            n_tok * cols,
            "activations: {n_tok} x {cols} floats"
        );
        let row_bytes = dot_ty
            .row_bytes(cols as u64)
            .unwrap_or_else(|| panic!("{cols} columns is not whole {dot_ty} blocks"))
            as usize;
        let quant: fn(&[f32], &mut [u8]) = match dot_ty {
            GgmlType::Q8_0 => crate::legacy::quantize_row_q8_0,
            GgmlType::Q8_1 => crate::legacy::quantize_row_q8_1,
            GgmlType::F32 => crate::floats::f32_from_float,
            other => traits(other)
                .and_then(|t| t.from_float)
                .unwrap_or_else(|| panic!("no quantizer for activation type {other}")),
        };
        self.dot_ty = dot_ty;
        self.n_tok = n_tok;
        self.cols = cols;
        self.row_bytes = row_bytes;
        self.data.resize(n_tok * row_bytes, 0);
        const PAR_TOKENS: usize = 16;
        let parallel = n_tok >= 2 * PAR_TOKENS && rayon::current_num_threads() > 1 && cols > 0;
        if matches!(dot_ty, GgmlType::Frugal(t) if t.is_row_wise()) {
            // A header per row: the quantizer takes exactly one row.
            if cols == 0 {
                // Empty rows have no bytes.
            } else if parallel {
                x.par_chunks(cols)
                    .zip(self.data.par_chunks_mut(row_bytes))
                    .for_each(|(x, y)| quant(x, y));
            } else {
                for (x, y) in x
                    .chunks_exact(cols)
                    .zip(self.data.chunks_exact_mut(row_bytes))
                {
                    quant(x, y);
                }
            }
        } else if parallel {
            // Rows are whole blocks, so the rows' blocks are contiguous: one
            // call per group of tokens, groups in parallel for long prompts.
            x.par_chunks(PAR_TOKENS * cols)
                .zip(self.data.par_chunks_mut(PAR_TOKENS * row_bytes))
                .for_each(|(x, y)| quant(x, y));
        } else {
            quant(x, &mut self.data);
        }
        self.has_packed = false;
        if detected_isa() == Isa::Avx512 && matches!(dot_ty, GgmlType::Q8_0 | GgmlType::Q8_1) {
            self.packed.pack(dot_ty, &self.data, n_tok, cols / 32);
            self.has_packed = true;
        }
    }

    pub fn dot_type(&self) -> GgmlType {
        self.dot_ty
    }

    pub fn n_tok(&self) -> usize {
        self.n_tok
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Token `t`'s quantized row (ggml layout of [`QuantizedActs::dot_type`]).
    pub fn row(&self, t: usize) -> &[u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
}

/// The output pointer shared by the tasks of one matmul.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (each owns a row range, for all
// tokens) of a buffer that outlives the parallel section; see `matmul`.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[derive(Clone, Copy)]
enum Kernel {
    /// The AVX-512 micro-kernel for a legacy type (its code in `legacy::avx512`).
    #[cfg(target_arch = "x86_64")]
    Tile(u8),
    /// The AVX-512 kernel of a sparse type (`sparse::avx512::gemv`).
    #[cfg(target_arch = "x86_64")]
    Sparse(crate::sparse::avx512::Kind),
    /// The traits' dot product per (row, token).
    Dot(VecDot),
    /// An interleaved layout's AVX-512 kernel (its `interleave::avx512` kind).
    #[cfg(target_arch = "x86_64")]
    Interleaved(u8),
    /// An interleaved layout's scalar reference (CPUs without AVX-512 VNNI,
    /// which never make the layout; kept so a matmul is right anywhere).
    InterleavedRef,
}

/// The least weight bytes × tokens worth a task of its own.
const MIN_TASK_BYTES: usize = 32 * 1024;

/// Rows per task: 2–4 tasks per thread, multiples of 16 rows, and never a
/// task under ~32 KiB of weights (too small to be worth a thread hop).
fn chunk_rows(rows: usize, row_bytes: usize, n_tok: usize, threads: usize) -> usize {
    if threads <= 1 {
        return rows;
    }
    let per_thread = if n_tok == 1 { 2 } else { 4 };
    let mut chunk = rows.div_ceil(threads * per_thread);
    let min_rows = (MIN_TASK_BYTES / (row_bytes * n_tok).max(1)).max(1);
    chunk = chunk.max(min_rows);
    chunk.div_ceil(16) * 16
}

/// out[t * w.rows + r] = dot(row r of w, activation row t). Parallel over rows
/// with rayon. Panics only on programmer error (mismatched dims/types).
pub fn matmul(w: &QMatrix, acts: &QuantizedActs, out: &mut [f32]) {
    matmul_many(&[w], acts, &mut [out]);
}

/// Most matrices [`matmul_many`] takes in one parallel region.
const MANY_MAX: usize = 8;

/// One matrix of a [`matmul_many`] call.
#[derive(Clone, Copy)]
struct Part<'a> {
    w: QMatrix<'a>,
    kernel: Kernel,
    row_bytes: usize,
    out: OutPtr,
    /// Rows per task, and the index of this matrix's first task.
    chunk: usize,
    first: usize,
}

/// Checks one matrix against the activations and its output; returns its row bytes.
fn check(w: &QMatrix, acts: &QuantizedActs, out: &[f32]) -> usize {
    let dot_ty =
        crate::vec_dot_type(w.ty).unwrap_or_else(|| panic!("matmul: no kernels for {}", w.ty));
    assert_eq!(
        acts.dot_ty, dot_ty,
        "matmul: {} weights need {} activations",
        w.ty, dot_ty
    );
    if interleave::is_interleaved(w.ty) {
        assert!(
            w.rows.is_multiple_of(interleave::ROWS),
            "matmul: {} needs whole groups of 16 rows",
            w.ty
        );
    }
    assert_eq!(
        acts.cols, w.cols,
        "matmul: activation and weight columns differ"
    );
    let row_bytes = w.row_bytes();
    assert_eq!(w.data.len(), w.rows * row_bytes, "matmul: weight bytes");
    assert_eq!(out.len(), acts.n_tok * w.rows, "matmul: output length");
    row_bytes
}

/// `matmul(ws[i], acts, outs[i])` for every `i`: matrices that read the same
/// activations (Q, K and V; gate and up) in one parallel region, their row
/// chunks spread over the pool together. Results are bit-identical to
/// separate [`matmul`] calls.
pub fn matmul_many(ws: &[&QMatrix], acts: &QuantizedActs, outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "matmul_many: one output per matrix");
    if ws.len() > MANY_MAX {
        for (w, out) in ws.chunks(MANY_MAX).zip(outs.chunks_mut(MANY_MAX)) {
            matmul_many(w, acts, out);
        }
        return;
    }
    let n_tok = acts.n_tok;
    let threads = rayon::current_num_threads();
    let mut parts: [Option<Part>; MANY_MAX] = [None; MANY_MAX];
    let mut total = 0;
    let mut work = 0;
    for (i, (w, out)) in ws.iter().zip(outs.iter_mut()).enumerate() {
        let row_bytes = check(w, acts, out);
        if w.rows == 0 || n_tok == 0 {
            continue;
        }
        let chunk = chunk_rows(w.rows, row_bytes, n_tok, threads);
        parts[i] = Some(Part {
            w: **w,
            kernel: pick_kernel(w.ty, acts),
            row_bytes,
            out: OutPtr(out.as_mut_ptr()),
            chunk,
            first: total,
        });
        total += w.rows.div_ceil(chunk);
        work += w.rows * row_bytes * n_tok;
    }
    let run = |c: usize| {
        let p = parts
            .iter()
            .flatten()
            .rfind(|p| p.first <= c)
            .expect("task of some matrix");
        let r0 = (c - p.first) * p.chunk;
        let r1 = (r0 + p.chunk).min(p.w.rows);
        // SAFETY: this call writes only out[t * rows + r] of matrix `p` for r
        // in r0..r1 and t < n_tok, in bounds by `check`; tasks get disjoint
        // row ranges and every output is borrowed mutably for the whole call.
        unsafe { run_rows(&p.kernel, &p.w, p.row_bytes, acts, r0, r1, p.out.get()) }
    };
    // Small matrices that each fit one task stay on this thread together
    // unless there is work for two tasks in all.
    if total <= 1 || work <= 2 * MIN_TASK_BYTES {
        (0..total).for_each(run);
    } else {
        crate::team::for_each(total, &run);
    }
}

fn pick_kernel(ty: GgmlType, acts: &QuantizedActs) -> Kernel {
    if interleave::is_interleaved(ty) {
        #[cfg(target_arch = "x86_64")]
        {
            use interleave::avx512::{available_for, Q4, Q4M, Q8, S24, SQ8};
            let kind = match ty {
                GgmlType::Frugal(FrugalType::Q8_0x16) => Q8,
                GgmlType::Frugal(FrugalType::Q4_1x16) => Q4M,
                GgmlType::Frugal(FrugalType::Sparse24Q8x16) => S24,
                GgmlType::Frugal(FrugalType::SparseQ8x16 { .. }) => SQ8,
                _ => Q4,
            };
            if acts.has_packed && available_for(kind) {
                return Kernel::Interleaved(kind);
            }
        }
        return Kernel::InterleavedRef;
    }
    let dot = traits(ty).expect("checked").vec_dot;
    #[cfg(target_arch = "x86_64")]
    if acts.has_packed && detected_isa() == Isa::Avx512 {
        if let Some(code) = crate::legacy::avx512::tile_type(ty) {
            return Kernel::Tile(code);
        }
        if let Some(kind) = crate::sparse::avx512::gemv_kind(ty) {
            return Kernel::Sparse(kind);
        }
    }
    Kernel::Dot(dot)
}

/// Computes rows `r0..r1` for every token.
///
/// # Safety
/// `out` must be valid for writes at `t * w.rows + r` for every `t < n_tok`,
/// `r0 <= r < r1 <= w.rows`, with no other access to those elements meanwhile;
/// `w`, `acts` and `kernel` must agree (checked by `matmul`).
unsafe fn run_rows(
    kernel: &Kernel,
    w: &QMatrix,
    row_bytes: usize,
    acts: &QuantizedActs,
    r0: usize,
    r1: usize,
    out: *mut f32,
) {
    let n_tok = acts.n_tok;
    match *kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Tile(code) => {
            let g = crate::legacy::avx512::TileArgs {
                w: w.data.as_ptr(),
                row_bytes,
                rows: r0..r1,
                acts: &acts.packed,
                out,
                ostride: w.rows,
            };
            // SAFETY: `pick_kernel` chose Tile only with AVX-512 detected and
            // activations packed from this weight type's dot type (checked in
            // `matmul`), of `cols / 32` blocks per row like the weights;
            // `matmul` checked the weight bytes (rows * row_bytes); the
            // output contract is ours (one token: `gemv`, same contract).
            unsafe {
                if n_tok == 1 && crate::legacy::avx512::gemv_available() {
                    crate::legacy::avx512::gemv(code, &g)
                } else {
                    crate::legacy::avx512::tile(code, &g)
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Sparse(kind) => {
            // One token at a time over blocks of 16 rows, which stay in
            // cache while every token passes.
            const RB: usize = 16;
            let step = if n_tok == 1 { r1 - r0 } else { RB };
            let mut rb = r0;
            while rb < r1 {
                let re = (rb + step).min(r1);
                for t in 0..n_tok {
                    // SAFETY: `pick_kernel` chose Sparse only with packed
                    // Q8_0 activations (checked against the weight type in
                    // `matmul`); `gemv` checks the rest and writes only
                    // out[t * rows + r] for r in rb..re, owned by this call
                    // (function contract).
                    unsafe {
                        crate::sparse::avx512::gemv(
                            kind,
                            w.data,
                            row_bytes,
                            w.cols,
                            rb..re,
                            &acts.packed,
                            t,
                            acts.row(t),
                            out.add(t * w.rows),
                        )
                    };
                }
                rb = re;
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Interleaved(kind) => {
            // SAFETY: `pick_kernel` chose this only with the kernel's CPU
            // features and packed activations of `cols / 32` blocks, of the
            // type `matmul` checked against the weights;
            // `matmul` checked the weight bytes, whole 16-row groups, and
            // task ranges are multiples of 16 rows (`chunk_rows`); rows
            // r0..r1 of every token are ours (function contract).
            unsafe {
                interleave::avx512::matmul(
                    kind,
                    w.data.as_ptr(),
                    w.data.len(),
                    w.cols / 32,
                    row_bytes,
                    r0 / interleave::ROWS..r1.div_ceil(interleave::ROWS),
                    &acts.packed,
                    &acts.data,
                    out,
                    w.rows,
                )
            }
        }
        Kernel::InterleavedRef => {
            let mut tmp = vec![0.0f32; n_tok * (r1 - r0)];
            interleave::matmul_ref(
                w.ty,
                w.data,
                w.cols,
                r0..r1,
                &acts.data,
                n_tok,
                &mut tmp,
                r1 - r0,
            );
            for t in 0..n_tok {
                for r in r0..r1 {
                    // SAFETY: t < n_tok, r < r1 <= rows: in bounds and owned
                    // by this call (function contract).
                    unsafe { *out.add(t * w.rows + r) = tmp[t * (r1 - r0) + r - r0] };
                }
            }
        }
        Kernel::Dot(dot) => {
            const RB: usize = 16;
            let mut rb = r0;
            while rb < r1 {
                let re = (rb + RB).min(r1);
                if n_tok == 1 {
                    // One token streams the weights once: fetch the next
                    // row block while this one is computed.
                    let ahead = w.data.as_ptr().wrapping_add(re * row_bytes);
                    let mut off = 0;
                    while off < (re - rb) * row_bytes {
                        prefetch(ahead.wrapping_add(off));
                        off += 64;
                    }
                }
                for t in 0..n_tok {
                    let a = acts.row(t);
                    for r in rb..re {
                        let v = dot(w.cols, &w.data[r * row_bytes..(r + 1) * row_bytes], a);
                        // SAFETY: t < n_tok, r < r1 <= rows: in bounds and
                        // owned by this call (function contract).
                        unsafe { *out.add(t * w.rows + r) = v };
                    }
                }
                rb = re;
            }
        }
    }
}

/// Convenience: quantize x to w's vec_dot type into `acts`, then matmul.
pub fn matmul_f32(w: &QMatrix, x: &[f32], n_tok: usize, acts: &mut QuantizedActs, out: &mut [f32]) {
    let dot_ty =
        crate::vec_dot_type(w.ty).unwrap_or_else(|| panic!("matmul: no kernels for {}", w.ty));
    acts.quantize(dot_ty, x, n_tok, w.cols);
    matmul(w, acts, out);
}

/// Reference matmul for tests: single-threaded, the scalar `vec_dot_ref` per
/// (row, token), same output layout as [`matmul`].
pub fn matmul_ref(w: &QMatrix, acts: &QuantizedActs, out: &mut [f32]) {
    if interleave::is_interleaved(w.ty) {
        assert_eq!(
            Some(acts.dot_ty),
            crate::vec_dot_type(w.ty),
            "matmul_ref: activation type"
        );
        assert_eq!(out.len(), acts.n_tok * w.rows, "matmul_ref: output length");
        interleave::matmul_ref(
            w.ty,
            w.data,
            w.cols,
            0..w.rows,
            &acts.data,
            acts.n_tok,
            out,
            w.rows,
        );
        return;
    }
    let tr = traits(w.ty).unwrap_or_else(|| panic!("matmul: no kernels for {}", w.ty));
    assert_eq!(acts.dot_ty, tr.vec_dot_type, "matmul_ref: activation type");
    assert_eq!(acts.cols, w.cols, "matmul_ref: columns");
    assert_eq!(out.len(), acts.n_tok * w.rows, "matmul_ref: output length");
    for t in 0..acts.n_tok {
        for r in 0..w.rows {
            out[t * w.rows + r] = (tr.vec_dot_ref)(w.cols, w.row(r), acts.row(t));
        }
    }
}

/// Hints the CPU to bring the cache line at `p` into L1 (any address).
#[inline]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86-64 baseline; a prefetch only hints the
    // cache and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
}
