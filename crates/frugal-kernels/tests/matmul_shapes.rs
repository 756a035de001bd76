//! The threaded matmul on this CPU's best kernels: every registered type,
//! several shapes, n_tok ∈ {1, 3, 17, 64}, 1 and 2 threads.

mod matmul_common;
use frugal_formats::GgmlType;
use frugal_kernels::matmul::{matmul, matmul_many, QMatrix, QuantizedActs};
use frugal_kernels::traits::traits;
use matmul_common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn matmul_matches_naive_and_reference() {
    check_all(100);
}

/// `matmul_many` gives bit-identical results to separate `matmul` calls, for
/// matrices of different types (same activation type) and row counts
/// (including ones that are not multiples of 4 or 16), 1 and 2 threads.
#[test]
fn matmul_many_matches_separate_calls() {
    let mut r = StdRng::seed_from_u64(102);
    for group in [
        [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0],
        [GgmlType::Q4_1, GgmlType::Q5_1, GgmlType::Q4_1],
    ] {
        for cols in [32usize, 160, 576] {
            let cases: Vec<_> = group
                .iter()
                .zip([37usize, 300, 5])
                .map(|(&ty, rows)| make_case(ty, rows, cols, &mut r))
                .collect();
            let ws: Vec<QMatrix> = cases
                .iter()
                .map(|c| QMatrix::new(c.ty, c.rows, c.cols, &c.wbytes))
                .collect();
            let refs: Vec<&QMatrix> = ws.iter().collect();
            for n_tok in [1usize, 3, 17] {
                let x = acts(n_tok, cols, &mut r);
                let mut qa = QuantizedActs::new();
                qa.quantize(traits(group[0]).unwrap().vec_dot_type, &x, n_tok, cols);
                for threads in [1, 2] {
                    let mut sep: Vec<Vec<f32>> =
                        ws.iter().map(|w| vec![f32::NAN; n_tok * w.rows]).collect();
                    let mut many = sep.clone();
                    pool(threads).install(|| {
                        for (w, o) in ws.iter().zip(&mut sep) {
                            matmul(w, &qa, o);
                        }
                        let mut outs: Vec<&mut [f32]> =
                            many.iter_mut().map(|v| v.as_mut_slice()).collect();
                        matmul_many(&refs, &qa, &mut outs);
                    });
                    for (a, b) in sep.iter().zip(&many) {
                        assert!(
                            a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{group:?} cols={cols} n_tok={n_tok} threads={threads}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn quantized_acts_reuse() {
    check_reuse(101);
}

#[test]
fn legacy_and_float_types_are_covered() {
    let t = testable_types();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
    ] {
        assert!(t.contains(&ty), "{ty}");
    }
}

#[test]
fn empty_shapes() {
    let mut acts = QuantizedActs::new();
    acts.quantize(GgmlType::Q8_1, &[], 0, 64);
    let w = QMatrix::new(GgmlType::Q4_1, 3, 64, &[0u8; 3 * 40]);
    let mut out: Vec<f32> = vec![];
    matmul(&w, &acts, &mut out);
    let w0 = QMatrix::new(GgmlType::Q4_1, 0, 64, &[]);
    acts.quantize(GgmlType::Q8_1, &[0.5; 128], 2, 64);
    matmul(&w0, &acts, &mut out);
}

#[test]
#[should_panic(expected = "activations")]
fn wrong_activation_type_panics() {
    let mut acts = QuantizedActs::new();
    acts.quantize(GgmlType::Q8_0, &[1.0; 64], 1, 64);
    let w = QMatrix::new(GgmlType::Q4_1, 1, 64, &[0u8; 40]);
    matmul(&w, &acts, &mut [0.0]);
}

#[test]
#[should_panic(expected = "columns")]
fn wrong_columns_panic() {
    let mut acts = QuantizedActs::new();
    acts.quantize(GgmlType::Q8_0, &[1.0; 64], 1, 64);
    let w = QMatrix::new(GgmlType::Q8_0, 1, 32, &[0u8; 34]);
    matmul(&w, &acts, &mut [0.0]);
}

#[test]
#[should_panic(expected = "output length")]
fn wrong_output_length_panics() {
    let mut acts = QuantizedActs::new();
    acts.quantize(GgmlType::Q8_0, &[1.0; 64], 2, 32);
    let w = QMatrix::new(GgmlType::Q8_0, 1, 32, &[0u8; 34]);
    matmul(&w, &acts, &mut [0.0]);
}

#[test]
#[should_panic(expected = "wrong byte count")]
fn wrong_weight_bytes_panic() {
    QMatrix::new(GgmlType::Q4_0, 2, 32, &[0u8; 35]);
}
