//! F32/F16/BF16 weights: conversions, and every ISA's dot product against an
//! f64 reference, on all lengths around the vector widths and unaligned buffers.

use frugal_formats::GgmlType;
use frugal_kernels::floats::{self, scalar};
use frugal_kernels::traits::{traits, VecDot};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

fn impls(ty: GgmlType) -> Vec<(&'static str, VecDot)> {
    let k = TYPES.iter().position(|t| *t == ty).unwrap();
    let mut v: Vec<(&'static str, VecDot)> = vec![
        ("ref", traits(ty).unwrap().vec_dot_ref),
        ("dispatched", traits(ty).unwrap().vec_dot),
        (
            "scalar",
            [
                scalar::vec_dot_f32,
                scalar::vec_dot_f16,
                scalar::vec_dot_bf16,
            ][k],
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        if floats::avx2::available() {
            v.push((
                "avx2",
                [
                    floats::avx2::vec_dot_f32,
                    floats::avx2::vec_dot_f16,
                    floats::avx2::vec_dot_bf16,
                ][k],
            ));
        }
        if floats::avx512::available() {
            v.push((
                "avx512",
                [
                    floats::avx512::vec_dot_f32,
                    floats::avx512::vec_dot_f16,
                    floats::avx512::vec_dot_bf16,
                ][k],
            ));
        }
    }
    v
}

fn encode(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() * ty.type_size()];
    (traits(ty).unwrap().from_float.unwrap())(x, &mut out);
    out
}

fn decode(ty: GgmlType, b: &[u8]) -> Vec<f32> {
    let mut y = vec![0.0f32; b.len() / ty.type_size()];
    (traits(ty).unwrap().to_float)(b, &mut y);
    y
}

#[test]
fn dots_match_f64_on_all_lengths() {
    let mut r = StdRng::seed_from_u64(21);
    let lens: Vec<usize> = (0..=80)
        .chain([127, 128, 129, 576, 1000, 1536, 4099])
        .collect();
    for ty in TYPES {
        for &n in &lens {
            let w: Vec<f32> = (0..n).map(|_| r.gen_range(-2.0..2.0)).collect();
            let x: Vec<f32> = (0..n).map(|_| r.gen_range(-3.0..3.0)).collect();
            let wb = encode(ty, &w);
            let wd = decode(ty, &wb);
            let xb = encode(GgmlType::F32, &x);
            let exact: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let bound: f64 = wd
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            // Unaligned copies (odd offsets).
            let mut wm = vec![0u8; wb.len() + 1];
            wm[1..].copy_from_slice(&wb);
            let mut xm = vec![0u8; xb.len() + 3];
            xm[3..].copy_from_slice(&xb);
            for (name, f) in impls(ty) {
                for (wbuf, xbuf) in [(&wb[..], &xb[..]), (&wm[1..], &xm[3..])] {
                    let got = f(n, wbuf, xbuf) as f64;
                    assert!(
                        (got - exact).abs() <= 1e-6 * bound + 1e-30,
                        "{ty} {name} n={n}: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn dots_read_only_n_elements() {
    let w = encode(GgmlType::F16, &[1.0; 40]);
    let x = encode(GgmlType::F32, &[2.0; 40]);
    for (name, f) in impls(GgmlType::F16) {
        assert_eq!(f(17, &w, &x), 34.0, "{name}");
    }
}

#[test]
#[should_panic]
fn short_activation_panics() {
    let t = traits(GgmlType::F32).unwrap();
    (t.vec_dot)(8, &[0u8; 32], &[0u8; 28]);
}

#[test]
fn traits_entries() {
    for ty in TYPES {
        let t = traits(ty).unwrap();
        assert_eq!(t.ty, ty);
        assert_eq!(t.vec_dot_type, GgmlType::F32);
        assert!(t.from_float.is_some());
    }
}

#[test]
fn f16_conversions_round_to_nearest_even() {
    let xs = [
        0.0f32,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        65520.0,
        1e-8,
        6.1e-5,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1234.567,
    ];
    let b = encode(GgmlType::F16, &xs);
    let y = decode(GgmlType::F16, &b);
    for (x, y) in xs.iter().zip(&y) {
        assert_eq!(y.to_bits(), f16::from_f32(*x).to_f32().to_bits(), "{x}");
    }
    // Ties: 1 + 2^-11 is halfway between 1 and 1 + 2^-10: even is 1.
    assert_eq!(y[8], 1.0);
    assert_eq!(y[9], 1.0 + 2.0 / 1024.0);
    assert_eq!(y[5], f32::INFINITY);
    let nan = encode(GgmlType::F16, &[f32::NAN]);
    assert!(decode(GgmlType::F16, &nan)[0].is_nan());
}

#[test]
fn bf16_conversions_match_ggml_rounding() {
    let cases: [(u32, u16); 7] = [
        (0x3F80_0000, 0x3F80), // 1.0
        (0x3F80_8000, 0x3F80), // tie, even stays
        (0x3F81_8000, 0x3F82), // tie, odd rounds up
        (0x3F80_8001, 0x3F81), // above the tie
        (0x7F7F_FFFF, 0x7F80), // max float rounds to inf
        (0x7FC0_0001, 0x7FC0), // quiet NaN stays NaN
        (0x7F80_0001, 0x7FC0), // signalling NaN is quieted
    ];
    for (bits, want) in cases {
        assert_eq!(floats::f32_to_bf16(f32::from_bits(bits)), want, "{bits:#x}");
        let b = encode(GgmlType::BF16, &[f32::from_bits(bits)]);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), want);
    }
    let y = decode(GgmlType::BF16, &[0x80, 0x3F, 0x20, 0xC1]);
    assert_eq!(y, vec![1.0, -10.0]);
}

#[test]
fn f32_round_trip_is_exact() {
    let xs = [1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE, 1e-40];
    let y = decode(GgmlType::F32, &encode(GgmlType::F32, &xs));
    for (a, b) in xs.iter().zip(&y) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
}
