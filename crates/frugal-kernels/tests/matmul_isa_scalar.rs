//! The matmul with kernels limited to scalar (FRUGAL_ISA=scalar), to run the
//! generic per-(row, token) path and the scalar dot products on this CPU too.

mod matmul_common;

fn limit_isa() {
    // Set before anything reads the ISA in this process (one test binary).
    std::env::set_var("FRUGAL_ISA", "scalar");
    assert_eq!(
        frugal_kernels::traits(frugal_formats::GgmlType::Q4_1)
            .unwrap()
            .isa,
        "scalar"
    );
}

#[test]
fn matmul_matches_naive_and_reference_scalar() {
    limit_isa();
    matmul_common::check_all(200);
    matmul_common::check_reuse(201);
}
