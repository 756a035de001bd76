//! CPU kernels for frugal.
//!
//! Layout follows ggml: each format is a packed `#[repr(C)]` block struct in its
//! module ([`legacy`], [`kquants`], [`floats`]), each type has an entry in the [`traits`] table (dequantize,
//! quantize, dot product), and [`matmul`] runs a weight matrix against
//! activations on all threads. Every SIMD kernel has a scalar reference and is
//! tested against it.

pub mod floats;
pub mod kquants;
pub mod legacy;
pub mod matmul;
pub mod traits;

pub use traits::{detected_isa, traits, Isa, TypeTraits};

use frugal_formats::GgmlType;

/// Error for a type that has no kernels, or a length that is not whole blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError(pub String);

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for KernelError {}

/// Dequantize a whole tensor's bytes into `dst` (`dst.len()` elements).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    let t = traits(ty).ok_or_else(|| KernelError(format!("no kernels for type {ty}")))?;
    let n = dst.len();
    let need = ty
        .row_bytes(n as u64)
        .ok_or_else(|| KernelError(format!("{n} elements is not a whole number of {ty} blocks")))?;
    if src.len() as u64 != need {
        return Err(KernelError(format!(
            "{ty}: {n} elements need {need} bytes, got {}",
            src.len()
        )));
    }
    (t.to_float)(src, dst);
    Ok(())
}
