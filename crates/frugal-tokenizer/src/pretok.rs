//! Pre-tokenizers: split text into words before byte-level BPE, exactly as
//! llama.cpp does for each `tokenizer.ggml.pre` type.
//!
//! llama.cpp applies a list of regexes in turn; each one splits every piece
//! left by the previous one into matches and the gaps between them. Two of
//! the regexes (GPT-2's and Llama-3's) are hand-written scanners there; the
//! rest run through `std::regex` on a "collapsed" text in which every
//! non-ASCII codepoint is replaced by one byte naming its category (letter,
//! number, punctuation, mark, symbol, whitespace, other). Both behaviours are
//! reproduced here by scanners over codepoints, so `\s+(?!\S)` and friends
//! need no regex engine.

use crate::unicode::{self, LETTER, NUMBER, WHITESPACE};

/// The pre-tokenizer families this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// llama.cpp's fallback when `tokenizer.ggml.pre` is missing or "default".
    Default,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)` (gpt-2, mpt, olmo, jais, phi-2, ...).
    Gpt2,
    /// Every `\p{N}` on its own, then the GPT-2 regex (starcoder, smollm, refact, command-r, codeshell, exaone, minerva-7b).
    Starcoder,
    /// `(?:'[sS]|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` (qwen2, stablelm2, deepseek-r1-qwen, megrez).
    Qwen2,
    /// As Qwen2 but `\p{N}{1,3}` (llama3, llama-bpe, falcon3, dbrx, smaug-bpe, chatglm-bpe).
    Llama3,
}

/// A pre-tokenizer type name as GGUF's `tokenizer.ggml.pre` spells it, with the
/// flags llama.cpp attaches to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreInfo {
    pub kind: PreTokenizer,
    /// `clean_up_tokenization_spaces` on decode.
    pub clean_spaces: bool,
    /// A word that is itself a token skips the merges.
    pub ignore_merges: bool,
    /// The type forces add_bos (the metadata may still override it).
    pub add_bos: bool,
    /// The type forces "no BOS token" (chatglm).
    pub no_bos: bool,
}

impl PreTokenizer {
    /// Look up a `tokenizer.ggml.pre` value. `None` for types this crate does not implement.
    pub(crate) fn from_name(name: &str) -> Option<PreInfo> {
        let info = |kind, clean_spaces| PreInfo {
            kind,
            clean_spaces,
            ignore_merges: false,
            add_bos: false,
            no_bos: false,
        };
        Some(match name {
            "" | "default" => info(PreTokenizer::Default, true),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en"
            | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
            | "jais" => info(PreTokenizer::Gpt2, true),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
                info(PreTokenizer::Starcoder, true)
            }
            "command-r" | "smollm" => info(PreTokenizer::Starcoder, false),
            "qwen2" | "deepseek-r1-qwen" => info(PreTokenizer::Qwen2, false),
            "megrez" | "stablelm2" => info(PreTokenizer::Qwen2, true),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => PreInfo {
                ignore_merges: true,
                add_bos: true,
                ..info(PreTokenizer::Llama3, true)
            },
            "dbrx" | "smaug-bpe" => info(PreTokenizer::Llama3, true),
            "chatglm-bpe" => PreInfo {
                no_bos: true,
                ..info(PreTokenizer::Llama3, true)
            },
            _ => return None,
        })
    }

    /// Split `text` into words; returns byte ranges that tile `text` in order.
    pub fn split(self, text: &str) -> Vec<(usize, usize)> {
        let cps: Vec<u32> = text.chars().map(|c| c as u32).collect();
        let mut byte_pos = Vec::with_capacity(cps.len() + 1);
        let mut acc = 0;
        for c in text.chars() {
            byte_pos.push(acc);
            acc += c.len_utf8();
        }
        byte_pos.push(acc);

        let mut segs = vec![(0usize, cps.len())];
        let steps: &[Step] = match self {
            PreTokenizer::Default => &[
                Step::PunctRuns,
                Step::Gpt2,
                Step::NumberRuns,
                Step::AsciiDigitTriples,
            ],
            PreTokenizer::Gpt2 => &[Step::Gpt2],
            PreTokenizer::Starcoder => &[Step::EachNumber, Step::Gpt2],
            PreTokenizer::Qwen2 => &[Step::Qwen2],
            PreTokenizer::Llama3 => &[Step::Llama3],
        };
        for step in steps {
            let mut out = Vec::with_capacity(segs.len() * 2);
            for &(a, b) in &segs {
                if a < b {
                    step.run(&cps, a, b, &mut out);
                }
            }
            segs = out;
        }
        segs.into_iter()
            .map(|(a, b)| (byte_pos[a], byte_pos[b]))
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Step {
    /// GPT-2's regex, llama.cpp's hand-written scanner.
    Gpt2,
    /// Llama-3's regex, llama.cpp's hand-written scanner.
    Llama3,
    /// `std::regex` steps on the collapsed text.
    Qwen2,
    EachNumber,
    NumberRuns,
    PunctRuns,
    AsciiDigitTriples,
}

impl Step {
    fn run(self, cps: &[u32], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
        match self {
            Step::Gpt2 => split_gpt2(cps, a, b, out),
            Step::Llama3 => split_llama3(cps, a, b, out),
            _ => {
                let cls: Vec<u8> = cps[a..b].iter().map(|&c| collapse(c)).collect();
                let matcher: fn(&[u8], usize) -> Option<usize> = match self {
                    Step::Qwen2 => match_qwen2,
                    Step::EachNumber => |t, p| re_number(t[p]).then_some(p + 1),
                    Step::NumberRuns => |t, p| run_of(t, p, re_number),
                    Step::PunctRuns => |t, p| run_of(t, p, re_default_punct),
                    Step::AsciiDigitTriples => |t, p| {
                        (p + 3 <= t.len() && t[p..p + 3].iter().all(u8::is_ascii_digit))
                            .then_some(p + 3)
                    },
                    Step::Gpt2 | Step::Llama3 => unreachable!(),
                };
                regex_split(&cls, a, matcher, out);
            }
        }
    }
}

/// `std::regex_iterator` splitting: every match is a piece, and so is every
/// run of text between matches. `matcher(t, p)` returns the end of the match
/// starting at `p` (never empty), or `None`.
fn regex_split(
    t: &[u8],
    base: usize,
    matcher: impl Fn(&[u8], usize) -> Option<usize>,
    out: &mut Vec<(usize, usize)>,
) {
    let mut gap_start = 0;
    let mut p = 0;
    while p < t.len() {
        match matcher(t, p) {
            Some(end) => {
                debug_assert!(end > p && end <= t.len());
                if gap_start < p {
                    out.push((base + gap_start, base + p));
                }
                out.push((base + p, base + end));
                p = end;
                gap_start = end;
            }
            None => p += 1,
        }
    }
    if gap_start < t.len() {
        out.push((base + gap_start, base + t.len()));
    }
}

fn run_of(t: &[u8], p: usize, pred: fn(u8) -> bool) -> Option<usize> {
    let mut q = p;
    while q < t.len() && pred(t[q]) {
        q += 1;
    }
    (q > p).then_some(q)
}

// ---------------------------------------------------------------------------
// The collapsed alphabet of llama.cpp's std::regex path.

const C_OTHER: u8 = 0xD0;
const C_NUMBER: u8 = 0xD1;
const C_LETTER: u8 = 0xD2;
const C_PUNCT: u8 = 0xD3;
const C_MARK: u8 = 0xD4;
const C_SYMBOL: u8 = 0xD5;
const C_SPACE: u8 = 0x0B;

/// ASCII stays itself; any other codepoint becomes the byte of its category.
fn collapse(cp: u32) -> u8 {
    if cp < 0x80 {
        return cp as u8;
    }
    let f = unicode::flags(cp);
    if f & WHITESPACE != 0 {
        return C_SPACE;
    }
    match f & 0xFF {
        unicode::NUMBER => C_NUMBER,
        unicode::LETTER => C_LETTER,
        unicode::PUNCTUATION => C_PUNCT,
        unicode::MARK => C_MARK,
        unicode::SYMBOL => C_SYMBOL,
        _ => C_OTHER,
    }
}

/// ECMAScript `\s` on a byte in the "C" locale.
fn re_space(c: u8) -> bool {
    matches!(c, b' ' | 0x09..=0x0D)
}

/// `\p{L}` as rewritten for the collapsed text.
fn re_letter(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == C_LETTER
}

/// `\p{N}` as rewritten for the collapsed text.
fn re_number(c: u8) -> bool {
    c.is_ascii_digit() || c == C_NUMBER
}

/// `[\p{P}\$\+<=>\^~\|]` as rewritten for the collapsed text.
fn re_default_punct(c: u8) -> bool {
    c == C_PUNCT || b"!\"#%&'()*,-./:;?@[\\]_{}$+<=>^~|".contains(&c)
}

fn is_cr_lf(c: u8) -> bool {
    c == b'\r' || c == b'\n'
}

/// The Qwen2 regex at position `p` of the collapsed text `t`:
/// `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// with ECMAScript (first alternative wins, greedy with backtracking) semantics.
fn match_qwen2(t: &[u8], p: usize) -> Option<usize> {
    let at = |i: usize| t.get(i).copied();
    let c = t[p];
    // Contractions.
    if c == b'\'' {
        let n1 = at(p + 1).map(|x| x.to_ascii_lowercase());
        let n2 = at(p + 2).map(|x| x.to_ascii_lowercase());
        match (n1, n2) {
            (Some(b's' | b't'), _) => return Some(p + 2),
            (Some(b'r' | b'v'), Some(b'e')) => return Some(p + 3),
            (Some(b'm'), _) => return Some(p + 2),
            (Some(b'l'), Some(b'l')) => return Some(p + 3),
            (Some(b'd'), _) => return Some(p + 2),
            _ => {}
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    let letters_from = |mut q: usize| {
        while q < t.len() && re_letter(t[q]) {
            q += 1;
        }
        q
    };
    if re_letter(c) {
        return Some(letters_from(p + 1));
    }
    if !is_cr_lf(c) && !re_number(c) && at(p + 1).is_some_and(re_letter) {
        return Some(letters_from(p + 2));
    }
    // \p{N}
    if re_number(c) {
        return Some(p + 1);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let is_other = |x: u8| !re_space(x) && !re_letter(x) && !re_number(x);
    let start = if c == b' ' && at(p + 1).is_some_and(is_other) {
        Some(p + 1)
    } else if is_other(c) {
        Some(p)
    } else {
        None
    };
    if let Some(mut q) = start {
        while q < t.len() && is_other(t[q]) {
            q += 1;
        }
        while q < t.len() && is_cr_lf(t[q]) {
            q += 1;
        }
        return Some(q);
    }
    // The whitespace alternatives: c is \s here.
    let mut q = p;
    let mut last_crlf = None;
    while q < t.len() && re_space(t[q]) {
        if is_cr_lf(t[q]) {
            last_crlf = Some(q);
        }
        q += 1;
    }
    // \s*[\r\n]+ : \s* gives back characters until one of them is \r or \n.
    if let Some(r) = last_crlf {
        return Some(r + 1);
    }
    // \s+(?!\S)
    if q == t.len() {
        return Some(q);
    }
    if q - p >= 2 {
        return Some(q - 1);
    }
    // \s+
    (q > p).then_some(q)
}

// ---------------------------------------------------------------------------
// The hand-written scanners. Positions outside the segment read as "no
// codepoint" (flags 0), which is how lookahead sees the segment's end.

struct Seg<'a> {
    cps: &'a [u32],
    a: usize,
    b: usize,
}

impl Seg<'_> {
    fn cp(&self, i: usize) -> Option<u32> {
        (i >= self.a && i < self.b).then(|| self.cps[i])
    }
    fn flags(&self, i: usize) -> u16 {
        self.cp(i).map_or(0, unicode::flags)
    }
}

fn is_letter(f: u16) -> bool {
    f & LETTER != 0
}
fn is_number(f: u16) -> bool {
    f & NUMBER != 0
}
fn is_space(f: u16) -> bool {
    f & WHITESPACE != 0
}
/// `[^\s\p{L}\p{N}]` for a position inside the segment (flags != 0).
fn is_other(f: u16) -> bool {
    f != 0 && !is_space(f) && !is_letter(f) && !is_number(f)
}

fn split_gpt2(cps: &[u32], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    let s = Seg { cps, a, b };
    let mut start = a;
    let mut emit = |end: usize, out: &mut Vec<(usize, usize)>| {
        if end > start {
            out.push((start, end));
        }
        start = end;
    };
    let mut pos = a;
    while pos < b {
        let c = cps[pos];
        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' as u32 && pos + 1 < b {
            let n1 = cps[pos + 1];
            if [b's', b't', b'm', b'd'].iter().any(|&x| n1 == x as u32) {
                pos += 2;
                emit(pos, out);
                continue;
            }
            if pos + 2 < b {
                let n2 = cps[pos + 2];
                let pair = (n1, n2);
                if pair == ('r' as u32, 'e' as u32)
                    || pair == ('v' as u32, 'e' as u32)
                    || pair == ('l' as u32, 'l' as u32)
                {
                    pos += 3;
                    emit(pos, out);
                    continue;
                }
            }
        }
        let is_sp = c == ' ' as u32;
        let lead = if is_sp {
            s.flags(pos + 1)
        } else {
            s.flags(pos)
        };
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let class: Option<fn(u16) -> bool> = if is_letter(lead) {
            Some(is_letter)
        } else if is_number(lead) {
            Some(is_number)
        } else if is_other(lead) {
            Some(is_other)
        } else {
            None
        };
        if let Some(class) = class {
            pos += usize::from(is_sp);
            while class(s.flags(pos)) {
                pos += 1;
            }
            emit(pos, out);
            continue;
        }
        let mut n_ws = 0;
        while is_space(s.flags(pos + n_ws)) {
            n_ws += 1;
        }
        // \s+(?!\S): leave the last whitespace for the word after it.
        if n_ws > 1 && s.cp(pos + n_ws).is_some() {
            pos += n_ws - 1;
            emit(pos, out);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            emit(pos, out);
            continue;
        }
        pos += 1;
        emit(pos, out);
    }
}

fn split_llama3(cps: &[u32], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    let s = Seg { cps, a, b };
    let mut start = a;
    let mut emit = |end: usize, out: &mut Vec<(usize, usize)>| {
        if end > start {
            out.push((start, end));
        }
        start = end;
    };
    let lower = |c: Option<u32>| c.map(|c| if (65..=90).contains(&c) { c + 32 } else { c });
    let cr_lf = |c: Option<u32>| c == Some('\r' as u32) || c == Some('\n' as u32);
    let mut pos = a;
    while pos < b {
        let c = cps[pos];
        let f = s.flags(pos);
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' as u32 && pos + 1 < b {
            let n1 = lower(s.cp(pos + 1));
            if [b's', b't', b'm', b'd']
                .iter()
                .any(|&x| n1 == Some(x as u32))
            {
                pos += 2;
                emit(pos, out);
                continue;
            }
            if pos + 2 < b {
                let n2 = lower(s.cp(pos + 2));
                let pair = (n1, n2);
                let is = |x: char, y: char| pair == (Some(x as u32), Some(y as u32));
                if is('r', 'e') || is('v', 'e') || is('l', 'l') {
                    pos += 3;
                    emit(pos, out);
                    continue;
                }
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(cr_lf(Some(c)) || is_number(f)) && (is_letter(f) || is_letter(s.flags(pos + 1))) {
            pos += 1;
            while is_letter(s.flags(pos)) {
                pos += 1;
            }
            emit(pos, out);
            continue;
        }
        // \p{N}{1,3}
        if is_number(f) {
            let mut ini = pos;
            while is_number(s.flags(pos)) {
                pos += 1;
                if pos - ini >= 3 {
                    emit(pos, out);
                    ini = pos;
                }
            }
            emit(pos, out);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*` (the entry test looks at this codepoint's
        // flags being defined, as llama.cpp does)
        let mut f2 = if c == ' ' as u32 { s.flags(pos + 1) } else { f };
        if !(is_space(f2) || is_letter(f2) || is_number(f2)) && f != 0 {
            pos += usize::from(c == ' ' as u32);
            while !(is_space(f2) || is_letter(f2) || is_number(f2)) && f2 != 0 {
                pos += 1;
                f2 = s.flags(pos);
            }
            while cr_lf(s.cp(pos)) {
                pos += 1;
            }
            emit(pos, out);
            continue;
        }
        let mut n_ws = 0;
        let mut last_crlf_end = 0;
        while is_space(s.flags(pos + n_ws)) {
            if cr_lf(s.cp(pos + n_ws)) {
                last_crlf_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if last_crlf_end > 0 {
            pos = last_crlf_end;
            emit(pos, out);
            continue;
        }
        // \s+(?!\S)
        if n_ws > 1 && s.cp(pos + n_ws).is_some() {
            pos += n_ws - 1;
            emit(pos, out);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            emit(pos, out);
            continue;
        }
        pos += 1;
        emit(pos, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(p: PreTokenizer, text: &str) -> Vec<String> {
        let spans = p.split(text);
        let mut end = 0;
        for &(a, b) in &spans {
            assert_eq!(a, end, "pieces tile the text");
            assert!(b > a, "no empty pieces");
            end = b;
        }
        assert_eq!(end, text.len());
        spans.iter().map(|&(a, b)| text[a..b].to_string()).collect()
    }

    #[test]
    fn gpt2_split() {
        let w = words(PreTokenizer::Gpt2, "Hello world's   end  \n\n 123abc !!?");
        assert_eq!(
            w,
            ["Hello", " world", "'s", "  ", " end", "  \n\n", " 123", "abc", " !!?"]
        );
        // Whitespace at the end of the text is kept together.
        assert_eq!(words(PreTokenizer::Gpt2, "a   "), ["a", "   "]);
        assert_eq!(words(PreTokenizer::Gpt2, "'S"), ["'", "S"]);
    }

    #[test]
    fn starcoder_split_digits() {
        let w = words(PreTokenizer::Starcoder, "ab 123  x");
        assert_eq!(w, ["ab", " ", "1", "2", "3", " ", " x"]);
        // The number split ends the segment, so the spaces before it stay together.
        assert_eq!(words(PreTokenizer::Starcoder, "a  1"), ["a", "  ", "1"]);
    }

    #[test]
    fn qwen2_split() {
        let w = words(PreTokenizer::Qwen2, "Hello World's 12 \t\n\n  x;;\n\n'Re");
        assert_eq!(
            w,
            ["Hello", " World", "'s", " ", "1", "2", " \t\n\n", " ", " x", ";;\n\n", "'Re"]
        );
        assert_eq!(words(PreTokenizer::Qwen2, "  end"), [" ", " end"]);
        assert_eq!(words(PreTokenizer::Qwen2, "x  "), ["x", "  "]);
        assert_eq!(words(PreTokenizer::Qwen2, "\tword"), ["\tword"]);
        assert_eq!(words(PreTokenizer::Qwen2, "我想在apple"), ["我想在apple"]);
    }

    #[test]
    fn llama3_split() {
        let w = words(PreTokenizer::Llama3, "12345 I'M ok");
        assert_eq!(w, ["123", "45", " I", "'M", " ok"]);
    }

    #[test]
    fn default_split() {
        let w = words(PreTokenizer::Default, "a+b=12345, ok");
        assert_eq!(w, ["a", "+", "b", "=", "123", "45", ",", " ok"]);
    }

    /// Compare the scanners with a backtracking regex engine on strings drawn
    /// from an alphabet where Unicode versions cannot disagree.
    #[test]
    fn scanners_agree_with_regex_engine() {
        let alphabet: Vec<char> =
            " \t\n\r\x0b'sStTrReEvVmMlLdDaZ09½!.;$`~\u{a0}\u{3000}é我\u{301}\u{1f999}\u{200b}"
                .chars()
                .collect();
        let gpt2 = fancy_regex::Regex::new(
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        )
        .unwrap();
        let qwen2 = fancy_regex::Regex::new(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
        .unwrap();
        let llama3 = fancy_regex::Regex::new(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
        .unwrap();
        let by_regex = |re: &fancy_regex::Regex, text: &str| -> Vec<String> {
            re.find_iter(text)
                .map(|m| m.unwrap().as_str().to_string())
                .collect()
        };
        let mut state = 0x2545F4914F6CDD1Du64;
        for _ in 0..20000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 12) as usize;
            let mut s = String::new();
            let mut r = state;
            for _ in 0..len {
                r = r
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[((r >> 33) as usize) % alphabet.len()]);
            }
            assert_eq!(
                words(PreTokenizer::Gpt2, &s),
                by_regex(&gpt2, &s),
                "gpt2 {s:?}"
            );
            assert_eq!(
                words(PreTokenizer::Qwen2, &s),
                by_regex(&qwen2, &s),
                "qwen2 {s:?}"
            );
            assert_eq!(
                words(PreTokenizer::Llama3, &s),
                by_regex(&llama3, &s),
                "llama3 {s:?}"
            );
        }
    }
}
