//! llama2.c's tokenizer file (`tokenizer.bin`) and its encode/decode rules.
//!
//! File layout (little-endian): `i32 max_token_length`, then per token
//! `f32 score, i32 len, len bytes`. Token 0 is `<unk>`, 1 is BOS, 2 is EOS,
//! 3..=258 are the byte tokens `<0x00>`..`<0xFF>`.

use std::collections::HashMap;

use crate::vocab::parse_byte_token;
use crate::TokenizerError;

pub(crate) const BOS: u32 = 1;
pub(crate) const EOS: u32 = 2;

pub(crate) struct Llama2c {
    pub tokens: Vec<Vec<u8>>,
    /// Token texts as strings (lossy where a token is not UTF-8), for `token_text`.
    pub texts: Vec<String>,
    scores: Vec<f32>,
    lookup: HashMap<Vec<u8>, u32>,
}

impl Llama2c {
    pub(crate) fn parse(
        data: &[u8],
        vocab_size: usize,
        origin: &str,
    ) -> Result<Llama2c, TokenizerError> {
        let bad = |reason: String| TokenizerError::BadFile {
            path: origin.to_string(),
            reason,
        };
        let mut pos = 0usize;
        let mut take = |n: usize, what: &str| -> Result<&[u8], TokenizerError> {
            let end = pos
                .checked_add(n)
                .filter(|&e| e <= data.len())
                .ok_or_else(|| bad(format!("truncated while reading {what} at offset {pos}")))?;
            let s = &data[pos..end];
            pos = end;
            Ok(s)
        };
        let word = |b: &[u8]| [b[0], b[1], b[2], b[3]];
        let _max_len = i32::from_le_bytes(word(take(4, "max_token_length")?));
        // Each token takes at least 8 bytes: never reserve more than the file can hold.
        let cap = vocab_size.min(data.len() / 8);
        let mut tokens = Vec::with_capacity(cap);
        let mut scores = Vec::with_capacity(cap);
        for i in 0..vocab_size {
            let score = f32::from_le_bytes(word(take(4, &format!("score of token {i}"))?));
            let len = i32::from_le_bytes(word(take(4, &format!("length of token {i}"))?));
            let len = usize::try_from(len)
                .map_err(|_| bad(format!("token {i} has negative length {len}")))?;
            let bytes = take(len, &format!("text of token {i}"))?;
            tokens.push(bytes.to_vec());
            scores.push(score);
        }
        if tokens.len() <= EOS as usize {
            return Err(bad(format!(
                "vocabulary of {} tokens lacks <unk>, BOS and EOS",
                tokens.len()
            )));
        }
        // Lookups stop at a NUL like C strings; the first of equal texts wins.
        let mut lookup = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            lookup.entry(c_str(t).to_vec()).or_insert(i as u32);
        }
        let texts = tokens
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        Ok(Llama2c {
            tokens,
            texts,
            scores,
            lookup,
        })
    }

    /// run.c's `encode`: optional BOS, a dummy-prefix space for non-empty
    /// text, one token per UTF-8 character (bytes + 3 as fallback), then
    /// greedy merges of the adjacent pair with the best score.
    pub(crate) fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() + 3);
        if bos {
            out.push(BOS);
        }
        if !text.is_empty() {
            if let Some(&id) = self.lookup.get(&b" "[..]) {
                out.push(id);
            }
        }
        let mut buf = [0u8; 4];
        for c in text.chars() {
            let s = c.encode_utf8(&mut buf).as_bytes();
            match self.lookup.get(c_str(s)) {
                Some(&id) if !s.contains(&0) => out.push(id),
                _ => {
                    for &b in s {
                        let id = b as u32 + 3;
                        if (id as usize) < self.tokens.len() {
                            out.push(id);
                        }
                    }
                }
            }
        }
        self.merge(&mut out);
        if eos {
            out.push(EOS);
        }
        out
    }

    /// Merge the best-scoring adjacent pair (the leftmost of equals) until no
    /// pair concatenates to a token. Same result as run.c's repeated scans
    /// (scores at or below -1e10 never win there, nor here), kept fast with a
    /// heap of candidate pairs whose stale entries are skipped.
    fn merge(&self, ids: &mut Vec<u32>) {
        #[derive(PartialEq)]
        struct Cand(f32, usize, usize, u32, u32, u32);
        impl Eq for Cand {}
        impl PartialOrd for Cand {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Cand {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.0.total_cmp(&o.0).then_with(|| o.1.cmp(&self.1))
            }
        }
        let n = ids.len();
        let mut cur: Vec<Option<u32>> = ids.iter().map(|&i| Some(i)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut heap = std::collections::BinaryHeap::new();
        let mut pair = Vec::new();
        let mut consider =
            |heap: &mut std::collections::BinaryHeap<Cand>, l: usize, r: usize, a: u32, b: u32| {
                pair.clear();
                pair.extend_from_slice(c_str(&self.tokens[a as usize]));
                pair.extend_from_slice(c_str(&self.tokens[b as usize]));
                if let Some(&id) = self.lookup.get(&pair) {
                    let score = self.scores[id as usize];
                    if score > -1e10 {
                        heap.push(Cand(score, l, r, a, b, id));
                    }
                }
            };
        for i in 1..n {
            consider(&mut heap, i - 1, i, ids[i - 1], ids[i]);
        }
        while let Some(Cand(_, l, r, a, b, id)) = heap.pop() {
            if cur[l] != Some(a) || cur[r] != Some(b) || next[l] != Some(r) {
                continue;
            }
            cur[l] = Some(id);
            cur[r] = None;
            next[l] = next[r];
            if let Some(nx) = next[r] {
                prev[nx] = Some(l);
            }
            if let Some(pv) = prev[l] {
                consider(&mut heap, pv, l, cur[pv].unwrap_or(0), id);
            }
            if let Some(nx) = next[l] {
                consider(&mut heap, l, nx, id, cur[nx].unwrap_or(0));
            }
        }
        ids.clear();
        let mut i = if n > 0 { Some(0) } else { None };
        while let Some(k) = i {
            ids.extend(cur[k]);
            i = next[k];
        }
    }

    /// run.c's `decode`: the piece of `id`, without its leading space right
    /// after BOS, and with `<0xXX>` turned into the raw byte.
    pub(crate) fn piece_after(&self, prev: Option<u32>, id: u32) -> &[u8] {
        let Some(t) = self.tokens.get(id as usize) else {
            return &[];
        };
        let mut p = c_str(t);
        if prev == Some(BOS) && p.first() == Some(&b' ') {
            p = &p[1..];
        }
        if let Some(b) = std::str::from_utf8(p).ok().and_then(parse_byte_token) {
            return &BYTES[b as usize..b as usize + 1];
        }
        p
    }

    /// `<unk>`, BOS and EOS render as nothing unless `special`.
    pub(crate) fn is_control(&self, id: u32) -> bool {
        id <= EOS
    }

    pub(crate) fn decode(&self, ids: &[u32], special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = None;
        for &id in ids {
            if special || !self.is_control(id) {
                out.extend_from_slice(self.piece_after(prev, id));
            }
            prev = Some(id);
        }
        out
    }

    pub(crate) fn id_of(&self, text: &str) -> Option<u32> {
        self.lookup.get(text.as_bytes()).copied()
    }
}

static BYTES: [u8; 256] = {
    let mut a = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// The bytes before the first NUL.
fn c_str(b: &[u8]) -> &[u8] {
    match b.iter().position(|&x| x == 0) {
        Some(p) => &b[..p],
        None => b,
    }
}
