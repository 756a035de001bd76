//! The threaded matmul on this CPU's best kernels: every registered type,
//! several shapes, n_tok ∈ {1, 3, 17, 64}, 1 and 2 threads.

mod matmul_common;
use frugal_formats::GgmlType;
use frugal_kernels::matmul::{matmul, QMatrix, QuantizedActs};
use matmul_common::*;

#[test]
fn matmul_matches_naive_and_reference() {
    check_all(100);
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
