//! Corrupted GGUF input must give an error naming the field, never a panic
//! or a huge allocation.

use frugal_formats::gguf::{parse_header, GgufFile, GgufWriter};
use frugal_formats::{GgmlType, MetaType, MetaValue};

/// A small valid file: a few metadata types and three tensors.
fn valid() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_meta("general.architecture", MetaValue::String("llama".into()));
    w.set_alignment(32);
    w.set_meta("k.a1", MetaValue::U32(7));
    w.set_meta("k.a2", MetaValue::F32(0.5));
    w.set_meta(
        "tokenizer.ggml.tokens",
        MetaValue::string_array(vec!["<s>".into(), "▁hi".into(), "x".into()]),
    );
    w.set_meta(
        "k.nested",
        MetaValue::Array(
            MetaType::Array,
            vec![MetaValue::Array(MetaType::I8, vec![MetaValue::I8(-1)])],
        ),
    );
    w.add_tensor("tok_a", GgmlType::F32, vec![4, 3], vec![1u8; 48])
        .unwrap();
    w.add_tensor("tok_b", GgmlType::Q8_0, vec![32, 2], vec![2u8; 68])
        .unwrap();
    w.add_tensor("tok_c", GgmlType::F16, vec![5], vec![3u8; 10])
        .unwrap();
    w.to_bytes().unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:?} not in file"))
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Offset of a tensor info's fields: (n_dims, dims[0], type, offset).
fn tensor_fields(b: &[u8], name: &str, n_dims: usize) -> (usize, usize, usize, usize) {
    let n = find(b, name.as_bytes()) + name.len();
    (n, n + 4, n + 4 + 8 * n_dims, n + 4 + 8 * n_dims + 4)
}

/// Offset of a metadata key's value type (just after the key string).
fn value_at(b: &[u8], key: &str) -> usize {
    find(b, key.as_bytes()) + key.len()
}

fn err(b: &[u8]) -> String {
    match parse_header(b) {
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
fn the_base_file_is_valid() {
    let h = parse_header(&valid()).unwrap();
    assert_eq!(h.tensors.len(), 3);
    assert_eq!(h.metadata.entries.len(), 6);
}

#[test]
fn every_truncation_fails() {
    let b = valid();
    let h = parse_header(&b).unwrap();
    let last = h.tensors.last().unwrap();
    let data_end = h.data_offset + (last.offset + last.size) as usize;
    // Every cut before the end of the last tensor's bytes: the whole header
    // and every byte of the data (only the final padding may be dropped).
    for cut in 0..data_end {
        assert!(parse_header(&b[..cut]).is_err(), "cut at {cut} parsed");
    }
    assert!(parse_header(&b[..data_end]).is_ok());
    // Cuts inside the header report the truncation, with its offset.
    let e = err(&b[..6]);
    assert!(
        e.contains("truncated") && e.contains("version") && e.contains("offset 4"),
        "{e}"
    );
    // Cuts after the counts are caught by the count bound or the read itself.
    let e = err(&b[..30]);
    assert!(e.contains("tensor_count"), "{e}");
}

#[test]
fn truncated_file_on_disk_is_an_error() {
    let b = valid();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("cut.gguf") && e.contains("tok_"), "{e}");
    std::fs::write(&p, b"").unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");
}

#[test]
fn wrong_magic() {
    let mut b = valid();
    b[0..4].copy_from_slice(b"GGML");
    assert_err_mentions(&b, &["magic"]);
}

#[test]
fn unsupported_versions() {
    let mut b = valid();
    put_u32(&mut b, 4, 1);
    assert_err_mentions(&b, &["version", "1"]);
    put_u32(&mut b, 4, 4);
    assert_err_mentions(&b, &["version", "4"]);
    put_u32(&mut b, 4, 3u32.swap_bytes());
    assert_err_mentions(&b, &["version", "big-endian"]);
    put_u32(&mut b, 4, 2); // v2 has the same layout
    assert!(parse_header(&b).is_ok());
}

#[test]
fn huge_counts() {
    for v in [u64::MAX, u64::MAX / 24 + 1, 1 << 40, 1000] {
        let mut b = valid();
        put_u64(&mut b, 8, v);
        assert_err_mentions(&b, &["tensor_count"]);
        let mut b = valid();
        put_u64(&mut b, 16, v);
        assert_err_mentions(&b, &["kv_count"]);
    }
    // Fewer tensors than stored leaves the data unaccounted for but is not
    // an error; more is (the next info would be read from garbage).
    let mut b = valid();
    put_u64(&mut b, 8, 4);
    assert!(parse_header(&b).is_err());
}

#[test]
fn huge_string_lengths() {
    let mut b = valid();
    put_u64(&mut b, 24, u64::MAX); // first key's length
    assert_err_mentions(&b, &["metadata key #0", "string length"]);
    let mut b = valid();
    let at = value_at(&b, "general.architecture") + 4; // string value length
    put_u64(&mut b, at, u64::MAX - 3);
    assert_err_mentions(&b, &["general.architecture", "string length"]);
    let mut b = valid();
    let at = find(&b, b"tok_b") - 8; // tensor name length
    put_u64(&mut b, at, 1 << 62);
    assert_err_mentions(&b, &["tensor #1 name", "string length"]);
}

#[test]
fn huge_array_lengths() {
    for v in [u64::MAX, 1 << 61, 1 << 32] {
        let mut b = valid();
        let at = value_at(&b, "tokenizer.ggml.tokens") + 4 + 4; // after type, elem type
        put_u64(&mut b, at, v);
        assert_err_mentions(&b, &["tokenizer.ggml.tokens", "array length"]);
        let mut b = valid();
        let at = value_at(&b, "k.nested") + 4 + 4 + 8 + 4; // inner array's count
        put_u64(&mut b, at, v);
        assert_err_mentions(&b, &["k.nested", "array length"]);
    }
}

#[test]
fn bad_metadata_types() {
    let mut b = valid();
    let at = value_at(&b, "k.a1");
    put_u32(&mut b, at, 13);
    assert_err_mentions(&b, &["k.a1", "type", "13"]);
    let mut b = valid();
    let at = value_at(&b, "tokenizer.ggml.tokens") + 4;
    put_u32(&mut b, at, 77);
    assert_err_mentions(&b, &["tokenizer.ggml.tokens", "77"]);
}

#[test]
fn invalid_utf8() {
    let mut b = valid();
    let at = find(&b, "▁hi".as_bytes());
    b[at] = 0xff;
    assert_err_mentions(&b, &["tokenizer.ggml.tokens", "UTF-8"]);
}

#[test]
fn duplicate_keys_and_tensor_names() {
    let mut b = valid();
    let at = find(&b, b"k.a2");
    b[at + 3] = b'1';
    assert_err_mentions(&b, &["k.a1", "duplicate"]);
    let mut b = valid();
    let at = find(&b, b"tok_b");
    b[at + 4] = b'a';
    assert_err_mentions(&b, &["tok_a", "duplicate"]);
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let mut b = valid();
        let at = value_at(&b, "general.alignment") + 4;
        put_u32(&mut b, at, a);
        assert_err_mentions(&b, &["general.alignment", "power of two"]);
    }
}

#[test]
fn tensor_offsets() {
    let (_, _, _, off) = tensor_fields(&valid(), "tok_b", 2);
    let mut b = valid();
    put_u64(&mut b, off, 1 << 40);
    assert_err_mentions(&b, &["tok_b", "offset", "outside"]);
    let mut b = valid();
    put_u64(&mut b, off, u64::MAX - 31);
    assert_err_mentions(&b, &["tok_b", "offset"]);
    let mut b = valid();
    put_u64(&mut b, off, 64 + 1);
    assert_err_mentions(&b, &["tok_b", "offset", "alignment"]);
    // The last tensor's data may not run past the end of the file.
    let (_, _, _, off) = tensor_fields(&valid(), "tok_c", 1);
    let mut b = valid();
    let len = b.len() as u64;
    put_u64(&mut b, off, len.div_ceil(32) * 32);
    assert_err_mentions(&b, &["tok_c", "outside"]);
}

#[test]
fn bad_type_id() {
    let (_, _, ty, _) = tensor_fields(&valid(), "tok_a", 2);
    for id in [4u32, 99, u32::MAX] {
        let mut b = valid();
        put_u32(&mut b, ty, id);
        assert_err_mentions(&b, &["tok_a", "type", &id.to_string()]);
    }
}

#[test]
fn bad_dims() {
    let (nd, d0, _, _) = tensor_fields(&valid(), "tok_a", 2);
    // Overflowing element count.
    let mut b = valid();
    put_u64(&mut b, d0, 1 << 32);
    put_u64(&mut b, d0 + 8, 1 << 32);
    assert_err_mentions(&b, &["tok_a", "overflow"]);
    let mut b = valid();
    put_u64(&mut b, d0 + 8, u64::MAX);
    assert_err_mentions(&b, &["tok_a", "overflow"]);
    // Byte size overflow with an element count that still fits.
    let mut b = valid();
    put_u64(&mut b, d0, 1 << 31);
    put_u64(&mut b, d0 + 8, 1 << 31);
    assert!(parse_header(&b).is_err());
    // A zero dimension.
    let mut b = valid();
    put_u64(&mut b, d0 + 8, 0);
    assert_err_mentions(&b, &["tok_a", "dims[1]", "zero"]);
    // Too many / zero dimensions.
    for n in [0u32, 5, u32::MAX] {
        let mut b = valid();
        put_u32(&mut b, nd, n);
        assert_err_mentions(&b, &["tok_a", "n_dims"]);
    }
    // A row that is not a whole number of Q8_0 blocks.
    let (_, d0, _, _) = tensor_fields(&valid(), "tok_b", 2);
    let mut b = valid();
    put_u64(&mut b, d0, 33);
    assert_err_mentions(&b, &["tok_b", "block"]);
}

#[test]
fn deeply_nested_arrays_are_refused() {
    // Hand-built header: one key whose value nests 10,000 arrays, which would
    // overflow the stack if followed recursively.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(b"deep");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..10_000 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&[0; 64]);
    assert_err_mentions(&b, &["deep", "nested"]);
}
