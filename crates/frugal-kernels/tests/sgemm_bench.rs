//! Micro-benchmark of the dense f32 GEMM behind `sgemm` (ignored by default):
//! the AVX-512 kernel next to the `gemm` crate, at the shapes calibration and
//! GPTQ run (SmolLM2-135M: hidden 576, FFN 1536, 2048-token chunks), on one
//! thread and on the whole rayon pool. Reports GFLOP/s (2·m·n·k per call).
//!
//! cargo test --release -p frugal-kernels --test sgemm_bench -- --ignored --nocapture

use frugal_kernels::sgemm::{sgemm_with, SgemmKernel, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

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

/// Seconds per call of `f` on `threads` threads: the best wall-clock time of
/// 9 runs of about 20 ms, and the least process CPU time per call divided by
/// `threads` (the machine may be shared: CPU time leaves out the time other
/// processes held the cores, and the best run is the least disturbed one).
fn time<F: FnMut()>(flops: f64, threads: usize, mut f: F) -> (f64, f64) {
    f();
    let iters = ((2e9 / flops) as usize).clamp(1, 10_000);
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..9 {
        let (t, c) = (Instant::now(), process_cpu());
        for _ in 0..iters {
            f();
        }
        let wall = t.elapsed().as_secs_f64() / iters as f64;
        let cpu = (process_cpu() - c) / iters as f64 / threads as f64;
        best = (best.0.min(wall), best.1.min(cpu));
    }
    best
}

/// (label, m, n, k, A stored transposed (`k × m` row-major), B stored
/// transposed (`n × k`), accumulate).
type Case = (&'static str, usize, usize, usize, bool, bool, bool);

const CASES: [Case; 7] = [
    // linear(): x · Wᵀ for the attention and FFN projections.
    ("x·Wᵀ", 2048, 576, 576, false, true, false),
    ("x·Wᵀ", 2048, 1536, 576, false, true, false),
    ("x·Wᵀ", 2048, 576, 1536, false, true, false),
    // syrk_upper(): the first 64-row block of xᵀx over a 2048-token chunk.
    ("xᵀ·x", 64, 576, 2048, true, false, true),
    ("xᵀ·x", 64, 1536, 2048, true, false, true),
    // GPTQ: W[:, i2..] -= Err · U[i1..i2, i2..] (block 128).
    ("gptq", 576, 448, 128, false, false, true),
    ("gptq", 1536, 448, 128, false, false, true),
];

#[test]
#[ignore]
fn bench_sgemm() {
    let mut r = StdRng::seed_from_u64(3);
    let kernels: Vec<SgemmKernel> = [SgemmKernel::GemmCrate, SgemmKernel::Avx512]
        .into_iter()
        .filter(|k| k.available())
        .collect();
    let threads = rayon::current_num_threads();
    println!(
        "GFLOP/s (2·m·n·k per call) from the best wall-clock time [and from CPU time per \
         thread]; x: speed-up over the gemm crate (CPU time). Kernels: {kernels:?}"
    );
    for parallel in [false, true] {
        let t = if parallel { threads } else { 1 };
        println!(
            "{}",
            if parallel {
                format!("parallel, {t} threads:")
            } else {
                "1 thread:".into()
            }
        );
        for &(name, m, n, k, a_t, b_t, accumulate) in &CASES {
            let a: Vec<f32> = (0..m * k).map(|_| r.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| r.gen_range(-1.0..1.0)).collect();
            let av = if a_t {
                View::transposed(&a, k, m)
            } else {
                View::rows(&a, m, k)
            };
            let bv = if b_t {
                View::transposed(&b, n, k)
            } else {
                View::rows(&b, k, n)
            };
            let mut c = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let mut line = format!(
                "  {:>5} {m:>5} x {n:<5} x {k:<5}{}{}",
                name,
                if a_t { " Aᵀ" } else { "   " },
                if b_t { " Bᵀ" } else { "   " }
            );
            let mut base = None;
            for &kernel in &kernels {
                let (wall, cpu) = time(flops, t, || {
                    sgemm_with(kernel, &mut c, n, accumulate, av, bv, 1.0, parallel);
                    black_box(&mut c);
                });
                let b = *base.get_or_insert(cpu);
                line += &format!(
                    "  {kernel:?} {:6.1} [{:6.1}]",
                    flops / wall / 1e9,
                    flops / cpu / 1e9
                );
                if kernel != SgemmKernel::GemmCrate {
                    line += &format!(" x{:.2}", b / cpu);
                }
            }
            println!("{line}");
        }
    }
}
