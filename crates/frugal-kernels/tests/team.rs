//! The spinning fork-join team: every task exactly once, under nesting,
//! concurrent callers, panics and parked workers.

use frugal_kernels::team::{for_each_chunk_mut, Team, SPIN};
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::sync::Arc;

/// Runs `n` tasks on `team` and checks that each ran exactly once.
fn once_each(team: &Team, n: usize) {
    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
    team.run(n, &|i| {
        hits[i].fetch_add(1, Relaxed);
    });
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(h.load(Relaxed), 1, "task {i} of {n}");
    }
}

#[test]
fn every_task_runs_exactly_once_job_after_job() {
    for size in [1, 2, 3] {
        let team = Team::new(size);
        assert_eq!(team.size(), size);
        for round in 0..2000 {
            once_each(&team, [0, 1, 2, 3, 7, 64, 1000][round % 7]);
        }
    }
}

#[test]
fn work_is_shared_between_the_threads() {
    let team = Team::new(2);
    let threads = std::sync::Mutex::new(std::collections::HashSet::new());
    // Tasks stay slow until the worker (spinning, or woken from its park)
    // has taken one: at most 10 s on a machine too busy to schedule it.
    team.run(10_000, &|_| {
        let mut seen = threads.lock().unwrap();
        seen.insert(std::thread::current().id());
        if seen.len() < 2 {
            drop(seen);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
    assert_eq!(threads.lock().unwrap().len(), 2);
}

#[test]
fn a_run_inside_a_task_runs_inline() {
    let team = Team::new(2);
    let total = AtomicUsize::new(0);
    team.run(8, &|_| {
        team.run(5, &|j| {
            total.fetch_add(j + 1, Relaxed);
        });
    });
    assert_eq!(total.load(Relaxed), 8 * 15);
}

#[test]
fn concurrent_callers_each_get_all_their_tasks() {
    let team = Arc::new(Team::new(2));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let team = Arc::clone(&team);
            std::thread::spawn(move || {
                for n in 0..300 {
                    once_each(&team, n % 37);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_panicking_task_reaches_the_caller_and_the_team_goes_on() {
    let team = Team::new(2);
    let done = AtomicUsize::new(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        team.run(16, &|i| {
            if i == 5 {
                panic!("task five");
            }
            done.fetch_add(1, Relaxed);
        })
    }));
    let msg = r.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"task five"));
    // Every other task still ran before the panic was passed on.
    assert_eq!(done.load(Relaxed), 15);
    once_each(&team, 100);
}

#[test]
fn parked_workers_wake_for_the_next_job() {
    let team = Team::new(3);
    for _ in 0..5 {
        std::thread::sleep(SPIN * 4);
        once_each(&team, 50);
    }
}

#[test]
fn chunks_are_disjoint_and_cover_the_slice() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for (len, size) in [(0, 3), (1, 3), (10, 3), (64, 64), (1000, 7)] {
            let mut v = vec![0usize; len];
            for_each_chunk_mut(&mut v, size, &|i, c| {
                assert!(c.len() == size || (i + 1) * size >= len);
                for x in c.iter_mut() {
                    *x += i + 1;
                }
            });
            for (j, x) in v.iter().enumerate() {
                assert_eq!(*x, j / size + 1, "len {len} size {size} at {j}");
            }
        }
    });
}
