//! Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 (filled in by the kernels work).
use crate::traits::{Isa, TypeTraits};
pub fn register(_isa: Isa, _table: &mut Vec<TypeTraits>) {}
