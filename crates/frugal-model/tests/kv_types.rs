//! The KV cache types (f32, f16, Q8_0, Q4_0): their sizes, their refusal of
//! heads that do not fit their blocks, and logits close to the f32 cache's,
//! on random models built in memory (heads of 64, like SmolLM2) and on the
//! llama2.c stories260K model from ../shared (heads of 8: f16 only).

use frugal_formats::{MetaValue, Metadata, ModelSource, Tensor};
use frugal_model::{KvType, Logits, Model, ModelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// A random llama model with `heads` heads of 64 (the K/V heads shared in pairs).
fn build(heads: usize, layers: usize, seed: u64) -> ModelSource {
    let mut rng = StdRng::seed_from_u64(seed);
    let (hd, vocab, ff) = (64, 64, 192);
    let d = heads * hd;
    let kvd = heads / 2 * hd;
    let mut md = Metadata::default();
    md.set("general.architecture", MetaValue::String("llama".into()));
    for (k, v) in [
        ("embedding_length", d),
        ("feed_forward_length", ff),
        ("block_count", layers),
        ("attention.head_count", heads),
        ("attention.head_count_kv", heads / 2),
        ("context_length", 256),
    ] {
        md.set(format!("llama.{k}"), MetaValue::U32(v as u32));
    }
    md.set("llama.rope.freq_base", MetaValue::F32(10000.0));
    md.set(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-5),
    );
    let mut mat = |name: String, cols: usize, rows: usize| {
        let s = 1.0 / (cols as f32).sqrt();
        let v: Vec<f32> = (0..cols * rows)
            .map(|_| rng.gen_range(-1.0f32..1.0) * s)
            .collect();
        Tensor::from_f32(name, vec![cols, rows], &v)
    };
    let mut t = vec![mat("token_embd.weight".into(), d, vocab)];
    for l in 0..layers {
        for (n, cols, rows) in [
            ("attn_q", d, d),
            // Larger keys make the attention peaky, so K errors show in the logits.
            ("attn_k", d, kvd),
            ("attn_v", d, kvd),
            ("attn_output", d, d),
            ("ffn_gate", d, ff),
            ("ffn_up", d, ff),
            ("ffn_down", ff, d),
        ] {
            t.push(mat(format!("blk.{l}.{n}.weight"), cols, rows));
        }
        for n in ["attn_norm", "ffn_norm"] {
            t.push(Tensor::from_f32(
                format!("blk.{l}.{n}.weight"),
                vec![d],
                &vec![1.0; d],
            ));
        }
    }
    t.push(Tensor::from_f32(
        "output_norm.weight",
        vec![d],
        &vec![1.0; d],
    ));
    t.push(mat("output.weight".into(), d, vocab));
    ModelSource {
        metadata: md,
        tensors: t,
        tokenizer_json: None,
    }
}

/// Logits of every position: the first half of `toks` as one batch, then
/// the rest one token at a time (both ways of writing the cache).
fn logits(m: &Model, ty: KvType, toks: &[u32]) -> Vec<f32> {
    let mut kv = m.new_cache_typed(toks.len(), ty).unwrap();
    assert_eq!(kv.kv_type(), ty);
    let half = toks.len() / 2;
    let mut st = m.new_state(half, true);
    let mut out = m
        .forward(&toks[..half], &mut kv, &mut st, Logits::All)
        .unwrap()
        .to_vec();
    for &t in &toks[half..] {
        out.extend_from_slice(m.forward(&[t], &mut kv, &mut st, Logits::Last).unwrap());
    }
    out
}

/// The largest logit error over the spread (standard deviation) of the f32 logits.
fn rel_err(want: &[f32], got: &[f32]) -> f32 {
    let n = want.len() as f32;
    let mean = want.iter().sum::<f32>() / n;
    let sd = (want.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
    let max = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    max / sd
}

#[test]
fn bytes_per_token_is_what_each_type_stores() {
    // 2 layers, 2 K/V heads of 64: 128 values per position per layer, K and V.
    let m = Model::from_source(&build(4, 2, 1)).unwrap();
    let per_value = [
        (KvType::F32, 4.0),
        (KvType::F16, 2.0),
        (KvType::Q8_0, 34.0 / 32.0),
        (KvType::Q4_0, 18.0 / 32.0),
    ];
    for (ty, bytes) in per_value {
        let kv = m.new_cache_typed(10, ty).unwrap();
        let want = (2.0 * 2.0 * 128.0 * bytes) as usize;
        assert_eq!(kv.bytes_per_token(), want, "{ty}");
        assert_eq!(kv.row_bytes(), want / 4, "{ty}");
        assert_eq!(kv.capacity_bytes(), 10 * want, "{ty}");
    }
    assert_eq!(m.new_cache(10).unwrap().kv_type(), KvType::F32);
    assert_eq!(
        m.new_cache(10).unwrap().bytes_per_token(),
        m.new_cache_typed(10, KvType::F32)
            .unwrap()
            .bytes_per_token()
    );
}

#[test]
fn f32_cache_is_the_default_cache_exactly() {
    let m = Model::from_source(&build(4, 2, 2)).unwrap();
    let toks: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % 64).collect();
    let a = logits(&m, KvType::F32, &toks);
    let mut kv = m.new_cache(toks.len()).unwrap();
    let mut st = m.new_state(12, true);
    let mut b = m
        .forward(&toks[..12], &mut kv, &mut st, Logits::All)
        .unwrap()
        .to_vec();
    for &t in &toks[12..] {
        b.extend_from_slice(m.forward(&[t], &mut kv, &mut st, Logits::Last).unwrap());
    }
    assert_eq!(a, b);
}

#[test]
fn packed_caches_give_logits_close_to_f32() {
    let m = Model::from_source(&build(4, 2, 3)).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let toks: Vec<u32> = (0..96).map(|_| rng.gen_range(0..64)).collect();
    let want = logits(&m, KvType::F32, &toks);
    let mut errs = Vec::new();
    for (ty, limit) in [(KvType::F16, 1.0), (KvType::Q8_0, 1.0), (KvType::Q4_0, 1.0)] {
        let got = logits(&m, ty, &toks);
        let e = rel_err(&want, &got);
        let mean_e = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / want.len() as f32;
        let agree = want
            .chunks(64)
            .zip(got.chunks(64))
            .filter(|(a, b)| frugal_model::sampling::argmax(a) == frugal_model::sampling::argmax(b))
            .count();
        eprintln!("{ty}: {e} mean {mean_e} agree {agree}");
        assert!(e < limit, "{ty}: max error {e} of the logits' spread");
        assert!(
            e > 0.0,
            "{ty}: identical to f32, the cache type was ignored"
        );
        errs.push(e);
    }
    // Fewer bits, larger errors.
    assert!(errs[0] < errs[1] && errs[1] < errs[2], "{errs:?}");
}

#[test]
fn batched_and_one_token_steps_agree_with_packed_caches() {
    let m = Model::from_source(&build(4, 2, 4)).unwrap();
    let toks: Vec<u32> = (0..16).map(|i| (i * 13 + 5) % 64).collect();
    for ty in [KvType::F16, KvType::Q8_0, KvType::Q4_0] {
        let mut kv = m.new_cache_typed(16, ty).unwrap();
        let mut st = m.new_state(16, true);
        let batch = m
            .forward(&toks, &mut kv, &mut st, Logits::All)
            .unwrap()
            .to_vec();
        let steps = logits(&m, ty, &toks[..2]);
        let mut kv = m.new_cache_typed(16, ty).unwrap();
        let mut st1 = m.new_state(1, false);
        let mut one = Vec::new();
        for &t in &toks {
            one.extend_from_slice(m.forward(&[t], &mut kv, &mut st1, Logits::Last).unwrap());
        }
        assert_eq!(steps.len(), 2 * 64);
        let diff = batch
            .iter()
            .zip(&one)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-3, "{ty}: batch vs steps {diff}");
        // The cache really is used: clearing it changes the next logits.
        kv.clear();
        let fresh = m
            .forward(&[toks[15]], &mut kv, &mut st1, Logits::Last)
            .unwrap();
        assert!(fresh
            .iter()
            .zip(&one[15 * 64..])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

#[test]
fn heads_that_do_not_fit_the_blocks_are_refused() {
    // stories260K has heads of 8 values: f16 fits, 32-value blocks do not.
    let m = &stories260k();
    assert_eq!(m.config.head_dim, 8);
    assert!(m.new_cache_typed(8, KvType::F16).is_ok());
    for ty in [KvType::Q8_0, KvType::Q4_0] {
        match m.new_cache_typed(8, ty) {
            Err(ModelError::Input(e)) => {
                assert!(
                    e.contains(ty.name()) && e.contains("blocks of 32") && e.contains("8 values"),
                    "{e}"
                );
            }
            Err(e) => panic!("{ty}: unexpected error {e}"),
            Ok(_) => panic!("{ty}: heads of 8 accepted"),
        }
    }
}

#[test]
fn unknown_type_names_are_a_clear_error() {
    for bad in ["q5", "int8", "", "f64"] {
        let e = bad.parse::<KvType>().unwrap_err();
        assert!(
            e.contains(&format!("`{bad}`")) && e.contains("f32, f16, q8"),
            "{bad}: {e}"
        );
    }
    assert_eq!("Q8".parse::<KvType>().unwrap(), KvType::Q8_0);
}

fn stories260k() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/stories260K");
    assert!(
        dir.join("stories260K.bin").exists(),
        "test material missing: expected ../shared/models/stories260K beside the checkout"
    );
    frugal_model::load(&dir.join("stories260K.bin"), Some(&dir.join("tok512.bin")))
        .unwrap()
        .model
}

#[test]
fn stories260k_with_an_f16_cache_stays_close_to_f32() {
    let m = stories260k();
    let toks: Vec<u32> = (0..64).map(|i| (i * 37 + 1) % 512).collect();
    let want = logits(&m, KvType::F32, &toks);
    let got = logits(&m, KvType::F16, &toks);
    let e = rel_err(&want, &got);
    assert!(e > 0.0 && e < 0.002, "f16: {e}");
}
