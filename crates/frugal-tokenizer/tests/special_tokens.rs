//! Special tokens, BOS/EOS rules, end-of-generation sets and spot checks on
//! the real models' vocabularies. Expected ids come from llama.cpp (commit
//! c392e50) built at /tmp/llama.cpp:
//!
//! * plain text: `llama-tokenize -m MODEL.gguf -p "TEXT" --ids --no-bos --log-disable`
//! * flag combinations and detokenization: `llama_tokenize(vocab, text, len,
//!   .., add_special, parse_special)` / `llama_detokenize(vocab, ids, ..,
//!   remove_special, unparse_special)` / `llama_vocab_is_eog` called from a
//!   small C program linked against that build's libllama.so.

mod common;

use common::*;
use frugal_tokenizer::{PreTokenizer, StreamDecoder, Tokenizer, TokenizerKind};

fn smollm2() -> Tokenizer {
    gguf_tokenizer(&fetched_model("smollm2-135m"))
}

fn qwen() -> Tokenizer {
    gguf_tokenizer(&fetched_model("qwen2.5-0.5b"))
}

const SMOL_CHAT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn smollm2_spot_checks() {
    let tok = smollm2();
    assert_eq!(tok.kind(), TokenizerKind::Bpe(PreTokenizer::Starcoder)); // pre = "smollm"
    let cases: &[(&str, &[u32])] = &[
        (
            "Hello world! 1234 tokens, don't stop.",
            &[
                19556, 905, 17, 216, 33, 34, 35, 36, 17837, 28, 1326, 982, 2853, 30,
            ],
        ),
        (
            "The year 2024: 3.14159 × 10⁶ naïve café — ½ price!!",
            &[
                504, 713, 216, 34, 32, 34, 36, 42, 216, 35, 30, 33, 36, 33, 37, 41, 15493, 216, 33,
                32, 32571, 131, 15486, 46494, 37366, 1841, 216, 16738, 4319, 10095,
            ],
        ),
        (
            "  def f(x):\n      return x**2  # 42\n",
            &[
                216, 753, 275, 24, 104, 727, 3914, 1003, 1792, 828, 34, 216, 907, 216, 36, 34, 198,
            ],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&tok.encode(text, false, false), want, "{text:?}");
        assert_eq!(&tok.encode(text, false, true), want, "{text:?}");
        // add_bos is false for SmolLM2.
        assert_eq!(&tok.encode(text, true, true), want, "{text:?}");
        assert_eq!(tok.decode(want), *text);
    }
}

#[test]
fn smollm2_chat_prompt() {
    let tok = smollm2();
    let with_special: Vec<u32> = vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520,
        9531, 198,
    ];
    let plain: Vec<u32> = vec![
        44, 108, 306, 79, 3738, 108, 46, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511,
        308, 34519, 28, 7018, 411, 407, 19712, 8182, 44, 108, 306, 79, 486, 108, 46, 198, 44, 108,
        306, 79, 3738, 108, 46, 4093, 198, 1780, 314, 216, 34, 27, 34, 15137, 108, 306, 79, 486,
        108, 46, 198, 44, 108, 306, 79, 3738, 108, 46, 520, 9531, 198,
    ];
    assert_eq!(tok.encode(SMOL_CHAT, true, true), with_special);
    assert_eq!(tok.encode(SMOL_CHAT, false, false), plain);
    // Control tokens vanish from decode unless asked for.
    let text = tok.decode(&with_special);
    assert!(text.starts_with("system\nYou are"), "{text:?}");
    assert!(!text.contains("<|im_start|>"));
    let rendered = tok.detokenize(&with_special, false, true);
    assert_eq!(String::from_utf8(rendered).unwrap(), SMOL_CHAT);
    assert_eq!(tok.decode(&plain), SMOL_CHAT);

    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos());
    assert!(!tok.add_eos());
    assert_eq!(tok.eog_ids(), vec![0, 2]);
    assert!(tok.is_eog(2) && tok.is_eog(0) && !tok.is_eog(1));
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.token_to_piece(2), b"");
    assert_eq!(tok.token_to_piece_special(2, true), b"<|im_end|>");
}

#[test]
fn qwen_special_tokens() {
    let tok = qwen();
    assert_eq!(tok.kind(), TokenizerKind::Bpe(PreTokenizer::Qwen2));
    let text = "<|im_start|>user\nHello<|im_end|>\n";
    assert_eq!(
        tok.encode(text, false, false),
        [27, 91, 318, 4906, 91, 29, 872, 198, 9707, 27, 91, 318, 6213, 91, 397]
    );
    assert_eq!(
        tok.encode(text, false, true),
        [151644, 872, 198, 9707, 151645, 198]
    );
    // User-defined tokens are split out even without parse_special.
    assert_eq!(
        tok.encode("<tool_call>x</tool_call>", false, false),
        [151657, 87, 151658]
    );
    assert_eq!(tok.bos_id(), Some(151643));
    assert_eq!(tok.eos_id(), Some(151645));
    assert_eq!(tok.eot_id(), Some(151645));
    assert!(!tok.add_bos());
    // <|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>, <|file_sep|>
    assert_eq!(tok.eog_ids(), vec![151643, 151645, 151662, 151663, 151664]);
    assert_eq!(
        tok.decode(&[151644, 872, 198, 9707, 151645, 198]),
        "user\nHello\n"
    );
}

#[test]
fn spm_bos_and_special_parsing() {
    let tok = gguf_tokenizer(&vocab_file("llama-spm"));
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    let t = "<s>Hello</s> world";
    assert_eq!(
        tok.encode(t, false, false),
        [529, 29879, 29958, 10994, 829, 29879, 29958, 3186]
    );
    assert_eq!(tok.encode(t, false, true), [1, 15043, 2, 29871, 3186]);
    assert_eq!(tok.encode(t, true, true), [1, 1, 15043, 2, 29871, 3186]);
    assert_eq!(tok.encode(" Hello", false, false), [29871, 15043]);
    assert_eq!(tok.encode(" Hello", true, false), [1, 29871, 15043]);
    assert_eq!(tok.encode("", true, false), [1]);
    assert_eq!(tok.encode("", false, false), Vec::<u32>::new());
    assert!(tok.add_bos() && !tok.add_eos());
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.unk_id()),
        (Some(1), Some(2), Some(0))
    );
    assert_eq!(tok.eog_ids(), vec![2]);
    // llama_detokenize: the first token's leading space is dropped, but a BOS
    // in front takes that turn (so the space stays), as in llama.cpp.
    assert_eq!(tok.decode(&[15043]), "Hello");
    assert_eq!(tok.decode(&[1, 15043]), " Hello");
    assert_eq!(tok.decode(&[15043, 2]), "Hello");
    assert_eq!(tok.detokenize(&[1, 15043], false, true), b"<s> Hello");
    assert_eq!(tok.detokenize(&[1, 15043], true, false), b" Hello");
    // Byte tokens and out-of-range ids.
    assert_eq!(tok.token_to_piece(13), b"\n"); // <0x0A>
    assert_eq!(tok.token_to_piece(1), b"");
    assert_eq!(tok.token_to_piece_special(1, true), b"<s>");
    assert_eq!(tok.token_to_piece(u32::MAX), b"");
    assert_eq!(tok.decode(&[15043, 99_999_999, 3186]), "Hello world");
}

#[test]
fn gpt2_and_starcoder_specials() {
    let tok = gguf_tokenizer(&vocab_file("gpt-2"));
    assert_eq!(tok.kind(), TokenizerKind::Bpe(PreTokenizer::Gpt2));
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(50256), Some(50256)));
    assert_eq!(tok.eog_ids(), vec![50256]);
    assert_eq!(tok.encode("a<|endoftext|>", false, true), [64, 50256]);
    assert_eq!(
        tok.encode("a<|endoftext|>", false, false),
        [64, 27, 91, 437, 1659, 5239, 91, 29]
    );
    let tok = gguf_tokenizer(&vocab_file("starcoder"));
    assert_eq!(tok.kind(), TokenizerKind::Bpe(PreTokenizer::Starcoder));
    assert_eq!(tok.eog_ids(), vec![0]);
}

#[test]
fn streaming_pieces_rebuild_text() {
    let tok = qwen();
    let text = "naïve café 🦙 ünïcödé — 我想在apple工作";
    let ids = tok.encode(text, false, false);
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    let mut held_back = false;
    for &id in &ids {
        let piece = tok.token_to_piece(id);
        let s = dec.push_token(&tok, id);
        held_back |= std::str::from_utf8(&piece).is_err();
        out.push_str(&s);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);
    assert!(held_back, "some token should split a character");
}
