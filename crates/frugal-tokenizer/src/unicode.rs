//! Unicode helpers shared by the tokenizers: per-codepoint category flags (as
//! llama.cpp classifies codepoints for its pre-tokenizers) and GPT-2's
//! byte-to-unicode alphabet.
//!
//! The category data comes from `regex-syntax`'s Unicode tables, restricted to
//! the characters assigned by Unicode 15.1 (the version of the tables llama.cpp
//! was generated from): a codepoint assigned later counts as unassigned there.

use std::sync::OnceLock;

/// Codepoint flags. A codepoint has exactly one category bit; whitespace is
/// an extra bit on top.
pub(crate) const UNDEFINED: u16 = 0x0001;
pub(crate) const NUMBER: u16 = 0x0002;
pub(crate) const LETTER: u16 = 0x0004;
pub(crate) const SEPARATOR: u16 = 0x0008;
pub(crate) const MARK: u16 = 0x0010;
pub(crate) const PUNCTUATION: u16 = 0x0020;
pub(crate) const SYMBOL: u16 = 0x0040;
pub(crate) const CONTROL: u16 = 0x0080;
pub(crate) const WHITESPACE: u16 = 0x0100;

/// Unicode version whose assigned characters count as defined.
const UNICODE_AGE: &str = "15.1";

/// Codepoints below this are looked up in a flat table; above, by binary search.
const DIRECT: usize = 0x1_0000;

struct Tables {
    direct: Vec<u16>,
    /// Sorted, non-overlapping `(first, last, flags)` ranges for codepoints >= DIRECT;
    /// anything not covered is UNDEFINED.
    ranges: Vec<(u32, u32, u16)>,
}

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .unwrap_or_else(|e| panic!("built-in Unicode class {pattern} failed to parse: {e}"));
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => cls
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("built-in Unicode class {pattern} is not a class: {other:?}"),
    }
}

fn build_tables() -> Tables {
    let mut flags = vec![UNDEFINED; 0x11_0000];
    // Unassigned codepoints (Cn, noncharacters included) stay UNDEFINED.
    let cats = [
        (r"\p{N}", NUMBER),
        (r"\p{L}", LETTER),
        (r"\p{Z}", SEPARATOR),
        (r"\p{M}", MARK),
        (r"\p{P}", PUNCTUATION),
        (r"\p{S}", SYMBOL),
        (r"\p{Cc}\p{Cf}\p{Co}", CONTROL),
    ];
    for (class, flag) in cats {
        let pattern = format!(r"[[{class}]&&\p{{Age={UNICODE_AGE}}}]");
        for (a, b) in class_ranges(&pattern) {
            for f in &mut flags[a as usize..=b as usize] {
                *f = flag;
            }
        }
    }
    // Surrogates are not chars, so the classes above leave them out; Unicode
    // gives them category Cs (other). They never occur in a &str anyway.
    for f in &mut flags[0xD800..=0xDFFF] {
        *f = CONTROL;
    }
    for (a, b) in class_ranges(r"\p{White_Space}") {
        for f in &mut flags[a as usize..=b as usize] {
            *f |= WHITESPACE;
        }
    }
    let direct = flags[..DIRECT].to_vec();
    let mut ranges: Vec<(u32, u32, u16)> = Vec::new();
    for (cp, &f) in flags.iter().enumerate().skip(DIRECT) {
        let cp = cp as u32;
        match ranges.last_mut() {
            Some(last) if last.2 == f && last.1 + 1 == cp => last.1 = cp,
            _ => ranges.push((cp, cp, f)),
        }
    }
    ranges.retain(|r| r.2 != UNDEFINED);
    Tables { direct, ranges }
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(build_tables)
}

/// The flags of a codepoint (UNDEFINED for unassigned ones).
#[inline]
pub(crate) fn flags(cp: u32) -> u16 {
    let t = tables();
    if (cp as usize) < DIRECT {
        return t.direct[cp as usize];
    }
    match t.ranges.binary_search_by(|r| {
        if r.1 < cp {
            std::cmp::Ordering::Less
        } else if r.0 > cp {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => t.ranges[i].2,
        Err(_) => UNDEFINED,
    }
}

/// GPT-2's byte-level alphabet: every byte is shown as a printable codepoint.
/// Printable Latin-1 bytes stand for themselves; the others (controls, space,
/// 0x7F-0xA0, 0xAD) are moved to U+0100 upwards in byte order.
pub(crate) fn byte_to_char(b: u8) -> char {
    byte_tables().0[b as usize]
}

/// The inverse of [`byte_to_char`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x200 {
        let b = byte_tables().1[cp as usize];
        if b >= 0 {
            return Some(b as u8);
        }
    }
    None
}

fn is_gpt2_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

fn byte_tables() -> &'static ([char; 256], [i16; 0x200]) {
    static T: OnceLock<([char; 256], [i16; 0x200])> = OnceLock::new();
    T.get_or_init(|| {
        let mut fwd = ['\0'; 256];
        let mut inv = [-1i16; 0x200];
        let mut next = 0x100u32;
        for b in 0..=255u8 {
            let cp = if is_gpt2_printable(b) {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            let c = char::from_u32(cp).expect("byte alphabet stays below U+0200");
            fwd[b as usize] = c;
            inv[cp as usize] = b as i16;
        }
        (fwd, inv)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_of_known_codepoints() {
        assert_eq!(flags('a' as u32), LETTER);
        assert_eq!(flags('Z' as u32), LETTER);
        assert_eq!(flags('7' as u32), NUMBER);
        assert_eq!(flags(' ' as u32), SEPARATOR | WHITESPACE);
        assert_eq!(flags('\n' as u32), CONTROL | WHITESPACE);
        assert_eq!(flags(0x1C), CONTROL); // not White_Space
        assert_eq!(flags('!' as u32), PUNCTUATION);
        assert_eq!(flags('$' as u32), SYMBOL);
        assert_eq!(flags('`' as u32), SYMBOL);
        assert_eq!(flags(0xBD), NUMBER); // ½
        assert_eq!(flags(0x0301), MARK);
        assert_eq!(flags(0x0378), UNDEFINED);
        assert_eq!(flags(0x3000), SEPARATOR | WHITESPACE);
        assert_eq!(flags(0x85), CONTROL | WHITESPACE);
        assert_eq!(flags(0x4E00), LETTER);
        assert_eq!(flags(0x1F999), SYMBOL); // 🦙
        assert_eq!(flags(0xE000), CONTROL); // private use
        assert_eq!(flags(0x10FFFF), UNDEFINED); // noncharacter
                                                // Garay (U+10D40..) was added in Unicode 16.0: unassigned for llama.cpp's tables.
        assert_eq!(flags(0x10D50), UNDEFINED);
    }

    #[test]
    fn byte_alphabet_round_trips() {
        assert_eq!(byte_to_char(b'!'), '!');
        assert_eq!(byte_to_char(b' '), '\u{120}'); // Ġ
        assert_eq!(byte_to_char(b'\n'), '\u{10A}'); // Ċ
        assert_eq!(byte_to_char(0), '\u{100}');
        assert_eq!(byte_to_char(0xAD), '\u{143}');
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('€'), None);
    }
}
