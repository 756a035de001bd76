//! What a parked team costs (ignored by default): after an idle pause longer
//! than `team::SPIN` the workers sleep on a condition variable, and the
//! first parallel loops after it run on the caller alone until the futex
//! wake reaches a worker. This times a decode-step-like burst (100 short
//! parallel loops) right after another one (workers spinning) and after an
//! idle pause (workers parked): the difference is what a pause adds to the
//! next token, e.g. to the time to first token of an interactive request.
//!
//! cargo test --release -p frugal-kernels --test team_wake_bench -- --ignored --nocapture

use frugal_kernels::team::{Team, SPIN};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// About `iters` dependent multiply-adds: a few ns each, no memory traffic.
fn busy(iters: u32) -> f32 {
    let mut x = 1.0f32;
    for _ in 0..iters {
        x = black_box(x * 0.999_99 + 1e-6);
    }
    x
}

/// One "step": `loops` parallel loops of `tasks` tasks each.
fn step(team: &Team, loops: usize, tasks: usize, iters: u32, sink: &AtomicU64) {
    for _ in 0..loops {
        team.run(tasks, &|_| {
            sink.fetch_add(busy(iters) as u64, Relaxed);
        });
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore]
fn parked_workers_cost_at_the_next_step() {
    let team = Team::new(2);
    let sink = AtomicU64::new(0);
    // 100 loops of 8 tasks of ~5 µs: ~2 ms of work, ~1 ms on two threads,
    // about a SmolLM2-135M decode step.
    let (loops, tasks, iters) = (100, 8, 1200);
    let one = {
        let t = Instant::now();
        for _ in 0..20 {
            sink.fetch_add(busy(iters) as u64, Relaxed);
        }
        t.elapsed().as_secs_f64() / 20.0
    };
    for _ in 0..20 {
        step(&team, loops, tasks, iters, &sink);
    }
    let mut warm = Vec::new();
    let mut idle = Vec::new();
    let mut first_loop_warm = Vec::new();
    let mut first_loop_idle = Vec::new();
    for round in 0..60 {
        let pause = round % 2 == 1;
        if pause {
            // Well past the spin window: the workers are parked.
            std::thread::sleep(SPIN * 20);
        } else {
            step(&team, 1, tasks, iters, &sink);
        }
        let t = Instant::now();
        step(&team, 1, tasks, iters, &sink);
        let first = t.elapsed().as_secs_f64();
        step(&team, loops - 1, tasks, iters, &sink);
        let all = t.elapsed().as_secs_f64();
        if pause {
            idle.push(all);
            first_loop_idle.push(first);
        } else {
            warm.push(all);
            first_loop_warm.push(first);
        }
    }
    let (w, i) = (median(warm), median(idle));
    println!(
        "task {:.1} µs; step of {loops} loops × {tasks} tasks: spinning workers {:.0} µs, \
         after a {:?} pause {:.0} µs (+{:.0} µs); first loop {:.1} µs against {:.1} µs",
        one * 1e6,
        w * 1e6,
        SPIN * 20,
        i * 1e6,
        (i - w) * 1e6,
        median(first_loop_idle) * 1e6,
        median(first_loop_warm) * 1e6,
    );
    assert!(w > Duration::ZERO.as_secs_f64());
}
