//! A tensor as the model sees it: a name, a GGML type, a shape and its bytes.
//!
//! The bytes are borrowed from a memory-mapped file (GGUF, safetensors,
//! llama2.c: weights are never copied), from a whole file read into memory
//! once (GGUF for inference: huge pages), or owned (converted on load).

use crate::GgmlType;
use std::ops::Range;
use std::sync::Arc;

/// Backing storage for tensor bytes.
#[derive(Clone)]
pub enum TensorData {
    /// A byte range inside a shared memory map of the file.
    Mapped(Arc<memmap2::Mmap>, Range<usize>),
    /// A byte range inside an anonymous map the whole file was read into
    /// (see `GgufFile::read_into_memory`). Not backed by the file: its
    /// pages are never released.
    Resident(Arc<memmap2::Mmap>, Range<usize>),
    /// Bytes owned in memory (converted or generated data).
    Owned(Arc<Vec<u8>>),
}

impl TensorData {
    pub fn bytes(&self) -> &[u8] {
        match self {
            TensorData::Mapped(m, r) | TensorData::Resident(m, r) => &m[r.clone()],
            TensorData::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for TensorData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorData::Mapped(_, r) => write!(f, "Mapped({r:?})"),
            TensorData::Resident(_, r) => write!(f, "Resident({r:?})"),
            TensorData::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// A named tensor. `dims` follow GGML order: `dims[0]` is the length of a
/// row (the contiguous dimension), `dims[1]` the number of rows, and so on.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Says these bytes will not be read again soon: a memory-mapped tensor's
    /// pages leave the process's resident memory (and are read back from the
    /// file if touched again), which keeps a layer-by-layer pass over a big
    /// model from holding all of it. Owned and resident tensors are
    /// unchanged (their pages have no file behind them).
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let TensorData::Mapped(m, r) = &self.data {
            // SAFETY: `Mmap` is a read-only shared file mapping. After
            // MADV_DONTNEED the kernel refills its pages from the file on the
            // next access, so any slice still borrowed from it reads the same
            // bytes (the premise of every mapping here: the file is not
            // modified while mapped). The range lies inside the map, and
            // memmap2 aligns its start down to a page. A failed hint only
            // means the pages stay resident, so its error is ignored.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, r.start, r.len())
            };
        }
    }

    /// Total number of elements.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of `dims[1..]`).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        // Checked at load: rows are whole blocks.
        self.ty.row_bytes(self.row_len() as u64).unwrap_or(0) as usize
    }

    /// An owned F32 tensor.
    pub fn from_f32(name: impl Into<String>, dims: Vec<usize>, values: &[f32]) -> Tensor {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            name: name.into(),
            ty: GgmlType::F32,
            dims,
            data: TensorData::Owned(Arc::new(bytes)),
        }
    }
}
