//! llama2.c checkpoints: the shared stories260K model and synthetic files.

use frugal_formats::llama2c::{read_checkpoint, Llama2cConfig};
use frugal_formats::TensorData;
use std::path::PathBuf;

/// The shared test material; its absence is a failure, not a skip.
fn shared_dir() -> PathBuf {
    let dir = PathBuf::from("/work/shared");
    assert!(
        dir.join("models/stories260K/stories260K.bin").is_file(),
        "test material missing: /work/shared/models/stories260K/stories260K.bin \
         (the shared model folder must be mounted to run this test)"
    );
    dir
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn stories260k() {
    let path = shared_dir().join("models/stories260K/stories260K.bin");
    let src = read_checkpoint(&path).unwrap();
    let m = &src.metadata;
    assert_eq!(m.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(m.get_usize("llama.embedding_length").unwrap(), 64);
    assert_eq!(m.get_usize("llama.feed_forward_length").unwrap(), 172);
    assert_eq!(m.get_usize("llama.block_count").unwrap(), 5);
    assert_eq!(m.get_usize("llama.attention.head_count").unwrap(), 8);
    assert_eq!(m.get_usize("llama.attention.head_count_kv").unwrap(), 4);
    assert_eq!(m.get_usize("llama.vocab_size").unwrap(), 512);
    assert_eq!(m.get_usize("llama.context_length").unwrap(), 512);
    assert_eq!(m.get_usize("llama.rope.dimension_count").unwrap(), 8);
    assert_eq!(
        m.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(m.get_f32("llama.rope.freq_base").unwrap(), 10000.0);

    // This file's header has vocab_size = +512: the classifier is shared, so
    // the file is exactly the size without a wcls array and there is no
    // output.weight.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1_056_540);
    assert!(src.tensor("output.weight").is_none());
    // 1 embedding + 5 × 9 layer tensors + final norm.
    assert_eq!(src.tensors.len(), 1 + 5 * 9 + 1);
    let expect = [
        ("token_embd.weight", vec![64, 512]),
        ("blk.0.attn_q.weight", vec![64, 64]),
        ("blk.4.attn_k.weight", vec![64, 32]),
        ("blk.2.attn_v.weight", vec![64, 32]),
        ("blk.1.attn_output.weight", vec![64, 64]),
        ("blk.3.ffn_gate.weight", vec![64, 172]),
        ("blk.3.ffn_down.weight", vec![172, 64]),
        ("blk.3.ffn_up.weight", vec![64, 172]),
        ("blk.0.attn_norm.weight", vec![64]),
        ("blk.0.ffn_norm.weight", vec![64]),
        ("output_norm.weight", vec![64]),
    ];
    for (name, dims) in expect {
        let t = src.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.dims, dims, "{name}");
        assert_eq!(t.bytes().len(), dims.iter().product::<usize>() * 4);
        assert!(matches!(t.data, TensorData::Mapped(..)), "{name} copied");
    }
    // Model order: embeddings, then layer 0 starting with its norm.
    assert_eq!(src.tensors[0].name, "token_embd.weight");
    assert_eq!(src.tensors[1].name, "blk.0.attn_norm.weight");
    assert_eq!(src.tensors.last().unwrap().name, "output_norm.weight");

    // Offsets: the embeddings follow the header; layer 0's norm follows them.
    let raw = std::fs::read(&path).unwrap();
    let emb = src.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.bytes(), &raw[28..28 + 512 * 64 * 4]);
    let norm0 = src.tensor("blk.0.attn_norm.weight").unwrap();
    let at = 28 + 512 * 64 * 4;
    assert_eq!(norm0.bytes(), &raw[at..at + 64 * 4]);
    // RMS norm weights of a trained model are finite and mostly near 1.
    let w = f32s(norm0.bytes());
    assert!(w.iter().all(|x| x.is_finite()));
}

/// A synthetic checkpoint where every float is its own index, so each
/// tensor's position in the file can be checked.
fn synthetic(header: [i32; 7], n_floats: usize) -> Vec<u8> {
    let mut b: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    for i in 0..n_floats {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    b
}

#[test]
fn unshared_classifier_and_layout() {
    // dim 8, hidden 12, 2 layers, 4 heads, 2 kv heads, vocab 10 (separate wcls), seq 3.
    let (d, h, l, v, s) = (8usize, 12usize, 2usize, 10usize, 3usize);
    let kv = 4;
    let per_layer = d + d * d + 2 * d * kv + d * d + d + 3 * h * d;
    let n = v * d + l * per_layer + d + 2 * s + v * d;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.bin");
    std::fs::write(&p, synthetic([8, 12, 2, 4, 2, -10, 3], n)).unwrap();
    let src = read_checkpoint(&p).unwrap();
    let first = |name: &str| f32s(src.tensor(name).unwrap().bytes())[0] as usize;

    assert_eq!(first("token_embd.weight"), 0);
    let rms_att = v * d;
    assert_eq!(first("blk.0.attn_norm.weight"), rms_att);
    assert_eq!(first("blk.1.attn_norm.weight"), rms_att + d);
    let wq = rms_att + l * d;
    assert_eq!(first("blk.1.attn_q.weight"), wq + d * d);
    let wk = wq + l * d * d;
    assert_eq!(first("blk.1.attn_k.weight"), wk + d * kv);
    let wv = wk + l * d * kv;
    let wo = wv + l * d * kv;
    assert_eq!(first("blk.0.attn_output.weight"), wo);
    let rms_ffn = wo + l * d * d;
    let w1 = rms_ffn + l * d;
    assert_eq!(first("blk.1.ffn_gate.weight"), w1 + h * d);
    let w2 = w1 + l * h * d;
    assert_eq!(first("blk.1.ffn_down.weight"), w2 + d * h);
    let w3 = w2 + l * d * h;
    assert_eq!(first("blk.0.ffn_up.weight"), w3);
    let fin = w3 + l * h * d;
    assert_eq!(first("output_norm.weight"), fin);
    let wcls = fin + d + 2 * s;
    assert_eq!(first("output.weight"), wcls);
    assert_eq!(src.tensor("output.weight").unwrap().dims, vec![d, v]);
    assert_eq!(src.metadata.get_usize("llama.vocab_size").unwrap(), v);
}

#[test]
fn bad_headers() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.bin");
    let check = |header: [i32; 7], floats: usize, words: &[&str]| {
        std::fs::write(&p, synthetic(header, floats)).unwrap();
        let e = read_checkpoint(&p).unwrap_err().to_string();
        for w in words {
            assert!(e.contains(w), "`{e}` lacks `{w}`");
        }
    };
    check([0, 12, 2, 4, 2, 10, 3], 0, &["dim", "not positive"]);
    check([8, -12, 2, 4, 2, 10, 3], 0, &["hidden_dim"]);
    check([8, 12, 0, 4, 2, 10, 3], 0, &["n_layers"]);
    check([8, 12, 2, 3, 3, 10, 3], 0, &["n_heads", "divide"]);
    check([8, 12, 2, 4, 3, 10, 3], 0, &["n_kv_heads", "divide"]);
    check([8, 12, 2, 8, 8, 10, 3], 0, &["n_heads", "odd"]);
    check([8, 12, 2, 4, 2, i32::MIN, 3], 0, &["vocab_size"]);
    check([8, 12, 2, 4, 2, 0, 3], 0, &["vocab_size"]);
    check([8, 12, 2, 4, 2, 10, -3], 0, &["seq_len"]);
    check([8, 12, 2, 4, 2, 10, 3], 10, &["file length"]);
    let max = i32::MAX;
    check([max - 1, max, max, 1, 1, max, max], 0, &["overflow"]);
    // The right size with one float too many is also refused.
    let n = 10 * 8 + 2 * (8 + 64 + 2 * 32 + 64 + 8 + 3 * 96) + 8 + 6;
    std::fs::write(&p, synthetic([8, 12, 2, 4, 2, 10, 3], n)).unwrap();
    assert!(read_checkpoint(&p).is_ok());
    check([8, 12, 2, 4, 2, 10, 3], n + 1, &["file length"]);
    check([8, 12, 2, 4, 2, -10, 3], n, &["file length"]);
    // Short header.
    std::fs::write(&p, [1u8; 27]).unwrap();
    let e = read_checkpoint(&p).unwrap_err().to_string();
    assert!(e.contains("header") && e.contains("truncated"), "{e}");
    assert!(Llama2cConfig::parse(&[0; 28]).is_err());
}
