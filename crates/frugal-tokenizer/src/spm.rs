//! SentencePiece-style BPE (GGUF `tokenizer.ggml.model = "llama"`), as
//! llama.cpp runs it: start from UTF-8 characters, repeatedly merge the
//! adjacent pair whose concatenation is the vocabulary token with the highest
//! score (ties: leftmost), then spell characters that are not tokens with
//! byte tokens `<0xXX>`.
//!
//! llama.cpp merges over the whole text at once. Here the text is first cut
//! where no merge can ever cross: between two characters that appear next to
//! each other in no vocabulary token. Each piece then merges on its own; the
//! result is the same (merges in one piece never change what is possible in
//! another, so each piece sees its merges in the same order), and the heaps
//! stay small.

use std::collections::BinaryHeap;

use crate::fxhash::{FxHashMap, FxHashSet};

/// Every pair of adjacent characters inside some token.
pub(crate) fn adjacent_pairs<'a>(tokens: impl Iterator<Item = &'a str>) -> FxHashSet<(char, char)> {
    let mut pairs = FxHashSet::default();
    for t in tokens {
        let mut it = t.chars();
        if let Some(mut prev) = it.next() {
            for c in it {
                pairs.insert((prev, c));
                prev = c;
            }
        }
    }
    pairs
}

/// Tokenize `text` (spaces already escaped), cutting it where `pairs` says no
/// token can span the cut.
pub(crate) fn encode_chunked<'t>(
    text: &'t str,
    pairs: &FxHashSet<(char, char)>,
    token_to_id: &FxHashMap<String, u32>,
    scores: &[f32],
    byte_token: impl Fn(u8) -> Option<u32>,
    out: &mut Vec<u32>,
) {
    // Pieces repeat (they are about word-sized): remember short ones' ids
    // as ranges of `out` for the rest of this call.
    let mut seen: FxHashMap<&'t str, (usize, usize)> = FxHashMap::default();
    let mut piece = |p: &'t str, out: &mut Vec<u32>| {
        let cacheable = p.len() <= 48;
        if cacheable {
            if let Some(&(s, n)) = seen.get(p) {
                out.extend_from_within(s..s + n);
                return;
            }
        }
        let start = out.len();
        encode(p, token_to_id, scores, &byte_token, out);
        if cacheable {
            seen.insert(p, (start, out.len() - start));
        }
    };
    let mut start = 0;
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        if let Some(p) = prev {
            if !pairs.contains(&(p, c)) {
                piece(&text[start..i], out);
                start = i;
            }
        }
        prev = Some(c);
    }
    if start < text.len() {
        piece(&text[start..], out);
    }
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge; the heap pops the highest score, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// Tokenize `text` (spaces already escaped to `▁`), appending ids to `out`.
/// `byte_token(b)` gives the token for a raw byte, if the vocabulary has one.
pub(crate) fn encode(
    text: &str,
    token_to_id: &FxHashMap<String, u32>,
    scores: &[f32],
    byte_token: impl Fn(u8) -> Option<u32>,
    out: &mut Vec<u32>,
) {
    let mut syms: Vec<Sym> = Vec::new();
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(Sym {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: None,
        });
        if i > 0 {
            syms[i - 1].next = Some(i);
        }
    }
    let mut heap = BinaryHeap::new();
    let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: usize, r: usize| {
        let (a, b) = (syms[l], syms[r]);
        let piece = &text[a.start..b.start + b.len];
        if let Some(&id) = token_to_id.get(piece) {
            heap.push(Bigram {
                score: scores.get(id as usize).copied().unwrap_or(0.0),
                left: l,
                right: r,
                size: piece.len(),
            });
        }
    };
    for i in 1..syms.len() {
        try_add(&mut heap, &syms, i - 1, i);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left, bg.right);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        syms[l].next = syms[r].next;
        if let Some(nx) = syms[r].next {
            syms[nx].prev = Some(l);
        }
        if let Some(pv) = syms[l].prev {
            try_add(&mut heap, &syms, pv, l);
        }
        if let Some(nx) = syms[l].next {
            try_add(&mut heap, &syms, l, nx);
        }
    }
    let mut i = if syms.is_empty() { None } else { Some(0) };
    while let Some(k) = i {
        let s = syms[k];
        let piece = &text[s.start..s.start + s.len];
        match token_to_id.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(&byte_token)),
        }
        i = s.next;
    }
}
