//! A GGUF vocabulary (`tokenizer.ggml.*`) with llama.cpp's rules for special
//! tokens, end-of-generation tokens, special-token partitioning, and
//! detokenization.

use std::collections::BTreeSet;

use frugal_formats::{MetaValue, Metadata};

use crate::bpe::Bpe;
use crate::fxhash::{FxHashMap, FxHashSet};
use crate::pretok::{PreInfo, PreTokenizer};
use crate::unicode::char_to_byte;
use crate::{spm, TokenizerError};

// Token attributes (one per token, except where llama.cpp overrides them).
pub(crate) const ATTR_UNDEFINED: u8 = 0;
pub(crate) const ATTR_UNKNOWN: u8 = 1 << 0;
pub(crate) const ATTR_UNUSED: u8 = 1 << 1;
pub(crate) const ATTR_NORMAL: u8 = 1 << 2;
pub(crate) const ATTR_CONTROL: u8 = 1 << 3;
pub(crate) const ATTR_USER_DEFINED: u8 = 1 << 4;
pub(crate) const ATTR_BYTE: u8 = 1 << 5;

/// GGUF `tokenizer.ggml.token_type` values.
fn attr_from_type(t: i128) -> u8 {
    match t {
        1 => ATTR_NORMAL,
        2 => ATTR_UNKNOWN,
        3 => ATTR_CONTROL,
        4 => ATTR_USER_DEFINED,
        5 => ATTR_UNUSED,
        6 => ATTR_BYTE,
        _ => ATTR_UNDEFINED,
    }
}

pub(crate) enum Model {
    /// With the pairs of characters adjacent inside some token.
    Spm(FxHashSet<(char, char)>),
    Bpe(Box<Bpe>),
}

/// Special token ids (None = absent).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// Picks one of the special ids out of [`Specials`].
type SpecialField = fn(&mut Specials) -> &mut Option<u32>;

pub(crate) struct Vocab {
    pub model: Model,
    pub pre: Option<PreTokenizer>,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u8>,
    pub token_to_id: FxHashMap<String, u32>,
    pub sp: Specials,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub clean_spaces: bool,
    pub eog: BTreeSet<u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    special_cache: Vec<u32>,
    /// Each token's bytes as `token_to_piece(special = true)` renders it.
    pieces: Vec<Vec<u8>>,
}

const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
];
/// Token texts llama.cpp treats as end of generation (shared with tokenizer.json loading).
pub(crate) const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
];

fn get<'a>(md: &'a Metadata, key: &str) -> Option<&'a MetaValue> {
    md.get(key)
}

fn wrong(key: &str, want: &str) -> TokenizerError {
    TokenizerError::BadMetadata {
        key: key.to_string(),
        reason: format!("expected {want}"),
    }
}

fn opt_bool(md: &Metadata, key: &str) -> Result<Option<bool>, TokenizerError> {
    match get(md, key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong(key, "a bool")),
    }
}

fn opt_str<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a str>, TokenizerError> {
    match get(md, key) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| wrong(key, "a string")),
    }
}

fn array<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a [MetaValue]>, TokenizerError> {
    match get(md, key) {
        None => Ok(None),
        Some(v) => v.as_array().map(Some).ok_or_else(|| wrong(key, "an array")),
    }
}

impl Vocab {
    pub(crate) fn from_metadata(md: &Metadata) -> Result<Vocab, TokenizerError> {
        let token_vals = array(md, "tokenizer.ggml.tokens")?.ok_or_else(|| {
            TokenizerError::NoTokenizer("tokenizer.ggml.tokens missing".to_string())
        })?;
        let model_name = opt_str(md, "tokenizer.ggml.model")?.ok_or_else(|| {
            TokenizerError::NoTokenizer("tokenizer.ggml.model missing".to_string())
        })?;
        let pre_name = opt_str(md, "tokenizer.ggml.pre")?.unwrap_or("");
        let n = token_vals.len();
        if n == 0 {
            return Err(TokenizerError::NoTokenizer(
                "tokenizer.ggml.tokens is empty".to_string(),
            ));
        }
        if n > u32::MAX as usize / 2 {
            return Err(wrong("tokenizer.ggml.tokens", "fewer tokens"));
        }

        let mut sp = Specials::default();
        let mut add_bos;
        let mut add_eos = false;
        let mut add_space_prefix;
        let clean_spaces;
        let mut ignore_merges = false;
        let is_spm;
        let pre: Option<PreInfo>;
        match model_name {
            "llama" => {
                is_spm = true;
                sp.bos = Some(1);
                sp.eos = Some(2);
                sp.unk = Some(0);
                add_space_prefix = true;
                clean_spaces = false;
                add_bos = true;
                pre = None;
            }
            "gpt2" => {
                is_spm = false;
                sp.bos = Some(11);
                sp.eos = Some(11);
                add_space_prefix = false;
                let info = PreTokenizer::from_name(pre_name).ok_or_else(|| {
                    TokenizerError::Unsupported(format!(
                        "pre-tokenizer type `{pre_name}` (tokenizer.ggml.pre) is not implemented"
                    ))
                })?;
                clean_spaces = info.clean_spaces;
                ignore_merges = info.ignore_merges;
                add_bos = info.add_bos;
                if info.no_bos {
                    sp.bos = None;
                }
                pre = Some(info);
            }
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "tokenizer model `{other}` (tokenizer.ggml.model); supported: gpt2, llama"
                )))
            }
        }
        if let Some(v) = opt_bool(md, "tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }

        let mut tokens = Vec::with_capacity(n);
        for (i, v) in token_vals.iter().enumerate() {
            let s = v
                .as_str()
                .ok_or_else(|| wrong("tokenizer.ggml.tokens", "an array of strings"))?;
            tokens.push(if s.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                s.to_string()
            });
        }
        let scores: Vec<f32> = match array(md, "tokenizer.ggml.scores")? {
            None => vec![0.0; n],
            Some(a) => {
                if a.len() != n {
                    return Err(wrong("tokenizer.ggml.scores", "one score per token"));
                }
                a.iter()
                    .map(|v| v.as_f64().map(|x| x as f32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| wrong("tokenizer.ggml.scores", "an array of numbers"))?
            }
        };
        let mut attrs: Vec<u8> = match array(md, "tokenizer.ggml.token_type")? {
            None => vec![ATTR_NORMAL; n],
            Some(a) => {
                if a.len() != n {
                    return Err(wrong("tokenizer.ggml.token_type", "one type per token"));
                }
                a.iter()
                    .map(|v| v.as_int().map(attr_from_type))
                    .collect::<Option<_>>()
                    .ok_or_else(|| wrong("tokenizer.ggml.token_type", "an array of integers"))?
            }
        };
        let mut token_to_id = FxHashMap::with_capacity_and_hasher(n, Default::default());
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }

        let model = if is_spm {
            Model::Spm(spm::adjacent_pairs(token_to_id.keys().map(String::as_str)))
        } else {
            let merge_vals = array(md, "tokenizer.ggml.merges")?.ok_or_else(|| {
                TokenizerError::NoTokenizer(
                    "tokenizer.ggml.merges missing (needed by a gpt2 tokenizer)".to_string(),
                )
            })?;
            let merges: Vec<&str> = merge_vals
                .iter()
                .map(|v| v.as_str())
                .collect::<Option<_>>()
                .ok_or_else(|| wrong("tokenizer.ggml.merges", "an array of strings"))?;
            let kind = pre.map(|p| p.kind).unwrap_or(PreTokenizer::Default);
            Model::Bpe(Box::new(Bpe::new(
                kind,
                ignore_merges,
                n,
                &token_to_id,
                &merges,
            )?))
        };

        // Special token ids from the metadata; out-of-range ids keep the default.
        let keys: [(&str, SpecialField); 17] = [
            ("bos_token_id", |s| &mut s.bos),
            ("eos_token_id", |s| &mut s.eos),
            ("eot_token_id", |s| &mut s.eot),
            ("eom_token_id", |s| &mut s.eom),
            ("unknown_token_id", |s| &mut s.unk),
            ("seperator_token_id", |s| &mut s.sep),
            ("padding_token_id", |s| &mut s.pad),
            ("mask_token_id", |s| &mut s.mask),
            ("fim_pre_token_id", |s| &mut s.fim_pre),
            ("fim_suf_token_id", |s| &mut s.fim_suf),
            ("fim_mid_token_id", |s| &mut s.fim_mid),
            ("fim_pad_token_id", |s| &mut s.fim_pad),
            ("fim_rep_token_id", |s| &mut s.fim_rep),
            ("fim_sep_token_id", |s| &mut s.fim_sep),
            ("prefix_token_id", |s| &mut s.fim_pre),
            ("suffix_token_id", |s| &mut s.fim_suf),
            ("middle_token_id", |s| &mut s.fim_mid),
        ];
        for (suffix, field) in keys {
            let key = format!("tokenizer.ggml.{suffix}");
            if let Some(v) = get(md, &key) {
                let id = v.as_int().ok_or_else(|| wrong(&key, "an integer"))?;
                if (0..n as i128).contains(&id) {
                    *field(&mut sp) = Some(id as u32);
                }
            }
        }
        // Defaults that do not exist in this vocabulary mean "none".
        for (_, field) in keys {
            let f = field(&mut sp);
            if f.is_some_and(|id| id as usize >= n) {
                *f = None;
            }
        }
        if let Some(v) = opt_bool(md, "tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        if let Some(v) = opt_bool(md, "tokenizer.ggml.add_eos_token")? {
            add_eos = v;
        }

        // Find unnamed special tokens by their text, as llama.cpp does.
        let find = |names: &[&str]| names.iter().find_map(|t| token_to_id.get(*t).copied());
        let by_name: [(&[&str], SpecialField); 8] = [
            (EOT_NAMES, |s| &mut s.eot),
            (&["<|eom_id|>"], |s| &mut s.eom),
            (
                &["<|fim_prefix|>", "<fim-prefix>", "<｜fim▁begin｜>", "<PRE>"],
                |s| &mut s.fim_pre,
            ),
            (
                &["<|fim_suffix|>", "<fim-suffix>", "<｜fim▁hole｜>", "<SUF>"],
                |s| &mut s.fim_suf,
            ),
            (
                &["<|fim_middle|>", "<fim-middle>", "<｜fim▁end｜>", "<MID>"],
                |s| &mut s.fim_mid,
            ),
            (&["<|fim_pad|>", "<fim-pad>", "<PAD>"], |s| &mut s.fim_pad),
            (
                &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"],
                |s| &mut s.fim_rep,
            ),
            (&["<|file_sep|>"], |s| &mut s.fim_sep),
        ];
        for (names, field) in by_name {
            if field(&mut sp).is_none() {
                if let Some(id) = find(names) {
                    *field(&mut sp) = Some(id);
                    attrs[id as usize] = ATTR_CONTROL;
                }
            }
        }

        // End-of-generation tokens.
        let mut eog = BTreeSet::new();
        eog.extend([sp.fim_pad, sp.fim_rep, sp.fim_sep].into_iter().flatten());
        for name in EOG_NAMES {
            if let Some(&id) = token_to_id.get(*name) {
                eog.insert(id);
                attrs[id as usize] = ATTR_CONTROL;
            }
        }
        eog.extend([sp.eos, sp.eot, sp.eom].into_iter().flatten());

        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        special_cache.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        let mut v = Vocab {
            model,
            pre: pre.map(|p| p.kind),
            tokens,
            scores,
            attrs,
            token_to_id,
            sp,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            eog,
            special_cache,
            pieces: Vec::new(),
        };
        v.pieces = (0..n).map(|i| v.render_piece(i)).collect();
        Ok(v)
    }

    pub(crate) fn is_spm(&self) -> bool {
        matches!(self.model, Model::Spm(_))
    }

    /// The token for a raw byte in an SPM vocabulary: `<0xXX>`, else the byte itself.
    fn spm_byte_token(&self, b: u8) -> Option<u32> {
        let hex = format!("<0x{b:02X}>");
        if let Some(&id) = self.token_to_id.get(&hex) {
            return Some(id);
        }
        let s = [b];
        std::str::from_utf8(&s)
            .ok()
            .and_then(|s| self.token_to_id.get(s).copied())
            // llama.cpp gives up here; the unknown token is the gentlest stand-in.
            .or(self.sp.unk)
    }

    fn render_piece(&self, i: usize) -> Vec<u8> {
        let text = &self.tokens[i];
        let attr = self.attrs[i];
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        match self.model {
            Model::Spm(_) => {
                if attr & ATTR_NORMAL != 0 {
                    text.replace('\u{2581}', " ").into_bytes()
                } else if attr & ATTR_BYTE != 0 {
                    parse_byte_token(text).map(|b| vec![b]).unwrap_or_default()
                } else {
                    Vec::new()
                }
            }
            Model::Bpe(_) => {
                if attr & ATTR_NORMAL == 0 {
                    return Vec::new();
                }
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => {
                            // llama.cpp's marker for a character outside the byte alphabet.
                            out.extend_from_slice(b"[UNK_BYTE_0x");
                            let mut buf = [0u8; 4];
                            for b in c.encode_utf8(&mut buf).bytes() {
                                out.extend_from_slice(format!("{b:02x}").as_bytes());
                            }
                            out.extend_from_slice(text.as_bytes());
                            out.push(b']');
                        }
                    }
                }
                out
            }
        }
    }

    pub(crate) fn is_control_or_unknown(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0)
    }

    /// llama.cpp's `token_to_piece` (without lstrip). Ids out of range give nothing.
    pub(crate) fn piece(&self, id: u32, special: bool) -> &[u8] {
        if !special && self.is_control_or_unknown(id) {
            return &[];
        }
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    /// Split text into plain-text runs and special tokens (llama.cpp's
    /// `tokenizer_st_partition`). Without `parse_special`, control and unknown
    /// tokens stay text; user-defined tokens are always split out.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Frag<'t>> {
        let mut frags = vec![Frag::Text(text)];
        for &id in &self.special_cache {
            if !parse_special && self.is_control_or_unknown(id) {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Frag::Text(t) if t.contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Frag::Text(mut t) => {
                        while let Some(pos) = t.find(needle) {
                            if pos > 0 {
                                next.push(Frag::Text(&t[..pos]));
                            }
                            next.push(Frag::Token(id));
                            t = &t[pos + needle.len()..];
                        }
                        if !t.is_empty() {
                            next.push(Frag::Text(t));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    pub(crate) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let frags = if text.is_empty() {
            Vec::new()
        } else {
            self.partition(text, parse_special)
        };
        match &self.model {
            Model::Spm(pairs) => {
                if add_special && self.add_bos {
                    out.extend(self.sp.bos);
                }
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Frag::Text(t) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in t.chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::encode_chunked(
                                &buf,
                                pairs,
                                &self.token_to_id,
                                &self.scores,
                                |b| self.spm_byte_token(b),
                                &mut out,
                            );
                            prev_special = false;
                        }
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
                if add_special && self.add_eos {
                    out.extend(self.sp.eos);
                }
            }
            Model::Bpe(bpe) => {
                if add_special && self.add_bos {
                    out.extend(self.sp.bos);
                }
                for f in frags {
                    match f {
                        Frag::Text(t) => bpe.encode(t, &self.token_to_id, &mut out),
                        Frag::Token(id) => out.push(id),
                    }
                }
                if add_special && self.add_eos {
                    out.extend(self.sp.eos);
                }
            }
        }
        out
    }

    /// llama.cpp's `detokenize`.
    pub(crate) fn detokenize(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.sp.bos) {
                if first == bos {
                    remove_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if remove_special && self.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), self.sp.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut text = Vec::new();
        for &id in ids {
            let mut p = self.piece(id, unparse_special);
            if remove_space && p.first() == Some(&b' ') {
                p = &p[1..];
            }
            remove_space = false;
            text.extend_from_slice(p);
        }
        if self.clean_spaces {
            text = clean_up_spaces(text);
        }
        text
    }
}

enum Frag<'t> {
    Text(&'t str),
    Token(u32),
}

/// The byte of an SPM byte token `<0xXX>`.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// llama.cpp's `clean_up_tokenization_spaces`, three passes over the bytes.
pub(crate) fn clean_up_spaces(text: Vec<u8>) -> Vec<u8> {
    // 1. " ?", " !", " .", " ," lose the space.
    let mut a = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    // 2. " ' " becomes "'". The consumed following space is blanked out, so it
    //    no longer counts as a space before the next character.
    let mut src = a;
    let mut b = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let x = src[i];
        if i > 0 && x == b'\'' && i + 1 < src.len() && src[i - 1] == b' ' && src[i + 1] == b' ' {
            b.pop();
            src[i + 1] = 0;
            b.push(x);
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    // 3. " 's", " 'm", " 're", " 've" lose the space.
    let mut c = Vec::with_capacity(b.len());
    for (i, &x) in b.iter().enumerate() {
        if i > 0 && b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            if x1 == b's' || x1 == b'm' {
                c.pop();
            } else if i + 2 < b.len() {
                let x2 = b[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    c.pop();
                }
            }
        }
        c.push(x);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        String::from_utf8(clean_up_spaces(s.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn clean_up_spaces_passes() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean("it 's I 'm we 're you 've"), "it's I'm we're you've");
        assert_eq!(clean("don 't they 'll"), "don 't they 'll");
        assert_eq!(clean(" ."), ".");
        assert_eq!(clean(""), "");
        // The blanked space after a stripped quote is no longer a space.
        assert_eq!(clean("a ' ' b"), "a'' b");
    }

    #[test]
    fn byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x0>"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }
}
