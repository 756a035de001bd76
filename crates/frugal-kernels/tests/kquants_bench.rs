//! Micro-benchmark: a single-threaded 896 x 4864 matrix-vector product
//! (Qwen2.5-0.5B's ffn_down shape: 896 rows of 4864 weights) as rows x vec_dot.
//! Reports weight bytes streamed per second for every kernel this CPU has.
//!
//! cargo test --release -p frugal-kernels --test kquants_bench -- --ignored --nocapture

use frugal_formats::GgmlType;
use frugal_kernels::kquants::{self, scalar};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::{Duration, Instant};

type Dot = fn(usize, &[u8], &[u8]) -> f32;

const N: usize = 4864;

/// Rows of the benchmark matrix (FRUGAL_BENCH_ROWS overrides 896, e.g. to fit a cache).
fn rows() -> usize {
    std::env::var("FRUGAL_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(896)
}

fn kernels(ty: GgmlType) -> Vec<(&'static str, Dot)> {
    let mut v: Vec<(&'static str, Dot)> = vec![(
        "scalar",
        match ty {
            GgmlType::Q2K => scalar::vec_dot_q2k_q8k,
            GgmlType::Q3K => scalar::vec_dot_q3k_q8k,
            GgmlType::Q4K => scalar::vec_dot_q4k_q8k,
            GgmlType::Q5K => scalar::vec_dot_q5k_q8k,
            GgmlType::Q6K => scalar::vec_dot_q6k_q8k,
            _ => unreachable!(),
        },
    )];
    #[cfg(target_arch = "x86_64")]
    {
        use kquants::{avx2, avx512};
        if avx2::is_available() {
            v.push((
                "avx2",
                match ty {
                    GgmlType::Q2K => avx2::vec_dot_q2k_q8k,
                    GgmlType::Q3K => avx2::vec_dot_q3k_q8k,
                    GgmlType::Q4K => avx2::vec_dot_q4k_q8k,
                    GgmlType::Q5K => avx2::vec_dot_q5k_q8k,
                    GgmlType::Q6K => avx2::vec_dot_q6k_q8k,
                    _ => unreachable!(),
                },
            ));
        }
        if avx512::is_available() {
            v.push((
                "avx512",
                match ty {
                    GgmlType::Q2K => avx512::vec_dot_q2k_q8k,
                    GgmlType::Q3K => avx512::vec_dot_q3k_q8k,
                    GgmlType::Q4K => avx512::vec_dot_q4k_q8k,
                    GgmlType::Q5K => avx512::vec_dot_q5k_q8k,
                    GgmlType::Q6K => avx512::vec_dot_q6k_q8k,
                    _ => unreachable!(),
                },
            ));
        }
    }
    v
}

/// Random quants with sane f16 scales at the type's d/dmin offsets.
fn weights(ty: GgmlType, rng: &mut StdRng) -> Vec<u8> {
    let sz = ty.type_size();
    let mut w: Vec<u8> = (0..rows() * N / 256 * sz).map(|_| rng.gen()).collect();
    let offs: &[usize] = match ty {
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[0, 2],
    };
    for b in 0..rows() * N / 256 {
        for &o in offs {
            let v = f16::from_f32(rng.gen_range(0.001f32..0.01));
            w[b * sz + o..b * sz + o + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    w
}

fn time_best(mut f: impl FnMut(), budget: Duration) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 5 || (start.elapsed() < budget && runs < 1000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_matvec_896x4864() {
    let mut rng = StdRng::seed_from_u64(1);
    let x: Vec<f32> = (0..N).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut a = vec![0u8; N / 256 * 292];
    kquants::quantize_row_q8_k(&x, &mut a);
    let types = match std::env::var("FRUGAL_BENCH_TYPES") {
        Ok(s) => s.split(',').filter_map(GgmlType::from_name).collect(),
        Err(_) => vec![
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::Q5K,
            GgmlType::Q3K,
            GgmlType::Q2K,
        ],
    };
    println!("single thread, {} rows x {N} (best of runs)", rows());
    for ty in types {
        let w = weights(ty, &mut rng);
        let row = ty.row_bytes(N as u64).unwrap() as usize;
        let mut out = vec![0f32; rows()];
        for (name, dot) in kernels(ty) {
            let budget = Duration::from_millis(if name == "scalar" { 300 } else { 1000 });
            let t = time_best(
                || {
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = dot(N, &w[r * row..(r + 1) * row], &a);
                    }
                    black_box(&out);
                },
                budget,
            );
            println!(
                "{:5} {:7}: {:8.1} us/matvec  {:6.2} GB/s of weights ({:.2} MB)",
                ty.name(),
                name,
                t.as_secs_f64() * 1e6,
                w.len() as f64 / t.as_secs_f64() / 1e9,
                w.len() as f64 / 1e6
            );
        }
    }
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_quantize_q8k() {
    let mut rng = StdRng::seed_from_u64(2);
    let x: Vec<f32> = (0..N).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut a = vec![0u8; N / 256 * 292];
    #[allow(unused_mut)]
    let mut paths: Vec<(&str, frugal_kernels::traits::FromFloat)> =
        vec![("scalar", scalar::quantize_row_q8k_ref)];
    #[cfg(target_arch = "x86_64")]
    {
        if kquants::avx2::is_available() {
            paths.push(("avx2", kquants::avx2::quantize_row_q8k));
        }
        if kquants::avx512::is_available() {
            paths.push(("avx512", kquants::avx512::quantize_row_q8k));
        }
    }
    for (name, f) in paths {
        let t = time_best(
            || f(black_box(&x), black_box(&mut a)),
            Duration::from_millis(300),
        );
        println!(
            "Q8_K quantize {N} floats {name:7}: {:7.2} us",
            t.as_secs_f64() * 1e6
        );
    }
}
