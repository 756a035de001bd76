//! A cheap deterministic fuzzer on stable: thousands of mutations of valid
//! files through the header parsers, which must return (not panic) and, when
//! they accept, describe tensor ranges that lie inside the bytes. The
//! cargo-fuzz targets in /fuzz explore the same functions more deeply.

use frugal_formats::gguf::{parse_header, GgufWriter};
use frugal_formats::hf::parse_safetensors_header;
use frugal_formats::llama2c::Llama2cConfig;
use frugal_formats::{GgmlType, MetaType, MetaValue};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    2,
    31,
    32,
    255,
    1 << 31,
    u32::MAX as u64,
    i64::MAX as u64,
    u64::MAX,
];

/// One random mutation: flip bytes, overwrite a little-endian integer with an
/// interesting value, truncate, insert or duplicate a chunk.
fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(b.len());
        match rng.below(6) {
            0 => {
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << rng.below(8);
                }
            }
            1 => {
                if let Some(x) = b.get_mut(at) {
                    *x = rng.next() as u8;
                }
            }
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())].wrapping_add(rng.below(3) as u64);
                let width = [1, 2, 4, 8][rng.below(4)];
                for (i, byte) in v.to_le_bytes()[..width].iter().enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let n = rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
            _ => {
                let len = rng.below(32).min(b.len() - at.min(b.len()));
                let chunk = b[at..at + len].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, chunk);
            }
        }
    }
    b
}

fn gguf_sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_meta("general.architecture", MetaValue::String("llama".into()));
    w.set_meta("llama.block_count", MetaValue::U32(1));
    w.set_meta("x.f", MetaValue::F64(0.5));
    w.set_meta(
        "tokenizer.ggml.tokens",
        MetaValue::string_array(vec!["a".into(), "bc".into(), "▁".into()]),
    );
    w.set_meta(
        "x.nested",
        MetaValue::Array(
            MetaType::Array,
            vec![MetaValue::Array(MetaType::U16, vec![MetaValue::U16(9)])],
        ),
    );
    w.add_tensor("a", GgmlType::F32, vec![2, 2], vec![1u8; 16])
        .unwrap();
    w.add_tensor("b", GgmlType::Q4_0, vec![32], vec![2u8; 18])
        .unwrap();
    w.to_bytes().unwrap()
}

fn safetensors_sample() -> Vec<u8> {
    let a = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &[1; 16])
        .unwrap();
    let b =
        safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![3], &[2; 6]).unwrap();
    safetensors::serialize([("a", a), ("b", b)], &None).unwrap()
}

#[test]
fn gguf_mutations_never_panic() {
    let base = gguf_sample();
    assert!(parse_header(&base).is_ok());
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..5000 {
        let b = mutate(&base, &mut rng);
        match parse_header(&b) {
            Ok(h) => {
                ok += 1;
                for t in &h.tensors {
                    let start = h.data_offset + t.offset as usize;
                    assert!(start + t.size as usize <= b.len());
                    assert_eq!(start % h.alignment, 0);
                }
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // The mutations both keep some files valid and break most of them.
    assert!(ok > 50 && err > 2500, "ok {ok}, err {err}");
}

#[test]
fn safetensors_mutations_never_panic() {
    let base = safetensors_sample();
    assert!(parse_safetensors_header(&base).is_ok());
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..5000 {
        let b = mutate(&base, &mut rng);
        match parse_safetensors_header(&b) {
            Ok(h) => {
                ok += 1;
                for t in &h.tensors {
                    assert!(t.range.end <= b.len());
                }
            }
            Err(_) => err += 1,
        }
    }
    assert!(ok > 50 && err > 2500, "ok {ok}, err {err}");
}

#[test]
fn llama2c_header_mutations_never_panic() {
    let base: Vec<u8> = [64i32, 172, 5, 8, 4, -512, 512]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut rng = Rng(0xdeadbeefcafef00d);
    for _ in 0..5000 {
        let b = mutate(&base, &mut rng);
        if let Ok(cfg) = Llama2cConfig::parse(&b) {
            let _ = cfg.file_bytes();
        }
    }
}
