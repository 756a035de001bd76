//! llama2.c's tokenizer on stories260K's `tok512.bin`. Expected ids come from
//! llama2.c's own `encode` (run.c at karpathy/llama2.c 350e04f, compiled with
//! `-DTESTING` into a small driver that calls `encode(t, text, 1, 0, ..)` and
//! prints the ids and the `decode`d pieces).

mod common;

use common::*;
use frugal_tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};

fn tok512() -> Tokenizer {
    Tokenizer::from_llama2c_file(shared_file("models/stories260K/tok512.bin"), 512).unwrap()
}

#[test]
fn encode_matches_run_c() {
    let tok = tok512();
    assert_eq!(tok.kind(), TokenizerKind::Llama2c);
    assert_eq!(tok.vocab_size(), 512);
    let cases: &[(&str, &[u32])] = &[
        ("Once upon a time", &[1, 403, 407, 261, 378]),
        (
            "Lily's mom said, \"Let's go!\"",
            &[
                1, 317, 439, 419, 357, 336, 432, 313, 438, 316, 439, 419, 298, 414, 443, 436,
            ],
        ),
        ("", &[1]),
        // é is a token; 我 is not, so it is spelled as byte tokens (byte + 3).
        ("héllo 我", &[1, 270, 485, 306, 414, 410, 233, 139, 148]),
        ("a\nb", &[1, 261, 13, 430]),
    ];
    for (text, want) in cases {
        assert_eq!(&tok.encode(text, true, false), want, "{text:?}");
        assert_eq!(&tok.encode(text, false, false), &want[1..], "{text:?}");
        // After BOS the piece loses its leading space; <0xXX> is the raw byte.
        assert_eq!(tok.decode(want), *text, "{text:?}");
    }
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.add_bos() && !tok.add_eos());
    assert!(tok.is_eog(1) && tok.is_eog(2) && !tok.is_eog(403));
    assert_eq!(tok.token_text(403), Some(" Once"));
    assert_eq!(tok.token_id(" Once"), Some(403));
}

#[test]
fn decode_rules() {
    let tok = tok512();
    // The leading space goes only right after BOS.
    assert_eq!(tok.decode(&[403, 403]), " Once Once");
    assert_eq!(tok.decode(&[1, 403, 403]), "Once Once");
    assert_eq!(tok.token_to_piece(13), b"\n"); // <0x0A>
    assert_eq!(tok.token_to_piece(1), b"");
    assert_eq!(tok.token_to_piece_special(1, true), b"\n<s>\n");
    assert_eq!(tok.decode(&[1, 403, 9999, 2]), "Once");
    // A split character comes out whole from the stream decoder.
    let ids = tok.encode("我 Once", true, false);
    let mut d = StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&d.push_token(&tok, id));
    }
    out.push_str(&d.finish());
    assert_eq!(out, "我 Once");
}

#[test]
fn reference_story_round_trips() {
    let tok = tok512();
    let text =
        std::fs::read_to_string(shared_file("models/stories260K/expected_greedy_200.txt")).unwrap();
    let ids = tok.encode(&text, true, false);
    assert_eq!(ids[0], 1);
    assert!(ids.len() < text.len() / 2, "merges should shorten the text");
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn truncated_file_is_an_error() {
    let data = std::fs::read(shared_file("models/stories260K/tok512.bin")).unwrap();
    let err = Tokenizer::from_llama2c_bytes(&data[..1000], 512, "tok512.bin").unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = Tokenizer::from_llama2c_bytes(&data, 513, "tok512.bin").unwrap_err();
    assert!(err.to_string().contains("token 512"), "{err}");
}
