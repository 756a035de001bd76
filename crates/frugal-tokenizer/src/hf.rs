//! Hugging Face `tokenizer.json`, run by the `tokenizers` crate, behind the
//! same interface as the GGUF tokenizers.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use crate::unicode::char_to_byte;
use crate::vocab::parse_byte_token;
use crate::vocab::EOG_NAMES;
use crate::TokenizerError;

/// How a single token's text becomes bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceStyle {
    /// GPT-2 byte alphabet.
    ByteLevel,
    /// `▁` for spaces and `<0xXX>` byte tokens.
    Metaspace,
    /// Ask the library's decoder, one token at a time.
    Decoder,
}

pub(crate) struct HfTokenizer {
    tk: tokenizers::Tokenizer,
    /// A copy that treats special-token text as plain text (`parse_special = false`).
    tk_plain: OnceLock<Option<tokenizers::Tokenizer>>,
    pub texts: Vec<String>,
    special: Vec<bool>,
    style: PieceStyle,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub eog: BTreeSet<u32>,
}

const BOS_NAMES: &[&str] = &["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];
const EOS_NAMES: &[&str] = &["<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"];
/// Largest vocabulary a tokenizer.json may declare (ids beyond it are ignored).
const MAX_VOCAB: usize = 1 << 22;

impl HfTokenizer {
    pub(crate) fn open(path: &Path) -> Result<HfTokenizer, TokenizerError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Io {
            path: shown.clone(),
            source: e,
        })?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| TokenizerError::BadFile {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let tk =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::BadFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        let config = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        Ok(Self::build(tk, &json, config.as_ref()))
    }

    fn build(tk: tokenizers::Tokenizer, json: &Value, config: Option<&Value>) -> HfTokenizer {
        let n = tk.get_vocab_size(true);
        let max_id = tk
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        // Ids come from the file: never size tables beyond a sane vocabulary.
        let n = n.max(max_id).min(MAX_VOCAB);
        let mut texts = vec![String::new(); n];
        for (t, id) in tk.get_vocab(true) {
            if (id as usize) < n {
                texts[id as usize] = t;
            }
        }
        let mut special = vec![false; n];
        for (id, t) in tk.get_added_tokens_decoder() {
            if t.special && (id as usize) < n {
                special[id as usize] = true;
            }
        }
        let id_of = |name: &str| tk.token_to_id(name);

        // BOS/EOS: from the post-processor (which is what adds them), then
        // tokenizer_config.json, then well-known names.
        let (mut bos, mut eos, mut add_bos, mut add_eos) = (None, None, false, false);
        let pp = &json["post_processor"];
        let mut from_processor = |pp: &Value| match pp["type"].as_str() {
            Some("TemplateProcessing") => {
                let single = pp["single"].as_array().cloned().unwrap_or_default();
                let special_id = |piece: Option<&Value>| -> Option<u32> {
                    let name = piece?.get("SpecialToken")?.get("id")?.as_str()?;
                    let ids = pp["special_tokens"][name]["ids"].as_array()?;
                    ids.first()?.as_u64().map(|x| x as u32)
                };
                if let Some(id) = special_id(single.first()) {
                    bos = Some(id);
                    add_bos = true;
                }
                if single.len() > 1 {
                    if let Some(id) = special_id(single.last()) {
                        eos = Some(id);
                        add_eos = true;
                    }
                }
            }
            Some("RobertaProcessing") | Some("BertProcessing") => {
                bos = pp["cls"][1].as_u64().map(|x| x as u32);
                eos = pp["sep"][1].as_u64().map(|x| x as u32);
                add_bos = bos.is_some();
                add_eos = eos.is_some();
            }
            _ => {}
        };
        if pp["type"].as_str() == Some("Sequence") {
            for p in pp["processors"].as_array().into_iter().flatten() {
                from_processor(p);
            }
        } else {
            from_processor(pp);
        }
        let config_token = |key: &str| -> Option<u32> {
            let v = &config?[key];
            let name = v.as_str().or_else(|| v["content"].as_str())?;
            id_of(name)
        };
        bos = bos
            .or_else(|| config_token("bos_token"))
            .or_else(|| BOS_NAMES.iter().find_map(|t| id_of(t)));
        eos = eos
            .or_else(|| config_token("eos_token"))
            .or_else(|| EOS_NAMES.iter().find_map(|t| id_of(t)));

        let mut eog: BTreeSet<u32> = EOG_NAMES.iter().filter_map(|t| id_of(t)).collect();
        eog.extend(eos);

        let style = piece_style(&json["decoder"]);
        HfTokenizer {
            tk,
            tk_plain: OnceLock::new(),
            texts,
            special,
            style,
            bos,
            eos,
            add_bos,
            add_eos,
            eog,
        }
    }

    pub(crate) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let tk = if parse_special {
            &self.tk
        } else {
            let plain = self.tk_plain.get_or_init(|| {
                let mut t = self.tk.clone();
                t.set_encode_special_tokens(true);
                Some(t)
            });
            plain.as_ref().unwrap_or(&self.tk)
        };
        // The library only fails on misconfigured truncation/padding; an
        // empty result is the honest answer then.
        tk.encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub(crate) fn piece(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(text) = self.texts.get(id as usize) else {
            return Vec::new();
        };
        if self.is_special(id) {
            return if special {
                text.as_bytes().to_vec()
            } else {
                Vec::new()
            };
        }
        match self.style {
            PieceStyle::ByteLevel => {
                let bytes: Option<Vec<u8>> = text.chars().map(char_to_byte).collect();
                bytes.unwrap_or_else(|| text.as_bytes().to_vec())
            }
            PieceStyle::Metaspace => match parse_byte_token(text) {
                Some(b) => vec![b],
                None => text.replace('\u{2581}', " ").into_bytes(),
            },
            PieceStyle::Decoder => self
                .tk
                .decode(&[id], false)
                .map(String::into_bytes)
                .unwrap_or_else(|_| text.as_bytes().to_vec()),
        }
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> String {
        let valid: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| (i as usize) < self.texts.len())
            .collect();
        self.tk.decode(&valid, true).unwrap_or_else(|_| {
            let bytes: Vec<u8> = valid.iter().flat_map(|&i| self.piece(i, false)).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.tk.token_to_id(text)
    }
}

fn piece_style(decoder: &Value) -> PieceStyle {
    let types: Vec<&str> = match decoder["type"].as_str() {
        Some("Sequence") => decoder["decoders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["type"].as_str())
            .collect(),
        Some(t) => vec![t],
        None => Vec::new(),
    };
    if types.contains(&"ByteLevel") {
        PieceStyle::ByteLevel
    } else if types.contains(&"Metaspace")
        || (types.contains(&"ByteFallback") && types.contains(&"Replace"))
    {
        PieceStyle::Metaspace
    } else {
        PieceStyle::Decoder
    }
}
