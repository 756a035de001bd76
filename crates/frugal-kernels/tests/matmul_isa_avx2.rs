//! The matmul with kernels limited to avx2 (FRUGAL_ISA=avx2), to run the
//! generic per-(row, token) path and the avx2 dot products on this CPU too.

#![cfg(target_arch = "x86_64")]
mod matmul_common;

fn limit_isa() {
    // Set before anything reads the ISA in this process (one test binary).
    std::env::set_var("FRUGAL_ISA", "avx2");
    let want = if frugal_kernels::legacy::avx2::available() {
        "avx2"
    } else {
        "scalar"
    };
    assert_eq!(
        frugal_kernels::traits(frugal_formats::GgmlType::Q4_1)
            .unwrap()
            .isa,
        want
    );
}

#[test]
fn matmul_matches_naive_and_reference_avx2() {
    limit_isa();
    matmul_common::check_all(200);
    matmul_common::check_reuse(201);
}
