//! The legacy GGML block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (weights) and
//! Q8_1 (activations of Q4_1/Q5_1).
//!
//! * [`blocks`]: the `#[repr(C)]` block structs, viewable in place over bytes.
//! * [`scalar`]: reference quantizers (bit-exact with ggml's
//!   `quantize_row_*_ref`), dequantizers and scalar dot products.
//! * `avx2`, `avx512` (x86-64): SIMD dot products and Q8 quantizers, each
//!   tested against [`scalar`].
//! * [`packed`]: the activation layout of the AVX-512 matmul micro-kernel.

pub mod blocks;
pub mod packed;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

use crate::traits::{detected_isa, FromFloat, Isa, ToFloat, TypeTraits, VecDot};
use frugal_formats::GgmlType;

/// Checks a Q8 quantizer's arguments; returns the number of blocks.
pub(crate) fn check_q8(x: &[f32], out: &[u8], bsize: usize) -> usize {
    assert!(
        x.len().is_multiple_of(blocks::QK),
        "{} floats: not whole blocks",
        x.len()
    );
    let nb = x.len() / blocks::QK;
    assert_eq!(out.len(), nb * bsize, "output bytes for {nb} blocks");
    nb
}

/// Quantizes activations to Q8_0 with the fastest kernel of this CPU.
/// The result is bit-identical to ggml's `quantize_row_q8_0_ref`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    match detected_isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::quantize_row_q8_0(x, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::quantize_row_q8_0(x, out),
        _ => scalar::quantize_q8_0_ref(x, out),
    }
}

/// Quantizes activations to Q8_1 with the fastest kernel of this CPU.
/// The result is bit-identical to ggml's `quantize_row_q8_1_ref`.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [u8]) {
    match detected_isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::quantize_row_q8_1(x, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::quantize_row_q8_1(x, out),
        _ => scalar::quantize_q8_1_ref(x, out),
    }
}

/// The dot product for `isa` among the scalar, AVX2 and AVX-512 versions.
#[allow(unused_variables)]
fn pick(isa: Isa, scalar: VecDot, avx2: VecDot, avx512: VecDot) -> (VecDot, &'static str) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (avx512, "avx512"),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (avx2, "avx2"),
        _ => (scalar, "scalar"),
    }
}

/// Adds Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1 to the traits table.
pub fn register(isa: Isa, table: &mut Vec<TypeTraits>) {
    use GgmlType as G;
    #[cfg(target_arch = "x86_64")]
    macro_rules! simd {
        ($m:ident :: $f:ident) => {
            $m::$f
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    macro_rules! simd {
        ($m:ident :: $f:ident) => {
            scalar::$f
        };
    }
    let mut add = |ty: GgmlType,
                   vec_dot_type: GgmlType,
                   to_float: ToFloat,
                   from_float: FromFloat,
                   (vec_dot, isa): (VecDot, &'static str),
                   vec_dot_ref: VecDot| {
        table.push(TypeTraits {
            ty,
            vec_dot_type,
            to_float,
            from_float: Some(from_float),
            vec_dot,
            vec_dot_ref,
            isa,
        })
    };
    add(
        G::Q4_0,
        G::Q8_0,
        scalar::dequantize_q4_0,
        scalar::quantize_q4_0_ref,
        pick(
            isa,
            scalar::vec_dot_q4_0_q8_0,
            simd!(avx2::vec_dot_q4_0_q8_0),
            simd!(avx512::vec_dot_q4_0_q8_0),
        ),
        scalar::vec_dot_q4_0_q8_0,
    );
    add(
        G::Q4_1,
        G::Q8_1,
        scalar::dequantize_q4_1,
        scalar::quantize_q4_1_ref,
        pick(
            isa,
            scalar::vec_dot_q4_1_q8_1,
            simd!(avx2::vec_dot_q4_1_q8_1),
            simd!(avx512::vec_dot_q4_1_q8_1),
        ),
        scalar::vec_dot_q4_1_q8_1,
    );
    add(
        G::Q5_0,
        G::Q8_0,
        scalar::dequantize_q5_0,
        scalar::quantize_q5_0_ref,
        pick(
            isa,
            scalar::vec_dot_q5_0_q8_0,
            simd!(avx2::vec_dot_q5_0_q8_0),
            simd!(avx512::vec_dot_q5_0_q8_0),
        ),
        scalar::vec_dot_q5_0_q8_0,
    );
    add(
        G::Q5_1,
        G::Q8_1,
        scalar::dequantize_q5_1,
        scalar::quantize_q5_1_ref,
        pick(
            isa,
            scalar::vec_dot_q5_1_q8_1,
            simd!(avx2::vec_dot_q5_1_q8_1),
            simd!(avx512::vec_dot_q5_1_q8_1),
        ),
        scalar::vec_dot_q5_1_q8_1,
    );
    // The SIMD Q8 quantizers are bit-identical to the references, so the
    // table carries the fast dispatching ones.
    add(
        G::Q8_0,
        G::Q8_0,
        scalar::dequantize_q8_0,
        quantize_row_q8_0,
        pick(
            isa,
            scalar::vec_dot_q8_0_q8_0,
            simd!(avx2::vec_dot_q8_0_q8_0),
            simd!(avx512::vec_dot_q8_0_q8_0),
        ),
        scalar::vec_dot_q8_0_q8_0,
    );
    add(
        G::Q8_1,
        G::Q8_1,
        scalar::dequantize_q8_1,
        quantize_row_q8_1,
        (scalar::vec_dot_q8_1_q8_1, "scalar"),
        scalar::vec_dot_q8_1_q8_1,
    );
}
