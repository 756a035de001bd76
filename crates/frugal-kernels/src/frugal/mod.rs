//! Kernels for frugal's own types ([`FrugalType`]): the bit-plane affine
//! types `FQ{bits}{a|s}_{g…|row}` (dot products with Q8_1 activations) and
//! SmoothQuant's W8A8 pair `W8_row` · `I8_tok`.
//!
//! * [`scalar`]: the reference quantizers, dequantizers and dot products.
//! * `avx2`, `avx512` (x86-64): SIMD dot products, each tested against
//!   [`scalar`]; their public functions check the CPU themselves.
//! * The row codecs below ([`affine_encode_row`], [`affine_decode_row`],
//!   [`w8_encode_row`], [`w8_decode_row`]) for quantizers that choose their
//!   own scales and codes.
//!
//! Row-wise types (one header per row: `group == 0`, `W8Row`, `I8Tok`) make
//! `to_float`/`from_float` work on exactly one row: a buffer of several rows
//! is not one long row. See [`crate::dequantize_rows`].
//!
//! Affine dot products are exact in integers per 32-element chunk: the
//! symmetric offset `-2^(bits-1)` is applied to the codes before the integer
//! sum (rather than through Q8_1's f16 block sum `s`), so only the
//! asymmetric offset `m` goes through `s`, as in ggml's Q4_1.

pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

use crate::traits::{FromFloat, Isa, ToFloat, TypeTraits, VecDot};
use frugal_formats::{FrugalType, GgmlType};
use scalar::Aff;

/// All kernels of one affine type.
#[derive(Clone, Copy)]
pub struct AffineKernels {
    pub to_float: ToFloat,
    pub from_float: FromFloat,
    /// Dot products with a Q8_1 row: scalar reference, AVX2, AVX-512.
    pub scalar: VecDot,
    #[cfg(target_arch = "x86_64")]
    pub avx2: VecDot,
    #[cfg(target_arch = "x86_64")]
    pub avx512: VecDot,
}

fn kernels_of<const B: u8, const G: u16, const S: bool>() -> AffineKernels {
    AffineKernels {
        to_float: scalar::dequantize_affine::<B, G, S>,
        from_float: scalar::quantize_affine::<B, G, S>,
        scalar: scalar::vec_dot_affine_q8_1::<B, G, S>,
        #[cfg(target_arch = "x86_64")]
        avx2: avx2::vec_dot_affine_q8_1::<B, G, S>,
        #[cfg(target_arch = "x86_64")]
        avx512: avx512::vec_dot_affine_q8_1::<B, G, S>,
    }
}

/// The kernels of an affine type (one monomorphized set per type), or
/// `None` for `W8Row`/`I8Tok` and invalid parameters.
pub fn affine_kernels(t: FrugalType) -> Option<AffineKernels> {
    let FrugalType::Affine { bits, group, sym } = t else {
        return None;
    };
    macro_rules! by_group {
        ($b:literal) => {
            match (group, sym) {
                (32, false) => kernels_of::<$b, 32, false>(),
                (64, false) => kernels_of::<$b, 64, false>(),
                (128, false) => kernels_of::<$b, 128, false>(),
                (256, false) => kernels_of::<$b, 256, false>(),
                (0, false) => kernels_of::<$b, 0, false>(),
                (32, true) => kernels_of::<$b, 32, true>(),
                (64, true) => kernels_of::<$b, 64, true>(),
                (128, true) => kernels_of::<$b, 128, true>(),
                (256, true) => kernels_of::<$b, 256, true>(),
                (0, true) => kernels_of::<$b, 0, true>(),
                _ => return None,
            }
        };
    }
    Some(match bits {
        2 => by_group!(2),
        3 => by_group!(3),
        4 => by_group!(4),
        5 => by_group!(5),
        6 => by_group!(6),
        7 => by_group!(7),
        8 => by_group!(8),
        _ => return None,
    })
}

/// Every dot product of weight type `ty` this CPU can run, by ISA name
/// ("scalar" first): what tests and benchmarks hold against each other.
/// Empty for types that are not frugal's.
pub fn dot_impls(ty: GgmlType) -> Vec<(&'static str, VecDot)> {
    let GgmlType::Frugal(t) = ty else {
        return Vec::new();
    };
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, VecDot)> = Vec::new();
    match affine_kernels(t) {
        Some(k) => {
            v.push(("scalar", k.scalar));
            #[cfg(target_arch = "x86_64")]
            {
                if avx2::available() {
                    v.push(("avx2", k.avx2));
                }
                if avx512::available() {
                    v.push(("avx512", k.avx512));
                }
            }
        }
        None => {
            v.push(("scalar", scalar::vec_dot_w8 as VecDot));
            #[cfg(target_arch = "x86_64")]
            {
                if avx2::available() {
                    v.push(("avx2", avx2::vec_dot_w8));
                }
                if avx512::available() {
                    v.push(("avx512", avx512::vec_dot_w8));
                }
            }
        }
    }
    v
}

/// The fastest of `impls` (as from [`dot_impls`]) that `isa` allows.
fn pick(isa: Isa, impls: &[(&'static str, VecDot)]) -> (VecDot, &'static str) {
    let want: &[&str] = match isa {
        Isa::Avx512 => &["avx512", "avx2", "scalar"],
        Isa::Avx2 => &["avx2", "scalar"],
        Isa::Scalar => &["scalar"],
    };
    for w in want {
        if let Some(&(name, f)) = impls.iter().find(|(n, _)| n == w) {
            return (f, name);
        }
    }
    (impls[0].1, impls[0].0)
}

/// Adds every [`FrugalType`] to the traits table.
pub fn register(isa: Isa, table: &mut Vec<TypeTraits>) {
    for &t in FrugalType::all() {
        if matches!(t, FrugalType::SparseQ8 { .. } | FrugalType::Sparse24Q8) {
            continue; // see crate::sparse
        }
        let ty = GgmlType::Frugal(t);
        let impls = dot_impls(ty);
        let (vec_dot, isa_name) = pick(isa, &impls);
        let (vec_dot_type, to_float, from_float): (GgmlType, ToFloat, FromFloat) =
            match affine_kernels(t) {
                Some(k) => (GgmlType::Q8_1, k.to_float, k.from_float),
                None => (
                    GgmlType::Frugal(FrugalType::I8Tok),
                    scalar::dequantize_w8,
                    scalar::quantize_w8,
                ),
            };
        table.push(TypeTraits {
            ty,
            vec_dot_type,
            to_float,
            from_float: Some(from_float),
            vec_dot,
            vec_dot_ref: impls[0].1,
            isa: isa_name,
        });
    }
}

// ---------------------------------------------------------------- row codecs

fn affine_of(t: FrugalType) -> Aff {
    match t {
        FrugalType::Affine { bits, group, sym } if t.is_valid() => Aff::new(bits, group, sym),
        _ => panic!("{}: not a valid affine type", GgmlType::Frugal(t)),
    }
}

/// Writes one row of affine type `t` from its codes (one per element,
/// each `< 2^bits`) and per-group parameters `(d, m)` (`m` is ignored for
/// symmetric types). `d` and `m` are stored as f16: pass values that f16
/// represents, or they are rounded to nearest. `params.len()` is the number
/// of groups (1 for row-wise types) and `out.len()` the row's bytes.
///
/// Panics on a length mismatch or an out-of-range code.
pub fn affine_encode_row(t: FrugalType, params: &[(f32, f32)], codes: &[u8], out: &mut [u8]) {
    let a = affine_of(t);
    let n = codes.len();
    let rb = a
        .row_bytes(n)
        .unwrap_or_else(|| panic!("{n} codes: not whole groups of {}", GgmlType::Frugal(t)));
    assert_eq!(out.len(), rb, "output bytes for {n} elements");
    assert_eq!(params.len(), a.groups(n), "one (d, m) per group");
    let max = (1u16 << a.bits) - 1;
    assert!(
        codes.iter().all(|&q| q as u16 <= max),
        "codes must be below 2^{}",
        a.bits
    );
    if n == 0 {
        return;
    }
    let gl = a.group_len(n);
    let gb = a.group_bytes(gl);
    for ((c, o), &(d, m)) in codes
        .chunks_exact(gl)
        .zip(out.chunks_exact_mut(gb))
        .zip(params)
    {
        scalar::write_group(a, d, m, c, o);
    }
}

/// Reads one row of affine type `t`: clears and fills `params` with one
/// `(d, offset)` per group and `codes` with one code per element, so that
/// element i of group g is `d * codes[i] + offset`. The offset is `m` for
/// asymmetric types and `-d * 2^(bits-1)` for symmetric ones (not the stored
/// bytes: symmetric types store only `d`).
///
/// The row length comes from `row.len()`; panics if no row length gives it.
pub fn affine_decode_row(
    t: FrugalType,
    row: &[u8],
    params: &mut Vec<(f32, f32)>,
    codes: &mut Vec<u8>,
) {
    let a = affine_of(t);
    let n = a
        .row_len_of(row.len())
        .unwrap_or_else(|| panic!("{} bytes: not a row of {}", row.len(), GgmlType::Frugal(t)));
    params.clear();
    codes.clear();
    if n == 0 {
        return;
    }
    codes.resize(n, 0);
    let gl = a.group_len(n);
    let gb = a.group_bytes(gl);
    for (g, c) in row.chunks_exact(gb).zip(codes.chunks_exact_mut(gl)) {
        let (d, m) = scalar::read_group(a, g, c);
        params.push((d, m));
    }
}

/// Writes one `W8Row` (or `I8Tok`) row: scale `d`, the codes' sum, the
/// codes. `out.len()` must be `8 + codes.len()` (0 for an empty row).
///
/// The SIMD dot products take activation codes in `-127..=127` (the I8Tok
/// quantizer's range); weight codes may be any i8.
pub fn w8_encode_row(d: f32, codes: &[i8], out: &mut [u8]) {
    if codes.is_empty() {
        assert!(out.is_empty(), "an empty row has no header");
        return;
    }
    assert_eq!(out.len(), 8 + codes.len(), "W8 row bytes");
    let sum: i32 = codes.iter().map(|&q| q as i32).sum();
    out[..4].copy_from_slice(&d.to_le_bytes());
    out[4..8].copy_from_slice(&sum.to_le_bytes());
    for (o, &q) in out[8..].iter_mut().zip(codes) {
        *o = q as u8;
    }
}

/// Reads one `W8Row`/`I8Tok` row: `(d, stored code sum, codes)`. Panics if
/// the row is shorter than its header (an empty row gives `(0, 0, [])`).
pub fn w8_decode_row(row: &[u8]) -> (f32, i32, &[i8]) {
    if row.is_empty() {
        return (0.0, 0, &[]);
    }
    assert!(row.len() >= 8, "W8 row of {} bytes: no header", row.len());
    let d = f32::from_le_bytes(row[..4].try_into().expect("4 bytes"));
    let sum = i32::from_le_bytes(row[4..8].try_into().expect("4 bytes"));
    (d, sum, scalar::as_i8(&row[8..]))
}
