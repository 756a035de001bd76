//! Reading a GGUF into memory lays its Q4_0, Q4_1, Q8_0, SQ8_2of4 and
//! SQ8_32of64 matrices out 16 rows at a time (on CPUs with the kernel), and
//! the model computes the same logits as from the mapped file in ggml's
//! layout: tied and untied output, Q4_0, Q4_1, Q8_0, 2:4 and unstructured
//! sparse blocks, prompt and one-token steps.

use frugal_formats::gguf::{GgufFile, GgufWriter};
use frugal_formats::{GgmlType, MetaValue};
use frugal_model::load::{interleave_matrices, load_source_with};
use frugal_model::{Logits, Model, Residency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A random 2-layer llama model as a GGUF file: block matrices of `ty`, the
/// output matrix Q8_0 (or none: `tied`, the embedding then of `ty` too),
/// 64-wide heads, 96 tokens.
fn write_model(path: &std::path::Path, ty: GgmlType, tied: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (d, heads, kvh, ff, vocab, layers) = (128usize, 2usize, 1usize, 256usize, 96usize, 2);
    let mut w = GgufWriter::new();
    w.set_meta("general.architecture", MetaValue::String("llama".into()));
    for (k, v) in [
        ("embedding_length", d),
        ("feed_forward_length", ff),
        ("block_count", layers),
        ("attention.head_count", heads),
        ("attention.head_count_kv", kvh),
        ("context_length", 64),
    ] {
        w.set_meta(format!("llama.{k}"), MetaValue::U32(v as u32));
    }
    w.set_meta("llama.rope.freq_base", MetaValue::F32(10000.0));
    w.set_meta(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-5),
    );
    let mut mat = |name: String, ty: GgmlType, cols: usize, rows: usize, w: &mut GgufWriter| {
        let s = 1.0 / (cols as f32).sqrt();
        let v: Vec<f32> = (0..cols * rows)
            .map(|_| rng.gen_range(-1.0f32..1.0) * s)
            .collect();
        let q = frugal_kernels::traits(ty).unwrap().from_float.unwrap();
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let mut bytes = vec![0u8; rows * rb];
        for (x, y) in v.chunks_exact(cols).zip(bytes.chunks_exact_mut(rb)) {
            q(x, y);
        }
        w.add_tensor(name, ty, vec![cols as u64, rows as u64], bytes)
            .unwrap();
    };
    let embd_ty = if tied { ty } else { GgmlType::Q8_0 };
    mat("token_embd.weight".into(), embd_ty, d, vocab, &mut w);
    let ones = |n: usize| {
        vec![1.0f32; n]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    for l in 0..layers {
        for (n, cols, rows) in [
            ("attn_q", d, d),
            ("attn_k", d, kvh * 64),
            ("attn_v", d, kvh * 64),
            ("attn_output", d, d),
            ("ffn_gate", d, ff),
            ("ffn_up", d, ff),
            ("ffn_down", ff, d),
        ] {
            mat(format!("blk.{l}.{n}.weight"), ty, cols, rows, &mut w);
        }
        for n in ["attn_norm", "ffn_norm"] {
            w.add_tensor(
                format!("blk.{l}.{n}.weight"),
                GgmlType::F32,
                vec![d as u64],
                ones(d),
            )
            .unwrap();
        }
    }
    w.add_tensor("output_norm.weight", GgmlType::F32, vec![d as u64], ones(d))
        .unwrap();
    if !tied {
        mat("output.weight".into(), GgmlType::Q8_0, d, vocab, &mut w);
    }
    w.write(path).unwrap();
}

/// Logits of a 6-token prompt, then of 3 one-token steps.
fn logits(m: &Model) -> Vec<f32> {
    let toks = [1u32, 17, 42, 5, 88, 30, 9, 61, 2];
    let mut kv = m.new_cache(toks.len()).unwrap();
    let mut st = m.new_state(6, true);
    let mut out = m
        .forward(&toks[..6], &mut kv, &mut st, Logits::All)
        .unwrap()
        .to_vec();
    for &t in &toks[6..] {
        out.extend_from_slice(m.forward(&[t], &mut kv, &mut st, Logits::Last).unwrap());
    }
    out
}

#[test]
fn in_memory_layout_gives_the_mapped_logits() {
    let dir = std::env::temp_dir().join(format!("frugal-interleave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (ty, tied)) in [
        (GgmlType::Q8_0, true),
        (GgmlType::Q4_0, false),
        (GgmlType::Q4_0, true),
        (GgmlType::Q4_1, false),
        (
            GgmlType::Frugal(frugal_formats::FrugalType::Sparse24Q8),
            false,
        ),
        (
            GgmlType::Frugal(frugal_formats::FrugalType::SparseQ8 { keep: 32 }),
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(format!("m{i}.gguf"));
        write_model(&path, ty, tied, 5 + i as u64);
        let (mapped, _) = load_source_with(&path, Residency::Mapped).unwrap();
        let (resident, _) = load_source_with(&path, Residency::InMemory).unwrap();
        let types = |s: &frugal_formats::ModelSource, name: &str| {
            s.tensors.iter().find(|t| t.name == name).unwrap().ty
        };
        assert_eq!(types(&mapped, "blk.1.ffn_down.weight"), ty);
        if frugal_kernels::interleave::available_for(ty) {
            let il = ty.interleaved16().unwrap();
            assert_eq!(types(&resident, "blk.1.ffn_down.weight"), il, "case {i}");
            assert_eq!(types(&resident, "blk.0.attn_k.weight"), il, "case {i}");
            // The embedding is laid out only when it is also the output matrix.
            let embd = types(&resident, "token_embd.weight");
            assert_eq!(embd.interleaved_base().is_some(), tied, "case {i}: {embd}");
        }
        let (a, b) = (
            logits(&Model::from_source(&mapped).unwrap()),
            logits(&Model::from_source(&resident).unwrap()),
        );
        // Same integer products and scales; only float summation order
        // differs, which can move an activation's 8-bit rounding.
        let sd = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            max <= 0.02 * sd,
            "case {i}: logits differ by {max} (rms {sd})"
        );
        assert!(a.iter().all(|x| x.is_finite()));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_mapped_file_is_not_rewritten() {
    let dir = std::env::temp_dir().join(format!("frugal-interleave-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    write_model(&path, GgmlType::Q8_0, false, 3);
    let mut f = GgufFile::open(&path).unwrap();
    if frugal_kernels::interleave::available() {
        let e = interleave_matrices(&mut f).unwrap_err();
        assert!(e.to_string().contains("mapped"), "{e}");
    }
    // Once its tensors are handed out, a file read into memory is not rewritten either.
    let mut g = GgufFile::read_into_memory(&path).unwrap();
    let held = g.tensor("blk.0.attn_q.weight").unwrap();
    let e = g.transform_resident(|_, _| None).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(held);
    assert_eq!(g.transform_resident(|_, _| None).unwrap(), 0);
    std::fs::remove_dir_all(&dir).ok();
}
