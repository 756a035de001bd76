//! Lying safetensors headers give clear errors, never panics.

use frugal_formats::hf::{parse_safetensors_header, read_hf_dir};

/// A file from a JSON header and a data section, with the 8-byte length prefix.
fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&vec![7u8; data_len]);
    b
}

const VALID: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#;

fn err(b: &[u8]) -> String {
    match parse_safetensors_header(b) {
        Ok(h) => panic!("corrupt file parsed: {h:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_err_mentions(b: &[u8], words: &[&str]) {
    let e = err(b);
    for w in words {
        assert!(e.contains(w), "error `{e}` does not mention `{w}`");
    }
}

#[test]
fn valid_file_parses() {
    let b = file(VALID, 32);
    let h = parse_safetensors_header(&b).unwrap();
    let start = 8 + VALID.len();
    assert_eq!(h.data_start, start);
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[0].name, "a");
    assert_eq!(h.tensors[0].shape, vec![2, 3]);
    assert_eq!(h.tensors[0].range, start..start + 24);
    assert_eq!(h.tensors[1].range, start + 24..start + 32);
    assert_eq!(h.metadata.unwrap()["format"], "pt");
}

#[test]
fn header_length_lies() {
    let mut b = file(VALID, 32);
    let real = b.len() as u64;
    b[..8].copy_from_slice(&real.to_le_bytes());
    assert_err_mentions(&b, &["header length"]);
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_err_mentions(&b, &["header length"]);
    b[..8].copy_from_slice(&(VALID.len() as u64 - 1).to_le_bytes());
    assert_err_mentions(&b, &["header JSON"]);
    b[..8].copy_from_slice(&0u64.to_le_bytes());
    assert_err_mentions(&b, &["header JSON"]);
    assert_err_mentions(&[1, 2, 3], &["header length", "truncated"]);
}

#[test]
fn every_truncation_fails() {
    let b = file(VALID, 32);
    for cut in 0..b.len() {
        assert!(parse_safetensors_header(&b[..cut]).is_err(), "cut at {cut}");
    }
    // Extra bytes after the data are also refused (the ranges must tile it).
    let mut long = b.clone();
    long.push(0);
    assert_err_mentions(&long, &["data section"]);
}

#[test]
fn offsets_outside_the_data() {
    let h = VALID.replace("[24,32]", "[24,4000]");
    assert_err_mentions(&file(&h, 32), &["`b`"]);
    let h = VALID.replace("[24,32]", "[24,18446744073709551615]");
    assert_err_mentions(&file(&h, 32), &["`b`"]);
    let h = VALID.replace("[0,24]", "[-8,24]");
    assert_err_mentions(&file(&h, 32), &["`a`"]);
    let h = VALID.replace("[24,32]", "[32,24]");
    assert_err_mentions(&file(&h, 32), &["`b`"]);
}

#[test]
fn dtype_shape_and_range_disagree() {
    let h = VALID.replace("[2,3]", "[2,4]");
    assert_err_mentions(&file(&h, 32), &["`a`", "shape", "[2, 4]"]);
    let h = VALID.replace("\"BF16\"", "\"F32\"");
    assert_err_mentions(&file(&h, 32), &["`b`", "F32"]);
    let h = VALID.replace("[2,3]", "[4294967296,4294967296,4294967296]");
    assert_err_mentions(&file(&h, 32), &["`a`"]);
    let h = VALID.replace("\"BF16\"", "\"Q4_0\"");
    assert_err_mentions(&file(&h, 32), &["`b`"]);
    let h = VALID.replace("\"shape\":[4],", "");
    assert_err_mentions(&file(&h, 32), &["`b`", "shape"]);
}

#[test]
fn overlaps_and_gaps() {
    // b overlaps a.
    let h = VALID.replace("[24,32]", "[16,24]");
    assert_err_mentions(&file(&h, 32), &["data_offsets"]);
    // A gap between a and b.
    let h = VALID.replace("[24,32]", "[28,36]");
    assert_err_mentions(&file(&h, 36), &["`b`", "data_offsets"]);
}

#[test]
fn malformed_json() {
    assert_err_mentions(&file("[1,2]", 0), &["header JSON"]);
    assert_err_mentions(&file("{\"a\":", 0), &["header JSON"]);
    assert_err_mentions(&file("{\"a\":3}", 0), &["`a`"]);
    assert_err_mentions(&file("{\"__metadata__\":{\"x\":1}}", 0), &["__metadata__"]);
    let mut b = file(VALID, 32);
    b[10] = 0xff;
    assert_err_mentions(&b, &["header JSON"]);
}

#[test]
fn a_lying_file_in_a_folder_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":64}"#,
    )
    .unwrap();
    let h = VALID.replace("[24,32]", "[24,4000]");
    std::fs::write(dir.path().join("model.safetensors"), file(&h, 32)).unwrap();
    let e = read_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("`b`"), "{e}");
}
