//! Legacy-format quantizers and dequantizers: bit-exact with ggml's
//! `quantize_row_*_ref` (golden bytes from libggml and an independent
//! re-derivation of the formulas), SIMD activation quantizers identical to
//! the references, and round-trip error bounds.

mod legacy_common;
use frugal_formats::GgmlType;
use frugal_kernels::legacy::{self, scalar};
use frugal_kernels::traits::{traits, FromFloat};
use legacy_common::*;
use rand::Rng;

const ALL: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
];

fn golden_input() -> Vec<f32> {
    let b = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/legacy_data/input.f32"
    ))
    .unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn golden(ty: GgmlType) -> Vec<u8> {
    let name = ty.name().to_lowercase();
    std::fs::read(format!(
        "{}/tests/legacy_data/{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / 32 * ty.type_size()];
    (traits(ty).unwrap().from_float.unwrap())(x, &mut out);
    out
}

/// Every quantizer of an activation type: reference, dispatched, and each SIMD one.
fn q8_impls(ty: GgmlType) -> Vec<(&'static str, FromFloat)> {
    let q1 = ty == GgmlType::Q8_1;
    let mut v: Vec<(&'static str, FromFloat)> = vec![
        (
            "ref",
            if q1 {
                scalar::quantize_q8_1_ref
            } else {
                scalar::quantize_q8_0_ref
            },
        ),
        (
            "dispatched",
            if q1 {
                legacy::quantize_row_q8_1
            } else {
                legacy::quantize_row_q8_0
            },
        ),
        ("traits", traits(ty).unwrap().from_float.unwrap()),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        use frugal_kernels::legacy::{avx2, avx512};
        if avx2::available() {
            v.push((
                "avx2",
                if q1 {
                    avx2::quantize_row_q8_1
                } else {
                    avx2::quantize_row_q8_0
                },
            ));
        }
        if avx512::available() {
            v.push((
                "avx512",
                if q1 {
                    avx512::quantize_row_q8_1
                } else {
                    avx512::quantize_row_q8_0
                },
            ));
        }
    }
    v
}

#[test]
fn reference_quantizers_match_libggml_bytes() {
    let x = golden_input();
    for ty in ALL {
        let want = golden(ty);
        let got = quantize(ty, &x);
        for (i, (g, w)) in got
            .chunks_exact(ty.type_size())
            .zip(want.chunks_exact(ty.type_size()))
            .enumerate()
        {
            assert_eq!(g, w, "{ty} block {i}: input {:?}", &x[i * 32..i * 32 + 32]);
        }
    }
}

#[test]
fn simd_q8_quantizers_match_libggml_bytes() {
    let x = golden_input();
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let want = golden(ty);
        for (name, q) in q8_impls(ty) {
            let mut got = vec![0u8; want.len()];
            q(&x, &mut got);
            assert!(got == want, "{ty} {name}");
        }
    }
}

// ---- an independent re-derivation of ggml's reference formulas

fn trunc_i8(v: f32) -> i32 {
    // C's (int8_t) conversion of an in-range float: truncation toward zero.
    v.trunc() as i32
}

fn model_quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let mut blk = vec![0u8; ty.type_size()];
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 => {
                let nmax = if ty == GgmlType::Q4_0 { 8.0 } else { 16.0 };
                let qmax = if ty == GgmlType::Q4_0 { 15 } else { 31 };
                // The value of largest magnitude, the first one on ties.
                let mut best = 0usize;
                for j in 1..32 {
                    if b[j].abs() > b[best].abs() {
                        best = j;
                    }
                }
                let max = if b[best].abs() > 0.0 { b[best] } else { 0.0 };
                let d = max / -nmax;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                blk[..2].copy_from_slice(&f16_bits(d));
                let q: Vec<i32> = b
                    .iter()
                    .map(|&v| trunc_i8(v * id + (nmax + 0.5)).min(qmax))
                    .collect();
                let qs_off = if ty == GgmlType::Q4_0 { 2 } else { 6 };
                let mut qh = 0u32;
                for j in 0..16 {
                    blk[qs_off + j] = ((q[j] & 15) | ((q[j + 16] & 15) << 4)) as u8;
                    qh |= (((q[j] >> 4) & 1) as u32) << j;
                    qh |= (((q[j + 16] >> 4) & 1) as u32) << (j + 16);
                }
                if ty == GgmlType::Q5_0 {
                    blk[2..6].copy_from_slice(&qh.to_le_bytes());
                }
            }
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let levels = if ty == GgmlType::Q4_1 { 15.0 } else { 31.0 };
                let min = b.iter().copied().fold(f32::MAX, f32::min);
                let max = b.iter().copied().fold(-f32::MAX, f32::max);
                let d = (max - min) / levels;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                blk[..2].copy_from_slice(&f16_bits(d));
                blk[2..4].copy_from_slice(&f16_bits(min));
                let q: Vec<i32> = b
                    .iter()
                    .map(|&v| {
                        let t = trunc_i8((v - min) * id + 0.5);
                        if ty == GgmlType::Q4_1 {
                            t.min(15)
                        } else {
                            t
                        }
                    })
                    .collect();
                let qs_off = if ty == GgmlType::Q4_1 { 4 } else { 8 };
                let mut qh = 0u32;
                for j in 0..16 {
                    blk[qs_off + j] = ((q[j] & 15) | ((q[j + 16] & 15) << 4)) as u8;
                    qh |= (((q[j] >> 4) & 1) as u32) << j;
                    qh |= (((q[j + 16] >> 4) & 1) as u32) << (j + 16);
                }
                if ty == GgmlType::Q5_1 {
                    blk[4..8].copy_from_slice(&qh.to_le_bytes());
                }
            }
            _ => {
                let amax = b.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                blk[..2].copy_from_slice(&f16_bits(d));
                let off = ty.type_size() - 32;
                let mut sum = 0i32;
                for j in 0..32 {
                    // roundf: half away from zero.
                    let v = b[j] * id;
                    let t = v.trunc();
                    let r = if (v - t).abs() >= 0.5 {
                        t + v.signum()
                    } else {
                        t
                    };
                    sum += r as i32;
                    blk[off + j] = r as i32 as i8 as u8;
                }
                if ty == GgmlType::Q8_1 {
                    blk[2..4].copy_from_slice(&f16_bits(sum as f32 * d));
                }
            }
        }
        out.extend_from_slice(&blk);
    }
    out
}

fn tricky_inputs() -> Vec<Vec<f32>> {
    let mut v: Vec<Vec<f32>> = vec![
        vec![0.0; 32],
        vec![-0.0; 32],
        vec![-1.5; 32],
        vec![7.25; 32],
        (0..32).map(|i| -(i as f32) - 0.5).collect(),
        (0..32).map(|i| i as f32 - 15.5).collect(),
        (0..32)
            .map(|i| if i % 2 == 0 { 4.0 } else { -4.0 })
            .collect(),
        (0..32)
            .map(|i| if i % 2 == 0 { -4.0 } else { 4.0 })
            .collect(),
        // Exact ties after scaling (d = 1): k + 0.5 everywhere.
        std::iter::once(127.0)
            .chain((0..31).map(|i| i as f32 - 15.5))
            .collect(),
        std::iter::once(-8.0)
            .chain((0..31).map(|i| (i % 16) as f32 - 7.5))
            .collect(),
        std::iter::once(-16.0)
            .chain((0..31).map(|i| i as f32 - 15.5))
            .collect(),
        [0.0, 15.0]
            .into_iter()
            .chain((0..30).map(|i| i as f32 * 0.5))
            .collect(),
        [0.0, 31.0]
            .into_iter()
            .chain((0..30).map(|i| i as f32 + 0.5))
            .collect(),
        (0..32).map(|i| if i == 7 { 1e-8 } else { 0.0 }).collect(),
        (0..32).map(|i| (i as f32 - 16.0) * 1e4).collect(),
    ];
    let mut r = rng(7);
    for _ in 0..64 {
        let s = 10f32.powf(r.gen_range(-4.0..4.0));
        v.push((0..32).map(|_| r.gen_range(-s..s)).collect());
        v.push((0..32).map(|_| r.gen_range(0.0..s) - s * 2.0).collect());
    }
    v
}

#[test]
fn reference_quantizers_match_formula() {
    for ty in ALL {
        for x in tricky_inputs() {
            let got = quantize(ty, &x);
            let want = model_quantize(ty, &x);
            assert_eq!(got, want, "{ty} input {x:?}");
        }
    }
}

#[test]
fn q8_quantizers_identical_on_random_rows() {
    let mut r = rng(8);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
        for nb in [1usize, 2, 3, 17, 64] {
            for _ in 0..8 {
                let s = 10f32.powf(r.gen_range(-6.0..6.0));
                let mut x: Vec<f32> = (0..nb * 32).map(|_| r.gen_range(-s..s)).collect();
                if nb > 2 {
                    x[32..64].fill(0.0);
                }
                let impls = q8_impls(ty);
                let mut want = vec![0u8; nb * ty.type_size()];
                (impls[0].1)(&x, &mut want);
                for (name, q) in &impls {
                    // Odd output offset: the blocks need no alignment.
                    let mut buf = vec![0xAAu8; want.len() + 1];
                    q(&x, &mut buf[1..]);
                    assert!(buf[1..] == want[..], "{ty} {name} nb={nb}");
                }
            }
        }
    }
}

#[test]
fn q8_1_sum_field() {
    let mut r = rng(9);
    let x: Vec<f32> = (0..32 * 5).map(|_| r.gen_range(-3.0..3.0)).collect();
    let q = quantize(GgmlType::Q8_1, &x);
    for (b, x) in q.chunks_exact(36).zip(x.chunks_exact(32)) {
        let (_, s, qs) = decode_act(GgmlType::Q8_1, b);
        let sum: i32 = qs.iter().sum();
        // s uses the f32 scale, before its rounding to f16.
        let d = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        assert_eq!(s, f16_val(&f16_bits(sum as f32 * d)));
    }
}

#[test]
fn dequantize_of_quantize_error_bounds() {
    let mut r = rng(10);
    for ty in ALL {
        // Q4_0/Q5_0 clamp the top level (the value opposite the max maps to 2^(b-1)-1), so one step.
        let steps = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 => 1.0,
            _ => 0.5,
        };
        let qmax = match ty {
            GgmlType::Q4_0 => 8.0,
            GgmlType::Q4_1 => 15.0,
            GgmlType::Q5_0 => 16.0,
            GgmlType::Q5_1 => 31.0,
            _ => 127.0,
        };
        for nb in [1usize, 3, 16] {
            for _ in 0..20 {
                let s = 10f32.powf(r.gen_range(-3.0..3.0));
                let off = if r.gen_bool(0.5) {
                    r.gen_range(-s..s)
                } else {
                    0.0
                };
                let x: Vec<f32> = (0..nb * 32).map(|_| r.gen_range(-s..s) + off).collect();
                let q = quantize(ty, &x);
                let mut y = vec![0.0f32; x.len()];
                (traits(ty).unwrap().to_float)(&q, &mut y);
                let mut sq = 0.0f64;
                for (bi, b) in q.chunks_exact(ty.type_size()).enumerate() {
                    let (d, m, _) = decode_weight(ty, b);
                    let amax = x[bi * 32..bi * 32 + 32]
                        .iter()
                        .fold(0f32, |a, v| a.max(v.abs()));
                    for j in 0..32 {
                        let i = bi * 32 + j;
                        let err = (x[i] - y[i]).abs();
                        // Rounding step, plus f16 rounding of d (relative 2^-11, or
                        // 2^-25 absolute when subnormal) times the largest level, and of m.
                        let lim = steps * d.abs()
                            + qmax * (d.abs() / 2048.0 + 3e-8)
                            + m.abs() / 2048.0
                            + 1e-6 * amax;
                        assert!(err <= lim, "{ty} x={} y={} d={d} m={m}", x[i], y[i]);
                        sq += (err as f64).powi(2);
                    }
                }
                // Mean error well under the step: not systematically off.
                let rms = (sq / x.len() as f64).sqrt();
                let spread = x.iter().fold(0f32, |a, v| a.max((v - off).abs())) as f64;
                let levels = match ty {
                    GgmlType::Q4_0 | GgmlType::Q4_1 => 16.0,
                    GgmlType::Q5_0 | GgmlType::Q5_1 => 32.0,
                    _ => 256.0,
                };
                assert!(
                    rms <= 2.0 * spread / levels,
                    "{ty} rms {rms} spread {spread}"
                );
            }
        }
    }
}

#[test]
fn dequantize_known_blocks() {
    // Q4_0: d = 2, nibbles j -> (j - 8) * 2; high nibbles 15 -> 14.
    let mut b = vec![0u8; 18];
    b[..2].copy_from_slice(&f16_bits(2.0));
    for j in 0..16 {
        b[2 + j] = j as u8 | 0xF0;
    }
    let mut y = [0.0f32; 32];
    scalar::dequantize_q4_0(&b, &mut y);
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
        assert_eq!(y[16 + j], 14.0);
    }
    // Q5_1: d = 0.5, m = -1, qh all ones: q = 16 + nibble.
    let mut b = vec![0u8; 24];
    b[..2].copy_from_slice(&f16_bits(0.5));
    b[2..4].copy_from_slice(&f16_bits(-1.0));
    b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    for j in 0..16 {
        b[8 + j] = j as u8 | ((15 - j as u8) << 4);
    }
    scalar::dequantize_q5_1(&b, &mut y);
    for j in 0..16 {
        assert_eq!(y[j], (16 + j) as f32 * 0.5 - 1.0);
        assert_eq!(y[16 + j], (31 - j) as f32 * 0.5 - 1.0);
    }
    // Q5_0 with only bit 3 and bit 20 of qh set.
    let mut b = vec![0u8; 22];
    b[..2].copy_from_slice(&f16_bits(1.0));
    b[2..6].copy_from_slice(&((1u32 << 3) | (1u32 << 20)).to_le_bytes());
    scalar::dequantize_q5_0(&b, &mut y);
    for (j, v) in y.iter().enumerate() {
        let want = if j == 3 || j == 20 { 0.0 } else { -16.0 };
        assert_eq!(*v, want, "j={j}");
    }
}

#[test]
fn block_views_need_no_alignment() {
    use frugal_kernels::legacy::blocks::{as_blocks, BlockQ4_1};
    let mut r = rng(11);
    let w = weight_blocks(GgmlType::Q4_1, 3, Mode::Random, &mut r);
    let m = Misaligned::new(&w);
    let blocks = as_blocks::<BlockQ4_1>(m.get());
    assert_eq!(blocks.len(), 3);
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.d.to_f32(), f16_val(&w[i * 20..]));
        assert_eq!(b.m.to_f32(), f16_val(&w[i * 20 + 2..]));
        assert_eq!(&b.qs[..], &w[i * 20 + 4..i * 20 + 20]);
    }
}

#[test]
#[should_panic]
fn block_view_of_partial_block_panics() {
    let _ = frugal_kernels::legacy::blocks::as_blocks::<frugal_kernels::legacy::blocks::BlockQ8_0>(
        &[0u8; 35],
    );
}
