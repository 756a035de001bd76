//! The saved-base file (`--save-logits`), read back by `--base FILE`.
//!
//! Layout, all little-endian:
//!
//! ```text
//! "FRUGLGT\0"                  8-byte magic
//! version u32 = 1
//! header_len u32               bytes of the JSON header that follows
//! header (JSON, LogitsHeader)  n_vocab, ctx, n_chunks, payload kind, bos, data, base
//! tokens u32 × n_chunks·ctx    the evaluated chunks, as tokenized (before BOS replacement)
//! sha256 (32 bytes)            of everything above
//! payload "hidden" only:       the base's output matrix, n_vocab rows in its own
//!                              GGML type, then its sha256 (32 bytes)
//! n_chunks × {
//!   per scored token (ctx − 1 − ctx/2 of them):
//!     "hidden": the base's final hidden state, n_embd × f32
//!     "top-k":  target_lp f32, tail_lp f32, ids u32 × k, lps f32 × k
//!   sha256 (32 bytes)          of this chunk's records
//! }
//! ```
//!
//! Every size follows from the header, so the file length is checked before
//! anything is allocated, and each chunk carries its own checksum so it can be
//! streamed (read one chunk at a time) and still refuse corruption.

use super::math::BaseToken;
use crate::{EvalError, ModelInfo};
use frugal_formats::GgmlType;
use frugal_kernels::matmul::QMatrix;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"FRUGLGT\0";
pub const VERSION: u32 = 1;
/// A header longer than this is corrupt (real ones are about 1 KiB).
const MAX_HEADER: u64 = 1 << 20;
const DIGEST: u64 = 32;

/// The text a logits file was computed on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataRef {
    pub path: PathBuf,
    pub sha256: String,
}

/// What the file keeps per scored token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Payload {
    /// The base's final hidden state, plus its output matrix once: the
    /// base's logits are rebuilt exactly (one matmul per chunk).
    Hidden {
        n_embd: usize,
        /// GGML type name of the output matrix, as the base stores it.
        output_type: String,
    },
    /// The base's `k` most likely tokens and one tail bucket: small, but KL
    /// is a lower bound (see [`crate::kld`]).
    TopK { k: usize },
}

/// What a logits file records about how it was made: enough to refuse a
/// comparison that would not mean anything.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogitsHeader {
    pub n_vocab: usize,
    /// Tokens per chunk.
    pub ctx: usize,
    pub n_chunks: usize,
    pub payload: Payload,
    /// The BOS id written over each chunk's first token, or none.
    pub bos: Option<u32>,
    pub data: DataRef,
    /// The base model (its sha256 and label identify it in records).
    pub base: ModelInfo,
    pub frugal_version: String,
}

impl LogitsHeader {
    /// Scored positions per chunk (llama.cpp's: ctx/2 .. ctx-1).
    pub fn scored_per_chunk(&self) -> usize {
        scored_per_chunk(self.ctx)
    }

    /// The top-k size, for a top-k file.
    pub fn top_k(&self) -> Option<usize> {
        match self.payload {
            Payload::TopK { k } => Some(k),
            Payload::Hidden { .. } => None,
        }
    }

    /// The output matrix's type and bytes, for a hidden-state file; `None`
    /// for a top-k file, an error for a type or width that does not fit.
    fn output_layout(&self) -> Result<Option<(GgmlType, u64)>, String> {
        let Payload::Hidden {
            n_embd,
            output_type,
        } = &self.payload
        else {
            return Ok(None);
        };
        // Weight types only (Q8_1 and Q8_K are activation formats).
        let ty = GgmlType::from_name(output_type)
            .filter(|t| !matches!(t, GgmlType::Q8_1 | GgmlType::Q8K))
            .filter(|t| frugal_kernels::traits(*t).is_some())
            .ok_or_else(|| format!("output matrix type {output_type:?} has no kernels"))?;
        let row = ty
            .row_bytes(*n_embd as u64)
            .filter(|_| *n_embd > 0)
            .ok_or_else(|| format!("width {n_embd} is not whole {ty} blocks"))?;
        let bytes = row
            .checked_mul(self.n_vocab as u64)
            .ok_or_else(|| "output matrix size overflows".to_string())?;
        Ok(Some((ty, bytes)))
    }

    /// Bytes of one scored token's record.
    fn record_bytes(&self) -> Option<u64> {
        match self.payload {
            Payload::Hidden { n_embd, .. } => (n_embd as u64).checked_mul(4),
            Payload::TopK { k } => (k as u64).checked_mul(8)?.checked_add(8),
        }
    }

    /// Bytes of one chunk block, checksum included.
    fn chunk_bytes(&self) -> Option<u64> {
        self.record_bytes()?
            .checked_mul(self.scored_per_chunk() as u64)?
            .checked_add(DIGEST)
    }

    /// Refuse a comparison with another run unless it evaluates exactly what
    /// this file holds; the error names what differs.
    pub fn check_compatible(&self, path: &Path, want: &Expect) -> Result<(), EvalError> {
        let bad = |reason: String| EvalError::Format {
            path: path.to_path_buf(),
            reason,
        };
        if want.n_vocab != self.n_vocab {
            return Err(bad(format!(
                "vocabulary mismatch: the base {} has {} tokens, the model has {}",
                self.base.label, self.n_vocab, want.n_vocab
            )));
        }
        if want.ctx != self.ctx {
            return Err(bad(format!(
                "context mismatch: saved with --ctx {}, this run uses --ctx {}",
                self.ctx, want.ctx
            )));
        }
        if want.bos != self.bos {
            return Err(bad(format!(
                "BOS mismatch: the base puts {} first in each chunk, the model {}",
                bos_text(self.bos),
                bos_text(want.bos)
            )));
        }
        if want.data_sha256 != self.data.sha256 {
            return Err(bad(format!(
                "text mismatch: saved on {} (sha256 {}), this run reads a file with sha256 {}",
                self.data.path.display(),
                short(&self.data.sha256),
                short(&want.data_sha256)
            )));
        }
        if want.chunks > self.n_chunks {
            return Err(bad(format!(
                "holds {} chunks, {} asked for (use --limit {} or save more chunks)",
                self.n_chunks, want.chunks, self.n_chunks
            )));
        }
        Ok(())
    }
}

fn bos_text(b: Option<u32>) -> String {
    b.map_or_else(|| "no BOS".to_string(), |b| format!("BOS token {b}"))
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// What the current run evaluates, for [`LogitsHeader::check_compatible`].
#[derive(Clone, Debug)]
pub struct Expect {
    pub n_vocab: usize,
    pub ctx: usize,
    pub bos: Option<u32>,
    pub data_sha256: String,
    pub chunks: usize,
}

/// Scored positions per chunk of `ctx` tokens.
pub fn scored_per_chunk(ctx: usize) -> usize {
    ctx.saturating_sub(1 + ctx / 2)
}

/// The base's top-k distribution at the scored positions of one chunk.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaseChunk {
    pub k: usize,
    pub target_lp: Vec<f32>,
    pub tail_lp: Vec<f32>,
    /// `len() × k` ids, best first per token.
    pub ids: Vec<u32>,
    pub lps: Vec<f32>,
}

impl BaseChunk {
    pub fn new(k: usize) -> BaseChunk {
        BaseChunk {
            k,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.target_lp.len()
    }

    pub fn is_empty(&self) -> bool {
        self.target_lp.is_empty()
    }

    pub fn clear(&mut self) {
        self.target_lp.clear();
        self.tail_lp.clear();
        self.ids.clear();
        self.lps.clear();
    }

    pub fn token(&self, j: usize) -> BaseToken<'_> {
        let r = j * self.k..(j + 1) * self.k;
        BaseToken {
            ids: &self.ids[r.clone()],
            lps: &self.lps[r],
            target_lp: self.target_lp[j],
            tail_lp: self.tail_lp[j],
        }
    }
}

/// One chunk of a saved base, as read or to be written.
#[derive(Clone, Debug, PartialEq)]
pub enum ChunkData {
    /// `scored × n_embd` hidden states.
    Hidden(Vec<f32>),
    TopK(BaseChunk),
}

/// Does `path` start with the logits-file magic? (How `--base` tells a saved
/// base from a model.)
pub fn is_logits_file(path: &Path) -> bool {
    let mut m = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok_and(|_| &m == MAGIC)
}

/// Writes a logits file under a temporary name and renames it into place in
/// [`finish`](LogitsWriter::finish); dropped unfinished, it removes the
/// temporary file, so an error never leaves a partial file behind.
pub struct LogitsWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    header: LogitsHeader,
    written: usize,
    buf: Vec<u8>,
}

impl LogitsWriter {
    /// Start the file: header, tokens (`n_chunks × ctx`) and, for a
    /// hidden-state file, the base's output matrix.
    pub fn create(
        path: &Path,
        header: LogitsHeader,
        tokens: &[u32],
        output: Option<&[u8]>,
    ) -> Result<LogitsWriter, EvalError> {
        let inval = |reason: String| EvalError::Input(format!("{}: {reason}", path.display()));
        if let Payload::TopK { k } = header.payload {
            if k == 0 || k > header.n_vocab {
                return Err(inval(format!(
                    "top-k {k} must be between 1 and the vocabulary size {}",
                    header.n_vocab
                )));
            }
        }
        let layout = header.output_layout().map_err(inval)?;
        match (layout, output) {
            (Some((_, n)), Some(o)) if o.len() as u64 == n => {}
            (None, None) => {}
            _ => {
                return Err(inval(
                    "the output matrix does not match the header's payload".into(),
                ))
            }
        }
        if header.ctx < 4 || header.n_chunks == 0 {
            return Err(inval("needs ctx ≥ 4 and at least one chunk".into()));
        }
        if tokens.len() != header.n_chunks * header.ctx {
            return Err(inval(format!(
                "{} tokens given for {} chunks of {}",
                tokens.len(),
                header.n_chunks,
                header.ctx
            )));
        }
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(|e| EvalError::Io {
            path: tmp.clone(),
            source: e,
        })?;
        let mut w = LogitsWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            header,
            written: 0,
            buf: Vec::new(),
        };
        let json = serde_json::to_vec(&w.header)
            .map_err(|e| EvalError::Input(format!("encoding the logits header: {e}")))?;
        let mut head = Vec::with_capacity(16 + json.len() + tokens.len() * 4);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(json.len() as u32).to_le_bytes());
        head.extend_from_slice(&json);
        for t in tokens {
            head.extend_from_slice(&t.to_le_bytes());
        }
        let digest = Sha256::digest(&head);
        head.extend_from_slice(&digest);
        w.write(&head)?;
        if let Some(o) = output {
            w.write(o)?;
            w.write(&Sha256::digest(o))?;
        }
        Ok(w)
    }

    pub fn header(&self) -> &LogitsHeader {
        &self.header
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), EvalError> {
        let out = self.out.as_mut().ok_or_else(|| {
            EvalError::Input(format!("{}: written after finish", self.path.display()))
        })?;
        out.write_all(bytes).map_err(|e| EvalError::Io {
            path: self.tmp.clone(),
            source: e,
        })
    }

    /// Append the next chunk of a hidden-state file: `scored × n_embd` floats.
    pub fn write_hidden(&mut self, x: &[f32]) -> Result<(), EvalError> {
        let n = self.header.scored_per_chunk();
        match self.header.payload {
            Payload::Hidden { n_embd, .. } if x.len() == n * n_embd => {}
            _ => return Err(self.mismatch()),
        }
        let mut buf = self.start_chunk()?;
        for v in x {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        self.end_chunk(buf)
    }

    /// Append the next chunk of a top-k file.
    pub fn write_topk(&mut self, c: &BaseChunk) -> Result<(), EvalError> {
        let n = self.header.scored_per_chunk();
        match self.header.payload {
            Payload::TopK { k }
                if c.k == k && c.len() == n && c.ids.len() == n * k && c.lps.len() == n * k => {}
            _ => return Err(self.mismatch()),
        }
        let mut buf = self.start_chunk()?;
        for j in 0..n {
            buf.extend_from_slice(&c.target_lp[j].to_le_bytes());
            buf.extend_from_slice(&c.tail_lp[j].to_le_bytes());
            let t = c.token(j);
            for id in t.ids {
                buf.extend_from_slice(&id.to_le_bytes());
            }
            for lp in t.lps {
                buf.extend_from_slice(&lp.to_le_bytes());
            }
        }
        self.end_chunk(buf)
    }

    fn mismatch(&self) -> EvalError {
        EvalError::Input(format!(
            "{}: a chunk that does not match the header ({} scored tokens, {:?})",
            self.path.display(),
            self.header.scored_per_chunk(),
            self.header.payload
        ))
    }

    fn start_chunk(&mut self) -> Result<Vec<u8>, EvalError> {
        if self.written >= self.header.n_chunks {
            return Err(EvalError::Input(format!(
                "{}: more than the {} chunks announced",
                self.path.display(),
                self.header.n_chunks
            )));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        Ok(buf)
    }

    fn end_chunk(&mut self, mut buf: Vec<u8>) -> Result<(), EvalError> {
        let digest = Sha256::digest(&buf);
        buf.extend_from_slice(&digest);
        let r = self.write(&buf);
        self.buf = buf;
        r?;
        self.written += 1;
        Ok(())
    }

    /// Flush, sync and rename into place; an error if chunks are missing.
    pub fn finish(mut self) -> Result<(), EvalError> {
        if self.written != self.header.n_chunks {
            return Err(EvalError::Input(format!(
                "{}: {} of {} chunks written",
                self.path.display(),
                self.written,
                self.header.n_chunks
            )));
        }
        let Some(out) = self.out.take() else {
            return Err(EvalError::Input(format!(
                "{}: finished twice",
                self.path.display()
            )));
        };
        let io = |e: std::io::Error| EvalError::Io {
            path: self.tmp.clone(),
            source: e,
        };
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| EvalError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        self.written = usize::MAX;
        Ok(())
    }
}

impl Drop for LogitsWriter {
    fn drop(&mut self) {
        if self.written != usize::MAX {
            self.out.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a logits file chunk by chunk, checking sizes and checksums.
pub struct LogitsReader {
    path: PathBuf,
    input: BufReader<File>,
    header: LogitsHeader,
    tokens: Vec<u32>,
    /// The base's output matrix (hidden-state files).
    output: Option<(GgmlType, Vec<u8>)>,
    next: usize,
    buf: Vec<u8>,
    scratch: Vec<u32>,
}

impl LogitsReader {
    /// Open `path` and read its header, tokens and output matrix; the file's
    /// length must be exactly what the header implies.
    pub fn open(path: &Path) -> Result<LogitsReader, EvalError> {
        let io = |e| EvalError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let bad = |reason: String| EvalError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut prefix = [0u8; 16];
        if len < 16 {
            return Err(bad(format!(
                "truncated: {len} bytes, not a frugal logits file"
            )));
        }
        input.read_exact(&mut prefix).map_err(io)?;
        if &prefix[..8] != MAGIC {
            return Err(bad(
                "not a frugal logits file (bad magic; expected one written by --save-logits)"
                    .into(),
            ));
        }
        let version = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "logits file version {version}; this frugal reads version {VERSION}"
            )));
        }
        let hlen = u32::from_le_bytes(prefix[12..16].try_into().expect("4 bytes")) as u64;
        if hlen > MAX_HEADER || 16 + hlen > len {
            return Err(bad(format!(
                "truncated or corrupt: header of {hlen} bytes in a file of {len}"
            )));
        }
        let mut json = vec![0u8; hlen as usize];
        input.read_exact(&mut json).map_err(io)?;
        let header: LogitsHeader =
            serde_json::from_slice(&json).map_err(|e| bad(format!("corrupt header: {e}")))?;
        if header.ctx < 4 || header.n_chunks == 0 || header.n_vocab == 0 {
            return Err(bad(format!(
                "corrupt header: ctx {}, {} chunks, vocabulary {}",
                header.ctx, header.n_chunks, header.n_vocab
            )));
        }
        if let Payload::TopK { k } = header.payload {
            if k == 0 || k > header.n_vocab {
                return Err(bad(format!(
                    "corrupt header: top-k {k} with a vocabulary of {}",
                    header.n_vocab
                )));
            }
        }
        let layout = header
            .output_layout()
            .map_err(|e| bad(format!("corrupt header: {e}")))?;
        if header.bos.is_some_and(|b| b as usize >= header.n_vocab) {
            return Err(bad("corrupt header: BOS id outside the vocabulary".into()));
        }
        let overflow = || bad("corrupt header: sizes overflow".into());
        let n_tokens = (header.n_chunks as u64)
            .checked_mul(header.ctx as u64)
            .ok_or_else(overflow)?;
        let output_bytes = layout.map_or(Some(0), |(_, n)| n.checked_add(DIGEST));
        let expected = n_tokens
            .checked_mul(4)
            .and_then(|t| t.checked_add(16 + hlen + DIGEST))
            .and_then(|h| h.checked_add(output_bytes?))
            .and_then(|h| {
                header
                    .chunk_bytes()?
                    .checked_mul(header.n_chunks as u64)?
                    .checked_add(h)
            })
            .ok_or_else(overflow)?;
        if len != expected {
            let what = if len < expected {
                "truncated"
            } else {
                "corrupt (trailing bytes)"
            };
            return Err(bad(format!(
                "{what}: {len} bytes, the header implies {expected} ({} chunks of {} tokens, {:?})",
                header.n_chunks, header.ctx, header.payload
            )));
        }
        let mut raw = vec![0u8; n_tokens as usize * 4];
        input.read_exact(&mut raw).map_err(io)?;
        let mut digest = [0u8; 32];
        input.read_exact(&mut digest).map_err(io)?;
        let mut h = Sha256::new();
        h.update(prefix);
        h.update(&json);
        h.update(&raw);
        if h.finalize().as_slice() != digest {
            return Err(bad("corrupt: header or tokens fail their checksum".into()));
        }
        let tokens: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= header.n_vocab) {
            return Err(bad(format!(
                "corrupt: token {t} outside the vocabulary of {}",
                header.n_vocab
            )));
        }
        let output = match layout {
            Some((ty, n)) => {
                let mut w = vec![0u8; n as usize];
                input.read_exact(&mut w).map_err(io)?;
                input.read_exact(&mut digest).map_err(io)?;
                if Sha256::digest(&w).as_slice() != digest {
                    return Err(bad("corrupt: the output matrix fails its checksum".into()));
                }
                Some((ty, w))
            }
            None => None,
        };
        Ok(LogitsReader {
            path: path.to_path_buf(),
            input,
            header,
            tokens,
            output,
            next: 0,
            buf: Vec::new(),
            scratch: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &LogitsHeader {
        &self.header
    }

    /// The evaluated chunks' tokens, `n_chunks × ctx`.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The base's output matrix (`n_vocab × n_embd`), for a hidden-state file.
    pub fn output_matrix(&self) -> Option<QMatrix<'_>> {
        let Payload::Hidden { n_embd, .. } = self.header.payload else {
            return None;
        };
        let (ty, w) = self.output.as_ref()?;
        // Sizes were checked at open, so this cannot fail its assertion.
        Some(QMatrix::new(*ty, self.header.n_vocab, n_embd, w))
    }

    /// Refuse `tokens` unless its first `chunks` chunks are the saved ones,
    /// naming the first difference.
    pub fn check_tokens(&self, tokens: &[u32], chunks: usize) -> Result<(), EvalError> {
        let ctx = self.header.ctx;
        let n = chunks.min(self.header.n_chunks) * ctx;
        let bad = |reason: String| EvalError::Format {
            path: self.path.clone(),
            reason,
        };
        if tokens.len() < n {
            return Err(bad(format!(
                "token mismatch: the text gives {} tokens with this model's tokenizer, the saved chunks need {n} (a different tokenizer or text)",
                tokens.len()
            )));
        }
        if let Some(i) = (0..n).find(|&i| tokens[i] != self.tokens[i]) {
            return Err(bad(format!(
                "token mismatch at chunk {}, position {}: saved token {}, this model's tokenizer gives {} (a different tokenizer or text)",
                i / ctx + 1,
                i % ctx,
                self.tokens[i],
                tokens[i]
            )));
        }
        Ok(())
    }

    /// Read the next chunk into `out` (replacing its kind if needed),
    /// checking its checksum and values.
    pub fn read_chunk(&mut self, out: &mut ChunkData) -> Result<(), EvalError> {
        let h = &self.header;
        let bad = |reason: String| EvalError::Format {
            path: self.path.clone(),
            reason,
        };
        if self.next >= h.n_chunks {
            return Err(bad(format!("has only {} chunks", h.n_chunks)));
        }
        let chunk = self.next + 1;
        let n = h.scored_per_chunk();
        let size = h.chunk_bytes().expect("checked at open") as usize;
        self.buf.resize(size, 0);
        self.input
            .read_exact(&mut self.buf)
            .map_err(|e| EvalError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        let (body, digest) = self.buf.split_at(size - DIGEST as usize);
        if Sha256::digest(body).as_slice() != digest {
            return Err(bad(format!("corrupt: chunk {chunk} fails its checksum")));
        }
        let f32_at = |b: &[u8], i: usize| f32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        match h.payload {
            Payload::Hidden { .. } => {
                if !matches!(out, ChunkData::Hidden(_)) {
                    *out = ChunkData::Hidden(Vec::new());
                }
                let ChunkData::Hidden(x) = out else {
                    unreachable!("set just above")
                };
                x.clear();
                x.extend(body.chunks_exact(4).map(|b| f32_at(b, 0)));
                if x.iter().any(|v| !v.is_finite()) {
                    return Err(bad(format!(
                        "corrupt: chunk {chunk} holds a non-finite hidden state"
                    )));
                }
            }
            Payload::TopK { k } => {
                if !matches!(out, ChunkData::TopK(_)) {
                    *out = ChunkData::TopK(BaseChunk::new(k));
                }
                let ChunkData::TopK(out) = out else {
                    unreachable!("set just above")
                };
                out.k = k;
                out.clear();
                let rec = 8 + 8 * k;
                for j in 0..n {
                    let r = &body[j * rec..(j + 1) * rec];
                    let corrupt = |what: &str| {
                        bad(format!("corrupt: chunk {chunk}, scored token {j}: {what}"))
                    };
                    let (t, tail) = (f32_at(r, 0), f32_at(r, 4));
                    // Log-probabilities are ≤ 0 (a little above from rounding).
                    if !(t.is_finite() && t <= 1e-3) || tail.is_nan() || tail > 1e-3 {
                        return Err(corrupt("log-probability out of range"));
                    }
                    out.target_lp.push(t);
                    out.tail_lp.push(tail);
                    self.scratch.clear();
                    for i in 0..k {
                        let id = u32_at(r, 8 + 4 * i);
                        if id as usize >= h.n_vocab {
                            return Err(corrupt(&format!(
                                "token id {id} outside the vocabulary of {}",
                                h.n_vocab
                            )));
                        }
                        out.ids.push(id);
                        self.scratch.push(id);
                    }
                    self.scratch.sort_unstable();
                    if self.scratch.windows(2).any(|w| w[0] == w[1]) {
                        return Err(corrupt("a token id appears twice"));
                    }
                    for i in 0..k {
                        let lp = f32_at(r, 8 + 4 * k + 4 * i);
                        if !(lp.is_finite() && lp <= 1e-3) {
                            return Err(corrupt("log-probability out of range"));
                        }
                        out.lps.push(lp);
                    }
                }
            }
        }
        self.next += 1;
        Ok(())
    }
}
