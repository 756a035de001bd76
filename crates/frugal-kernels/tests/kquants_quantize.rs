//! The k-quant reference quantizers (`from_float`): byte-identical to ggml's
//! `quantize_row_q*_K_ref`, and round trips within the expected error.

use frugal_formats::GgmlType;
use frugal_kernels::kquants::{quantize, scalar};
use frugal_kernels::traits;

/// Deterministic test input: xorshift32 floats in blocks of varying scale,
/// with outliers, an all-positive block, zero, tiny and two-valued blocks.
/// The same generator (in C) produced the ggml hashes below.
fn test_input(nblocks: usize, seed: u32) -> Vec<f32> {
    let mut st = seed;
    let mut next = move || {
        st ^= st << 13;
        st ^= st >> 17;
        st ^= st << 5;
        st
    };
    let mut x = vec![0.0f32; nblocks * 256];
    for b in 0..nblocks {
        let s = 2.0f32.powi((b % 7) as i32 - 3);
        for i in 0..256 {
            let mut u = (next() >> 8) as f32 * (1.0 / 16_777_216.0) * 2.0 - 1.0;
            if next() % 61 == 0 {
                u *= 8.0;
            }
            if b % 5 == 3 {
                u = u.abs() + 0.25;
            }
            x[b * 256 + i] = u * s;
        }
        let blk = &mut x[b * 256..(b + 1) * 256];
        if b % 11 == 7 {
            blk.fill(0.0);
        }
        if b % 13 == 9 {
            for (i, v) in blk.iter_mut().enumerate() {
                *v = 1e-20 * (i % 3) as f32;
            }
        }
        if b % 17 == 12 {
            for (i, v) in blk.iter_mut().enumerate() {
                *v = if i & 1 == 1 { -0.5 } else { 0.5 };
            }
        }
    }
    x
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const NB: usize = 40;

/// FNV-1a of ggml's output (quantized bytes; dequantized f32 little-endian
/// bytes) for `test_input(40, 12345)`, from llama.cpp c392e50 (Feb 2025):
/// `quantize_row_q*_K_ref` and `dequantize_row_q*_K` in libggml-base.
const GGML: [(GgmlType, u64, u64); 6] = [
    (GgmlType::Q2K, 0x7efc71cb5c987dc5, 0x29ac0f3b813ea065),
    (GgmlType::Q3K, 0x1420105151cff8ae, 0x43e26d760c136ffd),
    (GgmlType::Q4K, 0x9b24980a530a5068, 0xec7893c2e2780f96),
    (GgmlType::Q5K, 0x1831cf225b93b3e4, 0xacbd096db3416ed7),
    (GgmlType::Q6K, 0x69b27a8380100a2a, 0x70d8f6f6b4ec367d),
    (GgmlType::Q8K, 0x99c70c5daec85fe1, 0),
];

#[test]
fn quantizers_match_ggml_bytes() {
    let x = test_input(NB, 12345);
    for (ty, qhash, dqhash) in GGML {
        let t = traits(ty).expect("registered");
        let from_float = t.from_float.expect("k-quants have a reference quantizer");
        let mut q = vec![0u8; NB * ty.type_size()];
        from_float(&x, &mut q);
        if let Ok(dir) = std::env::var("FRUGAL_KQ_DUMP") {
            std::fs::write(format!("{dir}/{}.frugal.bin", ty.name()), &q).unwrap();
        }
        assert_eq!(fnv(&q), qhash, "{ty}: quantized bytes differ from ggml");
        if dqhash != 0 {
            let mut y = vec![0f32; NB * 256];
            (t.to_float)(&q, &mut y);
            let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(
                fnv(&bytes),
                dqhash,
                "{ty}: dequantized floats differ from ggml"
            );
        }
    }
}

/// Relative RMS error of a quantize -> dequantize round trip on smooth
/// random data stays within what each format should achieve.
#[test]
fn round_trip_error() {
    let mut st = 0x9e37_79b9u32;
    let mut next = move || {
        st ^= st << 13;
        st ^= st >> 17;
        st ^= st << 5;
        (st >> 8) as f32 / 16_777_216.0
    };
    // Roughly gaussian (sum of 4 uniforms), 16 blocks.
    let x: Vec<f32> = (0..16 * 256)
        .map(|_| (next() + next() + next() + next() - 2.0) * 0.1)
        .collect();
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    for (ty, f, bound) in [
        (
            GgmlType::Q2K,
            quantize::quantize_row_q2k_ref as fn(&[f32], &mut [u8]),
            0.35,
        ),
        (GgmlType::Q3K, quantize::quantize_row_q3k_ref, 0.20),
        (GgmlType::Q4K, quantize::quantize_row_q4k_ref, 0.10),
        (GgmlType::Q5K, quantize::quantize_row_q5k_ref, 0.05),
        (GgmlType::Q6K, quantize::quantize_row_q6k_ref, 0.025),
        (GgmlType::Q8K, scalar::quantize_row_q8k_ref, 0.01),
    ] {
        let mut q = vec![0u8; 16 * ty.type_size()];
        f(&x, &mut q);
        let mut y = vec![0f32; x.len()];
        frugal_kernels::dequantize(ty, &q, &mut y).unwrap();
        let err = (x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / x.len() as f32)
            .sqrt();
        println!("{ty}: relative RMS error {:.4}", err / rms);
        assert!(
            err / rms < bound,
            "{ty}: relative RMS error {} >= {bound}",
            err / rms
        );
    }
}
