//! CPU kernels for frugal.
//!
//! Layout follows ggml: each format is a packed `#[repr(C)]` block struct in its
//! module ([`legacy`], [`kquants`], [`floats`], [`frugal`]), each type has an entry in the [`traits`] table (dequantize,
//! quantize, dot product), and [`matmul`] runs a weight matrix against
//! activations on all threads. Every SIMD kernel has a scalar reference and is
//! tested against it.

pub mod activation;
pub mod floats;
pub mod frugal;
pub mod interleave;
pub mod kquants;
pub mod legacy;
pub mod matmul;
pub mod sgemm;
pub mod sparse;
pub mod team;
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

/// The activation type `ty`'s matmul takes (its traits' `vec_dot_type`; an
/// interleaved layout takes its base type's), or `None` if it has no kernels.
pub fn vec_dot_type(ty: GgmlType) -> Option<GgmlType> {
    traits(interleave::base_of(ty)).map(|t| t.vec_dot_type)
}

/// Whether `ty` has a header per row (so a tensor is not one long row).
fn is_row_wise(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Frugal(t) if t.is_row_wise())
}

/// Dequantize a whole tensor's bytes into `dst` (`dst.len()` elements), as
/// one run of blocks. Refuses row-wise types (frugal's types with a header
/// per row), whose rows must be told apart: use [`dequantize_rows`].
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    if interleave::is_interleaved(ty) {
        return Err(KernelError(format!(
            "{ty} interleaves groups of rows: dequantize it with dequantize_rows and the row length"
        )));
    }
    let t = traits(ty).ok_or_else(|| KernelError(format!("no kernels for type {ty}")))?;
    if is_row_wise(ty) {
        return Err(KernelError(format!(
            "{ty} has a header per row: dequantize it with dequantize_rows and the row length"
        )));
    }
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

/// Dequantize a tensor of rows of `row_len` elements into `dst`
/// (`dst.len()` elements, a whole number of rows). Works for every type;
/// row-wise types are decoded one row at a time.
pub fn dequantize_rows(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
    row_len: usize,
) -> Result<(), KernelError> {
    if interleave::is_interleaved(ty) {
        let rows = dst.len() / row_len.max(1);
        let whole = row_len > 0 && rows * row_len == dst.len();
        let rb = ty.row_bytes(row_len as u64).unwrap_or(u64::MAX);
        if !whole
            || !interleave::can_interleave(interleave::base_of(ty), rows, row_len)
            || src.len() as u64 != rows as u64 * rb
        {
            return Err(KernelError(format!(
                "{ty}: {} bytes is not whole groups of 16 rows of {row_len} elements",
                src.len()
            )));
        }
        interleave::dequantize_rows(ty, src, row_len, 0..rows, dst);
        return Ok(());
    }
    let t = traits(ty).ok_or_else(|| KernelError(format!("no kernels for type {ty}")))?;
    let n = dst.len();
    if n == 0 {
        return if src.is_empty() {
            Ok(())
        } else {
            Err(KernelError(format!(
                "{ty}: 0 elements need 0 bytes, got {}",
                src.len()
            )))
        };
    }
    if row_len == 0 || !n.is_multiple_of(row_len) {
        return Err(KernelError(format!(
            "{ty}: {n} elements is not whole rows of {row_len}"
        )));
    }
    let rb = ty.row_bytes(row_len as u64).ok_or_else(|| {
        KernelError(format!(
            "{ty}: a row of {row_len} elements is not whole blocks"
        ))
    })?;
    let need = (n / row_len) as u64 * rb;
    if src.len() as u64 != need {
        return Err(KernelError(format!(
            "{ty}: {} rows of {row_len} elements need {need} bytes, got {}",
            n / row_len,
            src.len()
        )));
    }
    if is_row_wise(ty) {
        for (s, d) in src
            .chunks_exact(rb as usize)
            .zip(dst.chunks_exact_mut(row_len))
        {
            (t.to_float)(s, d);
        }
    } else {
        (t.to_float)(src, dst);
    }
    Ok(())
}
