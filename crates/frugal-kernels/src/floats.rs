//! F32, F16 and BF16 weights. Their activations stay f32 (`vec_dot_type` is
//! F32, stored as little-endian f32 bytes), so a dot product is a plain
//! float dot product after widening the weights.
//!
//! Weights and activations arrive as bytes with no alignment guarantee: every
//! kernel reads with unaligned (or masked) loads.

use crate::traits::{Isa, TypeTraits, VecDot};
use frugal_formats::GgmlType;
use half::f16;

/// bf16 bits to f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bf16 bits as ggml's `GGML_FP32_TO_BF16`: round to nearest even,
/// NaNs kept NaN (quieted).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[inline]
fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}
#[inline]
fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

fn check_conv(src_bytes: usize, n: usize, esize: usize) {
    assert!(
        src_bytes >= n * esize,
        "{src_bytes} bytes < {n} elements of {esize} bytes"
    );
}

pub fn f32_to_float(src: &[u8], dst: &mut [f32]) {
    check_conv(src.len(), dst.len(), 4);
    for (i, o) in dst.iter_mut().enumerate() {
        *o = f32_at(src, i);
    }
}

pub fn f16_to_float(src: &[u8], dst: &mut [f32]) {
    check_conv(src.len(), dst.len(), 2);
    for (i, o) in dst.iter_mut().enumerate() {
        *o = f16::from_bits(u16_at(src, i)).to_f32();
    }
}

pub fn bf16_to_float(src: &[u8], dst: &mut [f32]) {
    check_conv(src.len(), dst.len(), 2);
    for (i, o) in dst.iter_mut().enumerate() {
        *o = bf16_to_f32(u16_at(src, i));
    }
}

pub fn f32_from_float(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 4, "F32 output bytes");
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(4)) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

/// Round to nearest even, as ggml's `GGML_FP32_TO_FP16`.
pub fn f16_from_float(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 2, "F16 output bytes");
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
    }
}

pub fn bf16_from_float(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 2, "BF16 output bytes");
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
    }
}

#[inline]
fn check_dot(n: usize, w: &[u8], esize: usize, a: &[u8]) {
    assert!(
        w.len() >= n * esize,
        "weight row: {} bytes < {n} elements",
        w.len()
    );
    assert!(
        a.len() >= n * 4,
        "activation row: {} bytes < {n} f32",
        a.len()
    );
}

/// Scalar references, accumulating in f64 (as ggml's `ggml_float`).
pub mod scalar {
    use super::*;

    pub fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(n, w, 4, a);
        (0..n)
            .map(|i| f32_at(w, i) as f64 * f32_at(a, i) as f64)
            .sum::<f64>() as f32
    }

    pub fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(n, w, 2, a);
        (0..n)
            .map(|i| f16::from_bits(u16_at(w, i)).to_f32() as f64 * f32_at(a, i) as f64)
            .sum::<f64>() as f32
    }

    pub fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
        check_dot(n, w, 2, a);
        (0..n)
            .map(|i| bf16_to_f32(u16_at(w, i)) as f64 * f32_at(a, i) as f64)
            .sum::<f64>() as f32
    }
}

// Element kinds for the SIMD kernels' const generics.
#[cfg(target_arch = "x86_64")]
const K_F32: u8 = 0;
#[cfg(target_arch = "x86_64")]
const K_F16: u8 = 1;
#[cfg(target_arch = "x86_64")]
const K_BF16: u8 = 2;

#[cfg(target_arch = "x86_64")]
const fn esize(k: u8) -> usize {
    if k == K_F32 {
        4
    } else {
        2
    }
}

/// AVX2 + FMA + F16C dot products (8 lanes, 4 accumulators, scalar tail).
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        crate::legacy::avx2::available()
    }

    /// 8 weights from element `i`, widened to f32.
    ///
    /// # Safety
    /// Elements `i..i+8` of `w` must be readable.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn ld<const K: u8>(w: *const u8, i: usize) -> __m256 {
        // SAFETY: caller contract; unaligned loads.
        unsafe {
            match K {
                K_F32 => _mm256_loadu_ps(w.add(4 * i).cast()),
                K_F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i).cast())),
                _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm_loadu_si128(w.add(2 * i).cast()),
                ))),
            }
        }
    }

    /// # Safety
    /// Features available; `w` holds `n` elements of kind `K`, `a` `n` f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<const K: u8>(n: usize, w: *const u8, a: *const u8) -> f32 {
        let af = a.cast::<f32>();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every index read is < n (loop bounds), inside both buffers.
        unsafe {
            while i + 32 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let k = i + 8 * j;
                    *acc = _mm256_fmadd_ps(ld::<K>(w, k), _mm256_loadu_ps(af.add(k)), *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(ld::<K>(w, i), _mm256_loadu_ps(af.add(i)), acc[0]);
                i += 8;
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = crate::legacy::avx2::hsum_ps(s);
        while i < n {
            // SAFETY: i < n.
            let (wv, av) = unsafe {
                let wv = match K {
                    K_F32 => w.add(4 * i).cast::<f32>().read_unaligned(),
                    K_F16 => {
                        crate::legacy::avx2::f16_to_f32(w.add(2 * i).cast::<u16>().read_unaligned())
                    }
                    _ => bf16_to_f32(w.add(2 * i).cast::<u16>().read_unaligned()),
                };
                (wv, af.add(i).read_unaligned())
            };
            sum += wv * av;
            i += 1;
        }
        sum
    }

    macro_rules! safe {
        ($name:ident, $k:expr) => {
            pub fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
                assert!(
                    available(),
                    "AVX2 kernel called on a CPU without AVX2/FMA/F16C"
                );
                check_dot(n, w, esize($k), a);
                // SAFETY: features checked; lengths checked by `check_dot`.
                unsafe { dot::<{ $k }>(n, w.as_ptr(), a.as_ptr()) }
            }
        };
    }
    safe!(vec_dot_f32, K_F32);
    safe!(vec_dot_f16, K_F16);
    safe!(vec_dot_bf16, K_BF16);
}

/// AVX-512 dot products (16 lanes, 4 accumulators, masked tail).
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        crate::legacy::avx512::available()
    }

    /// 16 weights from element `i` (only the lanes in `m`; others 0), widened to f32.
    ///
    /// # Safety
    /// Elements `i + l` for the set bits `l` of `m` must be readable.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn ld<const K: u8>(w: *const u8, i: usize, m: __mmask16) -> __m512 {
        // SAFETY: caller contract; masked loads do not touch masked-off elements.
        unsafe {
            match K {
                K_F32 => _mm512_maskz_loadu_ps(m, w.add(4 * i).cast()),
                K_F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.add(2 * i).cast())),
                _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                    _mm256_maskz_loadu_epi16(m, w.add(2 * i).cast()),
                ))),
            }
        }
    }

    /// # Safety
    /// Features available; `w` holds `n` elements of kind `K`, `a` `n` f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn dot<const K: u8>(n: usize, w: *const u8, a: *const u8) -> f32 {
        let af = a.cast::<f32>();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: full loads cover indices < n (loop bounds); the tail load is
        // masked to the remaining n - i < 16 elements.
        unsafe {
            while i + 64 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let k = i + 16 * j;
                    *acc = _mm512_fmadd_ps(ld::<K>(w, k, !0), _mm512_loadu_ps(af.add(k)), *acc);
                }
                i += 64;
            }
            while i + 16 <= n {
                acc[0] = _mm512_fmadd_ps(ld::<K>(w, i, !0), _mm512_loadu_ps(af.add(i)), acc[0]);
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u16 << (n - i)) - 1;
                let av = _mm512_maskz_loadu_ps(m, af.add(i));
                acc[1] = _mm512_fmadd_ps(ld::<K>(w, i, m), av, acc[1]);
            }
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    macro_rules! safe {
        ($name:ident, $k:expr) => {
            pub fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
                assert!(
                    available(),
                    "AVX-512 kernel called on a CPU without AVX-512"
                );
                check_dot(n, w, esize($k), a);
                // SAFETY: features checked; lengths checked by `check_dot`.
                unsafe { dot::<{ $k }>(n, w.as_ptr(), a.as_ptr()) }
            }
        };
    }
    safe!(vec_dot_f32, K_F32);
    safe!(vec_dot_f16, K_F16);
    safe!(vec_dot_bf16, K_BF16);
}

#[allow(unused_variables)]
fn pick(isa: Isa, s: VecDot, a2: VecDot, a5: VecDot) -> (VecDot, &'static str) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (a5, "avx512"),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (a2, "avx2"),
        _ => (s, "scalar"),
    }
}

/// Adds F32, F16 and BF16 to the traits table.
pub fn register(isa: Isa, table: &mut Vec<TypeTraits>) {
    #[cfg(target_arch = "x86_64")]
    let simd: [(VecDot, VecDot); 3] = [
        (avx2::vec_dot_f32, avx512::vec_dot_f32),
        (avx2::vec_dot_f16, avx512::vec_dot_f16),
        (avx2::vec_dot_bf16, avx512::vec_dot_bf16),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let simd: [(VecDot, VecDot); 3] = [
        (scalar::vec_dot_f32, scalar::vec_dot_f32),
        (scalar::vec_dot_f16, scalar::vec_dot_f16),
        (scalar::vec_dot_bf16, scalar::vec_dot_bf16),
    ];
    let entries: [(
        GgmlType,
        crate::traits::ToFloat,
        crate::traits::FromFloat,
        VecDot,
    ); 3] = [
        (
            GgmlType::F32,
            f32_to_float,
            f32_from_float,
            scalar::vec_dot_f32,
        ),
        (
            GgmlType::F16,
            f16_to_float,
            f16_from_float,
            scalar::vec_dot_f16,
        ),
        (
            GgmlType::BF16,
            bf16_to_float,
            bf16_from_float,
            scalar::vec_dot_bf16,
        ),
    ];
    for ((ty, to_float, from_float, vref), (a2, a5)) in entries.into_iter().zip(simd) {
        let (vec_dot, isa_name) = pick(isa, vref, a2, a5);
        table.push(TypeTraits {
            ty,
            vec_dot_type: GgmlType::F32,
            to_float,
            from_float: Some(from_float),
            vec_dot,
            vec_dot_ref: vref,
            isa: isa_name,
        });
    }
}
