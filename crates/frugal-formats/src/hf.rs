//! Hugging Face model folders: `config.json`, safetensors weights (one file
//! or shards with `model.safetensors.index.json`) and `tokenizer.json`.
//!
//! Loading translates names and hyper-parameters to the GGUF vocabulary, so
//! the rest of frugal sees one convention:
//!
//! * tensors are renamed (`model.layers.N.self_attn.q_proj.weight` →
//!   `blk.N.attn_q.weight`, ...) and their dims reversed (HF's row-major
//!   `[out, in]` is GGML's `[in, out]`);
//! * for `llama`, the rows of Q and K are permuted: HF applies RoPE to the
//!   two halves of each head ("rotate half") while GGUF llama rotates
//!   adjacent pairs, so llama.cpp's converter interleaves the halves. Writing
//!   applies the inverse. `qwen2` uses NeoX (half) RoPE in GGUF too: no change.
//!
//! Weights stay in the memory-mapped files unless permuted.

use crate::{FormatError, GgmlType, MetaValue, Metadata, ModelSource, Tensor, TensorData};
use safetensors::tensor::TensorInfo as StInfo;
use safetensors::{Dtype, View};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// The safetensors crate refuses larger headers; so do we.
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Shard size used by [`write_hf_dir`].
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 4 << 30;

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

// ---------------------------------------------------------------------------
// safetensors header validation

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsEntry {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major (PyTorch) shape.
    pub shape: Vec<usize>,
    /// Byte range within the whole file.
    pub range: Range<usize>,
}

/// A validated safetensors header.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsHeader {
    /// Tensors in data order.
    pub tensors: Vec<SafetensorsEntry>,
    /// The free-form `__metadata__` map, if any.
    pub metadata: Option<HashMap<String, String>>,
    /// Where the data section starts in the file.
    pub data_start: usize,
}

/// Parse and validate a safetensors file's header against the whole file's
/// bytes: the header length, the JSON, every dtype/shape against its byte
/// range, and that the ranges tile the data section exactly (no gaps,
/// overlaps or bytes outside it). Errors name the tensor or field.
pub fn parse_safetensors_header(bytes: &[u8]) -> Result<SafetensorsHeader, FormatError> {
    let Some(len_bytes) = bytes.first_chunk::<8>() else {
        return Err(FormatError::Truncated {
            field: "safetensors header length".into(),
            offset: 0,
            len: bytes.len() as u64,
        });
    };
    let n = u64::from_le_bytes(*len_bytes);
    let file_len = bytes.len() as u64;
    if n > MAX_HEADER_BYTES || n > file_len - 8 {
        return Err(FormatError::invalid(
            "safetensors header length",
            format!(
                "{n} bytes, but the file has {} bytes after the length (limit {MAX_HEADER_BYTES})",
                file_len - 8
            ),
        ));
    }
    let data_start = 8 + n as usize;
    let json: Map<String, Value> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| FormatError::invalid("safetensors header JSON", e.to_string()))?;

    let mut metadata = None;
    let mut tensors = Vec::with_capacity(json.len());
    for (name, value) in json {
        if name == "__metadata__" {
            let m = serde_json::from_value(value).map_err(|e| {
                FormatError::invalid("safetensors __metadata__", format!("not a string map: {e}"))
            })?;
            metadata = Some(m);
            continue;
        }
        let field = format!("safetensors tensor `{name}`");
        let info: StInfo = serde_json::from_value(value)
            .map_err(|e| FormatError::invalid(&field, e.to_string()))?;
        let (start, end) = info.data_offsets;
        let need = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.size()));
        if end < start || need != Some(end - start) {
            return Err(FormatError::invalid(
                field,
                format!(
                    "dtype {:?} shape {:?} does not match data_offsets [{start}, {end})",
                    info.dtype, info.shape
                ),
            ));
        }
        tensors.push((name, info));
    }

    // The tensors must tile the data section exactly, as the format requires.
    tensors.sort_by_key(|(_, i)| i.data_offsets);
    let data_len = bytes.len() - data_start;
    let mut at = 0usize;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        let (start, end) = info.data_offsets;
        if start != at || end > data_len {
            return Err(FormatError::invalid(
                format!("safetensors tensor `{name}` data_offsets"),
                format!(
                    "[{start}, {end}) expected to start at {at} and end within the \
                     {data_len}-byte data section (overlap, gap or outside the file)"
                ),
            ));
        }
        at = end;
        out.push(SafetensorsEntry {
            name,
            dtype: info.dtype,
            shape: info.shape,
            range: data_start + start..data_start + end,
        });
    }
    if at != data_len {
        return Err(FormatError::invalid(
            "safetensors data section",
            format!("{data_len} bytes but the tensors cover {at}"),
        ));
    }
    // Everything we accept must also be accepted by the reference crate.
    safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
        FormatError::invalid(
            "safetensors header",
            format!("rejected by safetensors: {e}"),
        )
    })?;
    Ok(SafetensorsHeader {
        tensors: out,
        metadata,
        data_start,
    })
}

// ---------------------------------------------------------------------------
// Names and architectures

/// Per-layer tensors: HF suffix after `model.layers.N.` and GGUF suffix after `blk.N.`.
const LAYER_NAMES: [(&str, &str); 14] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    // Some checkpoints store RoPE's inverse frequencies; they are derived
    // from the config, so they are dropped (mapped to "").
    ("self_attn.rotary_emb.inv_freq", ""),
];

const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The GGUF name of an HF tensor: `Ok(None)` for tensors that are dropped,
/// `Err` for names frugal does not know.
fn gguf_name(hf: &str, n_layers: usize) -> Result<Option<String>, FormatError> {
    let unknown =
        || FormatError::invalid(format!("tensor `{hf}`"), "unknown Hugging Face tensor name");
    if let Some((_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Ok(Some(g.to_string()));
    }
    let rest = hf.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    if layer >= n_layers {
        return Err(FormatError::invalid(
            format!("tensor `{hf}`"),
            format!("layer {layer} but config.json num_hidden_layers is {n_layers}"),
        ));
    }
    match LAYER_NAMES.iter().find(|(h, _)| *h == suffix) {
        Some((_, "")) => Ok(None),
        None => Err(unknown()),
        Some((_, g)) => Ok(Some(format!("blk.{layer}.{g}"))),
    }
}

/// The HF name of a GGUF tensor, or `None` if it has no HF counterpart.
fn hf_name(gguf: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (h, _) = LAYER_NAMES
        .iter()
        .find(|(_, g)| !g.is_empty() && *g == suffix)?;
    Some(format!("model.layers.{layer}.{h}"))
}

/// A supported architecture: GGUF name (also HF's `model_type`), HF class,
/// and whether GGUF permutes Q/K rows relative to HF.
struct Arch {
    gguf: &'static str,
    hf_class: &'static str,
    permute_qk: bool,
}

const ARCHES: [Arch; 2] = [
    Arch {
        gguf: "llama",
        hf_class: "LlamaForCausalLM",
        permute_qk: true,
    },
    Arch {
        gguf: "qwen2",
        hf_class: "Qwen2ForCausalLM",
        permute_qk: false,
    },
];

// ---------------------------------------------------------------------------
// Q/K permutation

/// Reorder the rows of a Q or K projection (or bias) from HF order to GGUF
/// llama order. Within each head of `head_dim` rows, HF keeps the two RoPE
/// halves apart (row `i` pairs with `i + head_dim/2`); GGUF interleaves them
/// (rows `2i`, `2i+1`). `rows` is the number of rows, `row_bytes` their size.
pub fn permute_qk_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    n_head: usize,
) -> Result<Vec<u8>, FormatError> {
    permute_rows(data, rows, row_bytes, n_head, false)
}

/// Inverse of [`permute_qk_rows`]: GGUF llama order back to HF order.
pub fn unpermute_qk_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    n_head: usize,
) -> Result<Vec<u8>, FormatError> {
    permute_rows(data, rows, row_bytes, n_head, true)
}

fn permute_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    n_head: usize,
    inverse: bool,
) -> Result<Vec<u8>, FormatError> {
    if n_head == 0
        || !rows.is_multiple_of(2 * n_head)
        || rows.checked_mul(row_bytes) != Some(data.len())
    {
        return Err(FormatError::invalid(
            "Q/K permutation",
            format!(
                "{rows} rows of {row_bytes} bytes ({} given) cannot be split into {n_head} heads \
                 of an even size",
                data.len()
            ),
        ));
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = h * head_dim + 2 * i + j;
                let hf_row = h * head_dim + j * half + i;
                let (dst, src) = if inverse {
                    (hf_row, gguf_row)
                } else {
                    (gguf_row, hf_row)
                };
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// Rows and row size of a tensor whose rows are the output features: the
/// last GGML dim for matrices, single elements for vectors (biases).
fn rows_of(dims: &[usize], elem_bytes: usize) -> (usize, usize) {
    match dims {
        [n] => (*n, elem_bytes),
        _ => (
            dims[1..].iter().product(),
            dims.first().copied().unwrap_or(1) * elem_bytes,
        ),
    }
}

// ---------------------------------------------------------------------------
// Reading

fn dtype_to_ggml(d: Dtype) -> Option<GgmlType> {
    match d {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

fn ggml_to_dtype(t: GgmlType) -> Option<Dtype> {
    match t {
        GgmlType::F32 => Some(Dtype::F32),
        GgmlType::F16 => Some(Dtype::F16),
        GgmlType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value, FormatError> {
    let text = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| FormatError::invalid(path.display().to_string(), e.to_string()))
}

/// config.json accessors whose errors name the key.
struct Config<'a>(&'a Map<String, Value>);

impl Config<'_> {
    fn opt_u64(&self, key: &str) -> Result<Option<u64>, FormatError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                FormatError::invalid(
                    format!("config.json `{key}`"),
                    format!("{v} is not a non-negative integer"),
                )
            }),
        }
    }

    /// A required positive integer that fits a u32 (GGUF stores them as u32).
    fn count(&self, key: &str) -> Result<u32, FormatError> {
        let v = self
            .opt_u64(key)?
            .ok_or_else(|| FormatError::invalid(format!("config.json `{key}`"), "missing"))?;
        match u32::try_from(v) {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(FormatError::invalid(
                format!("config.json `{key}`"),
                format!("{v} is not a positive 32-bit integer"),
            )),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, FormatError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                FormatError::invalid(
                    format!("config.json `{key}`"),
                    format!("{v} is not a number"),
                )
            }),
        }
    }

    /// A token id, or the first of a list (some configs list several eos ids).
    fn token_id(&self, key: &str) -> Result<Option<u32>, FormatError> {
        let v = match self.0.get(key) {
            Some(Value::Array(a)) => a.first(),
            other => other,
        };
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    FormatError::invalid(
                        format!("config.json `{key}`"),
                        format!("{v} is not a token id"),
                    )
                }),
        }
    }
}

/// The GGUF metadata for a config.json; also returns the architecture and
/// whether the embeddings are tied.
fn metadata_from_config(
    cfg: &Map<String, Value>,
) -> Result<(&'static Arch, Metadata, bool), FormatError> {
    let class = match cfg.get("architectures") {
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().unwrap_or(""),
        other => {
            return Err(FormatError::invalid(
                "config.json `architectures`",
                format!("expected a list of one class name, found {other:?}"),
            ))
        }
    };
    let arch = ARCHES.iter().find(|a| a.hf_class == class).ok_or_else(|| {
        FormatError::invalid(
            "config.json `architectures`",
            format!(
                "unsupported architecture `{class}` (supported: {})",
                ARCHES
                    .iter()
                    .map(|a| a.hf_class)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let c = Config(cfg);
    let n_embd = c.count("hidden_size")?;
    let n_head = c.count("num_attention_heads")?;
    let n_head_kv = match c.opt_u64("num_key_value_heads")? {
        None => n_head,
        Some(_) => c.count("num_key_value_heads")?,
    };
    if n_head % n_head_kv != 0 {
        return Err(FormatError::invalid(
            "config.json `num_key_value_heads`",
            format!("{n_head_kv} does not divide num_attention_heads {n_head}"),
        ));
    }
    let head_dim = match c.opt_u64("head_dim")? {
        Some(_) => c.count("head_dim")?,
        None if n_embd % n_head == 0 => n_embd / n_head,
        None => {
            return Err(FormatError::invalid(
                "config.json `num_attention_heads`",
                format!("{n_head} does not divide hidden_size {n_embd}"),
            ))
        }
    };

    let a = arch.gguf;
    let mut m = Metadata::default();
    m.set("general.architecture", MetaValue::String(a.into()));
    m.set(
        format!("{a}.context_length"),
        MetaValue::U32(c.count("max_position_embeddings")?),
    );
    m.set(format!("{a}.embedding_length"), MetaValue::U32(n_embd));
    m.set(
        format!("{a}.feed_forward_length"),
        MetaValue::U32(c.count("intermediate_size")?),
    );
    m.set(
        format!("{a}.block_count"),
        MetaValue::U32(c.count("num_hidden_layers")?),
    );
    m.set(format!("{a}.attention.head_count"), MetaValue::U32(n_head));
    m.set(
        format!("{a}.attention.head_count_kv"),
        MetaValue::U32(n_head_kv),
    );
    m.set(
        format!("{a}.rope.dimension_count"),
        MetaValue::U32(head_dim),
    );
    if head_dim * n_head != n_embd {
        m.set(
            format!("{a}.attention.key_length"),
            MetaValue::U32(head_dim),
        );
        m.set(
            format!("{a}.attention.value_length"),
            MetaValue::U32(head_dim),
        );
    }
    // transformers' defaults for LlamaConfig / Qwen2Config.
    let eps = c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
    m.set(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(eps as f32),
    );
    let theta = c.opt_f64("rope_theta")?.unwrap_or(10000.0);
    m.set(format!("{a}.rope.freq_base"), MetaValue::F32(theta as f32));
    if c.opt_u64("vocab_size")?.is_some() {
        m.set(
            format!("{a}.vocab_size"),
            MetaValue::U32(c.count("vocab_size")?),
        );
    }
    if let Some(id) = c.token_id("bos_token_id")? {
        m.set("tokenizer.ggml.bos_token_id", MetaValue::U32(id));
    }
    if let Some(id) = c.token_id("eos_token_id")? {
        m.set("tokenizer.ggml.eos_token_id", MetaValue::U32(id));
    }
    let tied = match cfg.get("tie_word_embeddings") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(FormatError::invalid(
                "config.json `tie_word_embeddings`",
                format!("{v} is not a bool"),
            ))
        }
    };
    Ok((arch, m, tied))
}

/// A plain file name inside the model folder (index files are untrusted:
/// no paths that escape the folder).
fn check_shard_name(name: &str) -> Result<(), FormatError> {
    let ok = !name.is_empty()
        && name.ends_with(".safetensors")
        && !name.contains(['/', '\\'])
        && name != ".."
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(FormatError::invalid(
            INDEX_FILE,
            format!("weight_map names `{name}`, which is not a .safetensors file in the folder"),
        ))
    }
}

/// Safetensors file names, and the tensor → file map of a sharded model.
type WeightFiles = (Vec<String>, Option<HashMap<String, String>>);

/// The safetensors files of a folder and, for sharded models, the index.
fn weight_files(dir: &Path) -> Result<WeightFiles, FormatError> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                FormatError::invalid(
                    format!("{INDEX_FILE} `weight_map`"),
                    "missing or not an object",
                )
            })?;
        let mut files = Vec::new();
        let mut by_tensor = HashMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                FormatError::invalid(
                    format!("{INDEX_FILE} `weight_map.{tensor}`"),
                    "not a string",
                )
            })?;
            check_shard_name(file)?;
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
            by_tensor.insert(tensor.clone(), file.to_string());
        }
        files.sort();
        Ok((files, Some(by_tensor)))
    } else if dir.join(SINGLE_FILE).exists() {
        Ok((vec![SINGLE_FILE.to_string()], None))
    } else {
        Err(FormatError::invalid(
            dir.display().to_string(),
            format!("no {SINGLE_FILE} or {INDEX_FILE}"),
        ))
    }
}

fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: read-only map; no mutable access is ever handed out. Sound as
    // long as no other process truncates or rewrites the file while it is
    // mapped, which we assume for model weights (written once, then read).
    let m = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    Ok(Arc::new(m))
}

/// Order tensors like llama.cpp's converter: embeddings, layers in order, output.
fn tensor_order(name: &str) -> (u8, usize, String) {
    if name == "token_embd.weight" {
        return (0, 0, String::new());
    }
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((l, s)) = rest.split_once('.') {
            if let Ok(l) = l.parse() {
                return (1, l, s.to_string());
            }
        }
    }
    (2, 0, name.to_string())
}

/// Read a Hugging Face model folder as GGUF-named tensors and metadata.
pub fn read_hf_dir(dir: &Path) -> Result<ModelSource, FormatError> {
    let cfg_path = dir.join("config.json");
    let cfg = read_json(&cfg_path)?;
    let cfg = cfg
        .as_object()
        .ok_or_else(|| FormatError::invalid(cfg_path.display().to_string(), "not a JSON object"))?;
    let (arch, metadata, tied) = metadata_from_config(cfg)?;
    let a = arch.gguf;
    let n_layers = metadata.get_usize(&format!("{a}.block_count"))?;
    let n_head = metadata.get_usize(&format!("{a}.attention.head_count"))?;
    let n_head_kv = metadata.get_usize(&format!("{a}.attention.head_count_kv"))?;

    let (files, index) = weight_files(dir)?;
    let mut tensors = Vec::new();
    let mut seen = HashSet::new();
    for file in &files {
        let path = dir.join(file);
        let mmap = map_file(&path)?;
        let header = parse_safetensors_header(&mmap)
            .map_err(|e| FormatError::invalid(path.display().to_string(), e.to_string()))?;
        for e in header.tensors {
            if let Some(index) = &index {
                if index.get(&e.name) != Some(file) {
                    return Err(FormatError::invalid(
                        format!("tensor `{}`", e.name),
                        format!("found in {file} but {INDEX_FILE} does not map it there"),
                    ));
                }
            }
            if !seen.insert(e.name.clone()) {
                return Err(FormatError::invalid(
                    format!("tensor `{}`", e.name),
                    "stored twice",
                ));
            }
            let Some(name) = gguf_name(&e.name, n_layers)? else {
                continue;
            };
            if tied && name == "output.weight" {
                continue; // identical to the embeddings by definition
            }
            let ty = dtype_to_ggml(e.dtype).ok_or_else(|| {
                FormatError::invalid(
                    format!("tensor `{}`", e.name),
                    format!(
                        "dtype {:?} is not supported (F32, F16 and BF16 are)",
                        e.dtype
                    ),
                )
            })?;
            if e.shape.is_empty() || e.shape.len() > 4 {
                return Err(FormatError::invalid(
                    format!("tensor `{}`", e.name),
                    format!("shape {:?} must have 1 to 4 dimensions", e.shape),
                ));
            }
            let dims: Vec<usize> = e.shape.iter().rev().copied().collect();
            let heads = match name.rsplit('.').nth(1) {
                Some("attn_q") => Some(n_head),
                Some("attn_k") => Some(n_head_kv),
                _ => None,
            };
            let data = match heads {
                Some(heads) if arch.permute_qk => {
                    let (rows, row_bytes) = rows_of(&dims, ty.type_size());
                    let bytes = permute_qk_rows(&mmap[e.range.clone()], rows, row_bytes, heads)
                        .map_err(|err| {
                            FormatError::invalid(format!("tensor `{}`", e.name), err.to_string())
                        })?;
                    TensorData::Owned(Arc::new(bytes))
                }
                _ => TensorData::Mapped(mmap.clone(), e.range.clone()),
            };
            tensors.push(Tensor {
                name,
                ty,
                dims,
                data,
            });
        }
    }
    if let Some(index) = &index {
        if let Some(missing) = index.keys().find(|k| !seen.contains(*k)) {
            return Err(FormatError::invalid(
                format!("tensor `{missing}`"),
                format!("listed in {INDEX_FILE} but not found in {}", index[missing]),
            ));
        }
    }
    if !tensors.iter().any(|t| t.name == "token_embd.weight") {
        return Err(FormatError::MissingTensor(
            "model.embed_tokens.weight".into(),
        ));
    }
    tensors.sort_by_key(|t| tensor_order(&t.name));

    let tok = dir.join("tokenizer.json");
    Ok(ModelSource {
        metadata,
        tensors,
        tokenizer_json: tok.is_file().then_some(tok),
    })
}

// ---------------------------------------------------------------------------
// Writing

/// A tensor to serialize with the safetensors crate.
struct OutTensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// An f32 as JSON with its shortest decimal form (1e-5, not 9.99999974e-6).
fn json_f32(x: f32) -> Value {
    format!("{x}")
        .parse::<f64>()
        .ok()
        .and_then(|v| serde_json::Number::from_f64(v).map(Value::Number))
        .unwrap_or(Value::Null)
}

fn config_from_metadata(src: &ModelSource) -> Result<(&'static Arch, Value), FormatError> {
    let m = &src.metadata;
    let a = m.get_str("general.architecture")?;
    let arch = ARCHES.iter().find(|x| x.gguf == a).ok_or_else(|| {
        FormatError::invalid(
            "general.architecture",
            format!("cannot export `{a}` to Hugging Face (supported: llama, qwen2)"),
        )
    })?;
    let a = arch.gguf;
    let key = |k: &str| format!("{a}.{k}");
    let n_embd = m.get_u64(&key("embedding_length"))?;
    let n_head = m.get_u64(&key("attention.head_count"))?;
    let embd = src
        .tensor("token_embd.weight")
        .ok_or_else(|| FormatError::MissingTensor("token_embd.weight".into()))?;
    let vocab = match m.opt(&key("vocab_size"), Metadata::get_u64)? {
        Some(v) => v,
        None => embd.dims.get(1).copied().unwrap_or(0) as u64,
    };
    let torch_dtype = match embd.ty {
        GgmlType::F16 => "float16",
        GgmlType::BF16 => "bfloat16",
        _ => "float32",
    };
    let mut cfg = json!({
        "architectures": [arch.hf_class],
        "model_type": a,
        "hidden_act": "silu",
        "hidden_size": n_embd,
        "intermediate_size": m.get_u64(&key("feed_forward_length"))?,
        "num_hidden_layers": m.get_u64(&key("block_count"))?,
        "num_attention_heads": n_head,
        "num_key_value_heads": m.opt(&key("attention.head_count_kv"), Metadata::get_u64)?.unwrap_or(n_head),
        "max_position_embeddings": m.get_u64(&key("context_length"))?,
        "rms_norm_eps": json_f32(m.get_f32(&key("attention.layer_norm_rms_epsilon"))?),
        "rope_theta": json_f32(m.opt(&key("rope.freq_base"), Metadata::get_f32)?.unwrap_or(10000.0)),
        "vocab_size": vocab,
        "tie_word_embeddings": src.tensor("output.weight").is_none(),
        "torch_dtype": torch_dtype,
    });
    let obj = cfg.as_object_mut().expect("json! object");
    if let Some(hd) = m.opt(&key("attention.key_length"), Metadata::get_u64)? {
        obj.insert("head_dim".into(), hd.into());
    }
    if arch.gguf == "llama" {
        let bias = src.tensors.iter().any(|t| t.name.ends_with("attn_q.bias"));
        obj.insert("attention_bias".into(), bias.into());
    }
    for (hf, gguf) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(id) = m.opt(gguf, Metadata::get_u64)? {
            obj.insert(hf.into(), id.into());
        }
    }
    Ok((arch, cfg))
}

/// Convert every tensor to its HF name, shape and (for llama Q/K) row order.
fn hf_tensors<'a>(
    src: &'a ModelSource,
    arch: &Arch,
) -> Result<Vec<(String, OutTensor<'a>)>, FormatError> {
    let a = arch.gguf;
    let n_head = src
        .metadata
        .get_usize(&format!("{a}.attention.head_count"))?;
    let n_head_kv = src
        .metadata
        .opt(&format!("{a}.attention.head_count_kv"), Metadata::get_usize)?
        .unwrap_or(n_head);
    let mut out = Vec::with_capacity(src.tensors.len());
    for t in &src.tensors {
        let field = || format!("tensor `{}`", t.name);
        let name = hf_name(&t.name).ok_or_else(|| {
            FormatError::invalid(
                field(),
                "has no Hugging Face counterpart for this architecture",
            )
        })?;
        let dtype = ggml_to_dtype(t.ty).ok_or_else(|| {
            FormatError::invalid(
                field(),
                format!(
                    "type {} is quantized; dequantize to F32/F16/BF16 before exporting",
                    t.ty
                ),
            )
        })?;
        let heads = if t.name.contains(".attn_q.") {
            Some(n_head)
        } else if t.name.contains(".attn_k.") {
            Some(n_head_kv)
        } else {
            None
        };
        let data = match heads {
            Some(h) if arch.permute_qk => {
                let (rows, row_bytes) = rows_of(&t.dims, t.ty.type_size());
                let v = unpermute_qk_rows(t.bytes(), rows, row_bytes, h)
                    .map_err(|e| FormatError::invalid(field(), e.to_string()))?;
                Cow::Owned(v)
            }
            _ => Cow::Borrowed(t.bytes()),
        };
        let shape = t.dims.iter().rev().copied().collect();
        out.push((name, OutTensor { dtype, shape, data }));
    }
    Ok(out)
}

/// Write a model as a Hugging Face folder (config.json, safetensors,
/// tokenizer.json), sharding above [`DEFAULT_MAX_SHARD_BYTES`].
pub fn write_hf_dir(
    dir: &Path,
    src: &ModelSource,
    tokenizer_json: Option<&Path>,
) -> Result<(), FormatError> {
    write_hf_dir_sharded(dir, src, tokenizer_json, DEFAULT_MAX_SHARD_BYTES)
}

/// [`write_hf_dir`] with an explicit shard size. Tensors are floats only
/// (the caller dequantizes first). Everything is written into a temporary
/// folder next to `dir` and then moved into place, so a failure leaves `dir`
/// untouched.
pub fn write_hf_dir_sharded(
    dir: &Path,
    src: &ModelSource,
    tokenizer_json: Option<&Path>,
    max_shard_bytes: u64,
) -> Result<(), FormatError> {
    let (arch, cfg) = config_from_metadata(src)?;
    let tensors = hf_tensors(src, arch)?;

    let tmp = crate::gguf::temp_path(dir);
    let result = (|| {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
        let cfg_text = serde_json::to_string_pretty(&cfg).expect("serializable") + "\n";
        let p = tmp.join("config.json");
        std::fs::write(&p, cfg_text).map_err(|e| FormatError::io(&p, e))?;
        write_shards(&tmp, &tensors, max_shard_bytes)?;
        if let Some(tok) = tokenizer_json {
            let p = tmp.join("tokenizer.json");
            std::fs::copy(tok, &p).map_err(|e| FormatError::io(tok, e))?;
        }
        move_into_place(&tmp, dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_shards(
    dir: &Path,
    tensors: &[(String, OutTensor<'_>)],
    max: u64,
) -> Result<(), FormatError> {
    // Greedy packing in model order; a tensor larger than `max` gets its own shard.
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0u64;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let n = t.data.len() as u64;
        if size > 0 && size + n > max {
            shards.push(vec![]);
            size = 0;
        }
        size += n;
        shards.last_mut().expect("non-empty").push(i);
    }
    let n_shards = shards.len();
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let mut weight_map = BTreeMap::new();
    for (k, shard) in shards.iter().enumerate() {
        let file = if n_shards == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{n_shards:05}.safetensors", k + 1)
        };
        let path = dir.join(&file);
        let items = shard
            .iter()
            .map(|&i| (tensors[i].0.as_str(), &tensors[i].1));
        safetensors::serialize_to_file(items, &meta, &path).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => FormatError::io(&path, io),
            other => FormatError::invalid(path.display().to_string(), format!("{other:?}")),
        })?;
        for &i in shard {
            weight_map.insert(tensors[i].0.clone(), file.clone());
        }
    }
    if n_shards > 1 {
        let total: u64 = tensors.iter().map(|(_, t)| t.data.len() as u64).sum();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let p = dir.join(INDEX_FILE);
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&index).expect("serializable") + "\n",
        )
        .map_err(|e| FormatError::io(&p, e))?;
    }
    Ok(())
}

/// Is this a weights file we write (and so may replace)?
fn is_weight_file(name: &str) -> bool {
    name == SINGLE_FILE
        || name == INDEX_FILE
        || (name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-"))
}

/// Rename the finished temporary folder to `dir`; if `dir` exists, move the
/// files in one by one, first removing weight files we did not write (a
/// stale single file next to new shards would confuse readers).
fn move_into_place(tmp: &Path, dir: &Path) -> Result<(), FormatError> {
    if !dir.exists() {
        return std::fs::rename(tmp, dir).map_err(|e| FormatError::io(dir, e));
    }
    let names = |d: &Path| -> Result<Vec<String>, FormatError> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d).map_err(|e| FormatError::io(d, e))? {
            let e = e.map_err(|e| FormatError::io(d, e))?;
            v.push(e.file_name().to_string_lossy().into_owned());
        }
        Ok(v)
    };
    let new = names(tmp)?;
    for old in names(dir)? {
        if is_weight_file(&old) && !new.contains(&old) {
            let p = dir.join(&old);
            std::fs::remove_file(&p).map_err(|e| FormatError::io(&p, e))?;
        }
    }
    for n in &new {
        let to = dir.join(n);
        std::fs::rename(tmp.join(n), &to).map_err(|e| FormatError::io(&to, e))?;
    }
    std::fs::remove_dir(tmp).map_err(|e| FormatError::io(tmp, e))
}
