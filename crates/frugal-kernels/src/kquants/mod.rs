//! k-quants Q2_K..Q6_K and Q8_K (filled in by the kernels work).
use crate::traits::{Isa, TypeTraits};
pub fn register(_isa: Isa, _table: &mut Vec<TypeTraits>) {}
