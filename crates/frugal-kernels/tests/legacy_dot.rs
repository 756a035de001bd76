//! Legacy-format dot products: every ISA's kernel against an exact f64
//! evaluation of ggml's formula, on random, extreme and zero blocks, odd
//! block counts and unaligned buffers; plus ggml's own results.

mod legacy_common;
use frugal_formats::GgmlType;
use frugal_kernels::legacy::scalar;
use frugal_kernels::traits::{detected_isa, traits, Isa, VecDot};
use legacy_common::*;

const NBS: [usize; 15] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 18, 33, 48, 64];

/// All implementations of the dot product of weight type `ty`, by name.
fn impls(ty: GgmlType) -> Vec<(&'static str, VecDot)> {
    use GgmlType as G;
    let mut v: Vec<(&'static str, VecDot)> = vec![
        ("ref", traits(ty).unwrap().vec_dot_ref),
        ("dispatched", traits(ty).unwrap().vec_dot),
    ];
    v.push((
        "scalar",
        match ty {
            G::Q4_0 => scalar::vec_dot_q4_0_q8_0,
            G::Q4_1 => scalar::vec_dot_q4_1_q8_1,
            G::Q5_0 => scalar::vec_dot_q5_0_q8_0,
            G::Q5_1 => scalar::vec_dot_q5_1_q8_1,
            _ => scalar::vec_dot_q8_0_q8_0,
        },
    ));
    #[cfg(target_arch = "x86_64")]
    {
        use frugal_kernels::legacy::{avx2, avx512};
        if avx2::available() {
            v.push((
                "avx2",
                match ty {
                    G::Q4_0 => avx2::vec_dot_q4_0_q8_0,
                    G::Q4_1 => avx2::vec_dot_q4_1_q8_1,
                    G::Q5_0 => avx2::vec_dot_q5_0_q8_0,
                    G::Q5_1 => avx2::vec_dot_q5_1_q8_1,
                    _ => avx2::vec_dot_q8_0_q8_0,
                },
            ));
        }
        if avx512::available() {
            v.push((
                "avx512",
                match ty {
                    G::Q4_0 => avx512::vec_dot_q4_0_q8_0,
                    G::Q4_1 => avx512::vec_dot_q4_1_q8_1,
                    G::Q5_0 => avx512::vec_dot_q5_0_q8_0,
                    G::Q5_1 => avx512::vec_dot_q5_1_q8_1,
                    _ => avx512::vec_dot_q8_0_q8_0,
                },
            ));
        }
    }
    v
}

fn tol(nb: usize, bound: f64) -> f64 {
    2e-7 * (nb as f64 + 8.0) * bound + 1e-30
}

#[test]
fn every_isa_matches_exact_dot() {
    let mut r = rng(1);
    for ty in WEIGHT_TYPES {
        let aty = act_type(ty);
        for mode in MODES {
            for nb in NBS {
                let w = weight_blocks(ty, nb, mode, &mut r);
                let a = act_blocks(aty, nb, mode, &mut r);
                let (exact, bound) = exact_dot(ty, &w, &a, nb);
                let (wm, am) = (Misaligned::new(&w), Misaligned::new(&a));
                for (name, f) in impls(ty) {
                    for (wb, ab) in [(&w[..], &a[..]), (wm.get(), am.get())] {
                        let got = f(nb * 32, wb, ab) as f64;
                        assert!(
                            (got - exact).abs() <= tol(nb, bound),
                            "{ty} {name} {mode:?} nb={nb}: got {got}, exact {exact}, bound {bound}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn simd_agrees_with_scalar_closely() {
    // Same integer sums, only float summation order differs.
    let mut r = rng(2);
    for ty in WEIGHT_TYPES {
        let aty = act_type(ty);
        for nb in NBS {
            let w = weight_blocks(ty, nb, Mode::Random, &mut r);
            let a = act_blocks(aty, nb, Mode::Random, &mut r);
            let (_, bound) = exact_dot(ty, &w, &a, nb);
            let impls = impls(ty);
            let reference = (impls[0].1)(nb * 32, &w, &a) as f64;
            for (name, f) in &impls {
                let got = f(nb * 32, &w, &a) as f64;
                assert!(
                    (got - reference).abs() <= 1e-6 * (nb as f64 + 4.0) * bound,
                    "{ty} {name} nb={nb}: {got} vs scalar {reference}"
                );
            }
        }
    }
}

#[test]
fn kernels_read_only_n_elements() {
    // Longer slices than needed: only the first n/32 blocks count.
    let mut r = rng(3);
    for ty in WEIGHT_TYPES {
        let aty = act_type(ty);
        let w = weight_blocks(ty, 9, Mode::Random, &mut r);
        let a = act_blocks(aty, 9, Mode::Random, &mut r);
        let (exact, bound) = exact_dot(ty, &w, &a, 5);
        for (name, f) in impls(ty) {
            let got = f(5 * 32, &w, &a) as f64;
            assert!((got - exact).abs() <= tol(5, bound), "{ty} {name}");
        }
    }
}

#[test]
fn zero_length_dot_is_zero() {
    for ty in WEIGHT_TYPES {
        for (name, f) in impls(ty) {
            assert_eq!(f(0, &[], &[]), 0.0, "{ty} {name}");
        }
    }
}

#[test]
#[should_panic]
fn short_weight_row_panics() {
    let t = traits(GgmlType::Q4_1).unwrap();
    let a = vec![0u8; 2 * 36];
    (t.vec_dot)(64, &[0u8; 20], &a);
}

#[test]
#[should_panic]
fn partial_block_panics() {
    let t = traits(GgmlType::Q8_0).unwrap();
    (t.vec_dot)(40, &[0u8; 68], &[0u8; 68]);
}

#[test]
fn traits_table_entries() {
    use GgmlType as G;
    let isa = match detected_isa() {
        Isa::Avx512 => "avx512",
        Isa::Avx2 => "avx2",
        Isa::Scalar => "scalar",
    };
    for (ty, dot) in [
        (G::Q4_0, G::Q8_0),
        (G::Q4_1, G::Q8_1),
        (G::Q5_0, G::Q8_0),
        (G::Q5_1, G::Q8_1),
        (G::Q8_0, G::Q8_0),
    ] {
        let t = traits(ty).unwrap();
        assert_eq!(t.ty, ty);
        assert_eq!(t.vec_dot_type, dot);
        assert_eq!(t.isa, isa, "{ty}");
        assert!(t.from_float.is_some());
    }
    let t = traits(G::Q8_1).unwrap();
    assert_eq!(t.vec_dot_type, G::Q8_1);
    assert!(t.from_float.is_some());
}

#[test]
fn q8_1_dot_q8_1() {
    let mut r = rng(4);
    let t = traits(GgmlType::Q8_1).unwrap();
    for nb in [1, 3, 8] {
        let w = act_blocks(GgmlType::Q8_1, nb, Mode::Random, &mut r);
        let a = act_blocks(GgmlType::Q8_1, nb, Mode::Random, &mut r);
        let (mut exact, mut bound) = (0.0f64, 0.0f64);
        for i in 0..nb {
            let (dw, _, qw) = decode_act(GgmlType::Q8_1, &w[i * 36..]);
            let (da, _, qa) = decode_act(GgmlType::Q8_1, &a[i * 36..]);
            for j in 0..32 {
                let p = dw as f64 * da as f64 * (qw[j] * qa[j]) as f64;
                exact += p;
                bound += p.abs();
            }
        }
        let got = (t.vec_dot)(nb * 32, &w, &a) as f64;
        assert!((got - exact).abs() <= tol(nb, bound));
    }
}

/// ggml's own `ggml_vec_dot_*` results on its reference-quantized blocks
/// (tests/legacy_data, made by gold.c against libggml).
#[test]
fn matches_ggml_dot_products() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/legacy_data/");
    let read = |f: &str| std::fs::read(format!("{dir}{f}")).unwrap();
    let dots: Vec<f32> = read("dots.f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let names = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"];
    let nbs = [1usize, 2, 3, 5, 8, 17, 48];
    for (ti, (ty, name)) in WEIGHT_TYPES.iter().zip(names).enumerate() {
        let aty = act_type(*ty);
        let aname = if aty == GgmlType::Q8_1 {
            "q8_1"
        } else {
            "q8_0"
        };
        let w = read(&format!("{name}.bin"));
        let a = read(&format!("{aname}.bin"));
        let (ws, asz) = (ty.type_size(), aty.type_size());
        for (i, &nb) in nbs.iter().enumerate() {
            let wr = &w[16 * ws..(16 + nb) * ws];
            let ar = &a[48 * asz..(48 + nb) * asz];
            let (_, bound) = exact_dot(*ty, wr, ar, nb);
            let want = dots[ti * nbs.len() + i] as f64;
            for (iname, f) in impls(*ty) {
                let got = f(nb * 32, wr, ar) as f64;
                assert!(
                    (got - want).abs() <= tol(nb, bound),
                    "{ty} {iname} nb={nb}: {got} vs ggml {want}"
                );
            }
        }
    }
}
