//! GGUF, the native model format of llama.cpp: reader and writer.
//!
//! Layout (all little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count × (key: string, value_type u32, value)
//! tensor_count × (name: string, n_dims u32, dims u64 × n_dims, type u32, offset u64)
//! zero padding up to `general.alignment` (default 32)
//! tensor data; each tensor starts at data_offset + offset, padded to the alignment
//! ```
//!
//! A string is a u64 byte length followed by UTF-8 bytes; an array is an
//! element type u32, a u64 count and the elements.

mod reader;
mod writer;

pub use reader::{parse_header, GgufFile, GgufHeader, TensorInfo};
pub(crate) use writer::temp_path;
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes.
pub const GGUF_VERSION: u32 = 3;
/// Alignment of the tensor data when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: usize = 32;
/// Metadata key that overrides the alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// ggml tensors have at most four dimensions.
pub const GGUF_MAX_DIMS: usize = 4;

/// Round `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}
