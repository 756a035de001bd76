//! Re-encode a model's tensors as plain floats, for formats (Hugging Face
//! safetensors) or tools that don't read GGML block types.

use crate::{tensor_to_f32, ModelError};
use frugal_formats::{GgmlType, MetaValue, ModelSource, Tensor, TensorData};
use std::sync::Arc;

/// A copy of `src` with every tensor stored as `ty` (F32, F16 or BF16).
/// Tensors already of that type are shared, not copied.
pub fn to_float_source(src: &ModelSource, ty: GgmlType) -> Result<ModelSource, ModelError> {
    if !ty.is_float() {
        return Err(ModelError::Input(format!(
            "can only convert to F32, F16 or BF16, not {ty}"
        )));
    }
    let mut tensors = Vec::with_capacity(src.tensors.len());
    for t in &src.tensors {
        if t.ty == ty {
            tensors.push(t.clone());
            continue;
        }
        let values = tensor_to_f32(t)?;
        let mut bytes = vec![0u8; values.len() * ty.type_size()];
        let encode = frugal_kernels::traits(ty)
            .and_then(|tr| tr.from_float)
            .ok_or_else(|| ModelError::Input(format!("no encoder for {ty}")))?;
        encode(&values, &mut bytes);
        tensors.push(Tensor {
            name: t.name.clone(),
            ty,
            dims: t.dims.clone(),
            data: TensorData::Owned(Arc::new(bytes)),
        });
    }
    let mut metadata = src.metadata.clone();
    // general.file_type describes the dominant GGML type (llama_ftype: 0 = all F32, 1 = mostly F16, 32 = mostly BF16).
    let ftype = match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        _ => 32,
    };
    metadata.set("general.file_type", MetaValue::U32(ftype));
    Ok(ModelSource {
        metadata,
        tensors,
        tokenizer_json: src.tokenizer_json.clone(),
    })
}
