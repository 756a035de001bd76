//! Byte-level BPE (GGUF `tokenizer.ggml.model = "gpt2"`), as llama.cpp runs it.
//!
//! A word's bytes are shown in GPT-2's byte alphabet, one symbol per byte;
//! adjacent symbols are merged lowest merge rank first (ties: leftmost), and
//! the final symbols are looked up in the vocabulary. Symbols are interned as
//! ids so that the merge loop never builds strings: vocabulary texts keep
//! their token ids, and merge operands that are not tokens get ids past the
//! vocabulary.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::fxhash::FxHashMap;

use crate::pretok::PreTokenizer;
use crate::unicode::byte_to_char;
use crate::TokenizerError;

pub(crate) struct Bpe {
    pre: PreTokenizer,
    ignore_merges: bool,
    n_vocab: u32,
    /// `(left, right) -> (rank, merged)`; the first listing of a pair wins.
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    /// Symbol id of each byte's alphabet character, if it is a token or a merge operand.
    byte_sym: [Option<u32>; 256],
    /// Token id of each byte whose alphabet character is the plain ASCII
    /// character (the only single bytes llama.cpp's fallback can find).
    ascii_token: [Option<u32>; 256],
}

/// A possible merge: `(rank, left, right, left id, right id)`, lowest rank
/// (then leftmost) first.
type Candidate = Reverse<(u32, usize, usize, u32, u32)>;

#[derive(Clone, Copy)]
struct Sym {
    id: Option<u32>,
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Bpe {
    /// `token_to_id` maps token texts to ids (the last of duplicates wins).
    pub(crate) fn new(
        pre: PreTokenizer,
        ignore_merges: bool,
        n_vocab: usize,
        token_to_id: &FxHashMap<String, u32>,
        merges: &[&str],
    ) -> Result<Bpe, TokenizerError> {
        let mut extra: HashMap<String, u32> = HashMap::new();
        let mut next_id = n_vocab as u32;
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = token_to_id.get(s) {
                return id;
            }
            if let Some(&id) = extra.get(s) {
                return id;
            }
            extra.insert(s.to_string(), next_id);
            next_id += 1;
            next_id - 1
        };
        let mut table = FxHashMap::with_capacity_and_hasher(merges.len(), Default::default());
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; a
            // line without one is the pair ("", "") and can never apply.
            let Some(pos) = m.bytes().skip(1).position(|c| c == b' ').map(|p| p + 1) else {
                continue;
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let merged = format!("{a}{b}");
            let key = (intern(a), intern(b));
            let val = (rank as u32, intern(&merged));
            table.entry(key).or_insert(val);
        }
        let mut byte_sym = [None; 256];
        let mut ascii_token = [None; 256];
        let mut buf = [0u8; 4];
        for b in 0..=255u8 {
            let s = byte_to_char(b).encode_utf8(&mut buf);
            byte_sym[b as usize] = token_to_id.get(&*s).or_else(|| extra.get(&*s)).copied();
            if byte_to_char(b) == b as char && b.is_ascii() {
                ascii_token[b as usize] = token_to_id.get(&*s).copied();
            }
        }
        Ok(Bpe {
            pre,
            ignore_merges,
            n_vocab: n_vocab as u32,
            merges: table,
            byte_sym,
            ascii_token,
        })
    }

    /// Tokenize plain text (no special tokens), appending ids to `out`.
    /// `token_to_id` is only consulted when merges are ignored for whole words.
    pub(crate) fn encode(
        &self,
        text: &str,
        token_to_id: &FxHashMap<String, u32>,
        out: &mut Vec<u32>,
    ) {
        let mut syms: Vec<Sym> = Vec::new();
        let mut heap = BinaryHeap::new();
        let mut mapped = String::new();
        // Words repeat a lot in running text: remember each short word's ids
        // (as a range of `out`) for the rest of this call.
        let mut seen: FxHashMap<&[u8], (usize, usize)> = FxHashMap::default();
        for (a, b) in self.pre.split(text) {
            let word = &text.as_bytes()[a..b];
            let cacheable = word.len() <= 48;
            if cacheable {
                if let Some(&(s, n)) = seen.get(word) {
                    out.extend_from_within(s..s + n);
                    continue;
                }
            }
            let start = out.len();
            let mut done = false;
            if self.ignore_merges {
                mapped.clear();
                mapped.extend(word.iter().map(|&c| byte_to_char(c)));
                if let Some(&id) = token_to_id.get(&mapped) {
                    out.push(id);
                    done = true;
                }
            }
            if !done {
                self.encode_word(word, &mut syms, &mut heap, out);
            }
            if cacheable {
                seen.insert(word, (start, out.len() - start));
            }
        }
    }

    fn encode_word(
        &self,
        word: &[u8],
        syms: &mut Vec<Sym>,
        heap: &mut BinaryHeap<Candidate>,
        out: &mut Vec<u32>,
    ) {
        syms.clear();
        heap.clear();
        let n = word.len();
        for (i, &b) in word.iter().enumerate() {
            syms.push(Sym {
                id: self.byte_sym[b as usize],
                start: i,
                len: 1,
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
            });
        }
        let push = |heap: &mut BinaryHeap<_>, syms: &[Sym], l: usize, r: usize| {
            if let (Some(a), Some(b)) = (syms[l].id, syms[r].id) {
                if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
                    heap.push(Reverse((rank, l, r, a, b)));
                }
            }
        };
        for i in 1..n {
            push(heap, syms, i - 1, i);
        }
        while let Some(Reverse((_, l, r, a, b))) = heap.pop() {
            // Stale entries: either side has since been merged into something else.
            if syms[l].len == 0
                || syms[r].len == 0
                || syms[l].id != Some(a)
                || syms[r].id != Some(b)
            {
                continue;
            }
            let merged = self.merges[&(a, b)].1;
            syms[l].id = Some(merged);
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            if let Some(pv) = syms[l].prev {
                push(heap, syms, pv, l);
            }
            if let Some(nx) = syms[l].next {
                push(heap, syms, l, nx);
            }
        }
        let mut i = if n > 0 { Some(0) } else { None };
        while let Some(k) = i {
            let s = syms[k];
            match s.id {
                Some(id) if id < self.n_vocab => out.push(id),
                _ => {
                    // Not a token: llama.cpp looks up each byte of the symbol's
                    // alphabet text, which only finds plain ASCII characters.
                    for &b in &word[s.start..s.start + s.len] {
                        if let Some(id) = self.ascii_token[b as usize] {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
    }
}
