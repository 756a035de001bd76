//! The k-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K weights and the Q8_K
//! activations their dot products take, byte-compatible with ggml.
//!
//! * [`blocks`]: the `#[repr(C)]` super-block layouts and safe unaligned access.
//! * [`scalar`]: dequantization, the Q8_K reference quantizer and the
//!   reference dot products (portable; every SIMD kernel is tested against them).
//! * [`quantize`]: ggml's reference quantizers `quantize_row_q*_K_ref`.
//! * [`avx2`], [`avx512`] (x86-64): SIMD dot products and Q8_K quantization.
//!   Their public functions check the CPU themselves (see `is_available`).
//!
//! [`register`] puts the best kernels for the detected instruction set into
//! the type-traits table.

pub mod blocks;
pub mod quantize;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

pub use blocks::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};

use crate::traits::{FromFloat, Isa, ToFloat, TypeTraits, VecDot};
use frugal_formats::GgmlType;

/// Quantize activations to Q8_K (`x.len()` a multiple of 256, `out` at least
/// `x.len()/256 * 292` bytes) with the fastest kernel this CPU has. The result
/// is bit-identical to ggml's `quantize_row_q8_K_ref` on every path.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [u8]) {
    q8k_quantizer(crate::traits::detected_isa())(x, out)
}

fn q8k_quantizer(isa: Isa) -> FromFloat {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 && avx512::is_available() {
            return avx512::quantize_row_q8k;
        }
        if isa != Isa::Scalar && avx2::is_available() {
            return avx2::quantize_row_q8k;
        }
    }
    let _ = isa;
    scalar::quantize_row_q8k_ref
}

/// The dot-product kernels of one weight type: (scalar, avx2, avx512).
struct Dots {
    scalar: VecDot,
    #[cfg(target_arch = "x86_64")]
    avx2: VecDot,
    #[cfg(target_arch = "x86_64")]
    avx512: VecDot,
}

fn pick(isa: Isa, d: &Dots) -> (VecDot, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 && avx512::is_available() {
            return (d.avx512, "avx512");
        }
        if isa != Isa::Scalar && avx2::is_available() {
            return (d.avx2, "avx2");
        }
    }
    let _ = isa;
    (d.scalar, "scalar")
}

macro_rules! dots {
    ($f:ident) => {
        Dots {
            scalar: scalar::$f,
            #[cfg(target_arch = "x86_64")]
            avx2: avx2::$f,
            #[cfg(target_arch = "x86_64")]
            avx512: avx512::$f,
        }
    };
}

/// Add the k-quant types to the traits table, with `vec_dot` for `isa`.
pub fn register(isa: Isa, table: &mut Vec<TypeTraits>) {
    let weights: [(GgmlType, ToFloat, Option<FromFloat>, Dots); 5] = [
        (
            GgmlType::Q2K,
            scalar::dequantize_row_q2k,
            Some(quantize::quantize_row_q2k_ref),
            dots!(vec_dot_q2k_q8k),
        ),
        (
            GgmlType::Q3K,
            scalar::dequantize_row_q3k,
            Some(quantize::quantize_row_q3k_ref),
            dots!(vec_dot_q3k_q8k),
        ),
        (
            GgmlType::Q4K,
            scalar::dequantize_row_q4k,
            Some(quantize::quantize_row_q4k_ref),
            dots!(vec_dot_q4k_q8k),
        ),
        (
            GgmlType::Q5K,
            scalar::dequantize_row_q5k,
            Some(quantize::quantize_row_q5k_ref),
            dots!(vec_dot_q5k_q8k),
        ),
        (
            GgmlType::Q6K,
            scalar::dequantize_row_q6k,
            Some(quantize::quantize_row_q6k_ref),
            dots!(vec_dot_q6k_q8k),
        ),
    ];
    for (ty, to_float, from_float, d) in weights {
        let (vec_dot, isa_name) = pick(isa, &d);
        table.push(TypeTraits {
            ty,
            vec_dot_type: GgmlType::Q8K,
            to_float,
            from_float,
            vec_dot,
            vec_dot_ref: d.scalar,
            isa: isa_name,
        });
    }
    // Q8_K is only an activation format: it has no dot product of its own in
    // ggml either. Its vec_dot is the plain Q8_K . Q8_K product, for completeness.
    table.push(TypeTraits {
        ty: GgmlType::Q8K,
        vec_dot_type: GgmlType::Q8K,
        to_float: scalar::dequantize_row_q8k,
        from_float: Some(q8k_quantizer(isa)),
        vec_dot: scalar::vec_dot_q8k_q8k,
        vec_dot_ref: scalar::vec_dot_q8k_q8k,
        isa: "scalar",
    });
}
