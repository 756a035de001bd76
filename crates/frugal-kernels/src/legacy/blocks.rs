//! Block layouts of the legacy GGML formats, byte for byte as ggml stores them.
//!
//! Every block struct is `#[repr(C)]`, made only of byte arrays (the f16
//! scales are [`F16Le`], two little-endian bytes), so it has alignment 1, no
//! padding, and every bit pattern is a valid value. That is what makes
//! [`as_blocks`] sound on bytes straight from a memory map, at any address.

use half::f16;
use std::mem::{align_of, size_of};

/// Elements per block of every legacy format.
pub const QK: usize = 32;

/// An IEEE binary16 stored as two little-endian bytes (alignment 1).
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct F16Le(pub [u8; 2]);

impl F16Le {
    #[inline]
    pub fn bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }
    #[inline]
    pub fn to_f32(self) -> f32 {
        f16::from_bits(self.bits()).to_f32()
    }
    /// Round to nearest even, as ggml's `GGML_FP32_TO_FP16`.
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        F16Le(f16::from_f32(x).to_bits().to_le_bytes())
    }
}

/// 4-bit, symmetric: `x = d * (q - 8)`. Element `j < 16` is the low nibble of
/// `qs[j]`, element `j + 16` its high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    pub d: F16Le,
    pub qs: [u8; QK / 2],
}

/// 4-bit with minimum: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qs: [u8; QK / 2],
}

/// 5-bit, symmetric: `x = d * (q - 16)`; bit `j` of `qh` (little-endian u32)
/// is bit 4 of element `j`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_0 {
    pub d: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 5-bit with minimum: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 8-bit, symmetric: `x = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_0 {
    pub d: F16Le,
    pub qs: [i8; QK],
}

/// 8-bit with the block sum: `x = d * q`, `s = d * sum(q)` (as f16).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_1 {
    pub d: F16Le,
    pub s: F16Le,
    pub qs: [i8; QK],
}

const _: () = assert!(size_of::<F16Le>() == 2 && align_of::<F16Le>() == 1);
const _: () = assert!(size_of::<BlockQ4_0>() == 18 && align_of::<BlockQ4_0>() == 1);
const _: () = assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 1);
const _: () = assert!(size_of::<BlockQ5_0>() == 22 && align_of::<BlockQ5_0>() == 1);
const _: () = assert!(size_of::<BlockQ5_1>() == 24 && align_of::<BlockQ5_1>() == 1);
const _: () = assert!(size_of::<BlockQ8_0>() == 34 && align_of::<BlockQ8_0>() == 1);
const _: () = assert!(size_of::<BlockQ8_1>() == 36 && align_of::<BlockQ8_1>() == 1);

/// A block type that may be viewed in place over raw bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1, no padding, and no
/// invalid bit patterns (only `u8`/`i8` arrays and [`F16Le`]).
pub unsafe trait Block: Copy + 'static {}

// SAFETY: each is repr(C) of byte arrays only; size and alignment 1 are asserted above.
unsafe impl Block for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ4_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_1 {}

/// View bytes as blocks. Panics if `bytes.len()` is not a whole number of blocks.
#[inline]
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let sz = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(sz),
        "{} bytes is not a whole number of {sz}-byte blocks",
        bytes.len()
    );
    // SAFETY: `B: Block` has alignment 1 and accepts any bit pattern, so any
    // address and any contents are valid; the length covers exactly the
    // input bytes, whose lifetime the result borrows.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / sz) }
}

/// Mutable view of bytes as blocks. Panics if `bytes.len()` is not a whole number of blocks.
#[inline]
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    let sz = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(sz),
        "{} bytes is not a whole number of {sz}-byte blocks",
        bytes.len()
    );
    // SAFETY: as in `as_blocks`; the exclusive borrow of the bytes is moved
    // into the result, so no alias exists, and any value written is a valid byte pattern.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / sz) }
}
