//! Portable reference kernels: ggml's reference quantizers, dequantizers and
//! the scalar dot products every SIMD path is tested against.

use super::blocks::*;

/// Split `n` elements into blocks, checking the byte slices hold them.
/// Returns the number of blocks.
#[inline]
pub(crate) fn check_dot(n: usize, w: &[u8], wsize: usize, a: &[u8], asize: usize) -> usize {
    assert!(
        n.is_multiple_of(QK),
        "dot of {n} elements: not whole {QK}-element blocks"
    );
    let nb = n / QK;
    assert!(
        w.len() >= nb * wsize,
        "weight row: {} bytes < {} blocks",
        w.len(),
        nb
    );
    assert!(
        a.len() >= nb * asize,
        "activation row: {} bytes < {} blocks",
        a.len(),
        nb
    );
    nb
}

// ---------------------------------------------------------------- quantize

/// Absolute maximum and the signed value that has it (first one on ties), as ggml's Q4_0/Q5_0.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn absmax(x: &[f32]) -> f32 {
    // ggml: amax = MAX(amax, fabsf(v)) with MAX(a, b) = a > b ? a : b.
    x.iter()
        .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() })
}

#[inline]
fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

fn check_quant(src: &[f32], dst: &[u8], bsize: usize) -> usize {
    assert!(
        src.len().is_multiple_of(QK),
        "{} floats: not whole blocks",
        src.len()
    );
    let nb = src.len() / QK;
    assert_eq!(dst.len(), nb * bsize, "output bytes for {nb} blocks");
    nb
}

/// ggml's `quantize_row_q4_0_ref`.
pub fn quantize_q4_0_ref(src: &[f32], dst: &mut [u8]) {
    check_quant(src, dst, 18);
    for (x, y) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ4_0>(dst)) {
        let max = signed_absmax(x);
        let d = max / -8.0;
        let id = inv(d);
        y.d = F16Le::from_f32(d);
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[j + QK / 2] * id;
            let q0 = ((x0 + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 + 8.5) as i8).min(15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml's `quantize_row_q4_1_ref`.
pub fn quantize_q4_1_ref(src: &[f32], dst: &mut [u8]) {
    check_quant(src, dst, 20);
    for (x, y) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ4_1>(dst)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inv(d);
        y.d = F16Le::from_f32(d);
        y.m = F16Le::from_f32(min);
        for j in 0..QK / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + QK / 2] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(15) as u8;
            let q1 = ((x1 + 0.5) as i8).min(15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml's `quantize_row_q5_0_ref`.
pub fn quantize_q5_0_ref(src: &[f32], dst: &mut [u8]) {
    check_quant(src, dst, 22);
    for (x, y) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ5_0>(dst)) {
        let max = signed_absmax(x);
        let d = max / -16.0;
        let id = inv(d);
        y.d = F16Le::from_f32(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[j + QK / 2] * id;
            let q0 = ((x0 + 16.5) as i8).min(31) as u8;
            let q1 = ((x1 + 16.5) as i8).min(31) as u8;
            y.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        y.qh = qh.to_le_bytes();
    }
}

/// ggml's `quantize_row_q5_1_ref`.
pub fn quantize_q5_1_ref(src: &[f32], dst: &mut [u8]) {
    check_quant(src, dst, 24);
    for (x, y) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ5_1>(dst)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inv(d);
        y.d = F16Le::from_f32(d);
        y.m = F16Le::from_f32(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + QK / 2] - min) * id;
            // ggml casts straight to uint8_t here, without clamping to 31.
            let q0 = (x0 + 0.5) as u8;
            let q1 = (x1 + 0.5) as u8;
            y.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        y.qh = qh.to_le_bytes();
    }
}

/// ggml's `quantize_row_q8_0_ref`. `f32::round` is C's `roundf` (ties away from zero).
pub fn quantize_q8_0_ref(src: &[f32], dst: &mut [u8]) {
    check_quant(src, dst, 34);
    for (x, y) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ8_0>(dst)) {
        let d = absmax(x) / 127.0;
        let id = inv(d);
        y.d = F16Le::from_f32(d);
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// ggml's `quantize_row_q8_1_ref`: also stores `s = f16(d * sum(q))`.
pub fn quantize_q8_1_ref(src: &[f32], dst: &mut [u8]) {
    check_quant(src, dst, 36);
    for (x, y) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ8_1>(dst)) {
        let d = absmax(x) / 127.0;
        let id = inv(d);
        y.d = F16Le::from_f32(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        y.s = F16Le::from_f32(sum as f32 * d);
    }
}

// ---------------------------------------------------------------- dequantize

/// Checks the source holds the blocks of `dst.len()` elements; returns the
/// source bytes of exactly those blocks (a longer source is allowed).
fn check_deq<'a>(src: &'a [u8], dst: &[f32], bsize: usize) -> &'a [u8] {
    assert!(
        dst.len().is_multiple_of(QK),
        "{} floats: not whole blocks",
        dst.len()
    );
    let nb = dst.len() / QK;
    assert!(
        src.len() >= nb * bsize,
        "{} input bytes < {nb} blocks",
        src.len()
    );
    &src[..nb * bsize]
}

#[inline]
pub(crate) fn q5_high(qh: [u8; 4], j: usize) -> u8 {
    (((u32::from_le_bytes(qh) >> j) & 1) as u8) << 4
}

pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    let src = check_deq(src, dst, 18);
    for (b, y) in as_blocks::<BlockQ4_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    let src = check_deq(src, dst, 20);
    for (b, y) in as_blocks::<BlockQ4_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

pub fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    let src = check_deq(src, dst, 22);
    for (b, y) in as_blocks::<BlockQ5_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            let q0 = (b.qs[j] & 0x0F) | q5_high(b.qh, j);
            let q1 = (b.qs[j] >> 4) | q5_high(b.qh, j + QK / 2);
            y[j] = (q0 as i32 - 16) as f32 * d;
            y[j + QK / 2] = (q1 as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    let src = check_deq(src, dst, 24);
    for (b, y) in as_blocks::<BlockQ5_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            let q0 = (b.qs[j] & 0x0F) | q5_high(b.qh, j);
            let q1 = (b.qs[j] >> 4) | q5_high(b.qh, j + QK / 2);
            y[j] = q0 as f32 * d + m;
            y[j + QK / 2] = q1 as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    let src = check_deq(src, dst, 34);
    for (b, y) in as_blocks::<BlockQ8_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn dequantize_q8_1(src: &[u8], dst: &mut [f32]) {
    let src = check_deq(src, dst, 36);
    for (b, y) in as_blocks::<BlockQ8_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- dot products

/// Q4_0 weights · Q8_0 activations.
pub fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(n, w, 18, a, 34);
    let xs = as_blocks::<BlockQ4_0>(&w[..nb * 18]);
    let ys = as_blocks::<BlockQ8_0>(&a[..nb * 34]);
    let mut sum = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += ((x.qs[j] & 0x0F) as i32 - 8) * y.qs[j] as i32;
            sumi += ((x.qs[j] >> 4) as i32 - 8) * y.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// Q4_1 weights · Q8_1 activations.
pub fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(n, w, 20, a, 36);
    let xs = as_blocks::<BlockQ4_1>(&w[..nb * 20]);
    let ys = as_blocks::<BlockQ8_1>(&a[..nb * 36]);
    let mut sum = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += (x.qs[j] & 0x0F) as i32 * y.qs[j] as i32;
            sumi += (x.qs[j] >> 4) as i32 * y.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32()) + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// Q5_0 weights · Q8_0 activations.
pub fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(n, w, 22, a, 34);
    let xs = as_blocks::<BlockQ5_0>(&w[..nb * 22]);
    let ys = as_blocks::<BlockQ8_0>(&a[..nb * 34]);
    let mut sum = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let q0 = (x.qs[j] & 0x0F) | q5_high(x.qh, j);
            let q1 = (x.qs[j] >> 4) | q5_high(x.qh, j + QK / 2);
            sumi += (q0 as i32 - 16) * y.qs[j] as i32;
            sumi += (q1 as i32 - 16) * y.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// Q5_1 weights · Q8_1 activations.
pub fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(n, w, 24, a, 36);
    let xs = as_blocks::<BlockQ5_1>(&w[..nb * 24]);
    let ys = as_blocks::<BlockQ8_1>(&a[..nb * 36]);
    let mut sum = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let q0 = (x.qs[j] & 0x0F) | q5_high(x.qh, j);
            let q1 = (x.qs[j] >> 4) | q5_high(x.qh, j + QK / 2);
            sumi += q0 as i32 * y.qs[j] as i32;
            sumi += q1 as i32 * y.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32()) + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// Q8_0 weights · Q8_0 activations.
pub fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(n, w, 34, a, 34);
    let xs = as_blocks::<BlockQ8_0>(&w[..nb * 34]);
    let ys = as_blocks::<BlockQ8_0>(&a[..nb * 34]);
    let mut sum = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// Q8_1 · Q8_1 (Q8_1 is an activation format; this makes it usable as weights too).
pub fn vec_dot_q8_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(n, w, 36, a, 36);
    let xs = as_blocks::<BlockQ8_1>(&w[..nb * 36]);
    let ys = as_blocks::<BlockQ8_1>(&a[..nb * 36]);
    let mut sum = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}
