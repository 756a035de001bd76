//! Open a model from any supported layout, with its tokenizer.
//!
//! - a GGUF file (detected by its magic, not its name);
//! - a Hugging Face folder (config.json + safetensors + tokenizer.json);
//! - a llama2.c checkpoint (`.bin`), whose tokenizer comes from `--tokenizer`.

use crate::{Model, ModelError};
use frugal_formats::{gguf::GgufFile, hf, llama2c, ModelSource};
use frugal_tokenizer::Tokenizer;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The on-disk layouts frugal reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HuggingFace,
    Llama2c,
}

impl ModelFormat {
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::HuggingFace => "hf-safetensors",
            ModelFormat::Llama2c => "llama2.c",
        }
    }
}

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
    pub format: ModelFormat,
    pub path: PathBuf,
    /// Size of the model file(s) on disk.
    pub file_bytes: u64,
}

/// Which layout `path` holds.
pub fn detect_format(path: &Path) -> Result<ModelFormat, ModelError> {
    if path.is_dir() {
        return Ok(ModelFormat::HuggingFace);
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)
        .map_err(|e| ModelError::Load(format!("cannot open model {}: {e}", path.display())))?;
    let n = f.read(&mut magic).unwrap_or(0);
    if n == 4 && &magic == b"GGUF" {
        return Ok(ModelFormat::Gguf);
    }
    if path.extension().is_some_and(|e| e == "bin") {
        return Ok(ModelFormat::Llama2c);
    }
    Err(ModelError::Load(format!(
        "{}: not a GGUF file (bad magic), a Hugging Face folder or a llama2.c .bin checkpoint",
        path.display()
    )))
}

/// How a GGUF file's weights reach memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residency {
    /// Memory-mapped from the file: pages come in as they are first read,
    /// and can be released again (what a layer-by-layer pass wants).
    #[default]
    Mapped,
    /// Read once into anonymous memory with huge pages (faster decoding;
    /// see `GgufFile::read_into_memory`), the Q4_0, Q4_1, Q8_0 and sparse
    /// int8 matrices then laid out for the one-token kernel in place (see
    /// [`interleave_matrices`]).
    /// Other layouts stay mapped.
    InMemory,
}

/// Read the tensors and metadata of a model file without building the model.
pub fn load_source(path: &Path) -> Result<(ModelSource, ModelFormat), ModelError> {
    load_source_with(path, Residency::Mapped)
}

/// [`load_source`], choosing how a GGUF file's weights reach memory.
pub fn load_source_with(
    path: &Path,
    residency: Residency,
) -> Result<(ModelSource, ModelFormat), ModelError> {
    let format = detect_format(path)?;
    let src = match format {
        ModelFormat::Gguf if residency == Residency::InMemory => {
            let mut file = GgufFile::read_into_memory(path)?;
            interleave_matrices(&mut file)?;
            file.into_source()
        }
        ModelFormat::Gguf => GgufFile::open(path)?.into_source(),
        ModelFormat::HuggingFace => hf::read_hf_dir(path)?,
        ModelFormat::Llama2c => llama2c::read_checkpoint(path)?,
    };
    Ok((src, format))
}

/// Lays the Q4_0, Q4_1, Q8_0, `SQ8_2of4` and `SQ8_{K}of64` weight matrices of a GGUF file
/// read into memory out 16 rows at a time (`Q4_0x16`, …; see
/// `frugal_kernels::interleave`), in place, on CPUs with the kernel for it
/// (AVX-512 VNNI): decode reads them up to 1.8× as fast. The matrices are
/// the block matrices (and low-rank factors), the output matrix, and the
/// token embedding when it is also the output matrix (tied): an embedding
/// only looked up stays as it is. Returns how many were laid out.
pub fn interleave_matrices(file: &mut GgufFile) -> Result<usize, ModelError> {
    use frugal_kernels::interleave;
    if !interleave::available() {
        return Ok(0);
    }
    let tied = file.tensor_info("output.weight").is_none();
    let is_matrix = |name: &str| {
        let block = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split_once('.'));
        match block {
            Some((n, m)) => {
                n.parse::<usize>().is_ok()
                    && crate::BLOCK_MATRIX_NAMES.iter().any(|k| {
                        [".weight", "_a.weight", "_b.weight"]
                            .iter()
                            .any(|s| m.strip_prefix(k) == Some(s))
                    })
            }
            None => name == "output.weight" || (tied && name == "token_embd.weight"),
        }
    };
    Ok(file.transform_resident(|info, bytes| {
        let [cols, rows] = info.dims[..] else {
            return None;
        };
        let (cols, rows) = (cols as usize, rows as usize);
        (is_matrix(&info.name)
            && interleave::available_for(info.ty)
            && interleave::can_interleave(info.ty, rows, cols))
        .then(|| {
            interleave::interleave_in_place(info.ty, rows, cols, bytes)
                .map_err(|e| {
                    // A hostile sparse row keeps its matrix in the row
                    // layout, whose kernel reads it safely.
                    eprintln!("warning: {}: {e}; kept in the row layout", info.name)
                })
                .ok()
        })
        .flatten()
    })?)
}

/// Build the tokenizer: an explicit file if given, else the model's own.
pub fn load_tokenizer(
    src: &ModelSource,
    n_vocab: usize,
    explicit: Option<&Path>,
) -> Result<Tokenizer, ModelError> {
    let tok_err = |e: frugal_tokenizer::TokenizerError| ModelError::Tokenizer(e.to_string());
    if let Some(p) = explicit {
        if !p.exists() {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer file {} does not exist",
                p.display()
            )));
        }
        if p.extension().is_some_and(|e| e == "json") {
            return Tokenizer::from_tokenizer_json(p).map_err(tok_err);
        }
        if detect_format(p).ok() == Some(ModelFormat::Gguf) {
            let g = GgufFile::open(p)?;
            return Tokenizer::from_metadata(&g.metadata).map_err(tok_err);
        }
        return Tokenizer::from_llama2c_file(p, n_vocab).map_err(tok_err);
    }
    if src.metadata.get("tokenizer.ggml.tokens").is_some() {
        return Tokenizer::from_metadata(&src.metadata).map_err(tok_err);
    }
    if let Some(p) = &src.tokenizer_json {
        return Tokenizer::from_tokenizer_json(p).map_err(tok_err);
    }
    Err(ModelError::Tokenizer(
        "the model has no tokenizer (no tokenizer.ggml.* metadata and no tokenizer.json); pass --tokenizer FILE".into(),
    ))
}

/// Open a model and its tokenizer, its weights memory-mapped.
pub fn load(path: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel, ModelError> {
    load_with(path, tokenizer, Residency::Mapped)
}

/// [`load`], choosing how a GGUF file's weights reach memory.
pub fn load_with(
    path: &Path,
    tokenizer: Option<&Path>,
    residency: Residency,
) -> Result<LoadedModel, ModelError> {
    let (mut source, format) = load_source_with(path, residency)?;
    let model = Model::from_source(&source)?;
    let tokenizer = load_tokenizer(&source, model.config.n_vocab, tokenizer)?;
    // The tokenizer now holds the vocabulary; drop the metadata's copy (tens
    // of thousands of strings) so it does not count against the memory budget.
    source.metadata.entries.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "tokenizer.ggml.tokens"
                | "tokenizer.ggml.scores"
                | "tokenizer.ggml.token_type"
                | "tokenizer.ggml.merges"
        )
    });
    let file_bytes = disk_size(path);
    Ok(LoadedModel {
        model,
        tokenizer,
        source,
        format,
        path: path.to_path_buf(),
        file_bytes,
    })
}

fn disk_size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}
