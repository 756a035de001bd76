//! Streaming detokenization: token pieces are raw bytes and a UTF-8 character
//! may be split across tokens, so hold back an incomplete tail until it is
//! complete.

use crate::Tokenizer;

/// Buffers the bytes of an incomplete UTF-8 character between pieces.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    prev: Option<u32>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Add raw bytes; returns the text that is now complete. Bytes that can
    /// never become valid UTF-8 come out as U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        // Invalid sequence: replace it and go on.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        // Incomplete character at the end: keep it for later.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Add the piece of a generated token (control tokens render as nothing).
    pub fn push_token(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        let piece = tokenizer.stream_piece(self.prev, id);
        self.prev = Some(id);
        self.push(&piece)
    }

    /// The held-back bytes, if any, as text (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.prev = None;
        s
    }

    /// Whether bytes are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_characters_across_pushes() {
        let mut d = StreamDecoder::new();
        let bytes = "a€🦙b".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&d.push(&[*b]));
        }
        assert_eq!(out, "a€🦙b");
        assert!(!d.has_pending());

        assert_eq!(d.push(&[0xE2, 0x82]), "");
        assert!(d.has_pending());
        assert_eq!(d.push(&[0xAC, b'!']), "€!");

        assert_eq!(d.push(&[0xFF, b'x']), "\u{FFFD}x");
        assert_eq!(d.push(&[0xF0, 0x9F]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(d.finish(), "");
    }
}
