//! k-quant kernels: every SIMD dot product against the scalar reference, the
//! scalar reference against an f64 dot of dequantized values, Q8_K
//! quantization (SIMD bit-identical to the reference, error bound), and
//! dequantization against hand-computed blocks.

use frugal_formats::GgmlType;
use frugal_kernels::kquants::{self, blocks::*, scalar};
use frugal_kernels::{detected_isa, traits, Isa};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Dot = fn(usize, &[u8], &[u8]) -> f32;

const WEIGHT_TYPES: [GgmlType; 5] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn scalar_dot(ty: GgmlType) -> Dot {
    match ty {
        GgmlType::Q2K => scalar::vec_dot_q2k_q8k,
        GgmlType::Q3K => scalar::vec_dot_q3k_q8k,
        GgmlType::Q4K => scalar::vec_dot_q4k_q8k,
        GgmlType::Q5K => scalar::vec_dot_q5k_q8k,
        GgmlType::Q6K => scalar::vec_dot_q6k_q8k,
        _ => unreachable!(),
    }
}

/// The SIMD paths this CPU can run, by name. Set FRUGAL_REQUIRE_SIMD=avx512
/// (or avx2) to fail instead of skipping when a path is missing.
fn simd_dots(ty: GgmlType) -> Vec<(&'static str, Dot)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Dot)> = Vec::new();
    let require = std::env::var("FRUGAL_REQUIRE_SIMD").unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    {
        use kquants::{avx2, avx512};
        if avx2::is_available() {
            v.push((
                "avx2",
                match ty {
                    GgmlType::Q2K => avx2::vec_dot_q2k_q8k,
                    GgmlType::Q3K => avx2::vec_dot_q3k_q8k,
                    GgmlType::Q4K => avx2::vec_dot_q4k_q8k,
                    GgmlType::Q5K => avx2::vec_dot_q5k_q8k,
                    GgmlType::Q6K => avx2::vec_dot_q6k_q8k,
                    _ => unreachable!(),
                },
            ));
        }
        if avx512::is_available() {
            v.push((
                "avx512",
                match ty {
                    GgmlType::Q2K => avx512::vec_dot_q2k_q8k,
                    GgmlType::Q3K => avx512::vec_dot_q3k_q8k,
                    GgmlType::Q4K => avx512::vec_dot_q4k_q8k,
                    GgmlType::Q5K => avx512::vec_dot_q5k_q8k,
                    GgmlType::Q6K => avx512::vec_dot_q6k_q8k,
                    _ => unreachable!(),
                },
            ));
        }
    }
    for need in ["avx2", "avx512"] {
        if require.contains(need) {
            assert!(
                v.iter().any(|(n, _)| *n == need),
                "FRUGAL_REQUIRE_SIMD: no {need} on this CPU"
            );
        } else if !v.iter().any(|(n, _)| *n == need) {
            eprintln!("note: {need} not available on this CPU, its {ty} kernel is not tested");
        }
    }
    v
}

/// Byte offsets of the f16 super-block scales (d, and dmin where there is one).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => unreachable!(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Fill {
    /// Random bytes everywhere.
    Random,
    /// Every quant and scale bit set (largest quants, scales and mins).
    Ones,
    /// All zero bytes.
    Zeros,
    /// Bytes alternating 0xFF / 0x00 per 32-byte run.
    Stripes,
}

fn put_f16(buf: &mut [u8], off: usize, v: f32) {
    buf[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `nb` weight blocks of `ty`: quant and scale bytes per `fill`, f16 scales
/// random and sane (finite, from 1e-4 to 1 in magnitude, either sign).
fn weights(ty: GgmlType, nb: usize, fill: Fill, rng: &mut StdRng) -> Vec<u8> {
    let sz = ty.type_size();
    let mut w: Vec<u8> = match fill {
        Fill::Random => (0..nb * sz).map(|_| rng.gen()).collect(),
        Fill::Ones => vec![0xFF; nb * sz],
        Fill::Zeros => vec![0; nb * sz],
        Fill::Stripes => (0..nb * sz)
            .map(|i| if (i / 32) % 2 == 0 { 0xFF } else { 0 })
            .collect(),
    };
    for b in 0..nb {
        for &off in f16_fields(ty) {
            let mag = 10f32.powf(rng.gen_range(-4.0..0.0));
            let v = if rng.gen_bool(0.2) { -mag } else { mag };
            put_f16(&mut w, b * sz + off, v);
        }
    }
    w
}

/// `nb` Q8_K blocks with consistent `bsums`. `extreme` picks quants from
/// {-128, -127, 127} only.
fn activations(nb: usize, extreme: bool, rng: &mut StdRng) -> Vec<u8> {
    let mut out = vec![0u8; nb * 292];
    for i in 0..nb {
        let qs: [i8; 256] = std::array::from_fn(|_| {
            if extreme {
                [-128i8, -127, 127][rng.gen_range(0..3)]
            } else {
                rng.gen()
            }
        });
        let bsums: [i16; 16] =
            std::array::from_fn(|g| qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum());
        let d = rng.gen_range(1e-4f32..0.05);
        write_block(&mut out, i, &BlockQ8K { d, qs, bsums });
    }
    out
}

/// The same bytes at an odd address, to exercise unaligned loads.
fn misaligned(bytes: &[u8], shift: usize) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; bytes.len() + 64];
    let base = buf.as_ptr().align_offset(64) + shift;
    buf[base..base + bytes.len()].copy_from_slice(bytes);
    (buf, base)
}

fn deq(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    (traits(ty).unwrap().to_float)(&bytes[..ty.row_bytes(n as u64).unwrap() as usize], &mut y);
    y
}

/// Sum over elements of |activation| * (|scale part| + |min part|) of the
/// weight: the scale of the rounding error of any evaluation order.
fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let wf = deq(ty, w, n);
    let af = deq(GgmlType::Q8K, a, n);
    // The scale part alone: dequantize with dmin = 0 (Q2_K, Q4_K, Q5_K).
    let mut w0 = w.to_vec();
    if f16_fields(ty).len() == 2 {
        let sz = ty.type_size();
        for b in 0..n / 256 {
            put_f16(&mut w0, b * sz + f16_fields(ty)[1], 0.0);
        }
    }
    let sf = deq(ty, &w0, n);
    (0..n)
        .map(|i| {
            (af[i] as f64).abs() * ((sf[i] as f64).abs() + (sf[i] as f64 - wf[i] as f64).abs())
        })
        .sum()
}

fn tol(nb: usize, mag: f64) -> f64 {
    (nb as f64 + 8.0) * 4.0 * f32::EPSILON as f64 * mag + 1e-30
}

fn check_simd(ty: GgmlType, nb: usize, fill: Fill, extreme: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = nb * 256;
    let w = weights(ty, nb, fill, &mut rng);
    let a = activations(nb, extreme, &mut rng);
    let r = scalar_dot(ty)(n, &w, &a);
    let t = tol(nb, magnitude(ty, &w, &a, n));
    let (wm, wo) = misaligned(&w, 1);
    let (am, ao) = misaligned(&a, 3);
    for (name, dot) in simd_dots(ty) {
        let s = dot(n, &w, &a);
        assert!(
            (s as f64 - r as f64).abs() <= t,
            "{ty} {name} nb={nb} {fill:?} extreme={extreme} seed={seed}: simd {s} vs scalar {r} (tol {t})"
        );
        let s2 = dot(n, &wm[wo..wo + w.len()], &am[ao..ao + a.len()]);
        assert_eq!(
            s.to_bits(),
            s2.to_bits(),
            "{ty} {name}: result depends on alignment"
        );
    }
}

#[test]
fn simd_dots_match_scalar_on_random_blocks() {
    for ty in WEIGHT_TYPES {
        for (k, nb) in [1usize, 2, 3, 5, 8, 19, 33, 64].into_iter().enumerate() {
            for seed in 0..4u64 {
                check_simd(ty, nb, Fill::Random, false, 1000 * k as u64 + seed);
            }
        }
    }
}

#[test]
fn simd_dots_match_scalar_on_extreme_blocks() {
    for ty in WEIGHT_TYPES {
        for fill in [Fill::Random, Fill::Ones, Fill::Zeros, Fill::Stripes] {
            for extreme in [false, true] {
                for (seed, nb) in [(1u64, 1usize), (2, 4), (3, 19)] {
                    check_simd(ty, nb, fill, extreme, seed);
                }
            }
        }
    }
}

/// A hand-built worst case for 16-bit intermediates: largest unsigned quants
/// and largest scales against all -128 (and all +127) activations.
#[test]
fn simd_dots_saturation_corner() {
    for ty in WEIGHT_TYPES {
        for q in [-128i8, 127] {
            let mut rng = StdRng::seed_from_u64(7);
            let w = weights(ty, 2, Fill::Ones, &mut rng);
            let mut a = vec![0u8; 2 * 292];
            for i in 0..2 {
                write_block(
                    &mut a,
                    i,
                    &BlockQ8K {
                        d: 0.01,
                        qs: [q; 256],
                        bsums: [16 * q as i16; 16],
                    },
                );
            }
            let r = scalar_dot(ty)(512, &w, &a);
            let t = tol(2, magnitude(ty, &w, &a, 512));
            for (name, dot) in simd_dots(ty) {
                let s = dot(512, &w, &a);
                assert!((s - r).abs() as f64 <= t, "{ty} {name} q8={q}: {s} vs {r}");
            }
        }
    }
}

/// The scalar kernels against an f64 dot product of the dequantized weights
/// and dequantized activations: two independent decodings of the formats.
#[test]
fn scalar_dot_matches_dequantized_f64() {
    for ty in WEIGHT_TYPES {
        for (seed, nb, fill, extreme) in [
            (1u64, 1usize, Fill::Random, false),
            (2, 7, Fill::Random, false),
            (3, 19, Fill::Random, true),
            (4, 2, Fill::Ones, true),
            (5, 3, Fill::Stripes, false),
        ] {
            let mut rng = StdRng::seed_from_u64(seed);
            let n = nb * 256;
            let w = weights(ty, nb, fill, &mut rng);
            let a = activations(nb, extreme, &mut rng);
            let wf = deq(ty, &w, n);
            let af = deq(GgmlType::Q8K, &a, n);
            let exact: f64 = wf.iter().zip(&af).map(|(&x, &y)| x as f64 * y as f64).sum();
            let got = scalar_dot(ty)(n, &w, &a) as f64;
            let t = tol(nb, magnitude(ty, &w, &a, n));
            assert!(
                (got - exact).abs() <= t,
                "{ty} seed {seed}: scalar {got} vs f64 {exact} (tol {t})"
            );
            // And the scale is meaningful: a wrong kernel would be far off.
            assert!(exact.abs() > 0.0 || matches!(fill, Fill::Zeros));
        }
    }
}

#[test]
fn traits_table_has_k_quants() {
    let isa = detected_isa();
    for ty in WEIGHT_TYPES {
        let t = traits(ty).expect("k-quant registered");
        assert_eq!(t.ty, ty);
        assert_eq!(t.vec_dot_type, GgmlType::Q8K);
        assert!(t.from_float.is_some());
        let expect = match isa {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        };
        assert_eq!(t.isa, expect, "{ty}");
        let mut rng = StdRng::seed_from_u64(11);
        let w = weights(ty, 5, Fill::Random, &mut rng);
        let a = activations(5, false, &mut rng);
        let (v, r) = ((t.vec_dot)(1280, &w, &a), (t.vec_dot_ref)(1280, &w, &a));
        assert!(
            (v - r).abs() as f64 <= tol(5, magnitude(ty, &w, &a, 1280)),
            "{ty}: {v} vs {r}"
        );
    }
    let q8 = traits(GgmlType::Q8K).expect("Q8_K registered");
    assert_eq!(q8.vec_dot_type, GgmlType::Q8K);
    assert!(q8.from_float.is_some());
}

#[test]
#[should_panic(expected = "whole number")]
fn dot_rejects_partial_blocks() {
    let w = vec![0u8; 144];
    let a = vec![0u8; 292];
    (traits(GgmlType::Q4K).unwrap().vec_dot)(200, &w, &a);
}

#[test]
#[should_panic(expected = "need")]
fn dot_rejects_short_activations() {
    let w = vec![0u8; 2 * 210];
    let a = vec![0u8; 292];
    (traits(GgmlType::Q6K).unwrap().vec_dot)(512, &w, &a);
}

#[cfg(target_arch = "x86_64")]
#[test]
#[should_panic(expected = "need")]
fn simd_dot_rejects_short_weights() {
    let w = vec![0u8; 143];
    let a = vec![0u8; 292];
    if kquants::avx512::is_available() {
        kquants::avx512::vec_dot_q4k_q8k(256, &w, &a);
    }
    kquants::avx2::vec_dot_q4k_q8k(256, &w, &a);
}

// ---------------------------------------------------------------------------
// Q8_K quantization

type Quant = fn(&[f32], &mut [u8]);

fn q8k_paths() -> Vec<(&'static str, Quant)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Quant)> = vec![("dispatch", kquants::quantize_row_q8_k)];
    #[cfg(target_arch = "x86_64")]
    {
        if kquants::avx2::is_available() {
            v.push(("avx2", kquants::avx2::quantize_row_q8k));
        }
        if kquants::avx512::is_available() {
            v.push(("avx512", kquants::avx512::quantize_row_q8k));
        }
    }
    v
}

fn q8k_inputs() -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut cases: Vec<Vec<f32>> = Vec::new();
    for scale in [1e-30f32, 1e-6, 1.0, 3.7, 1e6, 1e30] {
        cases.push(
            (0..1024)
                .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
                .collect(),
        );
    }
    // Zeros (incl. -0.0), a single spike, ties at .5 after scaling, repeated maxima of both signs.
    cases.push(vec![0.0; 256]);
    cases.push(
        (0..256)
            .map(|i| if i % 2 == 0 { -0.0 } else { 0.0 })
            .collect(),
    );
    cases.push((0..256).map(|i| if i == 77 { -5.0 } else { 0.0 }).collect());
    cases.push((0..256).map(|i| (i as f32 - 127.0) + 0.5).collect());
    cases.push(
        (0..256)
            .map(|i| {
                if i == 3 {
                    -2.0
                } else if i == 9 {
                    2.0
                } else {
                    i as f32 / 300.0
                }
            })
            .collect(),
    );
    cases.push(
        (0..256)
            .map(|i| {
                if i == 3 {
                    2.0
                } else if i == 9 {
                    -2.0
                } else {
                    -(i as f32) / 300.0
                }
            })
            .collect(),
    );
    cases.push(
        (0..256)
            .map(|i| if i == 255 { 1.0 } else { 1e-3 })
            .collect(),
    );
    // Subnormals and a mix of magnitudes.
    cases.push(
        (0..512)
            .map(|i| f32::from_bits(1 + i as u32 * 3) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect(),
    );
    cases.push(
        (0..512)
            .map(|i| rng.gen_range(-1.0f32..1.0) * 10f32.powi(i % 9 - 4))
            .collect(),
    );
    cases.push(
        (0..256)
            .map(|i| if i == 5 { f32::INFINITY } else { i as f32 })
            .collect(),
    );
    cases
}

#[test]
fn q8k_simd_is_bit_identical_to_reference() {
    for (c, x) in q8k_inputs().iter().enumerate() {
        let mut want = vec![0u8; x.len() / 256 * 292];
        scalar::quantize_row_q8k_ref(x, &mut want);
        for (name, f) in q8k_paths() {
            let mut got = vec![0xAAu8; want.len()];
            f(x, &mut got);
            assert!(
                got == want,
                "Q8_K {name} differs from the reference on case {c}"
            );
            // Unaligned output.
            let mut buf = vec![0u8; want.len() + 1];
            f(x, &mut buf[1..]);
            assert!(
                buf[1..] == want[..],
                "Q8_K {name} differs with unaligned output on case {c}"
            );
        }
    }
}

#[test]
fn q8k_round_trip_and_sums() {
    for x in q8k_inputs() {
        let mut q = vec![0u8; x.len() / 256 * 292];
        kquants::quantize_row_q8_k(&x, &mut q);
        for (i, xb) in x.chunks_exact(256).enumerate() {
            let b: BlockQ8K = read_block(&q, i);
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            if !amax.is_finite() {
                continue; // infinities: only bit-identity with the reference is promised
            }
            if (127.0 / amax).is_infinite() && amax > 0.0 {
                // 127/max overflows: ggml gives d = 0 and zero quants.
                assert!(
                    b.d == 0.0 && b.qs.iter().all(|&v| v == 0),
                    "degenerate block"
                );
                continue;
            }
            // d = -max/127 in magnitude, sign from the first largest element.
            assert!(
                (b.d.abs() - amax / 127.0).abs() <= amax / 127.0 * 1e-6,
                "d {} amax {amax}",
                b.d
            );
            if amax > 0.0 {
                let first = xb.iter().position(|v| v.abs() == amax).unwrap();
                assert_eq!(b.qs[first], -127, "first largest element maps to -127");
                assert_eq!(b.d.is_sign_negative(), xb[first] > 0.0);
            }
            for (g, s) in b.bsums.iter().enumerate() {
                assert_eq!(
                    *s as i32,
                    b.qs[16 * g..16 * g + 16]
                        .iter()
                        .map(|&v| v as i32)
                        .sum::<i32>()
                );
            }
            for (j, (&v, &qv)) in xb.iter().zip(b.qs.iter()).enumerate() {
                assert!(qv >= -127, "quant {qv} below -127");
                let err = (v as f64 - b.d as f64 * qv as f64).abs();
                assert!(
                    err <= b.d.abs() as f64 * 0.5 * (1.0 + 1e-5) + 1e-38,
                    "element {j}: {v} -> {qv} * {}",
                    b.d
                );
            }
        }
    }
}

#[test]
fn q8k_known_block() {
    // Largest magnitude 2.54 first appears as -2.54 at index 3.
    let mut x = [0.0f32; 256];
    x[0] = 1.0;
    x[3] = -2.54;
    x[10] = 2.54;
    x[20] = 0.004;
    let mut q = vec![0u8; 292];
    scalar::quantize_row_q8k_ref(&x, &mut q);
    let b: BlockQ8K = read_block(&q, 0);
    let iscale = -127.0f32 / -2.54;
    assert_eq!(b.d, 1.0 / iscale);
    assert_eq!(
        (b.qs[0], b.qs[3], b.qs[10], b.qs[20], b.qs[1]),
        (50, -127, 127, 0, 0)
    );
    assert_eq!(b.bsums[0], 50 - 127 + 127);
    assert_eq!(b.bsums[1], 0);
}

// ---------------------------------------------------------------------------
// Dequantization against hand-computed blocks.

#[test]
fn dequant_q4k_hand_example() {
    // Sub-block scales [1, 2, 3, 4, 17, 33, 63, 5], mins [0, 1, 2, 3, 20, 40, 62, 7],
    // packed by hand: bytes 0-3 = sc[0..4] | (sc[4..8] >> 4) << 6,
    // bytes 4-7 = m[0..4] | (m[4..8] >> 4) << 6, bytes 8-11 = sc[4..8] & 15 | (m[4..8] & 15) << 4.
    let scales = [65u8, 130, 195, 4, 64, 129, 194, 3, 65, 129, 239, 117];
    let qs: [u8; 128] = std::array::from_fn(|k| k as u8);
    let b = BlockQ4K {
        d: f16::from_f32(0.5),
        dmin: f16::from_f32(0.25),
        scales,
        qs,
    };
    let y = deq(GgmlType::Q4K, block_bytes(&b), 256);
    let sc = [1.0f32, 2.0, 3.0, 4.0, 17.0, 33.0, 63.0, 5.0];
    let mn = [0.0f32, 1.0, 2.0, 3.0, 20.0, 40.0, 62.0, 7.0];
    for (e, &v) in y.iter().enumerate() {
        let (j, l) = (e / 64, e % 64);
        // qs byte 32j + l%32: low nibble for l < 32, high nibble otherwise.
        let byte = (32 * j + l % 32) as u8;
        let q = if l < 32 { byte & 15 } else { byte >> 4 };
        assert_eq!(
            v,
            0.5 * sc[e / 32] * q as f32 - 0.25 * mn[e / 32],
            "element {e}"
        );
    }
    // A few by hand.
    for (e, want) in [
        (0, 0.0),
        (5, 2.5),
        (40, -0.25),
        (50, 0.75),
        (140, 97.0),
        (175, 56.0),
        (200, 236.5),
        (255, 15.75),
    ] {
        assert_eq!(y[e], want, "element {e}");
    }
}

#[test]
fn dequant_q6k_hand_example() {
    let scales: [i8; 16] = [1, -1, 2, -2, 3, -3, 4, -4, 127, -128, 5, 6, 7, 8, 9, 10];
    let ql: [u8; 128] = std::array::from_fn(|k| k as u8);
    let qh: [u8; 64] = std::array::from_fn(|k| (3 * k) as u8);
    let b = BlockQ6K {
        ql,
        qh,
        scales,
        d: f16::from_f32(0.5),
    };
    let y = deq(GgmlType::Q6K, block_bytes(&b), 256);
    for (e, want) in [
        (0, -16.0),
        (1, 8.5),
        (20, 14.0),
        (37, 21.0),
        (70, -24.0),
        (127, 26.0),
        (130, 127.0),
        (150, -384.0),
        (255, 35.0),
    ] {
        assert_eq!(y[e], want, "element {e}");
    }
}

#[test]
fn dequant_q3k_hand_example() {
    // Scales j = 0..16 are 6-bit values v_j, stored as v_j = s_j + 32 with
    // s_j = j - 8: low nibble of byte j (j < 8) or high nibble of byte j - 8,
    // top 2 bits at bits 2*(j/4) of byte 8 + j%4.
    let v: [u8; 16] = std::array::from_fn(|j| (j as i32 - 8 + 32) as u8);
    let mut scales = [0u8; 12];
    for j in 0..16 {
        if j < 8 {
            scales[j] |= v[j] & 15;
        } else {
            scales[j - 8] |= (v[j] & 15) << 4;
        }
        scales[8 + j % 4] |= (v[j] >> 4) << (2 * (j / 4));
    }
    // qs all 0b11_10_01_00: element 32c + l (c = 0..8) has low bits c % 4.
    // hmask bit c set only for even c: high bit adds 4, else the value is low - 4.
    let b = BlockQ3K {
        hmask: [0b0101_0101; 32],
        qs: [0b1110_0100; 64],
        scales,
        d: f16::from_f32(0.25),
    };
    let y = deq(GgmlType::Q3K, block_bytes(&b), 256);
    for (e, &got) in y.iter().enumerate() {
        let c = e / 32;
        let q = (c % 4) as i32 - if c % 2 == 0 { 0 } else { 4 };
        let s = (e / 16) as i32 - 8;
        assert_eq!(got, 0.25 * s as f32 * q as f32, "element {e}");
    }
    assert_eq!(y[0], 0.0); // c=0: q=0
    assert_eq!(y[40], 0.25 * -6.0 * -3.0); // c=1: low 1, no high bit -> -3; group 2 -> s=-6
    assert_eq!(y[255], -1.75); // c=7: low 3, no high bit -> -1; group 15 -> s=7
}
