//! Micro-benchmark: a single-threaded 896 x 4864 matrix-vector product
//! (Qwen2.5-0.5B's ffn_down shape) as rows x vec_dot, for a selection of
//! frugal's types on every kernel this CPU has, next to ggml's Q4_0/Q4_1/Q8_0.
//! Reports µs per product and weight bytes streamed per second.
//!
//! cargo test --release -p frugal-kernels --test frugal_bench -- --ignored --nocapture

use frugal_formats::{FrugalType, GgmlType};
use frugal_kernels::frugal::dot_impls;
use frugal_kernels::traits::{traits, VecDot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::{Duration, Instant};

const ROWS: usize = 896;
const N: usize = 4864;

fn time(f: VecDot, w: &[u8], a: &[u8], rb: usize) -> Duration {
    let run = || {
        let mut s = 0.0f32;
        for r in 0..ROWS {
            s += f(N, black_box(&w[r * rb..(r + 1) * rb]), black_box(a));
        }
        black_box(s)
    };
    run();
    let mut best = Duration::MAX;
    for _ in 0..15 {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed());
    }
    best
}

#[test]
#[ignore]
fn bench_frugal_dots() {
    let mut r = StdRng::seed_from_u64(1);
    let x: Vec<f32> = (0..N).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    let wf: Vec<f32> = (0..ROWS * N).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    let mut types: Vec<GgmlType> = vec![GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];
    for bits in [2u8, 3, 4, 5, 8] {
        for (group, sym) in [(32u16, true), (128, false), (0, false)] {
            types.push(GgmlType::Frugal(FrugalType::Affine { bits, group, sym }));
        }
    }
    types.push(GgmlType::Frugal(FrugalType::W8Row));
    for ty in types {
        let tr = traits(ty).unwrap();
        let rb = ty.row_bytes(N as u64).unwrap() as usize;
        let mut w = vec![0u8; ROWS * rb];
        for row in 0..ROWS {
            (tr.from_float.unwrap())(
                &wf[row * N..(row + 1) * N],
                &mut w[row * rb..(row + 1) * rb],
            );
        }
        let mut a = vec![0u8; tr.vec_dot_type.row_bytes(N as u64).unwrap() as usize];
        (traits(tr.vec_dot_type).unwrap().from_float.unwrap())(&x, &mut a);
        let mut impls = dot_impls(ty);
        if impls.is_empty() {
            impls = vec![("ref", tr.vec_dot_ref), ("dispatched", tr.vec_dot)];
        }
        let mut line = format!("{:>10} {:5.2} bpw:", ty.name(), (rb * 8) as f64 / N as f64);
        let mut scalar = None;
        for (name, f) in impls {
            let t = time(f, &w, &a, rb);
            let us = t.as_secs_f64() * 1e6;
            let base = *scalar.get_or_insert(us);
            line += &format!(
                "  {name} {us:7.1} µs {:5.1} GB/s (x{:.1})",
                (ROWS * rb) as f64 / t.as_secs_f64() / 1e9,
                base / us
            );
        }
        println!("{line}");
    }
}
