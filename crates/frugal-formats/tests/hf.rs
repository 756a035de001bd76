//! Hugging Face folders: write → read round trips, the llama Q/K permutation
//! and config mapping.

use frugal_formats::hf::{
    parse_safetensors_header, permute_qk_rows, read_hf_dir, unpermute_qk_rows, write_hf_dir,
    write_hf_dir_sharded,
};
use frugal_formats::{GgmlType, MetaValue, Metadata, ModelSource, Tensor, TensorData};
use std::path::Path;
use std::sync::Arc;

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

const DIM: usize = 16;
const FF: usize = 24;
const VOCAB: usize = 32;
const LAYERS: usize = 2;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const HEAD: usize = DIM / N_HEAD;

fn tiny(arch: &str, tied: bool, biases: bool) -> ModelSource {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut t = |name: String, dims: Vec<usize>| {
        let v: Vec<f32> = (0..dims.iter().product()).map(|_| rng.f32()).collect();
        Tensor::from_f32(name, dims, &v)
    };
    let kv = HEAD * N_HEAD_KV;
    let mut tensors = vec![t("token_embd.weight".into(), vec![DIM, VOCAB])];
    for l in 0..LAYERS {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensors.push(t(b("attn_norm.weight"), vec![DIM]));
        tensors.push(t(b("attn_q.weight"), vec![DIM, DIM]));
        tensors.push(t(b("attn_k.weight"), vec![DIM, kv]));
        tensors.push(t(b("attn_v.weight"), vec![DIM, kv]));
        if biases {
            tensors.push(t(b("attn_q.bias"), vec![DIM]));
            tensors.push(t(b("attn_k.bias"), vec![kv]));
            tensors.push(t(b("attn_v.bias"), vec![kv]));
        }
        tensors.push(t(b("attn_output.weight"), vec![DIM, DIM]));
        tensors.push(t(b("ffn_down.weight"), vec![FF, DIM]));
        tensors.push(t(b("ffn_gate.weight"), vec![DIM, FF]));
        tensors.push(t(b("ffn_norm.weight"), vec![DIM]));
        tensors.push(t(b("ffn_up.weight"), vec![DIM, FF]));
    }
    tensors.push(t("output_norm.weight".into(), vec![DIM]));
    if !tied {
        tensors.push(t("output.weight".into(), vec![DIM, VOCAB]));
    }
    ModelSource {
        metadata: tiny_metadata(arch),
        tensors,
        tokenizer_json: None,
    }
}

fn tiny_metadata(a: &str) -> Metadata {
    let mut m = Metadata::default();
    let u = |x: usize| MetaValue::U32(x as u32);
    m.set("general.architecture", MetaValue::String(a.into()));
    m.set(format!("{a}.context_length"), u(128));
    m.set(format!("{a}.embedding_length"), u(DIM));
    m.set(format!("{a}.feed_forward_length"), u(FF));
    m.set(format!("{a}.block_count"), u(LAYERS));
    m.set(format!("{a}.attention.head_count"), u(N_HEAD));
    m.set(format!("{a}.attention.head_count_kv"), u(N_HEAD_KV));
    m.set(format!("{a}.rope.dimension_count"), u(HEAD));
    m.set(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(1e-5),
    );
    m.set(format!("{a}.rope.freq_base"), MetaValue::F32(500000.0));
    m.set(format!("{a}.vocab_size"), u(VOCAB));
    m.set("tokenizer.ggml.bos_token_id", u(1));
    m.set("tokenizer.ggml.eos_token_id", u(2));
    m
}

fn sorted(m: &Metadata) -> Vec<(String, MetaValue)> {
    let mut v = m.entries.clone();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_same(a: &ModelSource, b: &ModelSource) {
    assert_eq!(sorted(&a.metadata), sorted(&b.metadata));
    let names = |s: &ModelSource| {
        let mut v: Vec<_> = s.tensors.iter().map(|t| t.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b));
    for t in &a.tensors {
        let u = b.tensor(&t.name).unwrap();
        assert_eq!((t.ty, &t.dims), (u.ty, &u.dims), "{}", t.name);
        assert!(t.bytes() == u.bytes(), "{} bytes differ", t.name);
    }
}

/// The raw HF bytes of a tensor in a written single-file folder.
fn hf_bytes(dir: &Path, name: &str) -> Vec<u8> {
    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    let h = parse_safetensors_header(&b).unwrap();
    let e = h.tensors.iter().find(|e| e.name == name).unwrap();
    b[e.range.clone()].to_vec()
}

#[test]
fn permutation_by_hand() {
    // One element per row, so bytes show the row order. Two heads of 4:
    // HF rows (a0 a1 b0 b1) pair a_i with b_i; GGUF interleaves (a0 b0 a1 b1).
    let hf: Vec<u8> = (0..8).collect();
    let gguf = permute_qk_rows(&hf, 8, 1, 2).unwrap();
    assert_eq!(gguf, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    assert_eq!(unpermute_qk_rows(&gguf, 8, 1, 2).unwrap(), hf);
    // One head of 6: halves (0 1 2) and (3 4 5).
    let gguf = permute_qk_rows(&[0, 1, 2, 3, 4, 5], 6, 1, 1).unwrap();
    assert_eq!(gguf, vec![0, 3, 1, 4, 2, 5]);
    // Rows of several bytes move as a whole.
    let hf: Vec<u8> = vec![10, 11, 20, 21, 30, 31, 40, 41];
    assert_eq!(
        permute_qk_rows(&hf, 4, 2, 1).unwrap(),
        vec![10, 11, 30, 31, 20, 21, 40, 41]
    );
    // Odd head size, wrong sizes.
    assert!(permute_qk_rows(&[0; 6], 6, 1, 2).is_err());
    assert!(permute_qk_rows(&[0; 7], 8, 1, 2).is_err());
    assert!(permute_qk_rows(&[0; 8], 8, 1, 0).is_err());
}

#[test]
fn llama_round_trip_with_permutation() {
    let src = tiny("llama", false, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    let tok = tmp.path().join("tok.json");
    std::fs::write(&tok, "{\"model\":{}}").unwrap();
    write_hf_dir(&dir, &src, Some(&tok)).unwrap();

    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["num_key_value_heads"], 2);
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(cfg["rope_theta"], 500000.0);
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(
        std::fs::read(dir.join("tokenizer.json")).unwrap(),
        b"{\"model\":{}}"
    );

    // On disk, Q and K are in HF order: HF row h*hd + j*hd/2 + i holds GGUF
    // row h*hd + 2i + j.
    for (gguf, hf, heads) in [
        (
            "blk.1.attn_q.weight",
            "model.layers.1.self_attn.q_proj.weight",
            N_HEAD,
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
            N_HEAD_KV,
        ),
    ] {
        let g = src.tensor(gguf).unwrap().bytes();
        let h = hf_bytes(&dir, hf);
        let row = DIM * 4;
        for head in 0..heads {
            for i in 0..HEAD / 2 {
                for j in 0..2 {
                    let gr = head * HEAD + 2 * i + j;
                    let hr = head * HEAD + j * HEAD / 2 + i;
                    assert_eq!(&h[hr * row..][..row], &g[gr * row..][..row], "{gguf}");
                }
            }
        }
        assert_ne!(&h[..], g);
    }
    // Other tensors are stored as is; HF shape is the GGML dims reversed.
    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    let hdr = parse_safetensors_header(&b).unwrap();
    let up = hdr
        .tensors
        .iter()
        .find(|e| e.name == "model.layers.0.mlp.up_proj.weight")
        .unwrap();
    assert_eq!(up.shape, vec![FF, DIM]);
    assert_eq!(
        &b[up.range.clone()],
        src.tensor("blk.0.ffn_up.weight").unwrap().bytes()
    );

    let back = read_hf_dir(&dir).unwrap();
    assert_same(&src, &back);
    assert_eq!(back.tokenizer_json, Some(dir.join("tokenizer.json")));
    assert_eq!(back.tensors[0].name, "token_embd.weight");
    let q = back.tensor("blk.0.attn_q.weight").unwrap();
    assert!(
        matches!(q.data, TensorData::Owned(_)),
        "permuted data is owned"
    );
    let v = back.tensor("blk.0.attn_v.weight").unwrap();
    assert!(
        matches!(v.data, TensorData::Mapped(..)),
        "other data is mapped"
    );
    // No temporary folder left next to the output.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}

#[test]
fn qwen2_tied_with_biases_is_not_permuted() {
    let src = tiny("qwen2", true, true);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    write_hf_dir(&dir, &src, None).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(
        hf_bytes(&dir, "model.layers.0.self_attn.q_proj.weight"),
        src.tensor("blk.0.attn_q.weight").unwrap().bytes()
    );
    assert_eq!(
        hf_bytes(&dir, "model.layers.1.self_attn.k_proj.bias"),
        src.tensor("blk.1.attn_k.bias").unwrap().bytes()
    );
    let back = read_hf_dir(&dir).unwrap();
    assert_same(&src, &back);
    assert!(back.tensor("output.weight").is_none());
    assert!(back.tokenizer_json.is_none());
}

#[test]
fn llama_biases_are_permuted_too() {
    let src = tiny("llama", false, true);
    let tmp = tempfile::tempdir().unwrap();
    write_hf_dir(tmp.path(), &src, None).unwrap(); // into an existing (empty) dir
    let g = src.tensor("blk.0.attn_q.bias").unwrap().bytes();
    let h = hf_bytes(tmp.path(), "model.layers.0.self_attn.q_proj.bias");
    assert_eq!(h, unpermute_qk_rows(g, DIM, 4, N_HEAD).unwrap());
    assert_same(&src, &read_hf_dir(tmp.path()).unwrap());
}

#[test]
fn sharded_round_trip_and_overwrite() {
    let src = tiny("llama", false, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_hf_dir(&dir, &src, None).unwrap();
    assert!(dir.join("model.safetensors").exists());
    // Re-export in shards of at most 4 KiB over the single file.
    write_hf_dir_sharded(&dir, &src, None, 4096).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert!(
        !files.contains(&"model.safetensors".to_string()),
        "{files:?}"
    );
    assert!(files.contains(&"model.safetensors.index.json".to_string()));
    let shards = files.iter().filter(|f| f.contains("-of-")).count();
    assert!(shards > 2, "{files:?}");
    assert!(files.contains(&format!("model-00001-of-{shards:05}.safetensors")));
    for f in files.iter().filter(|f| f.contains("-of-")) {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len < 4096 + 2048, "{f} is {len} bytes");
    }
    assert_same(&src, &read_hf_dir(&dir).unwrap());

    // The index is checked against the shards.
    let idx = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&idx).unwrap();
    std::fs::write(&idx, text.replace("00001-of", "00002-of")).unwrap();
    let e = read_hf_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("index"), "{e}");
    std::fs::write(&idx, text.replacen("model-00001", "../../etc/passwd", 1)).unwrap();
    let e = read_hf_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("passwd"), "{e}");
}

#[test]
fn export_errors_name_the_tensor() {
    let mut src = tiny("llama", false, false);
    src.tensors[3] = Tensor {
        name: "blk.0.attn_k.weight".into(),
        ty: GgmlType::Q8_0,
        dims: vec![32, 1],
        data: TensorData::Owned(Arc::new(vec![0; 34])),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x");
    let e = write_hf_dir(&dir, &src, None).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("Q8_0"),
        "{e}"
    );
    assert!(!dir.exists());

    let mut src = tiny("llama", false, false);
    src.tensors
        .push(Tensor::from_f32("rope_freqs.weight", vec![2], &[1.0, 2.0]));
    let e = write_hf_dir(&dir, &src, None).unwrap_err().to_string();
    assert!(e.contains("rope_freqs.weight"), "{e}");

    let mut src = tiny("llama", false, false);
    src.metadata
        .set("general.architecture", MetaValue::String("gpt2".into()));
    let e = write_hf_dir(&dir, &src, None).unwrap_err().to_string();
    assert!(e.contains("gpt2"), "{e}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn import_errors() {
    let src = tiny("llama", false, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_hf_dir(dir, &src, None).unwrap();
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();

    std::fs::write(
        &cfg_path,
        cfg.replace("LlamaForCausalLM", "MambaForCausalLM"),
    )
    .unwrap();
    let e = read_hf_dir(dir).unwrap_err().to_string();
    assert!(e.contains("MambaForCausalLM"), "{e}");

    std::fs::write(&cfg_path, cfg.replace("\"hidden_size\"", "\"hidden\"")).unwrap();
    let e = read_hf_dir(dir).unwrap_err().to_string();
    assert!(e.contains("hidden_size"), "{e}");

    std::fs::write(
        &cfg_path,
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .unwrap();
    let e = read_hf_dir(dir).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.") && e.contains("num_hidden_layers"),
        "{e}"
    );
    std::fs::write(&cfg_path, &cfg).unwrap();

    // An integer tensor.
    let st = dir.join("model.safetensors");
    let ints =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2], &[0; 8]).unwrap();
    let floats =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &[0; 8]).unwrap();
    safetensors::serialize_to_file(
        [
            ("model.embed_tokens.weight", floats.clone()),
            ("model.layers.0.mlp.up_proj.weight", ints),
        ],
        &None,
        &st,
    )
    .unwrap();
    let e = read_hf_dir(dir).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight") && e.contains("I32"),
        "{e}"
    );

    // An unknown tensor name.
    safetensors::serialize_to_file([("model.layers.0.mlp.fancy.weight", floats)], &None, &st)
        .unwrap();
    let e = read_hf_dir(dir).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.mlp.fancy.weight"), "{e}");

    std::fs::remove_file(&st).unwrap();
    let e = read_hf_dir(dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}
