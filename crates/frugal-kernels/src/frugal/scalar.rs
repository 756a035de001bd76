//! Portable references for frugal's types: the RTN quantizers, the
//! dequantizers and the scalar dot products every SIMD path is tested against.
//!
//! Affine layout (see [`frugal_formats::FrugalType`]): a row is groups of
//! `group` elements (one group of the whole row when `group == 0`); a group
//! is an f16 `d` (and an f16 `m` when asymmetric), then its codes 32 at a
//! time as `bits` little-endian u32 bit planes.

use crate::legacy::blocks::F16Le;
use half::f16;

/// Bytes of one Q8_1 block (f16 d, f16 s, 32 i8).
pub(crate) const Q8_1_BYTES: usize = 36;

/// The most elements a W8 dot product takes: keeps every SIMD lane's i32
/// partial sum clear of overflow (|product| ≤ 255·128, ≤ n/16 per lane).
pub const W8_MAX_N: usize = 1 << 20;

/// An affine type's parameters as plain numbers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Aff {
    pub bits: usize,
    /// Elements per group; 0: one group per row.
    pub group: usize,
    pub sym: bool,
}

impl Aff {
    pub const fn new(bits: u8, group: u16, sym: bool) -> Aff {
        Aff {
            bits: bits as usize,
            group: group as usize,
            sym,
        }
    }

    pub const fn header(self) -> usize {
        if self.sym {
            2
        } else {
            4
        }
    }

    /// The value of the code that stands for 0 in symmetric types.
    pub const fn bias(self) -> i32 {
        if self.sym {
            1 << (self.bits - 1)
        } else {
            0
        }
    }

    pub const fn max_code(self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }

    /// Elements of one group of a row of `n` (> 0).
    pub fn group_len(self, n: usize) -> usize {
        if self.group == 0 {
            n
        } else {
            self.group
        }
    }

    /// Bytes of one group of `gl` elements.
    pub fn group_bytes(self, gl: usize) -> usize {
        self.header() + gl / 32 * 4 * self.bits
    }

    /// Groups of a row of `n` elements.
    pub fn groups(self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            n / self.group_len(n)
        }
    }

    /// Bytes of a row of `n` elements, or `None` if `n` is not whole groups
    /// of 32-element chunks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if n == 0 {
            return Some(0);
        }
        if !n.is_multiple_of(32) || !n.is_multiple_of(self.group_len(n)) {
            return None;
        }
        self.groups(n)
            .checked_mul(self.group_bytes(self.group_len(n)))
    }

    /// The row length whose row takes `bytes` bytes.
    pub fn row_len_of(self, bytes: usize) -> Option<usize> {
        if bytes == 0 {
            return Some(0);
        }
        let cb = 4 * self.bits;
        let n = if self.group == 0 {
            (bytes.checked_sub(self.header())? / cb) * 32
        } else {
            bytes / self.group_bytes(self.group) * self.group
        };
        (n > 0 && self.row_bytes(n) == Some(bytes)).then_some(n)
    }
}

/// f16 bits (little-endian) at the start of `b`, as f32.
#[inline]
pub(crate) fn f16_at(b: &[u8]) -> f32 {
    F16Le([b[0], b[1]]).to_f32()
}

/// `x` rounded to the nearest f16 (ties to even), back as f32.
#[inline]
pub(crate) fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Bytes as i8 codes.
pub(crate) fn as_i8(b: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size, alignment and validity; the
    // result borrows exactly the input bytes.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<i8>(), b.len()) }
}

// ---------------------------------------------------------------- bit planes

/// Unpacks one 32-code chunk of `bits` planes.
#[inline]
pub(crate) fn decode_chunk(bits: usize, planes: &[u8], out: &mut [u8]) {
    let mut q = [0u8; 32];
    for k in 0..bits {
        let p = u32::from_le_bytes(planes[4 * k..4 * k + 4].try_into().expect("4 bytes"));
        for (i, q) in q.iter_mut().enumerate() {
            *q |= (((p >> i) & 1) as u8) << k;
        }
    }
    out[..32].copy_from_slice(&q);
}

/// Packs 32 codes into `bits` planes.
#[inline]
pub(crate) fn encode_chunk(bits: usize, codes: &[u8], planes: &mut [u8]) {
    for k in 0..bits {
        let mut p = 0u32;
        for (i, &q) in codes[..32].iter().enumerate() {
            p |= (((q >> k) & 1) as u32) << i;
        }
        planes[4 * k..4 * k + 4].copy_from_slice(&p.to_le_bytes());
    }
}

/// Writes one group: header from `d` (and `m`, asymmetric), then the codes.
pub(crate) fn write_group(a: Aff, d: f32, m: f32, codes: &[u8], out: &mut [u8]) {
    out[..2].copy_from_slice(&F16Le::from_f32(d).0);
    if !a.sym {
        out[2..4].copy_from_slice(&F16Le::from_f32(m).0);
    }
    let cb = 4 * a.bits;
    for (c, p) in codes
        .chunks_exact(32)
        .zip(out[a.header()..].chunks_exact_mut(cb))
    {
        encode_chunk(a.bits, c, p);
    }
}

/// Reads one group's codes into `codes` (its length is the group's);
/// returns `(d, offset)`: element value `d * q + offset`.
pub(crate) fn read_group(a: Aff, g: &[u8], codes: &mut [u8]) -> (f32, f32) {
    let d = f16_at(g);
    let off = if a.sym {
        -d * a.bias() as f32
    } else {
        f16_at(&g[2..])
    };
    let cb = 4 * a.bits;
    for (c, p) in codes
        .chunks_exact_mut(32)
        .zip(g[a.header()..].chunks_exact(cb))
    {
        decode_chunk(a.bits, p, c);
    }
    (d, off)
}

// ---------------------------------------------------------------- affine

/// The element with the largest magnitude, sign kept (first on ties).
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Round-to-nearest quantization of one group; returns the f16 `(d, m)`.
///
/// Asymmetric: `d = (max - min) / (2^b - 1)`, `m = min`, both rounded to
/// f16 before the codes `clamp(round((x - m) / d), 0, 2^b - 1)` are taken
/// with them (`d == 0`: all codes 0). Symmetric (as ggml's Q4_0): `d =
/// f16(max / -2^(b-1))` with `max` the signed element of largest
/// magnitude, codes `clamp(round(x / d) + 2^(b-1), 0, 2^b - 1)` (`d == 0`:
/// all `2^(b-1)`). `round` is ties away from zero.
pub(crate) fn quantize_group(a: Aff, x: &[f32], codes: &mut [u8]) -> (f32, f32) {
    let maxq = a.max_code() as f32;
    if a.sym {
        let bias = a.bias() as f32;
        let d = round_f16(signed_absmax(x) / -bias);
        for (q, &v) in codes.iter_mut().zip(x) {
            *q = if d == 0.0 {
                bias as u8
            } else {
                ((v / d).round() + bias).clamp(0.0, maxq) as u8
            };
        }
        (d, 0.0)
    } else {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in x {
            min = min.min(v);
            max = max.max(v);
        }
        let d = round_f16((max - min) / maxq);
        let m = round_f16(min);
        for (q, &v) in codes.iter_mut().zip(x) {
            *q = if d == 0.0 {
                0
            } else {
                ((v - m) / d).round().clamp(0.0, maxq) as u8
            };
        }
        (d, m)
    }
}

/// Checks an affine row of `n` elements against `bytes`; returns the group length.
fn check_row(a: Aff, n: usize, bytes: usize) -> usize {
    let rb = a
        .row_bytes(n)
        .unwrap_or_else(|| panic!("{n} elements: not whole groups ({a:?})"));
    assert_eq!(bytes, rb, "{a:?}: {n} elements need {rb} bytes");
    a.group_len(n.max(1))
}

/// Reference RTN quantizer of affine rows (see `quantize_group`). For a
/// grouped type `src` may hold several rows; for a row-wise type it is one row.
pub fn quantize_affine<const B: u8, const G: u16, const S: bool>(src: &[f32], dst: &mut [u8]) {
    let a = Aff::new(B, G, S);
    let gl = check_row(a, src.len(), dst.len());
    if src.is_empty() {
        return;
    }
    let mut codes = vec![0u8; gl];
    for (x, y) in src
        .chunks_exact(gl)
        .zip(dst.chunks_exact_mut(a.group_bytes(gl)))
    {
        let (d, m) = quantize_group(a, x, &mut codes);
        write_group(a, d, m, &codes, y);
    }
}

/// Dequantizes affine rows: `dst.len()` elements (one row for a row-wise type).
pub fn dequantize_affine<const B: u8, const G: u16, const S: bool>(src: &[u8], dst: &mut [f32]) {
    let a = Aff::new(B, G, S);
    let gl = check_row(a, dst.len(), src.len());
    if dst.is_empty() {
        return;
    }
    let mut codes = vec![0u8; gl];
    for (g, y) in src
        .chunks_exact(a.group_bytes(gl))
        .zip(dst.chunks_exact_mut(gl))
    {
        let d = f16_at(g);
        let m = if S { 0.0 } else { f16_at(&g[2..]) };
        read_group(a, g, &mut codes);
        for (y, &q) in y.iter_mut().zip(&codes) {
            *y = if S {
                d * (q as i32 - a.bias()) as f32
            } else {
                d * q as f32 + m
            };
        }
    }
}

/// Checks the arguments of an affine dot product; returns the group length.
pub(crate) fn check_dot(a: Aff, n: usize, w: &[u8], act: &[u8]) -> usize {
    let rb = a
        .row_bytes(n)
        .unwrap_or_else(|| panic!("dot of {n} elements: not whole groups ({a:?})"));
    assert!(
        w.len() >= rb,
        "weight row: {} bytes < {rb} ({a:?}, {n} elements)",
        w.len()
    );
    assert!(
        act.len() >= n / 32 * Q8_1_BYTES,
        "activation row: {} bytes < {} Q8_1 blocks",
        act.len(),
        n / 32
    );
    a.group_len(n.max(1))
}

/// An affine weight row · a Q8_1 activation row: per group, `d_w ·
/// Σ_chunks d_x · Σ (q_w - bias) q_x` (integers exact), plus `m · Σ s_x`
/// for asymmetric types.
pub fn vec_dot_affine_q8_1<const B: u8, const G: u16, const S: bool>(
    n: usize,
    w: &[u8],
    act: &[u8],
) -> f32 {
    let a = Aff::new(B, G, S);
    let gl = check_dot(a, n, w, act);
    if n == 0 {
        return 0.0;
    }
    let gb = a.group_bytes(gl);
    let cb = 4 * a.bits;
    let nc = gl / 32;
    let mut q = [0u8; 32];
    let mut total = 0.0f32;
    for (g, gw) in w[..n / gl * gb].chunks_exact(gb).enumerate() {
        let d = f16_at(gw);
        let (mut gsum, mut ssum) = (0.0f32, 0.0f32);
        for c in 0..nc {
            decode_chunk(a.bits, &gw[a.header() + c * cb..], &mut q);
            let blk = &act[(g * nc + c) * Q8_1_BYTES..][..Q8_1_BYTES];
            let x = as_i8(&blk[4..]);
            let isum: i32 = q
                .iter()
                .zip(x)
                .map(|(&q, &x)| (q as i32 - a.bias()) * x as i32)
                .sum();
            gsum += f16_at(blk) * isum as f32;
            ssum += f16_at(&blk[2..]);
        }
        total += d * gsum;
        if !S {
            total += f16_at(&gw[2..]) * ssum;
        }
    }
    total
}

// ---------------------------------------------------------------- W8 / I8

/// Checks a W8/I8 row of `n` elements against `bytes`.
fn check_w8_row(n: usize, bytes: usize) {
    let need = if n == 0 { 0 } else { 8 + n };
    assert!(n.is_multiple_of(32), "W8 row of {n}: not whole 32s");
    assert_eq!(bytes, need, "W8 row of {n} elements: {need} bytes");
}

/// Per-row absmax quantizer of one `W8Row`/`I8Tok` row: `d = amax / 127`,
/// codes `round(x * (1/d))` (ties away from zero, clamped to ±127; `d ==
/// 0`: all 0), and the codes' sum.
pub fn quantize_w8(src: &[f32], dst: &mut [u8]) {
    check_w8_row(src.len(), dst.len());
    if src.is_empty() {
        return;
    }
    let amax = src
        .iter()
        .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in dst[8..].iter_mut().zip(src) {
        let c = (v * id).round().clamp(-127.0, 127.0) as i8;
        sum += c as i32;
        *q = c as u8;
    }
    dst[..4].copy_from_slice(&d.to_le_bytes());
    dst[4..8].copy_from_slice(&sum.to_le_bytes());
}

/// Dequantizes one `W8Row`/`I8Tok` row (`dst.len()` elements): `d * q`.
pub fn dequantize_w8(src: &[u8], dst: &mut [f32]) {
    check_w8_row(dst.len(), src.len());
    if dst.is_empty() {
        return;
    }
    let d = f32::from_le_bytes(src[..4].try_into().expect("4 bytes"));
    for (y, &q) in dst.iter_mut().zip(as_i8(&src[8..])) {
        *y = d * q as f32;
    }
}

/// Checks the arguments of a W8 dot product.
pub(crate) fn check_w8_dot(n: usize, w: &[u8], a: &[u8]) {
    assert!(n.is_multiple_of(32), "W8 dot of {n}: not whole 32s");
    assert!(n <= W8_MAX_N, "W8 dot of {n} > {W8_MAX_N} elements");
    if n > 0 {
        assert!(
            w.len() >= 8 + n,
            "weight row: {} bytes < {}",
            w.len(),
            8 + n
        );
        assert!(
            a.len() >= 8 + n,
            "activation row: {} bytes < {}",
            a.len(),
            8 + n
        );
    }
}

/// The scales of a W8 dot product's two rows, multiplied (the same
/// expression on every path, so equal integer sums give equal results).
#[inline]
pub(crate) fn w8_scale(w: &[u8], a: &[u8]) -> f32 {
    let dw = f32::from_le_bytes(w[..4].try_into().expect("4 bytes"));
    let dx = f32::from_le_bytes(a[..4].try_into().expect("4 bytes"));
    dw * dx
}

/// `W8Row · I8Tok` (or any two rows of that layout): `d_w d_x Σ q_w q_x`,
/// the sum exact in integers.
pub fn vec_dot_w8(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_w8_dot(n, w, a);
    if n == 0 {
        return 0.0;
    }
    let isum: i64 = as_i8(&w[8..8 + n])
        .iter()
        .zip(as_i8(&a[8..8 + n]))
        .map(|(&p, &q)| p as i64 * q as i64)
        .sum();
    w8_scale(w, a) * isum as f32
}
