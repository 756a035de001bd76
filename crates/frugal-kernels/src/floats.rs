//! F32, F16 and BF16 weights (filled in by the kernels work).
use crate::traits::{Isa, TypeTraits};
pub fn register(_isa: Isa, _table: &mut Vec<TypeTraits>) {}
