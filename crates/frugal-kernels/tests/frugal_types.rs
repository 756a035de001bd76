//! frugal's own types: the byte layout (known answers and a decoder written
//! here from the `FrugalType` spec), the RTN quantizers against the spec and
//! their error bounds, every ISA's dot product against the scalar reference
//! and an exact f64 evaluation (worst-case codes included), row-wise
//! dequantization, and the threaded matmul against a plain f32 product of
//! the dequantized weights and activations.

use frugal_formats::{FrugalType, GgmlType};
use frugal_kernels::frugal::{
    self, affine_decode_row, affine_encode_row, dot_impls, w8_decode_row, w8_encode_row,
};
use frugal_kernels::legacy::scalar::quantize_q8_1_ref;
use frugal_kernels::matmul::{matmul, matmul_ref, QMatrix, QuantizedActs};
use frugal_kernels::traits::{detected_isa, traits, Isa};
use frugal_kernels::{dequantize, dequantize_rows};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const W8: FrugalType = FrugalType::W8Row;
const I8: FrugalType = FrugalType::I8Tok;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn affine_types() -> Vec<FrugalType> {
    FrugalType::all()
        .iter()
        .copied()
        .filter(|t| matches!(t, FrugalType::Affine { .. }))
        .collect()
}

fn parts(t: FrugalType) -> (usize, usize, bool) {
    match t {
        FrugalType::Affine { bits, group, sym } => (bits as usize, group as usize, sym),
        _ => unreachable!(),
    }
}

fn f16r(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

fn row_bytes(t: FrugalType, n: usize) -> usize {
    GgmlType::Frugal(t).row_bytes(n as u64).unwrap() as usize
}

/// Row lengths to try for a type: whole groups (and odd chunk counts for row-wise types).
fn lens(t: FrugalType) -> Vec<usize> {
    match parts(t).1 {
        0 => vec![32, 64, 96, 416],
        g => vec![g, 2 * g, 3 * g],
    }
}

/// Decodes an affine row straight from the spec: per group `(d, offset)`
/// (value `d * q + offset`) and the codes.
fn spec_decode(t: FrugalType, row: &[u8], n: usize) -> (Vec<(f32, f32)>, Vec<u8>) {
    let (bits, group, sym) = parts(t);
    let gl = if group == 0 { n } else { group };
    let hdr = if sym { 2 } else { 4 };
    let mut pos = 0;
    let (mut params, mut codes) = (Vec::new(), Vec::new());
    for _ in 0..n / gl {
        let d = f16_at(&row[pos..]);
        let off = if sym {
            -d * (1 << (bits - 1)) as f32
        } else {
            f16_at(&row[pos + 2..])
        };
        params.push((d, off));
        pos += hdr;
        for _ in 0..gl / 32 {
            let planes: Vec<u32> = (0..bits)
                .map(|k| u32::from_le_bytes(row[pos + 4 * k..pos + 4 * k + 4].try_into().unwrap()))
                .collect();
            for i in 0..32 {
                codes.push((0..bits).map(|k| (((planes[k] >> i) & 1) << k) as u8).sum());
            }
            pos += 4 * bits;
        }
    }
    assert_eq!(pos, row.len(), "{t:?}: the row is exactly its groups");
    (params, codes)
}

/// Random f16-representable value of magnitude about 10^[lo, hi).
fn rand_scale(r: &mut StdRng, lo: i32, hi: i32) -> f32 {
    f16r(r.gen_range(-2.0f32..2.0) * 10f32.powi(r.gen_range(lo..hi)))
}

// ---------------------------------------------------------------- layout

#[test]
fn affine_layout_known_answer() {
    // FQ3a_g32: d = 0.5, m = -1, code i = i % 8.
    let t = FrugalType::Affine {
        bits: 3,
        group: 32,
        sym: false,
    };
    let codes: Vec<u8> = (0..32).map(|i| (i % 8) as u8).collect();
    let mut row = vec![0u8; row_bytes(t, 32)];
    assert_eq!(row.len(), 4 + 12);
    affine_encode_row(t, &[(0.5, -1.0)], &codes, &mut row);
    let mut want = vec![0x00, 0x38, 0x00, 0xBC];
    for plane in [0xAAAA_AAAAu32, 0xCCCC_CCCC, 0xF0F0_F0F0] {
        want.extend_from_slice(&plane.to_le_bytes());
    }
    assert_eq!(row, want);
    let mut out = vec![0.0f32; 32];
    (traits(GgmlType::Frugal(t)).unwrap().to_float)(&row, &mut out);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, 0.5 * (i % 8) as f32 - 1.0, "element {i}");
    }

    // FQ2s_row of 64: one f16 d, then two chunks of 2 planes; code 3 at element 33 only.
    let t = FrugalType::Affine {
        bits: 2,
        group: 0,
        sym: true,
    };
    let mut codes = vec![0u8; 64];
    codes[33] = 3;
    let mut row = vec![0u8; row_bytes(t, 64)];
    assert_eq!(row.len(), 2 + 16);
    affine_encode_row(t, &[(2.0, 123.0)], &codes, &mut row);
    let mut want = vec![0x00, 0x40, 0, 0, 0, 0, 0, 0, 0, 0];
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    assert_eq!(row, want);
    let mut out = vec![0.0f32; 64];
    (traits(GgmlType::Frugal(t)).unwrap().to_float)(&row, &mut out);
    for (i, v) in out.iter().enumerate() {
        // d * (q - 2): -4 everywhere but element 33 (2 * (3 - 2)).
        assert_eq!(*v, if i == 33 { 2.0 } else { -4.0 }, "element {i}");
    }
}

#[test]
fn w8_layout_known_answer() {
    let codes: Vec<i8> = (0..32).map(|i| i as i8 - 16).collect();
    let mut row = vec![0u8; row_bytes(W8, 32)];
    w8_encode_row(0.25, &codes, &mut row);
    assert_eq!(&row[..4], &0.25f32.to_le_bytes());
    assert_eq!(&row[4..8], &(-16i32).to_le_bytes());
    for i in 0..32 {
        assert_eq!(row[8 + i] as i8, codes[i]);
    }
    let (d, sum, c) = w8_decode_row(&row);
    assert_eq!((d, sum, c), (0.25, -16, &codes[..]));
    for t in [W8, I8] {
        let mut out = vec![0.0f32; 32];
        (traits(GgmlType::Frugal(t)).unwrap().to_float)(&row, &mut out);
        for i in 0..32 {
            assert_eq!(out[i], 0.25 * codes[i] as f32);
        }
    }
}

#[test]
fn affine_encode_decode_round_trip() {
    let mut r = rng(10);
    for t in affine_types() {
        let (bits, _, sym) = parts(t);
        let maxq = (1u16 << bits) - 1;
        for n in lens(t) {
            let rb = row_bytes(t, n);
            let groups = n.checked_div(parts(t).1).unwrap_or(1);
            for mode in 0..3 {
                let codes: Vec<u8> = (0..n)
                    .map(|i| match mode {
                        0 => r.gen_range(0..=maxq) as u8,
                        1 => maxq as u8,
                        _ => (i % 2) as u8 * maxq as u8,
                    })
                    .collect();
                let params: Vec<(f32, f32)> = (0..groups)
                    .map(|_| (rand_scale(&mut r, -4, 2), rand_scale(&mut r, -3, 2)))
                    .collect();
                let mut row = vec![0xA5u8; rb];
                affine_encode_row(t, &params, &codes, &mut row);
                let (sp, sc) = spec_decode(t, &row, n);
                assert_eq!(sc, codes, "{t:?} n={n}");
                let (mut p2, mut c2) = (Vec::new(), Vec::new());
                affine_decode_row(t, &row, &mut p2, &mut c2);
                assert_eq!(c2, codes, "{t:?} n={n}");
                assert_eq!(p2, sp, "{t:?} n={n}");
                for (g, &(d, m)) in params.iter().enumerate() {
                    assert_eq!(p2[g].0, d);
                    let off = if sym {
                        -d * (1 << (bits - 1)) as f32
                    } else {
                        m
                    };
                    assert_eq!(p2[g].1, off);
                }
                // to_float agrees with d * q + offset.
                let mut out = vec![0.0f32; n];
                (traits(GgmlType::Frugal(t)).unwrap().to_float)(&row, &mut out);
                let gl = n / groups;
                for i in 0..n {
                    let (d, off) = sp[i / gl];
                    let want = d * codes[i] as f32 + off;
                    assert!(
                        (out[i] - want).abs() <= 1e-6 * (d.abs() * maxq as f32 + off.abs()),
                        "{t:?} n={n} i={i}: {} vs {want}",
                        out[i]
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "codes must be below")]
fn affine_encode_rejects_big_codes() {
    let t = FrugalType::Affine {
        bits: 3,
        group: 32,
        sym: true,
    };
    let mut codes = vec![0u8; 32];
    codes[5] = 8;
    affine_encode_row(t, &[(1.0, 0.0)], &codes, &mut [0u8; 14]);
}

// ---------------------------------------------------------------- quantizers

/// The spec's RTN quantizer of one group, written out here: `(d, m, codes)`.
fn spec_rtn(bits: usize, sym: bool, x: &[f32]) -> (f32, f32, Vec<u8>) {
    let maxq = ((1u32 << bits) - 1) as f32;
    let bias = (1u32 << (bits - 1)) as f32;
    if sym {
        let mut max = 0.0f32;
        for &v in x {
            if v.abs() > max.abs() {
                max = v;
            }
        }
        let d = f16r(max / -bias);
        let codes = x
            .iter()
            .map(|&v| {
                if d == 0.0 {
                    bias as u8
                } else {
                    ((v / d).round() + bias).clamp(0.0, maxq) as u8
                }
            })
            .collect();
        (d, 0.0, codes)
    } else {
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = f16r((max - min) / maxq);
        let m = f16r(min);
        let codes = x
            .iter()
            .map(|&v| {
                if d == 0.0 {
                    0
                } else {
                    ((v - m) / d).round().clamp(0.0, maxq) as u8
                }
            })
            .collect();
        (d, m, codes)
    }
}

/// Rows to quantize: uniform, shifted, constant, mostly zero, tiny, wide.
fn test_row(kind: usize, n: usize, r: &mut StdRng) -> Vec<f32> {
    (0..n)
        .map(|i| match kind {
            0 => r.gen_range(-1.0f32..1.0),
            1 => r.gen_range(-1.0f32..1.0) + 3.0,
            2 => 0.75,
            3 => {
                if i % 7 == 0 {
                    r.gen_range(-5.0f32..5.0)
                } else {
                    0.0
                }
            }
            4 => r.gen_range(-1e-3f32..1e-3),
            _ => r.gen_range(-1.0f32..1.0) * 10f32.powi(r.gen_range(-2..3)),
        })
        .collect()
}

#[test]
fn affine_rtn_matches_spec_and_error_bound() {
    let mut r = rng(20);
    for t in affine_types() {
        let (bits, group, sym) = parts(t);
        let tr = traits(GgmlType::Frugal(t)).unwrap();
        let quant = tr.from_float.unwrap();
        let maxq = ((1u32 << bits) - 1) as f32;
        let bias = (1u32 << (bits - 1)) as f32;
        for n in lens(t) {
            let gl = if group == 0 { n } else { group };
            for kind in 0..6 {
                let x = test_row(kind, n, &mut r);
                let mut row = vec![0u8; row_bytes(t, n)];
                quant(&x, &mut row);
                let (params, codes) = spec_decode(t, &row, n);
                let mut y = vec![0.0f32; n];
                (tr.to_float)(&row, &mut y);
                for (g, xg) in x.chunks_exact(gl).enumerate() {
                    let (d, m, want) = spec_rtn(bits, sym, xg);
                    let ctx = format!("{t:?} n={n} kind={kind} g={g}");
                    assert_eq!(&codes[g * gl..(g + 1) * gl], &want[..], "{ctx}");
                    assert_eq!(params[g].0, d, "{ctx}");
                    if !sym {
                        assert_eq!(params[g].1, m, "{ctx}");
                    }
                    // Error bound of the round trip.
                    let amax = xg.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let eps = 1e-6 * amax + 1e-30;
                    for (i, &v) in xg.iter().enumerate() {
                        let err = (y[g * gl + i] - v).abs();
                        let q = codes[g * gl + i] as f32;
                        let bound = if sym {
                            let max = xg
                                .iter()
                                .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                            let slack = bias * (d - max / -bias).abs();
                            if q == maxq {
                                d.abs() + slack // the clamped side
                            } else {
                                d.abs() / 2.0 + slack
                            }
                        } else {
                            let min = xg.iter().copied().fold(f32::INFINITY, f32::min);
                            let max = xg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            d / 2.0 + maxq * (d - (max - min) / maxq).abs() + (m - min).abs()
                        };
                        assert!(
                            err <= bound * 1.0001 + eps,
                            "{ctx} i={i}: x={v} y={} err={err} bound={bound}",
                            y[g * gl + i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn w8_quantizers_match_spec_and_error_bound() {
    let mut r = rng(21);
    for t in [W8, I8] {
        let tr = traits(GgmlType::Frugal(t)).unwrap();
        for n in [32, 64, 4096 + 32] {
            for kind in 0..6 {
                let x = test_row(kind, n, &mut r);
                let mut row = vec![0u8; row_bytes(t, n)];
                (tr.from_float.unwrap())(&x, &mut row);
                let (d, sum, codes) = w8_decode_row(&row);
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert_eq!(d, amax / 127.0, "{t:?} kind={kind}");
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                for (i, (&v, &q)) in x.iter().zip(codes).enumerate() {
                    assert_eq!(q, (v * id).round() as i8, "{t:?} kind={kind} i={i}");
                    assert!((-127..=127).contains(&q));
                }
                assert_eq!(sum, codes.iter().map(|&q| q as i32).sum::<i32>());
                let mut y = vec![0.0f32; n];
                (tr.to_float)(&row, &mut y);
                for (i, (&v, &w)) in x.iter().zip(&y).enumerate() {
                    assert!(
                        (v - w).abs() <= d / 2.0 * 1.0001 + 1e-6 * amax,
                        "{t:?} kind={kind} i={i}: {v} -> {w}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- dot products

/// Q8_1 blocks from raw codes and a scale (s = f16(d * sum), as ggml).
fn q8_1_raw(codes: &[i8], d: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for c in codes.chunks_exact(32) {
        let sum: i32 = c.iter().map(|&q| q as i32).sum();
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&f16::from_f32(f16r(d) * sum as f32).to_bits().to_le_bytes());
        out.extend(c.iter().map(|&q| q as u8));
    }
    out
}

fn q8_1_of(x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / 32 * 36];
    quantize_q8_1_ref(x, &mut out);
    out
}

/// The affine dot product in f64 from the spec decoder: (value, bound on
/// |terms|), integer sums exact.
fn exact_affine_dot(t: FrugalType, w: &[u8], a: &[u8], n: usize) -> (f64, f64) {
    let (bits, _, sym) = parts(t);
    let bias = if sym { 1i64 << (bits - 1) } else { 0 };
    let (params, codes) = spec_decode(t, &w[..row_bytes(t, n)], n);
    let gl = n / params.len();
    let (mut v, mut bound) = (0.0f64, 0.0f64);
    for (g, &(d, off)) in params.iter().enumerate() {
        for c in 0..gl / 32 {
            let blk = &a[(g * gl / 32 + c) * 36..][..36];
            let (dx, s) = (f16_at(blk) as f64, f16_at(&blk[2..]) as f64);
            let (mut isum, mut iabs) = (0i64, 0i64);
            for i in 0..32 {
                let q = codes[g * gl + c * 32 + i] as i64 - bias;
                let x = blk[4 + i] as i8 as i64;
                isum += q * x;
                iabs += (q * x).abs();
            }
            v += d as f64 * dx * isum as f64;
            bound += (d as f64 * dx).abs() * iabs as f64;
            if !sym {
                v += off as f64 * s;
                bound += (off as f64 * s).abs();
            }
        }
    }
    (v, bound)
}

/// Weight rows for a dot test: random codes and scales, or every code at
/// its maximum (or 0) with large scales.
fn affine_row(t: FrugalType, n: usize, mode: usize, r: &mut StdRng) -> Vec<u8> {
    let (bits, group, _) = parts(t);
    let maxq = ((1u32 << bits) - 1) as u8;
    let groups = n.checked_div(group).unwrap_or(1);
    let codes: Vec<u8> = (0..n)
        .map(|_| match mode {
            0 => r.gen_range(0..=maxq),
            1 => maxq,
            _ => 0,
        })
        .collect();
    let params: Vec<(f32, f32)> = (0..groups)
        .map(|g| match mode {
            0 => (rand_scale(r, -3, 1), rand_scale(r, -2, 1)),
            _ => (if g % 2 == 0 { 3.0 } else { -0.5 }, 1000.0),
        })
        .collect();
    let mut row = vec![0u8; row_bytes(t, n)];
    affine_encode_row(t, &params, &codes, &mut row);
    row
}

/// Activation rows: quantized random floats, all 127, all -128, alternating.
fn act_row(n: usize, mode: usize, r: &mut StdRng) -> Vec<u8> {
    match mode {
        0 => q8_1_of(
            &(0..n)
                .map(|_| r.gen_range(-3.0f32..3.0))
                .collect::<Vec<_>>(),
        ),
        1 => q8_1_raw(&vec![127i8; n], 0.5),
        2 => q8_1_raw(&vec![-128i8; n], 0.25),
        _ => q8_1_raw(
            &(0..n)
                .map(|i| if i % 3 == 0 { -128 } else { 127 })
                .collect::<Vec<i8>>(),
            1.5,
        ),
    }
}

fn tol(n: usize, bound: f64) -> f64 {
    2e-7 * (n as f64 / 32.0 + 8.0) * bound + 1e-30
}

#[test]
fn affine_dots_match_exact_and_scalar() {
    let mut r = rng(30);
    let mut seen_simd = false;
    for t in affine_types() {
        let ty = GgmlType::Frugal(t);
        let impls = dot_impls(ty);
        assert_eq!(impls[0].0, "scalar");
        seen_simd |= impls.len() > 1;
        let tr = traits(ty).unwrap();
        assert_eq!(tr.vec_dot_type, GgmlType::Q8_1);
        for n in lens(t) {
            for wmode in 0..3 {
                for amode in 0..4 {
                    let w = affine_row(t, n, wmode, &mut r);
                    let a = act_row(n, amode, &mut r);
                    let (exact, bound) = exact_affine_dot(t, &w, &a, n);
                    let reference = (tr.vec_dot_ref)(n, &w, &a) as f64;
                    let ctx = format!("{t:?} n={n} w{wmode} a{amode}");
                    assert!(
                        (reference - exact).abs() <= tol(n, bound),
                        "{ctx}: scalar {reference} vs exact {exact} (bound {bound})"
                    );
                    // Unaligned copies, and rows longer than n elements.
                    let mut wl = vec![0u8; 1];
                    wl.extend_from_slice(&w);
                    wl.extend_from_slice(&w);
                    let mut al = vec![0u8; 3];
                    al.extend_from_slice(&a);
                    al.extend_from_slice(&a);
                    for &(name, f) in impls.iter().chain([("dispatched", tr.vec_dot)].iter()) {
                        for (wb, ab) in [(&w[..], &a[..]), (&wl[1..], &al[3..])] {
                            let got = f(n, wb, ab) as f64;
                            assert!(
                                (got - reference).abs() <= tol(n, bound),
                                "{ctx} {name}: {got} vs scalar {reference} (bound {bound})"
                            );
                        }
                    }
                }
            }
        }
        for (name, f) in &impls {
            assert_eq!(f(0, &[], &[]), 0.0, "{t:?} {name}");
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert!(seen_simd, "a SIMD path should have been tested on this CPU");
    }
}

#[test]
fn dot_impls_catch_a_wrong_code() {
    // One flipped bit in one plane must change every implementation's result.
    let mut r = rng(31);
    for t in affine_types() {
        let n = lens(t)[0];
        let w = affine_row(t, n, 0, &mut r);
        let a = q8_1_raw(&vec![100i8; n], 1.0);
        let mut w2 = w.clone();
        let hdr = if parts(t).2 { 2 } else { 4 };
        w2[hdr + 4 * (parts(t).0 - 1)] ^= 1; // top plane, element 0
        for (name, f) in dot_impls(GgmlType::Frugal(t)) {
            let (x, y) = (f(n, &w, &a), f(n, &w2, &a));
            let d = f16_at(&w) as f64;
            let want = d * 100.0 * (1u32 << (parts(t).0 - 1)) as f64;
            assert!(
                ((x - y).abs() as f64 - want.abs()).abs()
                    <= 1e-3 * want.abs() + 1e-6 * x.abs() as f64,
                "{t:?} {name}: {x} vs {y}, want a difference of {want}"
            );
        }
    }
}

fn w8_row_of(codes: &[i8], d: f32) -> Vec<u8> {
    let mut row = vec![0u8; 8 + codes.len()];
    w8_encode_row(d, codes, &mut row);
    row
}

#[test]
fn w8_dots_equal_scalar_exactly() {
    let mut r = rng(40);
    let tr = traits(GgmlType::Frugal(W8)).unwrap();
    assert_eq!(tr.vec_dot_type, GgmlType::Frugal(I8));
    let impls = dot_impls(GgmlType::Frugal(W8));
    for n in [32, 64, 96, 128, 160, 4096 + 32, 4864] {
        let cases: Vec<(Vec<i8>, Vec<i8>)> = vec![
            (
                (0..n).map(|_| r.gen()).collect(),
                (0..n).map(|_| r.gen_range(-127..=127)).collect(),
            ),
            (vec![-128; n], vec![127; n]),
            (vec![-128; n], vec![-127; n]),
            (vec![127; n], vec![-127; n]),
            (vec![127; n], vec![127; n]),
            (vec![0; n], vec![0; n]),
        ];
        for (k, (wc, xc)) in cases.iter().enumerate() {
            let w = w8_row_of(wc, 0.0123);
            let a = w8_row_of(xc, -0.75);
            let isum: i64 = wc.iter().zip(xc).map(|(&p, &q)| p as i64 * q as i64).sum();
            let want = (0.0123f32 * -0.75f32) * isum as f32;
            for &(name, f) in impls.iter().chain([("dispatched", tr.vec_dot)].iter()) {
                let got = f(n, &w, &a);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "n={n} case {k} {name}: {got} vs {want}"
                );
                // Unaligned, longer rows.
                let mut wl = vec![7u8; 1];
                wl.extend_from_slice(&w);
                wl.extend_from_slice(&[1, 2, 3]);
                let mut al = vec![7u8; 5];
                al.extend_from_slice(&a);
                al.extend_from_slice(&[9; 40]);
                assert_eq!(
                    f(n, &wl[1..], &al[5..]).to_bits(),
                    want.to_bits(),
                    "{name} unaligned"
                );
            }
        }
    }
}

#[test]
fn w8_dot_largest_rows_do_not_overflow() {
    let n = frugal::scalar::W8_MAX_N;
    for (wq, xq) in [(-128i8, 127i8), (-128, -127), (127, 127)] {
        let w = w8_row_of(&vec![wq; n], 1.0);
        let a = w8_row_of(&vec![xq; n], 1.0);
        let want = (wq as i64 * xq as i64 * n as i64) as f32;
        for (name, f) in dot_impls(GgmlType::Frugal(W8)) {
            assert_eq!(f(n, &w, &a), want, "{name} {wq}x{xq}");
        }
    }
}

#[test]
fn traits_cover_every_frugal_type() {
    for &t in FrugalType::all() {
        let ty = GgmlType::Frugal(t);
        let tr = traits(ty).unwrap_or_else(|| panic!("{ty}: no kernels"));
        assert!(tr.from_float.is_some());
        let sparse = matches!(t, FrugalType::SparseQ8 { .. } | FrugalType::Sparse24Q8);
        let want = match detected_isa() {
            // The sparse types' AVX-512 kernels also need VBMI and VBMI2.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if sparse && !frugal_kernels::sparse::avx512::available() => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        };
        assert_eq!(tr.isa, want, "{ty}");
        // The model loader's check: rows of whole vec_dot_type blocks.
        for n in lens_any(t) {
            assert!(n.is_multiple_of(tr.vec_dot_type.block_size()));
            assert!(ty.row_bytes(n as u64).is_some());
        }
    }
}

fn lens_any(t: FrugalType) -> Vec<usize> {
    match t {
        FrugalType::Affine { .. } => lens(t),
        FrugalType::SparseQ8 { .. } => vec![64, 896],
        _ => vec![32, 896],
    }
}

// ---------------------------------------------------------------- dequantize, matmul

#[test]
fn dequantize_rows_handles_row_wise_types() {
    let mut r = rng(50);
    let ty = GgmlType::Frugal(FrugalType::Affine {
        bits: 4,
        group: 0,
        sym: false,
    });
    let (rows, cols) = (3, 96);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.gen_range(-1.0..1.0)).collect();
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut q = vec![0u8; rows * rb];
    let tr = traits(ty).unwrap();
    for i in 0..rows {
        (tr.from_float.unwrap())(&x[i * cols..(i + 1) * cols], &mut q[i * rb..(i + 1) * rb]);
    }
    let mut y = vec![0.0f32; rows * cols];
    let err = dequantize(ty, &q, &mut y).unwrap_err();
    assert!(err.0.contains("dequantize_rows"), "{err}");
    dequantize_rows(ty, &q, &mut y, cols).unwrap();
    for i in 0..rows {
        let mut one = vec![0.0f32; cols];
        (tr.to_float)(&q[i * rb..(i + 1) * rb], &mut one);
        assert_eq!(&y[i * cols..(i + 1) * cols], &one[..]);
    }
    assert!(dequantize_rows(ty, &q, &mut y, 32).is_err());
    assert!(dequantize_rows(ty, &q[1..], &mut y, cols).is_err());
    assert!(dequantize_rows(ty, &q, &mut y[..cols * 2], cols).is_err());
    assert!(dequantize_rows(ty, &[], &mut [], 0).is_ok());
    // Grouped frugal types and ggml types still go through either.
    let g = GgmlType::Frugal(FrugalType::Affine {
        bits: 3,
        group: 32,
        sym: true,
    });
    let mut qg = vec![0u8; g.row_bytes((rows * cols) as u64).unwrap() as usize];
    (traits(g).unwrap().from_float.unwrap())(&x, &mut qg);
    let (mut a, mut b) = (vec![0.0f32; rows * cols], vec![0.0f32; rows * cols]);
    dequantize(g, &qg, &mut a).unwrap();
    dequantize_rows(g, &qg, &mut b, cols).unwrap();
    assert_eq!(a, b);
}

/// matmul of one type against a plain f64 product of the dequantized
/// weights and dequantized activations.
fn check_matmul(ty: GgmlType, rows: usize, cols: usize, n_tok: usize, r: &mut StdRng) {
    let t = match ty {
        GgmlType::Frugal(t) => t,
        _ => unreachable!(),
    };
    let tr = traits(ty).unwrap();
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut w: Vec<f32> = (0..rows * cols)
        .map(|_| r.gen_range(-1.0f32..1.0))
        .collect();
    for row in 0..rows {
        if row % 4 == 1 {
            w[row * cols..(row + 1) * cols]
                .iter_mut()
                .for_each(|v| *v += 2.0);
        }
    }
    let mut wq = vec![0u8; rows * rb];
    for row in 0..rows {
        (tr.from_float.unwrap())(
            &w[row * cols..(row + 1) * cols],
            &mut wq[row * rb..(row + 1) * rb],
        );
    }
    let mut wd = vec![0.0f32; rows * cols];
    dequantize_rows(ty, &wq, &mut wd, cols).unwrap();
    let x: Vec<f32> = (0..n_tok * cols)
        .map(|i| r.gen_range(-1.0f32..1.0) * if (i / cols) % 3 == 2 { 50.0 } else { 1.0 })
        .collect();
    let m = QMatrix::new(ty, rows, cols, &wq);
    let mut acts = QuantizedActs::new();
    let pool2 = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool2.install(|| acts.quantize(tr.vec_dot_type, &x, n_tok, cols));
    let arb = tr.vec_dot_type.row_bytes(cols as u64).unwrap() as usize;
    let mut xd = vec![0.0f32; n_tok * cols];
    for tok in 0..n_tok {
        assert_eq!(acts.row(tok).len(), arb);
        // Row by row: the activation type may have a header per row.
        dequantize_rows(
            tr.vec_dot_type,
            acts.row(tok),
            &mut xd[tok * cols..(tok + 1) * cols],
            cols,
        )
        .unwrap();
        if tr.vec_dot_type == GgmlType::Frugal(I8) {
            let mut one = vec![0u8; arb];
            (traits(tr.vec_dot_type).unwrap().from_float.unwrap())(
                &x[tok * cols..(tok + 1) * cols],
                &mut one,
            );
            assert_eq!(acts.row(tok), &one[..], "token {tok} quantized as one row");
        }
    }
    let mut out1 = vec![f32::NAN; n_tok * rows];
    let mut out2 = vec![f32::NAN; n_tok * rows];
    let mut reference = vec![f32::NAN; n_tok * rows];
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| matmul(&m, &acts, &mut out1));
    pool2.install(|| matmul(&m, &acts, &mut out2));
    matmul_ref(&m, &acts, &mut reference);
    assert_eq!(out1, out2, "{ty}: 1 and 2 threads differ");
    let asym = matches!(t, FrugalType::Affine { sym: false, .. });
    for tok in 0..n_tok {
        let xr = &xd[tok * cols..(tok + 1) * cols];
        let arow = acts.row(tok);
        for row in 0..rows {
            let wr = &wd[row * cols..(row + 1) * cols];
            let naive: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
            let abs: f64 = wr
                .iter()
                .zip(xr)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            // Asymmetric types use Q8_1's f16 block sums s ≈ d Σq: add their deviation.
            let mut sdev = 0.0f64;
            if asym {
                let (mut params, mut codes) = (Vec::new(), Vec::new());
                affine_decode_row(t, m.row(row), &mut params, &mut codes);
                let gl = cols / params.len();
                for c in 0..cols / 32 {
                    let blk = &arow[c * 36..][..36];
                    let sum: i32 = blk[4..].iter().map(|&q| q as i8 as i32).sum();
                    let dev = f16_at(&blk[2..]) as f64 - f16_at(blk) as f64 * sum as f64;
                    sdev += (params[c * 32 / gl].1 as f64 * dev).abs();
                }
            }
            let i = tok * rows + row;
            let ctx = format!("{ty} {rows}x{cols} n_tok={n_tok} t={tok} r={row}");
            assert!(
                (out1[i] as f64 - naive).abs() <= 1e-5 * abs + 1.001 * sdev + 1e-6,
                "{ctx}: {} vs naive {naive} (abs {abs}, sdev {sdev})",
                out1[i]
            );
            assert!(
                (out1[i] as f64 - reference[i] as f64).abs() <= 1e-5 * abs + 1e-6,
                "{ctx}: {} vs scalar reference {}",
                out1[i],
                reference[i]
            );
        }
    }
}

#[test]
fn matmul_matches_dequantized_product() {
    let mut r = rng(60);
    for &t in FrugalType::all() {
        if t == I8 {
            continue;
        }
        let ty = GgmlType::Frugal(t);
        let cols = match t {
            FrugalType::Affine { group: 0, .. } => 224,
            _ => 512,
        };
        for n_tok in [1, 3, 40] {
            check_matmul(ty, 33, cols, n_tok, &mut r);
        }
    }
}
