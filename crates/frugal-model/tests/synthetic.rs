//! Forward-pass properties on small random models built in memory: batching
//! and the KV cache agree with one-token steps, the two RoPE conventions agree
//! once Q/K rows are permuted, GQA shares K/V heads, and bad configs fail.

use frugal_formats::{MetaValue, Metadata, ModelSource, Tensor};
use frugal_model::{Logits, Model, ModelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Spec {
    arch: &'static str,
    d: usize,
    heads: usize,
    kv_heads: usize,
    ff: usize,
    layers: usize,
    vocab: usize,
    bias: bool,
    tied: bool,
}

const SMALL: Spec = Spec {
    arch: "llama",
    d: 64,
    heads: 4,
    kv_heads: 2,
    ff: 96,
    layers: 2,
    vocab: 50,
    bias: false,
    tied: false,
};

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

/// A random model with GGUF names and metadata (the same seed gives the same weights).
fn build(spec: &Spec, seed: u64) -> ModelSource {
    let mut rng = StdRng::seed_from_u64(seed);
    let (d, hd) = (spec.d, spec.d / spec.heads);
    let kvd = spec.kv_heads * hd;
    let mut md = Metadata::default();
    let a = spec.arch;
    md.set("general.architecture", MetaValue::String(a.into()));
    md.set(format!("{a}.embedding_length"), MetaValue::U32(d as u32));
    md.set(
        format!("{a}.feed_forward_length"),
        MetaValue::U32(spec.ff as u32),
    );
    md.set(
        format!("{a}.block_count"),
        MetaValue::U32(spec.layers as u32),
    );
    md.set(
        format!("{a}.attention.head_count"),
        MetaValue::U32(spec.heads as u32),
    );
    md.set(
        format!("{a}.attention.head_count_kv"),
        MetaValue::U32(spec.kv_heads as u32),
    );
    md.set(format!("{a}.context_length"), MetaValue::U32(256));
    md.set(format!("{a}.rope.freq_base"), MetaValue::F32(10000.0));
    md.set(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(1e-5),
    );
    let mut t = Vec::new();
    let mat = |name: String, cols: usize, rows: usize, rng: &mut StdRng| {
        let s = 1.0 / (cols as f32).sqrt();
        Tensor::from_f32(name, vec![cols, rows], &rand_vec(rng, cols * rows, s))
    };
    t.push(mat("token_embd.weight".into(), d, spec.vocab, &mut rng));
    for l in 0..spec.layers {
        let norm = |name: String, rng: &mut StdRng| {
            let v: Vec<f32> = (0..d).map(|_| 1.0 + rng.gen_range(-0.2f32..0.2)).collect();
            Tensor::from_f32(name, vec![d], &v)
        };
        t.push(norm(format!("blk.{l}.attn_norm.weight"), &mut rng));
        t.push(mat(format!("blk.{l}.attn_q.weight"), d, d, &mut rng));
        t.push(mat(format!("blk.{l}.attn_k.weight"), d, kvd, &mut rng));
        t.push(mat(format!("blk.{l}.attn_v.weight"), d, kvd, &mut rng));
        t.push(mat(format!("blk.{l}.attn_output.weight"), d, d, &mut rng));
        if spec.bias {
            for (n, len) in [("q", d), ("k", kvd), ("v", kvd)] {
                let b = rand_vec(&mut rng, len, 0.5);
                t.push(Tensor::from_f32(
                    format!("blk.{l}.attn_{n}.bias"),
                    vec![len],
                    &b,
                ));
            }
        }
        t.push(norm(format!("blk.{l}.ffn_norm.weight"), &mut rng));
        t.push(mat(
            format!("blk.{l}.ffn_gate.weight"),
            d,
            spec.ff,
            &mut rng,
        ));
        t.push(mat(format!("blk.{l}.ffn_up.weight"), d, spec.ff, &mut rng));
        t.push(mat(
            format!("blk.{l}.ffn_down.weight"),
            spec.ff,
            d,
            &mut rng,
        ));
    }
    let v: Vec<f32> = vec![1.0; d];
    t.push(Tensor::from_f32("output_norm.weight", vec![d], &v));
    if !spec.tied {
        t.push(mat("output.weight".into(), d, spec.vocab, &mut rng));
    }
    ModelSource {
        metadata: md,
        tensors: t,
        tokenizer_json: None,
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.bytes()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn replace(src: &mut ModelSource, name: &str, values: &[f32]) {
    let i = src.tensors.iter().position(|t| t.name == name).unwrap();
    let dims = src.tensors[i].dims.clone();
    src.tensors[i] = Tensor::from_f32(name, dims, values);
}

/// Logits of every position, computed in one batch.
fn batch_logits(m: &Model, toks: &[u32]) -> Vec<f32> {
    let mut kv = m.new_cache(64).unwrap();
    let mut st = m.new_state(toks.len(), true);
    m.forward(toks, &mut kv, &mut st, Logits::All)
        .unwrap()
        .to_vec()
}

/// Logits of every position, one token per call.
fn step_logits(m: &Model, toks: &[u32]) -> Vec<f32> {
    let mut kv = m.new_cache(64).unwrap();
    let mut st = m.new_state(1, false);
    let mut out = Vec::new();
    for &t in toks {
        out.extend_from_slice(m.forward(&[t], &mut kv, &mut st, Logits::Last).unwrap());
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TOKENS: [u32; 12] = [3, 17, 42, 8, 8, 1, 49, 30, 22, 5, 0, 11];

#[test]
fn batched_prefill_matches_one_token_steps() {
    for spec in [
        SMALL,
        Spec {
            arch: "qwen2",
            bias: true,
            tied: true,
            ..SMALL
        },
    ] {
        let m = Model::from_source(&build(&spec, 1)).unwrap();
        let a = batch_logits(&m, &TOKENS);
        let b = step_logits(&m, &TOKENS);
        assert!(
            max_abs_diff(&a, &b) < 1e-4,
            "{}: {}",
            spec.arch,
            max_abs_diff(&a, &b)
        );
        // And the logits depend on the context (the cache is really used).
        let v = spec.vocab;
        assert!(max_abs_diff(&a[3 * v..4 * v], &a[4 * v..5 * v]) > 1e-3);
    }
}

#[test]
fn split_prefill_matches_single_prefill() {
    let m = Model::from_source(&build(&SMALL, 2)).unwrap();
    let whole = batch_logits(&m, &TOKENS);
    let mut kv = m.new_cache(64).unwrap();
    let mut st = m.new_state(8, true);
    m.forward(&TOKENS[..5], &mut kv, &mut st, Logits::All)
        .unwrap();
    let tail = m
        .forward(&TOKENS[5..], &mut kv, &mut st, Logits::All)
        .unwrap();
    let v = SMALL.vocab;
    assert!(max_abs_diff(tail, &whole[5 * v..]) < 1e-4);
}

/// Rows of a Q or K matrix regrouped from half-split (NeoX/HF) order to
/// interleaved pairs, per head: row (h, i) for i < hd/2 goes to (h, 2i), and
/// (h, hd/2 + i) to (h, 2i + 1).
fn neox_to_interleaved(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for (src, dst) in [(i, 2 * i), (hd / 2 + i, 2 * i + 1)] {
                let s = (h * hd + src) * cols;
                let d = (h * hd + dst) * cols;
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

#[test]
fn neox_rope_equals_interleaved_rope_on_permuted_rows() {
    let neox_spec = Spec {
        arch: "qwen2",
        ..SMALL
    };
    let neox = build(&neox_spec, 3);
    // Same weights, llama keys, Q/K rows permuted to interleaved order.
    let mut inter = build(&SMALL, 3);
    for l in 0..SMALL.layers {
        for (n, heads) in [("q", SMALL.heads), ("k", SMALL.kv_heads)] {
            let name = format!("blk.{l}.attn_{n}.weight");
            let w = f32s(neox.tensor(&name).unwrap());
            replace(&mut inter, &name, &neox_to_interleaved(&w, heads, SMALL.d));
        }
    }
    let a = batch_logits(&Model::from_source(&neox).unwrap(), &TOKENS);
    let b = batch_logits(&Model::from_source(&inter).unwrap(), &TOKENS);
    assert!(max_abs_diff(&a, &b) < 1e-4, "diff {}", max_abs_diff(&a, &b));
    // Without the permutation the two conventions disagree.
    let c = batch_logits(&Model::from_source(&build(&SMALL, 3)).unwrap(), &TOKENS);
    assert!(max_abs_diff(&a, &c) > 1e-3);
}

#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    let gqa = build(&SMALL, 4);
    let mha_spec = Spec {
        kv_heads: SMALL.heads,
        ..SMALL
    };
    let mut mha = build(&mha_spec, 4);
    let hd = SMALL.d / SMALL.heads;
    let group = SMALL.heads / SMALL.kv_heads;
    for l in 0..SMALL.layers {
        for n in ["k", "v"] {
            let name = format!("blk.{l}.attn_{n}.weight");
            let w = f32s(gqa.tensor(&name).unwrap());
            // Repeat each KV head's rows for every query head in its group.
            let mut rep = Vec::new();
            for h in 0..SMALL.heads {
                let kvh = h / group;
                rep.extend_from_slice(&w[kvh * hd * SMALL.d..(kvh + 1) * hd * SMALL.d]);
            }
            replace(&mut mha, &name, &rep);
        }
        // Copy every other tensor so only the K/V layout differs.
        for n in [
            "attn_q",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_norm",
            "ffn_norm",
        ] {
            let name = format!("blk.{l}.{n}.weight");
            replace(&mut mha, &name, &f32s(gqa.tensor(&name).unwrap()));
        }
    }
    for name in ["token_embd.weight", "output.weight"] {
        replace(&mut mha, name, &f32s(gqa.tensor(name).unwrap()));
    }
    let a = batch_logits(&Model::from_source(&gqa).unwrap(), &TOKENS);
    let b = batch_logits(&Model::from_source(&mha).unwrap(), &TOKENS);
    assert!(max_abs_diff(&a, &b) < 1e-4, "diff {}", max_abs_diff(&a, &b));
}

#[test]
fn qkv_bias_is_applied() {
    let spec = Spec {
        arch: "qwen2",
        bias: true,
        ..SMALL
    };
    let with = build(&spec, 5);
    let mut without = with.clone();
    without.tensors.retain(|t| !t.name.ends_with(".bias"));
    let a = batch_logits(&Model::from_source(&with).unwrap(), &TOKENS);
    let b = batch_logits(&Model::from_source(&without).unwrap(), &TOKENS);
    assert!(max_abs_diff(&a, &b) > 1e-3);
}

#[test]
fn unknown_architecture_is_a_clear_error() {
    let mut src = build(&SMALL, 6);
    src.metadata
        .set("general.architecture", MetaValue::String("mamba".into()));
    let err = Model::from_source(&src).err().expect("must fail");
    assert!(matches!(err, ModelError::UnsupportedArch(ref a) if a == "mamba"));
    assert!(err.to_string().contains("mamba"));
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let mut src = build(&SMALL, 7);
    src.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let err = Model::from_source(&src).err().unwrap().to_string();
    assert!(err.contains("blk.1.ffn_up.weight"), "{err}");

    let mut src = build(&SMALL, 7);
    let i = src
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_k.weight")
        .unwrap();
    src.tensors[i].dims = vec![SMALL.d / 2, 64];
    let err = Model::from_source(&src).err().unwrap().to_string();
    assert!(
        err.contains("blk.0.attn_k.weight") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn context_overflow_and_bad_tokens_are_errors() {
    let m = Model::from_source(&build(&SMALL, 8)).unwrap();
    let mut kv = m.new_cache(4).unwrap();
    let mut st = m.new_state(8, false);
    let err = m
        .forward(&TOKENS[..5], &mut kv, &mut st, Logits::Last)
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ModelError::ContextFull {
            n_ctx: 4,
            needed: 5
        }
    ));
    let err = m
        .forward(&[999], &mut kv, &mut st, Logits::Last)
        .err()
        .unwrap();
    assert!(err.to_string().contains("999"));
}

#[test]
fn unknown_tensors_and_rope_scaling_are_refused() {
    // A tensor the decoder would ignore (here a mixture-of-experts router).
    let mut src = build(&SMALL, 9);
    src.tensors.push(Tensor::from_f32(
        "blk.0.ffn_gate_inp.weight",
        vec![SMALL.d, 4],
        &vec![0.0; SMALL.d * 4],
    ));
    let err = Model::from_source(&src).err().unwrap().to_string();
    assert!(err.contains("blk.0.ffn_gate_inp.weight"), "{err}");

    let mut src = build(&SMALL, 9);
    src.tensors
        .push(Tensor::from_f32("rope_freqs.weight", vec![8], &[1.0; 8]));
    let err = Model::from_source(&src).err().unwrap().to_string();
    assert!(err.contains("rope_freqs"), "{err}");
}

#[test]
fn output_bias_is_applied() {
    let mut with = build(&SMALL, 10);
    let bias: Vec<f32> = (0..SMALL.d).map(|i| (i as f32 * 0.37).sin()).collect();
    for l in 0..SMALL.layers {
        with.tensors.push(Tensor::from_f32(
            format!("blk.{l}.attn_output.bias"),
            vec![SMALL.d],
            &bias,
        ));
    }
    let a = batch_logits(&Model::from_source(&with).unwrap(), &TOKENS);
    let b = batch_logits(&Model::from_source(&build(&SMALL, 10)).unwrap(), &TOKENS);
    assert!(max_abs_diff(&a, &b) > 1e-3);
}

#[test]
fn a_cache_for_another_model_is_an_error() {
    let small = Model::from_source(&build(&SMALL, 11)).unwrap();
    let other = Model::from_source(&build(&Spec { layers: 3, ..SMALL }, 11)).unwrap();
    let mut kv = other.new_cache(16).unwrap();
    let mut st = small.new_state(4, false);
    let err = small
        .forward(&[1], &mut kv, &mut st, Logits::Last)
        .err()
        .unwrap();
    assert!(err.to_string().contains("different model"), "{err}");
    assert!(small.new_cache(usize::MAX / 2).is_err());
}

#[test]
fn logits_from_an_index_are_the_tail_of_all_logits() {
    let m = Model::from_source(&build(&SMALL, 3)).unwrap();
    let all = batch_logits(&m, &TOKENS);
    let v = SMALL.vocab;
    for from in [0, 5, TOKENS.len() - 1] {
        let mut kv = m.new_cache(64).unwrap();
        let mut st = m.new_state(TOKENS.len(), true);
        let tail = m
            .forward(&TOKENS, &mut kv, &mut st, Logits::From(from))
            .unwrap();
        assert_eq!(tail.len(), (TOKENS.len() - from) * v);
        assert!(max_abs_diff(tail, &all[from * v..]) < 1e-5, "from {from}");
    }
    // Past the batch: an error, not a panic.
    let mut kv = m.new_cache(64).unwrap();
    let mut st = m.new_state(TOKENS.len(), true);
    let e = m
        .forward(&TOKENS, &mut kv, &mut st, Logits::From(TOKENS.len()))
        .unwrap_err();
    assert!(e.to_string().contains("logits from index"), "{e}");
}

/// `src` with the matrix `name` (`rows × cols`) replaced by random rank-`r`
/// factors `name_a` (r × cols) and `name_b` (rows × r); returns their product.
fn factor(src: &mut ModelSource, name: &str, r: usize, rng: &mut StdRng) -> Vec<f32> {
    let i = src.tensors.iter().position(|t| t.name == name).unwrap();
    let (cols, rows) = (src.tensors[i].dims[0], src.tensors[i].dims[1]);
    let a = rand_vec(rng, r * cols, 1.0 / (cols as f32).sqrt());
    let b = rand_vec(rng, rows * r, 1.0 / (r as f32).sqrt());
    let mut w = vec![0.0f32; rows * cols];
    for o in 0..rows {
        for k in 0..r {
            for c in 0..cols {
                w[o * cols + c] += b[o * r + k] * a[k * cols + c];
            }
        }
    }
    src.tensors.remove(i);
    let (na, nb) = frugal_model::factor_names(name);
    src.tensors.push(Tensor::from_f32(na, vec![cols, r], &a));
    src.tensors.push(Tensor::from_f32(nb, vec![r, rows], &b));
    w
}

#[test]
fn low_rank_factors_run_like_their_dense_product() {
    let mut rng = StdRng::seed_from_u64(7);
    let dense_src = build(&SMALL, 3);
    let mut low = build(&SMALL, 3);
    let mut dense = build(&SMALL, 3);
    for (name, r) in [
        ("blk.0.attn_q.weight", 32),
        ("blk.0.attn_k.weight", 16),
        ("blk.0.attn_output.weight", 32),
        ("blk.1.ffn_gate.weight", 32),
        ("blk.1.ffn_down.weight", 48),
    ] {
        let w = factor(&mut low, name, r, &mut rng);
        replace(&mut dense, name, &w);
    }
    let lm = Model::from_source(&low).unwrap();
    let dm = Model::from_source(&dense).unwrap();
    assert!(lm.weights.has_low_rank() && !dm.weights.has_low_rank());
    assert_eq!(lm.weights.max_rank(), 48);
    assert_eq!(lm.weights.layers[0].wk.rank(), Some(16));
    let product = max_abs_diff(
        &lm.weights.layers[1].w_down.to_f32().unwrap(),
        &dm.weights.layers[1].w_down.to_f32().unwrap(),
    );
    assert!(product < 1e-5, "{product}");
    // Fewer bytes: 64·64 + 32·64 + 64·64 + 96·64 + 64·96 weights dense,
    // r·(in + out) as factors.
    let saved = (64 * 64 + 32 * 64 + 64 * 64 + 96 * 64 + 64 * 96)
        - (32 * 128 + 16 * 96 + 32 * 128 + 32 * 160 + 48 * 160);
    assert_eq!(
        dm.weight_bytes_per_token() - lm.weight_bytes_per_token(),
        4 * saved
    );
    assert_eq!(
        dm.weights.matmul_params() - lm.weights.matmul_params(),
        saved
    );
    // Prefill and one-token decoding both agree with the dense product.
    let (lb, db) = (batch_logits(&lm, &TOKENS), batch_logits(&dm, &TOKENS));
    assert!(max_abs_diff(&lb, &db) < 1e-4, "{}", max_abs_diff(&lb, &db));
    let (ls, ds) = (step_logits(&lm, &TOKENS), step_logits(&dm, &TOKENS));
    assert!(max_abs_diff(&ls, &ds) < 1e-4, "{}", max_abs_diff(&ls, &ds));
    // And the factors matter: the original dense model differs.
    let orig = batch_logits(&Model::from_source(&dense_src).unwrap(), &TOKENS);
    assert!(max_abs_diff(&lb, &orig) > 1e-3);
}

#[test]
fn incomplete_or_doubled_factors_are_refused() {
    let err = |src: &ModelSource| match Model::from_source(src) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded"),
    };
    let mut rng = StdRng::seed_from_u64(8);
    // Only one factor.
    let mut src = build(&SMALL, 4);
    factor(&mut src, "blk.0.attn_q.weight", 16, &mut rng);
    src.tensors.retain(|t| t.name != "blk.0.attn_q_b.weight");
    assert!(err(&src).contains("blk.0.attn_q_b.weight"), "{}", err(&src));
    // Factors beside the dense matrix.
    let mut src = build(&SMALL, 4);
    let dense = src
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap()
        .clone();
    factor(&mut src, "blk.0.attn_q.weight", 16, &mut rng);
    src.tensors.push(dense);
    assert!(err(&src).contains("both dense and"), "{}", err(&src));
    // Factors whose shapes do not fit the matrix.
    let mut src = build(&SMALL, 4);
    factor(&mut src, "blk.0.attn_k.weight", 16, &mut rng);
    let i = src
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_k_b.weight")
        .unwrap();
    let v = vec![0.0f32; 16 * 64];
    src.tensors[i] = Tensor::from_f32("blk.0.attn_k_b.weight", vec![16, 64], &v);
    assert!(err(&src).contains("attn_k_b"), "{}", err(&src));
}
