//! GGUF writer → reader round trips.

use frugal_formats::gguf::{parse_header, GgufFile, GgufWriter, GGUF_DEFAULT_ALIGNMENT};
use frugal_formats::{GgmlType, MetaType, MetaValue, Metadata};

/// Deterministic bytes (xorshift) so failures reproduce.
fn pseudo_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn every_value_type() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-5)),
        ("t.u16", MetaValue::U16(60000)),
        ("t.i16", MetaValue::I16(-30000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.f32", MetaValue::F32(1.5e-5)),
        ("t.bool", MetaValue::Bool(true)),
        ("t.string", MetaValue::String("héllo ▁world".into())),
        ("t.u64", MetaValue::U64(u64::MAX)),
        ("t.i64", MetaValue::I64(i64::MIN)),
        ("t.f64", MetaValue::F64(-0.25)),
        (
            "t.strings",
            MetaValue::string_array(vec!["<s>".into(), "".into(), "▁a".into()]),
        ),
        ("t.empty", MetaValue::Array(MetaType::F32, vec![])),
        (
            "t.ints",
            MetaValue::Array(MetaType::I32, vec![MetaValue::I32(1), MetaValue::I32(-1)]),
        ),
        (
            "t.nested",
            MetaValue::Array(
                MetaType::Array,
                vec![
                    MetaValue::Array(MetaType::U8, vec![MetaValue::U8(1), MetaValue::U8(2)]),
                    MetaValue::Array(MetaType::String, vec![]),
                ],
            ),
        ),
    ]
}

type Spec = (&'static str, GgmlType, Vec<u64>);

fn specs() -> Vec<Spec> {
    vec![
        ("token_embd.weight", GgmlType::F32, vec![8, 5]),
        ("blk.0.attn_q.weight", GgmlType::Q4_0, vec![64, 3]),
        ("blk.0.attn_norm.weight", GgmlType::F16, vec![7]),
        ("blk.0.ffn_up.weight", GgmlType::Q4K, vec![256, 2, 1]),
        ("blk.0.ffn_down.weight", GgmlType::BF16, vec![3, 2, 2, 2]),
        ("output.weight", GgmlType::Q8_0, vec![32, 1]),
    ]
}

fn spec_bytes(ty: GgmlType, dims: &[u64], seed: u64) -> Vec<u8> {
    let n = ty.row_bytes(dims[0]).unwrap() * dims[1..].iter().product::<u64>();
    pseudo_bytes(n as usize, seed)
}

fn build(alignment: Option<u32>) -> (Vec<u8>, Vec<(Spec, Vec<u8>)>) {
    let mut w = GgufWriter::new();
    for (k, v) in every_value_type() {
        w.set_meta(k, v);
    }
    if let Some(a) = alignment {
        w.set_alignment(a);
    }
    let mut tensors = vec![];
    for (i, spec) in specs().into_iter().enumerate() {
        let data = spec_bytes(spec.1, &spec.2, i as u64 + 1);
        w.add_tensor(spec.0, spec.1, spec.2.clone(), data.clone())
            .unwrap();
        tensors.push((spec, data));
    }
    (w.to_bytes().unwrap(), tensors)
}

/// Reading a file into memory gives the same tensors as mapping it, and
/// releasing a resident tensor's pages (as a layer-by-layer pass does)
/// cannot wipe it: those pages have no file to be read back from.
#[test]
fn read_into_memory_matches_the_mapping_and_keeps_its_pages() {
    let (bytes, tensors) = build(Some(64));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let (mapped, resident) = (
        GgufFile::open(&path).unwrap(),
        GgufFile::read_into_memory(&path).unwrap(),
    );
    assert_eq!(resident.metadata, mapped.metadata);
    for ((name, _, _), data) in &tensors {
        let t = resident.tensor(name).unwrap();
        assert!(matches!(t.data, frugal_formats::TensorData::Resident(..)));
        t.release_pages();
        assert_eq!(t.bytes(), &data[..], "{name}");
        assert_eq!(t.bytes(), mapped.tensor(name).unwrap().bytes());
    }
    // A truncated file is an error here too, not a panic.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = GgufFile::read_into_memory(&path).unwrap_err().to_string();
    assert!(err.contains("m.gguf"), "{err}");
}

#[test]
fn round_trip_every_type_through_a_file() {
    for alignment in [None, Some(1), Some(64), Some(4096)] {
        let (bytes, tensors) = build(alignment);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        let a = alignment.map_or(GGUF_DEFAULT_ALIGNMENT, |a| a as usize);
        assert_eq!(f.alignment, a);
        assert_eq!(f.data_offset % a, 0);

        let mut want = Metadata::default();
        for (k, v) in every_value_type() {
            want.set(k, v);
        }
        if let Some(a) = alignment {
            want.set("general.alignment", MetaValue::U32(a));
        }
        assert_eq!(f.metadata, want);

        assert_eq!(f.tensors.len(), tensors.len());
        let mut expected_offset = 0u64;
        for ((name, ty, dims), data) in &tensors {
            let info = f.tensor_info(name).unwrap();
            assert_eq!((info.ty, &info.dims), (*ty, dims));
            assert_eq!(
                info.offset, expected_offset,
                "llama.cpp packs tensors in order"
            );
            expected_offset = (info.offset + info.size).div_ceil(a as u64) * a as u64;
            let t = f.tensor(name).unwrap();
            assert_eq!(t.bytes(), &data[..]);
            assert_eq!(t.dims, dims.iter().map(|&d| d as usize).collect::<Vec<_>>());
            assert!(matches!(t.data, frugal_formats::TensorData::Mapped(..)));
        }
        // The file ends with the last tensor's padding, as llama.cpp writes it.
        assert_eq!(bytes.len() as u64, f.data_offset as u64 + expected_offset);

        // Re-writing what we read reproduces the file byte for byte.
        let again = GgufWriter::from_gguf(&f).unwrap().to_bytes().unwrap();
        assert!(again == bytes, "write(read(file)) differs");
        let src = f.clone().into_source();
        let again = GgufWriter::from_source(&src).unwrap().to_bytes().unwrap();
        assert!(again == bytes, "write(into_source(file)) differs");
        assert_eq!(f.tensor_views().len(), tensors.len());
        assert!(f.tensor("missing").is_none());
    }
}

#[test]
fn write_to_path_is_atomic_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let mut w = GgufWriter::new();
    w.set_meta("general.architecture", MetaValue::String("llama".into()));
    w.add_tensor("a", GgmlType::F32, vec![3], vec![0u8; 12])
        .unwrap();
    w.write(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "temporary file left behind");
    assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes().unwrap());

    // A failing write (bad alignment type) leaves neither file nor temp file.
    let bad = dir.path().join("bad.gguf");
    w.set_meta("general.alignment", MetaValue::U64(32));
    let err = w.write(&bad).unwrap_err().to_string();
    assert!(err.contains("general.alignment"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn writer_validates_tensors() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("x", GgmlType::F32, vec![4], vec![0u8; 15])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`x`") && e.contains("16"), "{e}");
    let e = w
        .add_tensor("q", GgmlType::Q4_0, vec![33], vec![0u8; 18])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`q`") && e.contains("block"), "{e}");
    let e = w
        .add_tensor("z", GgmlType::F32, vec![4, 0], vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`z`") && e.contains("zero"), "{e}");
    let e = w
        .add_tensor("d", GgmlType::F32, vec![1; 5], vec![0u8; 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`d`") && e.contains("dimensions"), "{e}");
    w.add_tensor("ok", GgmlType::F32, vec![1], vec![0u8; 4])
        .unwrap();
    let e = w
        .add_tensor("ok", GgmlType::F32, vec![1], vec![0u8; 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate"), "{e}");

    w.set_meta(
        "bad.array",
        MetaValue::Array(MetaType::U8, vec![MetaValue::U16(1)]),
    );
    let e = w.to_bytes().unwrap_err().to_string();
    assert!(e.contains("bad.array"), "{e}");
}

#[test]
fn large_vocabulary_parses_quickly() {
    // Real models carry ~150k token strings; parsing must stay linear.
    let n = 150_000;
    let tokens: Vec<String> = (0..n).map(|i| format!("tok{i}")).collect();
    let mut w = GgufWriter::new();
    w.set_meta("tokenizer.ggml.tokens", MetaValue::string_array(tokens));
    w.set_meta(
        "tokenizer.ggml.scores",
        MetaValue::Array(
            MetaType::F32,
            (0..n).map(|i| MetaValue::F32(i as f32)).collect(),
        ),
    );
    let bytes = w.to_bytes().unwrap();
    let t0 = std::time::Instant::now();
    let h = parse_header(&bytes).unwrap();
    let dt = t0.elapsed();
    let toks = h.metadata.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(toks.len(), n);
    assert_eq!(toks[12345].as_str(), Some("tok12345"));
    // Generous bound (a few ms expected) that still catches quadratic work.
    assert!(dt.as_secs_f64() < 2.0, "parsing took {dt:?}");
}
