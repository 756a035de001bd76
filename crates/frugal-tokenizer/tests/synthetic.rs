//! Tokenizers built from hand-made metadata: the algorithms and the error
//! paths, without any model file.

use frugal_formats::{MetaType, MetaValue, Metadata};
use frugal_tokenizer::{ChatTemplate, Tokenizer};

fn strings(items: &[&str]) -> MetaValue {
    MetaValue::string_array(items.iter().map(|s| s.to_string()).collect())
}

fn bpe_md(tokens: &[&str], merges: &[&str], pre: &str) -> Metadata {
    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    md.set("tokenizer.ggml.pre", MetaValue::String(pre.into()));
    md.set("tokenizer.ggml.tokens", strings(tokens));
    md.set("tokenizer.ggml.merges", strings(merges));
    md
}

#[test]
fn missing_tokenizer_is_named() {
    let err = Tokenizer::from_metadata(&Metadata::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model has no tokenizer: tokenizer.ggml.tokens missing"
    );
    let mut md = bpe_md(&["a"], &[], "gpt-2");
    md.remove("tokenizer.ggml.merges");
    let err = Tokenizer::from_metadata(&md).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
}

#[test]
fn unknown_kinds_are_named() {
    let mut md = bpe_md(&["a"], &[], "gpt-2");
    md.set("tokenizer.ggml.model", MetaValue::String("t5".into()));
    let err = Tokenizer::from_metadata(&md).unwrap_err();
    assert!(err.to_string().contains("`t5`"), "{err}");
    let md = bpe_md(&["a"], &[], "falcon");
    let err = Tokenizer::from_metadata(&md).unwrap_err();
    assert!(err.to_string().contains("`falcon`"), "{err}");
    let mut md = bpe_md(&["a"], &[], "gpt-2");
    md.set("tokenizer.ggml.tokens", MetaValue::U32(3));
    let err = Tokenizer::from_metadata(&md).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    let mut md = bpe_md(&["a"], &[], "gpt-2");
    md.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaType::String, vec![]),
    );
    assert!(Tokenizer::from_metadata(&md).is_err());
}

#[test]
fn bpe_merges_by_rank() {
    // Ġ is the byte alphabet's space.
    let tokens = ["a", "b", "c", "Ġ", "ab", "bc", "abc", "Ġa", "<|endoftext|>"];
    // "b c" outranks "a b": "abc" is built as a + bc, and "a bc" is no merge.
    let md = bpe_md(&tokens, &["b c", "a b", "ab c", "Ġ a"], "gpt-2");
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("abc", false, false), [0, 5]);
    assert_eq!(tok.encode("ab", false, false), [4]);
    assert_eq!(tok.encode("ab a", false, false), [4, 7]);
    assert_eq!(tok.decode(&[0, 5, 7]), "abc a");
    // gpt2 defaults: BOS/EOS 11 unless the metadata names them; EOG by name.
    assert_eq!(tok.eog_ids(), vec![8]);
    assert!(!tok.add_bos());

    let md = bpe_md(&tokens, &["a b", "ab c"], "gpt-2");
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("abc", false, false), [6]);
}

#[test]
fn bpe_merge_through_non_token() {
    // "x y" gives "xy", which is not a token; "xy z" gives the token "xyz".
    let tokens = ["x", "y", "z", "xyz"];
    let md = bpe_md(&tokens, &["x y", "xy z"], "gpt-2");
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("xyz", false, false), [3]);
    // A leftover "xy" falls back to its single characters.
    assert_eq!(tok.encode("xy", false, false), [0, 1]);
    // Bytes with no token at all are dropped, as in llama.cpp.
    assert_eq!(tok.encode("x?", false, false), [0]);
}

#[test]
fn spm_scores_and_byte_fallback() {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u32).map(|b| format!("<0x{b:02X}>")));
    for t in ["▁", "h", "i", "▁h", "hi", "▁hi"] {
        tokens.push(t.to_string());
    }
    let n = tokens.len();
    let mut scores = vec![0.0f32; n];
    let mut types = vec![1i32; n];
    types[0] = 2;
    types[1] = 3;
    types[2] = 3;
    for t in &mut types[3..259] {
        *t = 6;
    }
    // "▁h" scores above "hi": "▁hi" must come from "▁h" + "i".
    scores[n - 3] = -1.0; // ▁h
    scores[n - 2] = -2.0; // hi
    scores[n - 1] = -3.0; // ▁hi
    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", MetaValue::String("llama".into()));
    md.set(
        "tokenizer.ggml.tokens",
        MetaValue::string_array(tokens.clone()),
    );
    md.set(
        "tokenizer.ggml.scores",
        MetaValue::Array(
            MetaType::F32,
            scores.iter().map(|&s| MetaValue::F32(s)).collect(),
        ),
    );
    md.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(
            MetaType::I32,
            types.iter().map(|&t| MetaValue::I32(t)).collect(),
        ),
    );
    let tok = Tokenizer::from_metadata(&md).unwrap();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    assert_eq!(tok.encode("hi", true, false), [1, id("▁hi")]);
    // "é" has no token: its UTF-8 bytes become byte tokens.
    assert_eq!(
        tok.encode("hé", false, false),
        [id("▁h"), id("<0xC3>"), id("<0xA9>")]
    );
    assert_eq!(tok.decode(&tok.encode("hé hi", true, false)), " hé hi");
    assert_eq!(tok.decode(&tok.encode("hé hi", false, false)), "hé hi");

    md.set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false));
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("hi", false, false), [id("hi")]);
}

#[test]
fn chat_template_from_metadata() {
    let mut md = Metadata::default();
    assert_eq!(
        ChatTemplate::from_metadata(&md).unwrap(),
        ChatTemplate::Plain
    );
    md.set(
        "tokenizer.chat_template",
        MetaValue::String("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".into()),
    );
    assert_eq!(
        ChatTemplate::from_metadata(&md).unwrap(),
        ChatTemplate::chatml()
    );
    md.set("tokenizer.chat_template", MetaValue::U8(1));
    assert!(ChatTemplate::from_metadata(&md).is_err());
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<frugal_tokenizer::StreamDecoder>();
}

#[test]
fn llama2c_bad_input_never_panics() {
    for vocab in [0usize, 1, 3, usize::MAX] {
        let r = Tokenizer::from_llama2c_bytes(&[0, 0, 0, 0], vocab, "x");
        assert!(r.is_err(), "vocab_size {vocab}");
    }
    // A negative token length.
    let mut data = vec![0u8; 4];
    data.extend_from_slice(&0f32.to_le_bytes());
    data.extend_from_slice(&(-5i32).to_le_bytes());
    let err = Tokenizer::from_llama2c_bytes(&data, 1, "x").unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");
}
