//! GGUF writer producing the same bytes as llama.cpp's `gguf_write_to_file`
//! for the same metadata and tensors: version 3, key/values then tensor infos
//! in insertion order, zero padding to the alignment before the data section
//! and after every tensor's data.

use super::{
    align_up, GgufFile, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_MAX_DIMS, GGUF_VERSION,
    KEY_ALIGNMENT,
};
use crate::{FormatError, GgmlType, MetaValue, Metadata, ModelSource, Tensor};
use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF file. Tensor bytes may be borrowed (e.g. from a memory map)
/// so that re-writing a model does not copy it into memory.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Metadata,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or replace a metadata value (keys keep their first position).
    pub fn set_meta(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        self.metadata.set(key, value);
        self
    }

    /// Replace all metadata.
    pub fn set_metadata(&mut self, metadata: Metadata) -> &mut Self {
        self.metadata = metadata;
        self
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Set `general.alignment` (stored as u32, as llama.cpp requires).
    pub fn set_alignment(&mut self, alignment: u32) -> &mut Self {
        self.set_meta(KEY_ALIGNMENT, MetaValue::U32(alignment))
    }

    /// Add a tensor; `data` must hold exactly the bytes `ty` and `dims` call for.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: Vec<u64>,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<(), FormatError> {
        let name = name.into();
        let data = data.into();
        let field = |what: &str| format!("tensor `{name}` {what}");
        if dims.is_empty() || dims.len() > GGUF_MAX_DIMS {
            return Err(FormatError::invalid(
                field("dims"),
                format!(
                    "{} dimensions; ggml supports 1 to {GGUF_MAX_DIMS}",
                    dims.len()
                ),
            ));
        }
        if dims.contains(&0) {
            return Err(FormatError::invalid(
                field("dims"),
                format!("{dims:?} has a zero dimension"),
            ));
        }
        if ty.interleaved_base().is_some() {
            return Err(FormatError::invalid(
                field("type"),
                format!("{ty} is a run-time memory layout, not a file type"),
            ));
        }
        let size = ty
            .row_bytes(dims[0])
            .and_then(|row| dims[1..].iter().try_fold(row, |acc, &d| acc.checked_mul(d)))
            .ok_or_else(|| {
                FormatError::invalid(
                    field("dims"),
                    format!("{dims:?} is not a whole number of {ty} blocks per row, or overflows"),
                )
            })?;
        if size != data.len() as u64 {
            return Err(FormatError::invalid(
                field("data"),
                format!("{} bytes given, {ty} {dims:?} needs {size}", data.len()),
            ));
        }
        if !self.names.insert(name.clone()) {
            return Err(FormatError::invalid(field("name"), "duplicate tensor name"));
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims,
            data,
        });
        Ok(())
    }

    /// Add a tensor, borrowing its bytes.
    pub fn add(&mut self, t: &'a Tensor) -> Result<(), FormatError> {
        let dims = t.dims.iter().map(|&d| d as u64).collect();
        self.add_tensor(t.name.clone(), t.ty, dims, t.bytes())
    }

    /// A writer holding a model's metadata and (borrowed) tensors.
    pub fn from_source(src: &'a ModelSource) -> Result<Self, FormatError> {
        let mut w = Self::new();
        w.set_metadata(src.metadata.clone());
        for t in &src.tensors {
            w.add(t)?;
        }
        Ok(w)
    }

    /// A writer reproducing an open GGUF file (metadata and tensors in order).
    pub fn from_gguf(file: &'a GgufFile) -> Result<Self, FormatError> {
        let mut w = Self::new();
        w.set_metadata(file.metadata.clone());
        for t in &file.tensors {
            w.add_tensor(t.name.clone(), t.ty, t.dims.clone(), file.tensor_bytes(t))?;
        }
        Ok(w)
    }

    fn alignment(&self) -> Result<u64, FormatError> {
        match self.metadata.get(KEY_ALIGNMENT) {
            None => Ok(GGUF_DEFAULT_ALIGNMENT as u64),
            // llama.cpp reads the key with gguf_get_val_u32, which aborts on other types.
            Some(MetaValue::U32(a)) if a.is_power_of_two() => Ok(*a as u64),
            Some(v) => Err(FormatError::invalid(
                KEY_ALIGNMENT,
                format!("{v:?} must be a u32 power of two"),
            )),
        }
    }

    /// Serialize the whole file to `out`. Returns the number of bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> Result<u64, FormatError> {
        let alignment = self.alignment()?;
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.entries.len() as u64).to_le_bytes());
        let mut keys = HashSet::new();
        for (key, value) in &self.metadata.entries {
            if !keys.insert(key.as_str()) {
                return Err(FormatError::invalid(
                    format!("metadata key `{key}`"),
                    "duplicate key",
                ));
            }
            put_string(&mut header, key);
            header.extend_from_slice(&(value.meta_type() as u32).to_le_bytes());
            put_value(&mut header, key, value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(t.data.len() as u64)
                .and_then(|end| align_up(end, alignment))
                .ok_or_else(|| FormatError::invalid("data size", "overflows"))?;
        }
        let io = |e| FormatError::io("<gguf output>", e);
        let padded = align_up(header.len() as u64, alignment)
            .ok_or_else(|| FormatError::invalid("header size", "overflows"))?;
        header.resize(padded as usize, 0);
        out.write_all(&header).map_err(io)?;
        let zeros = vec![0u8; alignment as usize];
        for t in &self.tensors {
            out.write_all(&t.data).map_err(io)?;
            let pad = (alignment - t.data.len() as u64 % alignment) % alignment;
            out.write_all(&zeros[..pad as usize]).map_err(io)?;
        }
        Ok(header.len() as u64 + offset)
    }

    /// The whole file in memory (for tests and small models).
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Write to `path` atomically: the file is written next to it under a
    /// temporary name and renamed into place, so readers never see a partial
    /// file; the temporary file is removed on error.
    pub fn write(&self, path: &Path) -> Result<(), FormatError> {
        let tmp = temp_path(path);
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut out).map_err(|e| with_path(e, &tmp))?;
            let file = out
                .into_inner()
                .map_err(|e| FormatError::io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| FormatError::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| FormatError::io(path, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// `path` with a temporary suffix unique to this process.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    // Rebuilding from components drops a trailing `/`, so the temporary is
    // a sibling of `path`, never inside it.
    let path: PathBuf = path.components().collect();
    let mut s = path.into_os_string();
    s.push(format!(".tmp{}", std::process::id()));
    PathBuf::from(s)
}

fn with_path(e: FormatError, path: &Path) -> FormatError {
    match e {
        FormatError::Io { source, .. } => FormatError::io(path, source),
        other => other,
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<(), FormatError> {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.push(*x as u8),
        MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(*x as u8),
        MetaValue::String(s) => put_string(buf, s),
        MetaValue::Array(ty, items) => {
            buf.extend_from_slice(&(*ty as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.meta_type() != *ty {
                    return Err(FormatError::invalid(
                        key,
                        format!("array of {ty:?} holds a {:?}", item.meta_type()),
                    ));
                }
                // A nested array carries its own element type and count.
                put_value(buf, key, item)?;
            }
        }
    }
    Ok(())
}
