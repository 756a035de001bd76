//! Decoding a token must not touch the heap once the buffers are warm: the
//! state, cache and kernel scratch are allocated up front, and packed KV
//! caches (f16, Q8_0, Q4_0) pack rows in place with the quantized query in
//! per-thread scratch. This binary counts every allocation made while it
//! runs single-token forward passes. It has no libtest harness
//! (`harness = false`): the harness's own thread allocates while a test
//! runs (its bookkeeping, the test's name), which on a loaded machine lands
//! inside the counted steps. `main` runs the check on the main thread.

use frugal_formats::{MetaValue, Metadata, ModelSource, Tensor};
use frugal_model::{KvType, Logits, Model};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

/// Counts an allocation unless a rayon worker makes it. Decode runs its
/// parallel loops on the caller and the kernels' team (counted), never on
/// rayon's pool, whose idle workers do their own bookkeeping at moments of
/// their choosing (measured: a few allocations after the pool's first job).
fn count() {
    if rayon::current_thread_index().is_none() {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A tiny model; with `low_rank`, some block matrices are stored as two
/// rank-32 factors.
fn tiny_model(low_rank: bool) -> ModelSource {
    // FFN 256 wide, so gate and up are enough work to run on the team.
    let (d, ff, vocab, layers) = (64usize, 256usize, 40usize, 2usize);
    let mut md = Metadata::default();
    md.set("general.architecture", MetaValue::String("qwen2".into()));
    for (k, v) in [
        ("embedding_length", d),
        ("feed_forward_length", ff),
        ("block_count", layers),
        // Heads of 32 values, so every KV type fits its blocks.
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
    ] {
        md.set(format!("qwen2.{k}"), MetaValue::U32(v as u32));
    }
    let mut seed = 1u32;
    let mut vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    };
    let mut t = vec![Tensor::from_f32(
        "token_embd.weight",
        vec![d, vocab],
        &vals(d * vocab),
    )];
    for l in 0..layers {
        for (n, cols, rows) in [
            ("attn_q", d, d),
            ("attn_k", d, 32),
            ("attn_v", d, 32),
            ("attn_output", d, d),
            ("ffn_gate", d, ff),
            ("ffn_up", d, ff),
            ("ffn_down", ff, d),
        ] {
            let name = format!("blk.{l}.{n}.weight");
            if low_rank && matches!(n, "attn_q" | "attn_k" | "ffn_down") {
                let (a, b) = frugal_model::factor_names(&name);
                t.push(Tensor::from_f32(a, vec![cols, 32], &vals(cols * 32)));
                t.push(Tensor::from_f32(b, vec![32, rows], &vals(32 * rows)));
                continue;
            }
            t.push(Tensor::from_f32(name, vec![cols, rows], &vals(cols * rows)));
        }
        for (n, len) in [
            ("attn_norm.weight", d),
            ("ffn_norm.weight", d),
            ("attn_q.bias", d),
            ("attn_k.bias", 32),
            ("attn_v.bias", 32),
        ] {
            t.push(Tensor::from_f32(
                format!("blk.{l}.{n}"),
                vec![len],
                &vals(len),
            ));
        }
    }
    t.push(Tensor::from_f32(
        "output_norm.weight",
        vec![d],
        &vec![1.0; d],
    ));
    ModelSource {
        metadata: md,
        tensors: t,
        tokenizer_json: None,
    }
}

/// Allocations made by one prefill and 40 single-token steps, and how many
/// tasks the team's workers ran meanwhile.
fn decode_pass(
    m: &Model,
    kv: &mut frugal_model::KvCache,
    st: &mut frugal_model::State,
) -> (usize, u64) {
    kv.clear();
    m.forward(&[1, 2, 3, 4], kv, st, Logits::Last).unwrap();
    let before = ALLOCS.load(Ordering::Relaxed);
    let tasks = frugal_kernels::team::tasks_run_by_workers();
    for t in 0..40 {
        m.forward(&[t % 40], kv, st, Logits::Last).unwrap();
    }
    (
        ALLOCS.load(Ordering::Relaxed) - before,
        frugal_kernels::team::tasks_run_by_workers() - tasks,
    )
}

fn decode_steps_allocate_nothing(low_rank: bool) {
    let m = Model::from_source(&tiny_model(low_rank)).unwrap();
    assert_eq!(m.weights.has_low_rank(), low_rank);
    // With more than one thread, only passes in which the team's workers ran
    // tasks count: a parked worker can miss a whole pass, and then its
    // allocations would go unseen.
    let need_workers = rayon::current_num_threads() > 1;
    for ty in [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0] {
        let mut kv = m.new_cache_typed(64, ty).unwrap();
        let mut st = m.new_state(8, false);
        // Warm up until a whole pass, with the workers in it, allocates
        // nothing: every buffer (and every thread's scratch) grows in the
        // first passes.
        let mut counts = Vec::new();
        loop {
            assert!(
                counts.len() < 200,
                "{ty}: decode passes keep allocating: {counts:?}"
            );
            let (n, tasks) = decode_pass(&m, &mut kv, &mut st);
            counts.push(n);
            if n == 0 && (tasks > 0 || !need_workers) {
                break;
            }
        }
        // Then no pass allocates, over three passes with the workers in them.
        let (mut checked, mut passes) = (0, 0);
        while checked < 3 {
            passes += 1;
            assert!(passes < 200, "{ty}: the team's workers ran no task");
            let (n, tasks) = decode_pass(&m, &mut kv, &mut st);
            assert_eq!(
                n, 0,
                "{ty}: {n} allocations in 40 decode steps (warm-up: {counts:?})"
            );
            if tasks > 0 || !need_workers {
                checked += 1;
            }
        }
    }
}

fn main() {
    // Start rayon's pool (the first matmul would) and wait until every
    // worker has run a job: a starting worker allocates before it counts as
    // one, and on a loaded machine that comes late.
    rayon::broadcast(|_| ());
    decode_steps_allocate_nothing(false);
    decode_steps_allocate_nothing(true);
    println!("test decode_steps_allocate_nothing ... ok");
}
