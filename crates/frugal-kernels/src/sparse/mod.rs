//! Kernels of the sparse int8 types, which make pruning pay on a CPU: only
//! the kept weights' codes are stored and read.
//!
//! * `SQ8_{keep}of64` ([`FrugalType::SparseQ8`]): unstructured. Per group
//!   of 4 blocks of 32, two 64-bit bitmaps and 4 scales; the kept codes
//!   packed after the row's headers. At 50 % (keep 32) a weight costs 5.5
//!   bits against Q8_0's 8.5.
//! * `SQ8_2of4` ([`FrugalType::Sparse24Q8`]): 2:4, 16 codes and their 2-bit
//!   positions per block of 32; also 5.5 bits per weight.
//!
//! Both take Q8_0 activations, so their results are Q8_0's for the same
//! kept codes. [`scalar`] holds the references (and the packers that turn
//! pruned Q8_0 rows into these layouts); `avx512` the SIMD dot products and
//! the matrix-vector kernel the matmul uses for them (four rows at a time,
//! on the activations packed for the dense AVX-512 kernels), `avx2` dot
//! products for CPUs without those, all tested against the references.

pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

use crate::traits::{Isa, TypeTraits, VecDot};
use frugal_formats::{FrugalType, GgmlType};

/// The dot products of `t`: the scalar reference, and the AVX2 and AVX-512
/// ones where this CPU has them.
pub fn dot_impls(t: FrugalType) -> Vec<(&'static str, VecDot)> {
    let mut v: Vec<(&'static str, VecDot)> = Vec::new();
    let sparse = matches!(t, FrugalType::SparseQ8 { .. });
    v.push((
        "scalar",
        if sparse {
            scalar::vec_dot_sparse_q8_0
        } else {
            scalar::vec_dot_s24_q8_0
        },
    ));
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        v.push((
            "avx2",
            if sparse {
                avx2::vec_dot_sparse_q8_0
            } else {
                avx2::vec_dot_s24_q8_0
            },
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        v.push((
            "avx512",
            if sparse {
                avx512::vec_dot_sparse_q8_0
            } else {
                avx512::vec_dot_s24_q8_0
            },
        ));
    }
    v
}

/// Adds the sparse types to the traits table.
pub fn register(isa: Isa, table: &mut Vec<TypeTraits>) {
    for &t in FrugalType::all() {
        let (to_float, from_float): (crate::traits::ToFloat, crate::traits::FromFloat) = match t {
            FrugalType::SparseQ8 { .. } => (scalar::dequantize_sparse, scalar::quantize_sparse),
            FrugalType::Sparse24Q8 => (scalar::dequantize_s24, scalar::quantize_s24),
            _ => continue,
        };
        let impls = dot_impls(t);
        // The best this CPU has, within `isa` (AVX-512 CPUs without VBMI2
        // take the AVX2 kernels).
        let allowed: &[&str] = match isa {
            Isa::Avx512 => &["avx512", "avx2"],
            Isa::Avx2 => &["avx2"],
            Isa::Scalar => &[],
        };
        let (name, vec_dot) = allowed
            .iter()
            .find_map(|want| impls.iter().find(|(n, _)| n == want))
            .copied()
            .unwrap_or(impls[0]);
        table.push(TypeTraits {
            ty: GgmlType::Frugal(t),
            vec_dot_type: GgmlType::Q8_0,
            to_float,
            from_float: Some(from_float),
            vec_dot,
            vec_dot_ref: impls[0].1,
            isa: name,
        });
    }
}

/// Packs a row of Q8_0 blocks (the pruned weights: zero codes) into a row
/// of sparse type `t` (`out`: the row's bytes). Fails when the row does not
/// fit the pattern (too many nonzero weights, or three in a group of 4).
pub fn pack_q8_0_row(t: FrugalType, q8: &[u8], out: &mut [u8]) -> Result<(), String> {
    match t {
        FrugalType::SparseQ8 { .. } => scalar::pack_sparse(q8, out),
        FrugalType::Sparse24Q8 => scalar::pack_s24(q8, out),
        _ => Err(format!("{} is not a sparse type", GgmlType::Frugal(t))),
    }
}
