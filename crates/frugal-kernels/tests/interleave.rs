//! The interleaved run-time layouts (Q4_0x16, Q4_1x16, Q8_0x16, SQ8_2of4x16,
//! SQ8_32of64x16): the layout round-trips to ggml's bytes, dequantizes to the same values, and its matmul
//! (the SIMD kernel, 1 and 2 threads, decode and prompt token counts)
//! equals its scalar reference bit for bit and the ggml layout's result to
//! rounding.

mod matmul_common;
use frugal_formats::{FrugalType, GgmlType};
use frugal_kernels::interleave::{self, can_interleave, interleave_in_place};
use frugal_kernels::matmul::{matmul, matmul_many, matmul_ref, QMatrix, QuantizedActs};
use matmul_common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

const TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Frugal(FrugalType::Sparse24Q8),
    GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 }),
];

#[test]
fn layout_round_trips_and_dequantizes_the_same() {
    let mut r = StdRng::seed_from_u64(7);
    for ty in TYPES {
        // Unstructured sparse rows are whole multiples of 64 (its groups of 4
        // blocks end in one of 2 at 320).
        for (rows, cols) in [
            (16, 32),
            (32, 96),
            (48, 576),
            (16, 160),
            (16, 64),
            (32, 320),
        ] {
            if !can_interleave(ty, rows, cols) {
                continue;
            }
            let c = make_case(ty, rows, cols, &mut r);
            let mut il = c.wbytes.clone();
            let ity = interleave_in_place(ty, rows, cols, &mut il).unwrap();
            assert_eq!(ity.interleaved_base(), Some(ty));
            assert_ne!(
                il, c.wbytes,
                "{ty} {rows}x{cols}: the layout changed nothing"
            );
            assert_eq!(
                interleave::to_ggml(ity, &il, rows, cols),
                (ty, c.wbytes.clone())
            );
            let mut a = vec![0.0f32; rows * cols];
            let mut b = vec![1.0f32; rows * cols];
            frugal_kernels::dequantize_rows(ty, &c.wbytes, &mut a, cols).unwrap();
            frugal_kernels::dequantize_rows(ity, &il, &mut b, cols).unwrap();
            assert_eq!(a, b, "{ty} {rows}x{cols}");
        }
    }
}

#[test]
fn bad_shapes_are_refused() {
    assert!(!can_interleave(GgmlType::Q5_0, 16, 32));
    assert!(!can_interleave(GgmlType::Q4K, 16, 256));
    assert!(!can_interleave(GgmlType::Q8_0, 24, 32));
    assert!(!can_interleave(GgmlType::Q8_0, 0, 32));
    assert!(can_interleave(GgmlType::Q8_0, 32, 64));
    let sq8 = GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 });
    assert!(
        !can_interleave(sq8, 16, 96),
        "sparse rows are multiples of 64"
    );
    assert!(can_interleave(sq8, 16, 128));
    let ity = GgmlType::Q8_0.interleaved16().unwrap();
    let mut out = vec![0.0f32; 24 * 32];
    let err = frugal_kernels::dequantize_rows(ity, &vec![0u8; 24 * 34], &mut out, 32).unwrap_err();
    assert!(err.to_string().contains("groups of 16 rows"), "{err}");
    assert!(frugal_kernels::dequantize(ity, &vec![0u8; 16 * 34], &mut vec![0.0; 16 * 32]).is_err());
    // Never written to a file.
    let mut w = frugal_formats::gguf::GgufWriter::new();
    let e = w
        .add_tensor("t", ity, vec![32, 16], vec![0u8; 16 * 34])
        .unwrap_err();
    assert!(e.to_string().contains("run-time"), "{e}");
}

#[test]
fn matmul_matches_reference_and_ggml_layout() {
    let mut r = StdRng::seed_from_u64(11);
    for ty in TYPES {
        for (rows, cols) in [(16, 32), (64, 160), (96, 576), (16, 64), (64, 320)] {
            if !can_interleave(ty, rows, cols) {
                continue;
            }
            let c = make_case(ty, rows, cols, &mut r);
            let mut il = c.wbytes.clone();
            let ity = interleave_in_place(ty, rows, cols, &mut il).unwrap();
            let wg = QMatrix::new(ty, rows, cols, &c.wbytes);
            let wi = QMatrix::new(ity, rows, cols, &il);
            for n_tok in [1usize, 2, 3, 4, 7, 17] {
                let x = acts(n_tok, cols, &mut r);
                let mut qa = QuantizedActs::new();
                qa.quantize(frugal_kernels::vec_dot_type(ty).unwrap(), &x, n_tok, cols);
                let mut want = vec![0.0f32; n_tok * rows];
                matmul_ref(&wi, &qa, &mut want);
                let mut ggml = vec![0.0f32; n_tok * rows];
                matmul_ref(&wg, &qa, &mut ggml);
                // Same integer sums and scales; only the float summation
                // order of the blocks' terms differs from ggml's.
                let scale = ggml.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (i, (a, b)) in want.iter().zip(&ggml).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale * (cols as f32 / 32.0),
                        "{ty} {rows}x{cols} n_tok={n_tok} [{i}]: {a} vs ggml {b}"
                    );
                }
                for threads in [1, 2] {
                    let mut got = vec![f32::NAN; n_tok * rows];
                    pool(threads).install(|| matmul(&wi, &qa, &mut got));
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{ty} {rows}x{cols} n_tok={n_tok} threads={threads} [{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

/// Interleaved and ggml matrices of the same activation type in one
/// `matmul_many` region give what separate calls give.
#[test]
fn matmul_many_mixes_layouts() {
    let mut r = StdRng::seed_from_u64(13);
    let cols = 96;
    let a = make_case(GgmlType::Q8_0, 48, cols, &mut r);
    let b = make_case(GgmlType::Q4_0, 32, cols, &mut r);
    let mut bi = b.wbytes.clone();
    let bty = interleave_in_place(GgmlType::Q4_0, 32, cols, &mut bi).unwrap();
    let wa = QMatrix::new(GgmlType::Q8_0, 48, cols, &a.wbytes);
    let wb = QMatrix::new(bty, 32, cols, &bi);
    for n_tok in [1usize, 5] {
        let x = acts(n_tok, cols, &mut r);
        let mut qa = QuantizedActs::new();
        qa.quantize(GgmlType::Q8_0, &x, n_tok, cols);
        let (mut sa, mut sb) = (vec![0.0; n_tok * 48], vec![0.0; n_tok * 32]);
        matmul(&wa, &qa, &mut sa);
        matmul(&wb, &qa, &mut sb);
        let (mut ma, mut mb) = (vec![1.0; n_tok * 48], vec![1.0; n_tok * 32]);
        pool(2).install(|| matmul_many(&[&wa, &wb], &qa, &mut [&mut ma, &mut mb]));
        assert_eq!(sa, ma);
        assert_eq!(sb, mb);
    }
}

/// A sparse row whose bitmaps claim more codes than it holds (a hostile
/// file) keeps the whole matrix as it was: the row kernel reads it safely.
#[test]
fn hostile_sparse_rows_are_not_laid_out() {
    let ty = GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 });
    let mut r = StdRng::seed_from_u64(17);
    let (rows, cols) = (32, 128);
    let c = make_case(ty, rows, cols, &mut r);
    let rb = c.wbytes.len() / rows;
    let mut bad = c.wbytes.clone();
    // Row 20 (second group): every bitmap bit set, 128 codes claimed of 64.
    bad[20 * rb..20 * rb + 8].fill(0xFF);
    bad[20 * rb + 8..20 * rb + 16].fill(0xFF);
    let before = bad.clone();
    let err = interleave_in_place(ty, rows, cols, &mut bad).unwrap_err();
    assert!(err.contains("claim 128 codes"), "{err}");
    assert_eq!(bad, before, "a refused matrix is left as it was");
    // The same matrix without the bad row is laid out.
    let mut good = c.wbytes.clone();
    assert!(interleave_in_place(ty, rows, cols, &mut good).is_ok());
}

/// Rows that all keep their full share leave no padding, so the last
/// chunks' codes end at the matrix's last byte: the kernel must read every
/// code and nothing past the matrix, which here ends where an inaccessible
/// page begins (a read past it faults), for 1–5 tokens.
#[test]
fn full_sparse_rows_end_at_the_matrix_end() {
    let ty = GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 });
    let q = frugal_kernels::traits(ty).unwrap().from_float.unwrap();
    let mut r = StdRng::seed_from_u64(19);
    for (rows, cols) in [(16, 64), (32, 320)] {
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let mut w = vec![0u8; rows * rb];
        for row in w.chunks_exact_mut(rb) {
            let x: Vec<f32> = (0..cols)
                .map(|_| rand::Rng::gen_range(&mut r, 0.1f32..1.0))
                .collect();
            q(&x, row);
        }
        // Every weight is nonzero, so each row keeps exactly its capacity
        // and no 0x80 padding is left at its end.
        assert!(w.chunks_exact(rb).all(|row| row[rb - 1] != 0x80));
        let mut il = w.clone();
        let ity = interleave_in_place(ty, rows, cols, &mut il).unwrap();
        let guarded = guard::Guarded::new(&il);
        let wi = QMatrix::new(ity, rows, cols, guarded.bytes());
        for n_tok in 1..=5 {
            let x = acts(n_tok, cols, &mut r);
            let mut qa = QuantizedActs::new();
            qa.quantize(GgmlType::Q8_0, &x, n_tok, cols);
            let (mut want, mut got) = (vec![0.0f32; n_tok * rows], vec![f32::NAN; n_tok * rows]);
            matmul_ref(&wi, &qa, &mut want);
            matmul(&wi, &qa, &mut got);
            assert_eq!(got, want, "{rows}x{cols} n_tok={n_tok}");
        }
    }
}

/// Bytes placed so that they end where an inaccessible page begins.
#[cfg(target_os = "linux")]
mod guard {
    use std::ffi::c_void;
    extern "C" {
        fn mmap(
            addr: *mut c_void,
            len: usize,
            prot: i32,
            flags: i32,
            fd: i32,
            off: i64,
        ) -> *mut c_void;
        fn mprotect(addr: *mut c_void, len: usize, prot: i32) -> i32;
        fn munmap(addr: *mut c_void, len: usize) -> i32;
    }
    const PAGE: usize = 4096;
    const PROT_NONE: i32 = 0;
    const PROT_RW: i32 = 1 | 2;
    const MAP_PRIVATE_ANON: i32 = 0x02 | 0x20;

    pub struct Guarded {
        base: *mut u8,
        len: usize,
        n: usize,
    }

    impl Guarded {
        pub fn new(bytes: &[u8]) -> Guarded {
            let data_pages = bytes.len().div_ceil(PAGE);
            let len = (data_pages + 1) * PAGE;
            // SAFETY: a fresh private anonymous mapping of `len` bytes; its
            // last page is made inaccessible, the bytes copied to end just
            // before it, inside the readable pages.
            unsafe {
                let base = mmap(std::ptr::null_mut(), len, PROT_RW, MAP_PRIVATE_ANON, -1, 0);
                assert!(base as isize != -1, "mmap failed");
                let base = base.cast::<u8>();
                let guard = base.add(data_pages * PAGE);
                assert_eq!(
                    mprotect(guard.cast(), PAGE, PROT_NONE),
                    0,
                    "mprotect failed"
                );
                let at = guard.sub(bytes.len());
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
                Guarded {
                    base,
                    len,
                    n: bytes.len(),
                }
            }
        }

        pub fn bytes(&self) -> &[u8] {
            // SAFETY: the `n` bytes before the guard page, written in `new`
            // and alive until `drop`.
            unsafe {
                let guard = self.base.add(self.len - PAGE);
                std::slice::from_raw_parts(guard.sub(self.n), self.n)
            }
        }
    }

    impl Drop for Guarded {
        fn drop(&mut self) {
            // SAFETY: the mapping `new` made, unmapped once.
            unsafe { munmap(self.base.cast(), self.len) };
        }
    }
}
