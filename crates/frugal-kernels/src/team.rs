//! A fork-join team whose workers spin between parallel loops.
//!
//! One decode step runs ~100 short parallel loops (each matmul, attention)
//! separated by a few microseconds of serial work (norms, RoPE, quantizing
//! the next input). Rayon's idle workers go to sleep within that gap, and
//! waking one costs a futex and a context switch: measured ~80 switches per
//! token and 12 % of two cores left idle on Qwen2.5-0.5B. A [`Team`] keeps
//! its workers spinning for [`SPIN`] after each loop, as ggml's thread pool
//! does, and only then parks them, so an idle process costs nothing.
//!
//! [`for_each`] is the entry point: it runs tasks `0..n` on a team as large
//! as the current rayon pool (the `--threads` a command was given), the
//! caller taking part. A call made while that team is busy (from inside one
//! of its tasks, or from a second thread) runs its tasks on the calling
//! thread instead, so nesting and concurrent callers are safe.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks: longer than the serial
/// gaps inside a forward pass (tens of µs), short enough not to matter
/// to an idle machine.
pub const SPIN: Duration = Duration::from_micros(300);

type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// Bits of the claim word that hold the task index.
const INDEX_BITS: u32 = 24;
/// The claim index of a finished job: above any task count.
const CLOSED: u64 = (1 << INDEX_BITS) - 1;

/// State shared by the caller of [`Team::run`] and the workers.
struct Shared {
    /// The current job: generation in the high 40 bits (so it never wraps
    /// around under a stalled worker), the next unclaimed task index in the
    /// low 24 ([`CLOSED`] once the job is over). Claiming
    /// a task is one compare-exchange on the whole word, so a worker late
    /// from one job can never claim a task of the next one: the job's end
    /// and the next one's start both change the word under it.
    claim: AtomicU64,
    /// Tasks in the current job.
    n_tasks: AtomicUsize,
    /// Tasks of the current job that have finished (panicked ones included).
    finished: AtomicUsize,
    /// The current job's closure: a thin pointer to the caller's `&dyn Fn`.
    task: AtomicPtr<Task<'static>>,
    /// A panic from a task of the current job, resumed by the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Workers parked on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// Workers that have started running [`worker`].
    started: AtomicUsize,
}

impl Shared {
    fn generation(&self) -> u64 {
        self.claim.load(SeqCst) >> INDEX_BITS
    }

    /// Claims and runs tasks of generation `gen` until none are left.
    /// Runs tasks of generation `gen` until none is left; returns how many.
    fn work(&self, gen: u64) -> usize {
        let mut ran = 0;
        let mut cur = self.claim.load(Acquire);
        loop {
            if cur >> INDEX_BITS != gen {
                return ran;
            }
            let i = (cur & CLOSED) as usize;
            if i >= self.n_tasks.load(Acquire) {
                return ran;
            }
            match self
                .claim
                .compare_exchange_weak(cur, cur + 1, AcqRel, Acquire)
            {
                Ok(_) => {
                    // Task `i` of generation `gen` is ours, so that job's
                    // caller is still waiting in `run` (it returns only when
                    // all its tasks have finished) and its closure is alive.
                    // SAFETY: the pointer was stored before generation `gen`
                    // was published (release, read by our acquire), it points
                    // to a `&dyn Fn` on the caller's stack, and the caller
                    // cannot return (so neither can drop it) before task `i`
                    // is counted in `finished` below.
                    let f: Task<'_> = unsafe { *self.task.load(Acquire) };
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                        let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                        if slot.is_none() {
                            *slot = Some(p);
                        } else {
                            // Only the first panic is kept; drop the others
                            // outside the lock (a payload's drop may panic).
                            drop(slot);
                            let _ = catch_unwind(AssertUnwindSafe(move || drop(p)));
                        }
                    }
                    self.finished.fetch_add(1, Release);
                    ran += 1;
                    cur = self.claim.load(Acquire);
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// A caller plus `workers` spinning threads.
pub struct Team {
    shared: Arc<Shared>,
    /// Held by the thread running a job; a second caller runs inline.
    busy: Mutex<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Team {
    /// A team of `size` threads in all: the caller and `size - 1` workers.
    pub fn new(size: usize) -> Team {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(CLOSED),
            n_tasks: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            task: AtomicPtr::new(std::ptr::null_mut()),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            started: AtomicUsize::new(0),
        });
        let threads = (1..size.max(1))
            .map(|k| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("frugal-team-{k}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a team worker")
            })
            .collect::<Vec<_>>();
        // Wait until every worker is up: a starting thread allocates (its
        // thread-locals, for one), and that should happen here, not at some
        // later moment in the middle of a decode step.
        while shared.started.load(Acquire) < threads.len() {
            std::thread::yield_now();
        }
        Team {
            shared,
            busy: Mutex::new(()),
            threads,
        }
    }

    /// Threads that run a job: the caller and the workers.
    pub fn size(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `f(i)` for every `i < n`, each exactly once, on the team (or on
    /// this thread alone when the team is busy), and returns when all have
    /// finished. On the team, a panic in a task is resumed here once all
    /// tasks are done; on this thread alone, it ends the loop at once.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        assert!((n as u64) < CLOSED, "team: {n} tasks is too many");
        let guard = match self.busy.try_lock() {
            Ok(g) if n > 1 && !self.threads.is_empty() => g,
            _ => return (0..n).for_each(f),
        };
        let s = &*self.shared;
        // SAFETY (lifetime erasure): workers dereference this pointer only
        // for a task they claimed in this job's generation, and this function
        // returns only after every task of it has finished (the wait below),
        // so `f` and the reference on this stack outlive every use.
        let fref: Task<'_> = f;
        let fref: Task<'static> = unsafe { std::mem::transmute::<Task<'_>, Task<'static>>(fref) };
        s.task
            .store(&fref as *const Task<'static> as *mut _, Release);
        s.n_tasks.store(n, Release);
        s.finished.store(0, Release);
        let gen = (s.generation() + 1) & (u64::MAX >> INDEX_BITS);
        s.claim.store(gen << INDEX_BITS, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap();
            s.wake.notify_all();
        }
        s.work(gen);
        while s.finished.load(Acquire) < n {
            std::hint::spin_loop();
        }
        // Close the job before the next one changes the task count or the
        // closure: a worker still holding this job's last claim word then
        // fails its compare-exchange instead of taking a task of the next.
        s.claim.store((gen << INDEX_BITS) | CLOSED, SeqCst);
        s.task.store(std::ptr::null_mut(), Release);
        let panic = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(guard);
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(s: &Shared) {
    s.started.fetch_add(1, Release);
    let mut seen = 0u64;
    loop {
        // Spin for a new generation, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Acquire) {
                return;
            }
            if s.generation() != seen {
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut l = s.lock.lock().unwrap();
                s.sleepers.fetch_add(1, SeqCst);
                while s.generation() == seen && !s.shutdown.load(SeqCst) {
                    l = s.wake.wait(l).unwrap();
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
        }
        seen = s.generation();
        let ran = s.work(seen);
        WORKER_TASKS.fetch_add(ran as u64, Relaxed);
    }
}

/// Tasks run by workers (not by callers) in this process, all teams.
static WORKER_TASKS: AtomicU64 = AtomicU64::new(0);

/// How many tasks the teams' workers (not their callers) have run so far:
/// lets a test know that a stretch of work really went through the workers.
pub fn tasks_run_by_workers() -> u64 {
    WORKER_TASKS.load(Relaxed)
}

/// The process's teams, one per size asked for (normally just one).
fn teams() -> &'static Mutex<Vec<Arc<Team>>> {
    static TEAMS: OnceLock<Mutex<Vec<Arc<Team>>>> = OnceLock::new();
    TEAMS.get_or_init(|| Mutex::new(Vec::new()))
}

/// The team of `size` threads, started on first use.
pub fn team(size: usize) -> Arc<Team> {
    let mut ts = teams().lock().unwrap();
    if let Some(t) = ts.iter().find(|t| t.size() == size) {
        return Arc::clone(t);
    }
    let t = Arc::new(Team::new(size));
    ts.push(Arc::clone(&t));
    t
}

/// Runs `f(i)` for `i < n` on the team as large as the current rayon pool
/// (inline for one thread or one task). See the module doc.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let size = rayon::current_num_threads();
    if size <= 1 || n <= 1 {
        return (0..n).for_each(f);
    }
    team(size).run(n, f);
}

/// `f(i, chunk i)` for the `size`-element chunks of `data` (the last one may
/// be shorter), in parallel on the team as [`for_each`] runs them.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    size: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    assert!(size > 0, "team: chunks of zero elements");
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(size), &|i| {
        let start = i * size;
        let end = start + size.min(len - start);
        // SAFETY: `for_each` runs each index exactly once, so the ranges
        // start..end handed out are disjoint and inside `data`, which stays
        // borrowed mutably (by this call) until every task has finished.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, chunk);
    });
}

/// A raw pointer that may cross threads: [`for_each_chunk_mut`] hands each
/// thread a disjoint range of it.
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to rebuild disjoint sub-slices of a `&mut [T]` with
// `T: Send`, one per task (see `for_each_chunk_mut`).
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; sharing the pointer itself gives no access on its own.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}
