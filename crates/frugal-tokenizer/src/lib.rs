//! Exact tokenizers for frugal: text to token ids and back, matching
//! llama.cpp token for token.
//!
//! * GGUF vocabularies ([`Tokenizer::from_metadata`]): byte-level BPE
//!   (`tokenizer.ggml.model = "gpt2"`, with the pre-tokenizer named by
//!   `tokenizer.ggml.pre`) and SentencePiece-style BPE (`"llama"`).
//! * llama2.c `tokenizer.bin` files ([`Tokenizer::from_llama2c_file`]).
//! * Hugging Face `tokenizer.json` ([`Tokenizer::from_tokenizer_json`]), run by
//!   the `tokenizers` crate.
//!
//! Also [`StreamDecoder`] for streaming output and [`chat`] templates.

mod bpe;
pub mod chat;
mod fxhash;
mod hf;
mod llama2c;
mod pretok;
mod spm;
mod stream;
mod unicode;
mod vocab;

use std::path::Path;

use frugal_formats::Metadata;

pub use chat::{render_chat, ChatMessage, ChatTemplate, Role};
pub use pretok::PreTokenizer;
pub use stream::StreamDecoder;

use hf::HfTokenizer;
use llama2c::Llama2c;
use vocab::Vocab;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The model carries no (usable) tokenizer metadata.
    #[error("model has no tokenizer: {0}")]
    NoTokenizer(String),
    /// A tokenizer kind, pre-tokenizer or template this crate does not implement.
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("bad tokenizer metadata `{key}`: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: String, reason: String },
}

/// What kind of tokenizer this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GGUF byte-level BPE with its pre-tokenizer.
    Bpe(PreTokenizer),
    /// GGUF SentencePiece-style BPE.
    Spm,
    /// llama2.c `tokenizer.bin`.
    Llama2c,
    /// Hugging Face `tokenizer.json`.
    HfJson,
}

enum Inner {
    Gguf(Box<Vocab>),
    Llama2c(Llama2c),
    Hf(Box<HfTokenizer>),
}

/// A tokenizer. Cheap to share (`&Tokenizer` is all encoding needs).
pub struct Tokenizer {
    inner: Inner,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos_id())
            .field("eos", &self.eos_id())
            .finish()
    }
}

impl Tokenizer {
    /// Build the tokenizer described by GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer {
            inner: Inner::Gguf(Box::new(Vocab::from_metadata(md)?)),
        })
    }

    /// Load a llama2.c `tokenizer.bin` holding (at least) `vocab_size` tokens.
    pub fn from_llama2c_file(
        path: impl AsRef<Path>,
        vocab_size: usize,
    ) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| TokenizerError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_llama2c_bytes(&data, vocab_size, &path.display().to_string())
    }

    /// [`Tokenizer::from_llama2c_file`] on bytes in memory; `origin` names them in errors.
    pub fn from_llama2c_bytes(
        data: &[u8],
        vocab_size: usize,
        origin: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer {
            inner: Inner::Llama2c(Llama2c::parse(data, vocab_size, origin)?),
        })
    }

    /// Load a Hugging Face `tokenizer.json`. BOS/EOS come from its
    /// post-processor, else a `tokenizer_config.json` beside it, else
    /// well-known token names; `None` when nothing names them.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer {
            inner: Inner::Hf(Box::new(HfTokenizer::open(path.as_ref())?)),
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        match &self.inner {
            Inner::Gguf(v) => match v.pre {
                Some(p) if !v.is_spm() => TokenizerKind::Bpe(p),
                _ => TokenizerKind::Spm,
            },
            Inner::Llama2c(_) => TokenizerKind::Llama2c,
            Inner::Hf(_) => TokenizerKind::HfJson,
        }
    }

    /// Tokenize text, as llama.cpp's `llama_tokenize`.
    ///
    /// * `add_special`: add BOS (and EOS) where the model's metadata says so
    ///   ([`Tokenizer::add_bos`], [`Tokenizer::add_eos`]).
    /// * `parse_special`: text spelling a control token (e.g. `<|im_start|>`)
    ///   becomes that token; otherwise it is tokenized as plain text.
    ///   User-defined tokens are always matched, as in llama.cpp. (For
    ///   tokenizer.json this maps to the library's `encode_special_tokens`.)
    ///
    /// For llama2.c vocabularies, `add_special` adds BOS (never EOS) and
    /// `parse_special` has no effect.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.encode(text, add_special, parse_special),
            Inner::Llama2c(t) => t.encode(text, add_special, false),
            Inner::Hf(h) => h.encode(text, add_special, parse_special),
        }
    }

    /// Token ids back to text, as llama.cpp's `llama_detokenize` with
    /// `remove_special = false, unparse_special = false`: control tokens
    /// (BOS, EOS, ...) render as nothing, an SPM vocabulary drops the leading
    /// space of the first token, and vocabularies with `clean_spaces` tidy
    /// spaces before punctuation. Ids out of range are skipped; bytes that are
    /// not valid UTF-8 become U+FFFD.
    ///
    /// llama2.c: run.c's rules (leading space dropped after BOS, `<0xXX>` as
    /// the raw byte). tokenizer.json: the library's decode, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.inner {
            Inner::Hf(h) => h.decode(ids),
            _ => String::from_utf8_lossy(&self.detokenize(ids, false, false)).into_owned(),
        }
    }

    /// The full llama.cpp `detokenize` as raw bytes: `remove_special` drops a
    /// leading BOS / trailing EOS the model adds itself; `unparse_special`
    /// renders control tokens as their text. (tokenizer.json: the tokens'
    /// pieces concatenated, without the library's decoder clean-ups.)
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        match &self.inner {
            Inner::Gguf(v) => v.detokenize(ids, remove_special, unparse_special),
            Inner::Llama2c(t) => {
                let ids = match (remove_special, ids.first()) {
                    (true, Some(&llama2c::BOS)) => &ids[1..],
                    _ => ids,
                };
                t.decode(ids, unparse_special)
            }
            Inner::Hf(h) => {
                let mut out = Vec::new();
                for &id in ids {
                    out.extend(h.piece(id, unparse_special));
                }
                out
            }
        }
    }

    /// The raw bytes of one token as it appears in generated text (may be
    /// part of a UTF-8 character); control tokens give nothing. See
    /// [`Tokenizer::token_to_piece_special`] to render them.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.token_to_piece_special(id, false)
    }

    /// Like [`Tokenizer::token_to_piece`]; with `special`, control tokens
    /// render as their text (llama.cpp's `token_to_piece(special = true)`).
    /// Ids out of range give nothing.
    pub fn token_to_piece_special(&self, id: u32, special: bool) -> Vec<u8> {
        match &self.inner {
            Inner::Gguf(v) => v.piece(id, special).to_vec(),
            Inner::Llama2c(t) => {
                if !special && t.is_control(id) {
                    Vec::new()
                } else {
                    t.piece_after(None, id).to_vec()
                }
            }
            Inner::Hf(h) => h.piece(id, special),
        }
    }

    /// The piece of `id` when it follows `prev` in generated output (llama2.c
    /// drops the leading space right after BOS).
    pub(crate) fn stream_piece(&self, prev: Option<u32>, id: u32) -> Vec<u8> {
        match &self.inner {
            Inner::Llama2c(t) if !t.is_control(id) => t.piece_after(prev, id).to_vec(),
            _ => self.token_to_piece(id),
        }
    }

    /// A [`StreamDecoder`] for this tokenizer's output.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new()
    }

    pub fn bos_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.sp.bos,
            Inner::Llama2c(_) => Some(llama2c::BOS),
            Inner::Hf(h) => h.bos,
        }
    }

    pub fn eos_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.sp.eos,
            Inner::Llama2c(_) => Some(llama2c::EOS),
            Inner::Hf(h) => h.eos,
        }
    }

    /// End-of-turn token (`tokenizer.ggml.eot_token_id`, else found by name
    /// as llama.cpp does: `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...).
    pub fn eot_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.sp.eot,
            _ => None,
        }
    }

    pub fn unk_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.sp.unk,
            Inner::Llama2c(_) => Some(0),
            Inner::Hf(_) => None,
        }
    }

    pub fn pad_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.sp.pad,
            _ => None,
        }
    }

    /// Whether generation should stop at this token. For GGUF, llama.cpp's
    /// set: EOS, EOT, EOM, the FIM pad/repo/file-separator tokens, and every
    /// token named `<|eot_id|>`, `<|im_end|>`, `<|end|>`, `<end_of_turn>`,
    /// `<|endoftext|>`, `<|eom_id|>` or `<EOT>`. For llama2.c: EOS, and BOS
    /// (run.c stops when the model starts a new sequence).
    pub fn is_eog(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.eog.contains(&id),
            Inner::Llama2c(_) => id == llama2c::BOS || id == llama2c::EOS,
            Inner::Hf(h) => h.eog.contains(&id),
        }
    }

    /// All end-of-generation token ids, ascending.
    pub fn eog_ids(&self) -> Vec<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.eog.iter().copied().collect(),
            Inner::Llama2c(_) => vec![llama2c::BOS, llama2c::EOS],
            Inner::Hf(h) => h.eog.iter().copied().collect(),
        }
    }

    /// The BOS id when `encode(.., add_special = true, ..)` starts with it:
    /// what evaluation writes over each chunk's first token.
    pub fn bos_to_add(&self) -> Option<u32> {
        if self.add_bos() {
            self.bos_id()
        } else {
            None
        }
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.add_bos && v.sp.bos.is_some(),
            Inner::Llama2c(_) => true,
            Inner::Hf(h) => h.add_bos,
        }
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.add_eos && v.sp.eos.is_some(),
            Inner::Llama2c(_) => false,
            Inner::Hf(h) => h.add_eos,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Gguf(v) => v.tokens.len(),
            Inner::Llama2c(t) => t.tokens.len(),
            Inner::Hf(h) => h.texts.len(),
        }
    }

    /// The vocabulary text of a token (GGUF: as stored, e.g. `Ġthe` or `▁the`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        match &self.inner {
            Inner::Gguf(v) => v.tokens.get(i).map(String::as_str),
            Inner::Llama2c(t) => t.texts.get(i).map(String::as_str),
            Inner::Hf(h) => h.texts.get(i).map(String::as_str),
        }
    }

    /// The id of a token by its vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.token_to_id.get(text).copied(),
            Inner::Llama2c(t) => t.id_of(text),
            Inner::Hf(h) => h.token_id(text),
        }
    }

    /// Whether a token is a control (or unknown) token, which decodes to
    /// nothing unless special tokens are rendered.
    pub fn is_control(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.is_control_or_unknown(id),
            Inner::Llama2c(t) => t.is_control(id),
            Inner::Hf(h) => h.is_special(id),
        }
    }
}
