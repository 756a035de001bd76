//! Micro-benchmarks of the matmul (ignored by default). Run with
//! `cargo test --release -p frugal-kernels --test matmul_bench -- --ignored --nocapture`.
//!
//! Shapes are SmolLM2-135M's (hidden 576, FFN 1536, 30 layers, Q4_1 weights,
//! Q8_0 tied embedding/output of 49152 rows).

use frugal_formats::{FrugalType, GgmlType};
use frugal_kernels::matmul::{matmul, QMatrix, QuantizedActs};
use frugal_kernels::traits::{detected_isa, traits};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// A random matrix; quantizing real floats keeps scales realistic.
fn matrix(ty: GgmlType, rows: usize, cols: usize, r: &mut StdRng) -> Vec<u8> {
    let t = traits(ty).unwrap();
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut out = vec![0u8; rows * rb];
    let mut x = vec![0.0f32; cols];
    for row in out.chunks_exact_mut(rb) {
        x.iter_mut().for_each(|v| *v = r.gen_range(-1.0..1.0));
        (t.from_float.unwrap())(&x, row);
    }
    out
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// CPU time of the whole process (all threads), in seconds.
fn process_cpu() -> f64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: CLOCK_PROCESS_CPUTIME_ID (2) on Linux; `ts` is a valid timespec.
    let rc = unsafe { clock_gettime(2, &mut ts) };
    assert_eq!(rc, 0);
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

/// Seconds per call of `f` over `iters` calls, after warm-up: the best of 7
/// wall-clock runs, and the process CPU time of that run divided by the
/// threads used (the machine may be shared: CPU time excludes waits for it).
fn time<F: FnMut()>(iters: usize, mut f: F) -> f64 {
    time2(iters, 1, &mut f).0
}

fn time2<F: FnMut()>(iters: usize, threads: usize, mut f: F) -> (f64, f64) {
    for _ in 0..iters.div_ceil(10).max(2) {
        f();
    }
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..7 {
        let (t, c) = (Instant::now(), process_cpu());
        for _ in 0..iters {
            f();
        }
        let wall = t.elapsed().as_secs_f64() / iters as f64;
        let cpu = (process_cpu() - c) / iters as f64 / threads as f64;
        if wall < best.0 {
            best = (wall, cpu);
        }
    }
    best
}

#[test]
#[ignore]
fn bench_matvec_and_prefill() {
    println!("ISA: {:?}", detected_isa());
    let mut r = StdRng::seed_from_u64(5);
    for threads in [1, 2] {
        let p = pool(threads);
        for (ty, rows, cols) in [
            (GgmlType::Q4_1, 576, 1536),
            (GgmlType::Q4_1, 1536, 576),
            (GgmlType::Q4_1, 576, 576),
            (GgmlType::Q8_0, 1536, 576),
            (GgmlType::Q8_0, 49152, 576),
            (GgmlType::Q5_0, 4864, 896),
            (GgmlType::Q5_0, 896, 4864),
            (GgmlType::Q5_0, 896, 896),
            (GgmlType::Q4_0, 896, 896),
            (GgmlType::Q5_1, 896, 896),
        ] {
            let data = matrix(ty, rows, cols, &mut r);
            let w = QMatrix::new(ty, rows, cols, &data);
            let dot = traits(ty).unwrap().vec_dot_type;
            // Decode: one token, matrix hot in cache.
            let x: Vec<f32> = (0..cols).map(|_| r.gen_range(-1.0..1.0)).collect();
            let mut acts = QuantizedActs::new();
            acts.quantize(dot, &x, 1, cols);
            let mut out = vec![0.0f32; rows];
            let iters = (20_000_000 / data.len()).clamp(3, 20_000);
            let (s, c) = p.install(|| time2(iters, threads, || matmul(&w, &acts, &mut out)));
            println!(
                "{threads}T {ty} {rows}x{cols} matvec: {:8.2} us  {:6.1} GB/s  (cpu time: {:8.2} us {:6.1} GB/s)",
                s * 1e6,
                data.len() as f64 / s / 1e9,
                c * 1e6,
                data.len() as f64 / c / 1e9
            );
            // Prefill: 128 tokens.
            let n = 128;
            let x: Vec<f32> = (0..n * cols).map(|_| r.gen_range(-1.0..1.0)).collect();
            acts.quantize(dot, &x, n, cols);
            let mut out = vec![0.0f32; n * rows];
            let (s, c) =
                p.install(|| time2((iters / 64).max(2), threads, || matmul(&w, &acts, &mut out)));
            let flop = 2.0 * (rows * cols * n) as f64;
            println!(
                "{threads}T {ty} {rows}x{cols} prefill 128: {:8.1} us  {:6.1} GFLOP/s  (cpu time: {:8.1} us {:6.1} GFLOP/s)",
                s * 1e6,
                flop / s / 1e9,
                c * 1e6,
                flop / c / 1e9
            );
            let s = time(200, || acts.quantize(dot, &x, n, cols));
            println!("   quantize 128 x {cols} to {dot}: {:.1} us", s * 1e6);
        }
    }
}

/// All SmolLM2-135M matmuls of one forward pass, each matrix distinct (~96 MB
/// of weights, as the real model streams them): decode tokens/s and 128-token
/// prefill tokens/s from the matmuls alone.
#[test]
#[ignore]
fn bench_smollm2_matmuls() {
    model_matmuls(GgmlType::Q4_1, SMOLLM2);
}

/// The same shapes with the block matrices dense Q8_0, then in the sparse
/// int8 types at 50 % (`SQ8_32of64`, `SQ8_2of4`), the output matrix Q8_0
/// in all three: the decode-speed comparison of pruned models.
#[test]
#[ignore]
fn bench_smollm2_sparse_matmuls() {
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 }),
        GgmlType::Frugal(FrugalType::Sparse24Q8),
    ] {
        println!("{ty}:");
        model_matmuls(ty, SMOLLM2);
    }
}

/// [`bench_smollm2_sparse_matmuls`] with every matrix in its interleaved
/// run-time layout (`Q8_0x16`, `SQ8_32of64x16`, `SQ8_2of4x16`), as `frugal`
/// runs a model read into memory.
#[test]
#[ignore]
fn bench_smollm2_sparse_interleaved_matmuls() {
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 }),
        GgmlType::Frugal(FrugalType::Sparse24Q8),
    ] {
        println!("{ty}:");
        model_matmuls_in(ty, SMOLLM2, true);
    }
}

/// [`bench_smollm2_sparse_interleaved_matmuls`] with Qwen2.5-0.5B's shapes,
/// whose dense Q8_0 output matrix is 28 % of a dense Q8_0 model's bytes:
/// each sparse type with that output matrix, then with it sparse too
/// (`frugal prune --prune-output`).
#[test]
#[ignore]
fn bench_qwen05_sparse_interleaved_matmuls() {
    let q8 = GgmlType::Q8_0;
    let sq8 = GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 });
    let s24 = GgmlType::Frugal(FrugalType::Sparse24Q8);
    for (ty, out) in [(q8, q8), (sq8, q8), (sq8, sq8), (s24, q8), (s24, s24)] {
        println!("{ty}, output matrix {out}:");
        model_matmuls_out(ty, out, QWEN05, true);
    }
}

/// The same for Qwen2.5-0.5B as llama-quantize writes it at Q4_0 (~346 MB:
/// Q4_0 blocks, a Q8_0 output matrix of 151936 rows that is 42 % of the bytes).
#[test]
#[ignore]
fn bench_qwen05_q4_0_matmuls() {
    model_matmuls(GgmlType::Q4_0, QWEN05);
}

/// SmolLM2-135M's matrix shapes.
const SMOLLM2: Shape = Shape {
    hidden: 576,
    ffn: 1536,
    kv: 192,
    layers: 30,
    vocab: 49152,
};

/// Qwen2.5-0.5B's matrix shapes.
const QWEN05: Shape = Shape {
    hidden: 896,
    ffn: 4864,
    kv: 128,
    layers: 24,
    vocab: 151936,
};

struct Shape {
    hidden: usize,
    ffn: usize,
    kv: usize,
    layers: usize,
    vocab: usize,
}

/// Qwen2.5-0.5B Q4_0 with every matrix in the interleaved run-time layout
/// (`Q4_0x16`, `Q8_0x16`), as `frugal` runs it after reading it into memory.
#[test]
#[ignore]
fn bench_qwen05_q4_0_interleaved_matmuls() {
    model_matmuls_in(GgmlType::Q4_0, QWEN05, true);
}

/// SmolLM2 in Q8_0, ggml layout then interleaved (`Q8_0x16`).
#[test]
#[ignore]
fn bench_smollm2_q8_0_interleaved_matmuls() {
    for interleaved in [false, true] {
        println!("interleaved: {interleaved}");
        model_matmuls_in(GgmlType::Q8_0, SMOLLM2, interleaved);
    }
}

fn model_matmuls(block_ty: GgmlType, sh: Shape) {
    model_matmuls_in(block_ty, sh, false)
}

fn model_matmuls_in(block_ty: GgmlType, sh: Shape, interleaved: bool) {
    model_matmuls_out(block_ty, GgmlType::Q8_0, sh, interleaved)
}

/// The forward pass's matmuls with block matrices of `block_ty` and an
/// output matrix of `out_ty`.
fn model_matmuls_out(block_ty: GgmlType, out_ty: GgmlType, sh: Shape, interleaved: bool) {
    let mut r = StdRng::seed_from_u64(6);
    let Shape {
        hidden,
        ffn,
        kv,
        layers,
        vocab,
    } = sh;
    let block_dot = traits(block_ty).unwrap().vec_dot_type;
    let mut mats: Vec<(GgmlType, usize, usize, Vec<u8>)> = Vec::new();
    for _ in 0..layers {
        for (rows, cols) in [
            (hidden, hidden),
            (kv, hidden),
            (kv, hidden),
            (hidden, hidden),
            (ffn, hidden),
            (ffn, hidden),
            (hidden, ffn),
        ] {
            mats.push((block_ty, rows, cols, matrix(block_ty, rows, cols, &mut r)));
        }
    }
    mats.push((out_ty, vocab, hidden, matrix(out_ty, vocab, hidden, &mut r)));
    if interleaved {
        for (ty, rows, cols, data) in &mut mats {
            if frugal_kernels::interleave::can_interleave(*ty, *rows, *cols) {
                *ty = frugal_kernels::interleave::interleave_in_place(*ty, *rows, *cols, data)
                    .expect("packed by frugal");
            }
        }
    }
    let bytes: usize = mats.iter().map(|m| m.3.len()).sum();
    let out_bytes = mats.last().unwrap().3.len();
    println!("{} matrices, {:.1} MB", mats.len(), bytes as f64 / 1e6);
    for threads in [1, 2] {
        let p = pool(threads);
        for n_tok in [1usize, 128] {
            let xh: Vec<f32> = (0..n_tok * ffn).map(|_| r.gen_range(-1.0..1.0)).collect();
            let mut a_h1 = QuantizedActs::new();
            let mut a_f1 = QuantizedActs::new();
            let mut a_h0 = QuantizedActs::new();
            let mut out = vec![0.0f32; n_tok * vocab];
            if n_tok == 1 {
                // Time by shape, over many passes (each matrix cold, as in the pass).
                let mut by_shape =
                    std::collections::BTreeMap::<(usize, usize), (f64, usize)>::new();
                p.install(|| {
                    for _ in 0..20 {
                        a_h1.quantize(block_dot, &xh[..hidden], 1, hidden);
                        a_f1.quantize(block_dot, &xh[..ffn], 1, ffn);
                        for (ty, rows, cols, data) in &mats {
                            let w = QMatrix::new(*ty, *rows, *cols, data);
                            let acts = if *cols == ffn { &a_f1 } else { &a_h1 };
                            if Some(acts.dot_type()) != frugal_kernels::vec_dot_type(*ty) {
                                continue;
                            }
                            let t = Instant::now();
                            matmul(&w, acts, &mut out[..*rows]);
                            let e = by_shape.entry((*rows, *cols)).or_default();
                            e.0 += t.elapsed().as_secs_f64();
                            e.1 += data.len();
                        }
                    }
                });
                for ((rows, cols), (s, b)) in by_shape {
                    println!(
                        "{threads}T   {rows}x{cols}: {:8.2} ms per pass  {:6.1} GB/s",
                        s * 1e3 / 20.0,
                        b as f64 / s / 1e9
                    );
                }
            }
            // As a forward pass: quantize each input once, reuse it. The
            // output matrix alone is timed too (`only_output`).
            let mut pass = |only_output: bool| {
                a_h1.quantize(block_dot, &xh[..n_tok * hidden], n_tok, hidden);
                a_f1.quantize(block_dot, &xh[..n_tok * ffn], n_tok, ffn);
                a_h0.quantize(GgmlType::Q8_0, &xh[..n_tok * hidden], n_tok, hidden);
                let skip = if only_output { mats.len() - 1 } else { 0 };
                for (ty, rows, cols, data) in &mats[skip..] {
                    let w = QMatrix::new(*ty, *rows, *cols, data);
                    let acts = match (*ty, *cols) {
                        (t, _) if t == GgmlType::Q8_0 && t != block_ty => &a_h0,
                        (_, c) if c == ffn => &a_f1,
                        _ => &a_h1,
                    };
                    matmul(&w, acts, &mut out[..n_tok * rows]);
                }
            };
            let iters = if n_tok == 1 { 10 } else { 1 };
            let (s, c) = p.install(|| time2(iters, threads, || pass(false)));
            let flop = 2.0 * n_tok as f64 * mats.iter().map(|m| (m.1 * m.2) as f64).sum::<f64>();
            println!(
                "{threads}T n_tok={n_tok}: {:8.2} ms/pass  {:7.1} tokens/s  {:6.1} GB/s  {:6.1} GFLOP/s  (cpu time: {:8.2} ms, {:7.1} tokens/s)",
                s * 1e3,
                n_tok as f64 / s,
                bytes as f64 / s / 1e9,
                flop / s / 1e9,
                c * 1e3,
                n_tok as f64 / c
            );
            if n_tok == 1 {
                let (s, _) = p.install(|| time2(iters, threads, || pass(true)));
                println!(
                    "{threads}T output matrix alone: {:8.2} ms  {:6.1} GB/s",
                    s * 1e3,
                    out_bytes as f64 / s / 1e9
                );
            }
        }
    }
}

#[test]
#[ignore]
fn bench_quantize_parts() {
    let mut r = StdRng::seed_from_u64(7);
    let (n, cols) = (128usize, 1536usize);
    let x: Vec<f32> = (0..n * cols).map(|_| r.gen_range(-1.0..1.0)).collect();
    let mut buf = vec![0u8; n * cols / 32 * 36];
    let p = pool(1);
    for (name, f) in [
        (
            "q8_1 dispatched",
            frugal_kernels::legacy::quantize_row_q8_1 as fn(&[f32], &mut [u8]),
        ),
        (
            "q8_1 ref",
            frugal_kernels::legacy::scalar::quantize_q8_1_ref,
        ),
    ] {
        let s = time(50, || f(&x, &mut buf));
        println!(
            "{name}: {:.1} us ({:.2} ns/block)",
            s * 1e6,
            s * 1e9 / (n * cols / 32) as f64
        );
    }
    let mut acts = QuantizedActs::new();
    let s = p.install(|| time(50, || acts.quantize(GgmlType::Q8_1, &x, n, cols)));
    println!("QuantizedActs::quantize: {:.1} us", s * 1e6);
}

/// Large (cache-exceeding) matrices, one token, one thread.
#[test]
#[ignore]
fn bench_big_matvec() {
    let mut r = StdRng::seed_from_u64(8);
    let p = pool(1);
    for (ty, rows, cols) in [
        (GgmlType::Q8_0, 49152, 576),
        (GgmlType::Q8_0, 55296, 512),
        (GgmlType::Q4_1, 49152, 576),
        (GgmlType::Q4_1, 55296, 512),
    ] {
        let data = matrix(ty, rows, cols, &mut r);
        let w = QMatrix::new(ty, rows, cols, &data);
        let x: Vec<f32> = (0..cols).map(|_| r.gen_range(-1.0..1.0)).collect();
        let mut acts = QuantizedActs::new();
        acts.quantize(traits(ty).unwrap().vec_dot_type, &x, 1, cols);
        let mut out = vec![0.0f32; rows];
        let (s, c) = p.install(|| time2(20, 1, || matmul(&w, &acts, &mut out)));
        println!(
            "{ty} {rows}x{cols}: {:8.1} us {:6.1} GB/s (cpu {:8.1} us {:6.1} GB/s)",
            s * 1e6,
            data.len() as f64 / s / 1e9,
            c * 1e6,
            data.len() as f64 / c / 1e9
        );
    }
}

/// Per-call overhead of the threaded matmul on small matrices: called from
/// inside the pool (as a forward pass run under `install` would) and from outside.
#[test]
#[ignore]
fn bench_call_overhead() {
    let mut r = StdRng::seed_from_u64(9);
    for (rows, cols) in [(64usize, 576usize), (192, 576), (576, 576)] {
        let ty = GgmlType::Q4_1;
        let data = matrix(ty, rows, cols, &mut r);
        let w = QMatrix::new(ty, rows, cols, &data);
        let x: Vec<f32> = (0..cols).map(|_| r.gen_range(-1.0..1.0)).collect();
        let mut acts = QuantizedActs::new();
        acts.quantize(GgmlType::Q8_1, &x, 1, cols);
        let mut out = vec![0.0f32; rows];
        for threads in [1, 2] {
            let p = pool(threads);
            let (inside, _) = p.install(|| time2(2000, threads, || matmul(&w, &acts, &mut out)));
            let (outside, _) = time2(2000, threads, || p.install(|| matmul(&w, &acts, &mut out)));
            println!(
                "{threads}T Q4_1 {rows}x{cols}: inside pool {:6.2} us, outside {:6.2} us",
                inside * 1e6,
                outside * 1e6
            );
        }
    }
}

/// The kernels' own speed, without memory in the way: one SmolLM2 FFN-down
/// shaped matrix (1536 x 576, under 1 MB, so it stays in L2) in ggml's
/// layout and in the interleaved one, one thread, one token: weights per
/// nanosecond for dense Q8_0 and the two sparse int8 types at 50 %.
#[test]
#[ignore]
fn bench_kernels_in_cache() {
    let mut r = StdRng::seed_from_u64(3);
    let (rows, cols) = (1536, 576);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 }),
        GgmlType::Frugal(FrugalType::Sparse24Q8),
    ] {
        let x: Vec<f32> = (0..cols).map(|_| r.gen_range(-1.0..1.0)).collect();
        let mut qa = QuantizedActs::new();
        qa.quantize(frugal_kernels::vec_dot_type(ty).unwrap(), &x, 1, cols);
        let data = matrix(ty, rows, cols, &mut r);
        let mut il = data.clone();
        let ity = frugal_kernels::interleave::interleave_in_place(ty, rows, cols, &mut il)
            .expect("packed by frugal");
        for (name, ty, bytes) in [("ggml", ty, &data), ("interleaved", ity, &il)] {
            let w = QMatrix::new(ty, rows, cols, bytes);
            let mut out = vec![0.0f32; rows];
            let s = pool(1).install(|| time(2000, || matmul(&w, &qa, &mut out)));
            println!(
                "{:>16} ({name:>11}): {:6.1} us, {:5.1} GB/s, {:5.1} weights/ns",
                ty.name(),
                s * 1e6,
                bytes.len() as f64 / s / 1e9,
                (rows * cols) as f64 / s / 1e9
            );
        }
    }
}
