//! The type-traits table: for each GGML type, how to turn blocks into floats,
//! how to quantize floats into blocks, and how to take a dot product of a
//! weight row with an activation row quantized to `vec_dot_type`.
//!
//! `vec_dot` is the fastest path this CPU supports, picked once at start-up;
//! `vec_dot_ref` is the portable scalar reference every SIMD path is tested against.

use frugal_formats::GgmlType;
use std::sync::OnceLock;

/// Dequantize `dst.len()` elements from `src` blocks.
pub type ToFloat = fn(src: &[u8], dst: &mut [f32]);
/// Quantize `src` (a whole number of blocks) into `dst` blocks.
pub type FromFloat = fn(src: &[f32], dst: &mut [u8]);
/// Dot product of `n` elements: a weight row against an activation row in `vec_dot_type`.
pub type VecDot = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

#[derive(Clone, Copy)]
pub struct TypeTraits {
    pub ty: GgmlType,
    /// The type activations are quantized to before `vec_dot`.
    pub vec_dot_type: GgmlType,
    pub to_float: ToFloat,
    /// Reference quantizer, where frugal has one for this type.
    pub from_float: Option<FromFloat>,
    pub vec_dot: VecDot,
    pub vec_dot_ref: VecDot,
    /// Which instruction set `vec_dot` uses ("avx512", "avx2" or "scalar").
    pub isa: &'static str,
}

/// The instruction sets kernels may use, detected at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

/// The best instruction set of this CPU. `FRUGAL_ISA=scalar|avx2|avx512`
/// lowers it (never raises it beyond what the CPU has), for testing and benchmarks.
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let hw = hardware_isa();
        match std::env::var("FRUGAL_ISA").ok().as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") if hw != Isa::Scalar => Isa::Avx2,
            _ => hw,
        }
    })
}

fn hardware_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

fn build_table() -> Vec<TypeTraits> {
    let isa = detected_isa();
    let mut table = Vec::new();
    crate::floats::register(isa, &mut table);
    crate::legacy::register(isa, &mut table);
    crate::kquants::register(isa, &mut table);
    crate::frugal::register(isa, &mut table);
    crate::sparse::register(isa, &mut table);
    table
}

/// The traits of `ty`, or `None` if frugal has no kernels for it.
pub fn traits(ty: GgmlType) -> Option<&'static TypeTraits> {
    static TABLE: OnceLock<Vec<TypeTraits>> = OnceLock::new();
    TABLE.get_or_init(build_table).iter().find(|t| t.ty == ty)
}
