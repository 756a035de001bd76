//! Portable scalar k-quant kernels: dequantization (bit-identical to ggml's
//! `dequantize_row_q*_K`), the Q8_K reference quantizer (bit-identical to
//! `quantize_row_q8_K_ref`) and the reference dot products every SIMD kernel
//! is tested against.
//!
//! The dot products are written from the format definitions (unpack each
//! super-block into plain integer quants, then multiply), not by mirroring
//! the SIMD code, so the two are independent.

use super::blocks::*;
use std::mem::size_of;

/// Check lengths for `n` elements of `T` blocks in `bytes`; returns the block count.
#[inline(always)]
pub(crate) fn check_len<T: KBlock>(n: usize, bytes: &[u8], what: &str) -> usize {
    assert!(
        n.is_multiple_of(QK_K),
        "{what}: {n} elements is not a whole number of {QK_K}-element blocks"
    );
    let nb = n / QK_K;
    assert!(
        bytes.len() >= nb * size_of::<T>(),
        "{what}: {n} elements need {} bytes of {}, got {}",
        nb * size_of::<T>(),
        T::TYPE,
        bytes.len()
    );
    nb
}

// ---------------------------------------------------------------------------
// Unpacking: the integer quants of one super-block, in element order.

/// Q2_K quants 0..=3.
#[inline(always)]
pub fn quants_q2k(b: &BlockQ2K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                q[128 * h + 32 * s + l] = (b.qs[32 * h + l] >> (2 * s)) & 3;
            }
        }
    }
    q
}

/// Q3_K quants -4..=3.
#[inline(always)]
pub fn quants_q3k(b: &BlockQ3K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let low = (b.qs[32 * h + l] >> (2 * s)) & 3;
                let high = (b.hmask[l] >> (4 * h + s)) & 1;
                q[128 * h + 32 * s + l] = (low | (high << 2)) as i8 - 4;
            }
        }
    }
    q
}

/// Q4_K quants 0..=15.
#[inline(always)]
pub fn quants_q4k(b: &BlockQ4K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for j in 0..4 {
        for l in 0..32 {
            q[64 * j + l] = b.qs[32 * j + l] & 0xF;
            q[64 * j + 32 + l] = b.qs[32 * j + l] >> 4;
        }
    }
    q
}

/// Q5_K quants 0..=31.
#[inline(always)]
pub fn quants_q5k(b: &BlockQ5K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for j in 0..4 {
        for l in 0..32 {
            let lo = 64 * j + l;
            let hi = lo + 32;
            q[lo] = (b.qs[32 * j + l] & 0xF) | (((b.qh[l] >> (2 * j)) & 1) << 4);
            q[hi] = (b.qs[32 * j + l] >> 4) | (((b.qh[l] >> (2 * j + 1)) & 1) << 4);
        }
    }
    q
}

/// Q6_K quants -32..=31.
#[inline(always)]
pub fn quants_q6k(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        for l in 0..32 {
            let a = b.ql[64 * h + l];
            let c = b.ql[64 * h + 32 + l];
            let hb = b.qh[32 * h + l];
            let e = 128 * h + l;
            q[e] = ((a & 0xF) | ((hb & 3) << 4)) as i8 - 32;
            q[e + 32] = ((c & 0xF) | (((hb >> 2) & 3) << 4)) as i8 - 32;
            q[e + 64] = ((a >> 4) | (((hb >> 4) & 3) << 4)) as i8 - 32;
            q[e + 96] = ((c >> 4) | (((hb >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

// ---------------------------------------------------------------------------
// Dequantization (f32 operations in ggml's order, so results are bit-identical).
// These walk the packed layout directly rather than using the `quants_*`
// helpers above, so that the dot products (which use the helpers) and the
// dequantizers are two independent decodings, checked against each other.

pub fn dequantize_row_q2k(src: &[u8], dst: &mut [f32]) {
    let nb = check_len::<BlockQ2K>(dst.len(), src, "dequantize Q2_K");
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate().take(nb) {
        let b: BlockQ2K = read_block(src, i);
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        let mut out = y.iter_mut();
        let mut is = 0;
        for h in 0..2 {
            let q = &b.qs[32 * h..32 * h + 32];
            for shift in (0..8).step_by(2) {
                for half in [&q[..16], &q[16..]] {
                    let sc = b.scales[is];
                    is += 1;
                    let (dl, ml) = (d * f32::from(sc & 0xF), min * f32::from(sc >> 4));
                    for &byte in half {
                        *out.next().unwrap() = dl * f32::from((byte >> shift) & 3) - ml;
                    }
                }
            }
        }
    }
}

pub fn dequantize_row_q3k(src: &[u8], dst: &mut [f32]) {
    let nb = check_len::<BlockQ3K>(dst.len(), src, "dequantize Q3_K");
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate().take(nb) {
        let b: BlockQ3K = read_block(src, i);
        let d_all = b.d.to_f32();
        // Scale j: low 4 bits in nibble j/8 of byte j%8, top 2 bits at 2*(j/4) of byte 8 + j%4.
        let scale = |j: usize| {
            let low = (b.scales[j % 8] >> (4 * (j / 8))) & 0xF;
            let high = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            i32::from(low | (high << 4)) - 32
        };
        let mut out = y.iter_mut();
        let mut is = 0;
        let mut m = 1u8;
        for h in 0..2 {
            let q = &b.qs[32 * h..32 * h + 32];
            for shift in (0..8).step_by(2) {
                for (q16, hm16) in [(&q[..16], &b.hmask[..16]), (&q[16..], &b.hmask[16..])] {
                    let dl = d_all * scale(is) as f32;
                    is += 1;
                    for (&byte, &hb) in q16.iter().zip(hm16) {
                        let v = i32::from((byte >> shift) & 3) - if hb & m != 0 { 0 } else { 4 };
                        *out.next().unwrap() = dl * v as f32;
                    }
                }
                m <<= 1;
            }
        }
    }
}

pub fn dequantize_row_q4k(src: &[u8], dst: &mut [f32]) {
    let nb = check_len::<BlockQ4K>(dst.len(), src, "dequantize Q4_K");
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate().take(nb) {
        let b: BlockQ4K = read_block(src, i);
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for (j, (q, y64)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * j, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            for l in 0..32 {
                y64[l] = d1 * f32::from(q[l] & 0xF) - m1;
                y64[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

pub fn dequantize_row_q5k(src: &[u8], dst: &mut [f32]) {
    let nb = check_len::<BlockQ5K>(dst.len(), src, "dequantize Q5_K");
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate().take(nb) {
        let b: BlockQ5K = read_block(src, i);
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        let (mut u1, mut u2) = (1u8, 2u8);
        for (j, (ql, y64)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * j, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                y64[l] = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
                y64[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

pub fn dequantize_row_q6k(src: &[u8], dst: &mut [f32]) {
    let nb = check_len::<BlockQ6K>(dst.len(), src, "dequantize Q6_K");
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate().take(nb) {
        let b: BlockQ6K = read_block(src, i);
        let d = b.d.to_f32();
        for (h, y128) in y.chunks_exact_mut(128).enumerate() {
            let (ql, qh, sc) = (
                &b.ql[64 * h..64 * h + 64],
                &b.qh[32 * h..32 * h + 32],
                &b.scales[8 * h..8 * h + 8],
            );
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y128[l] = d * f32::from(sc[is]) * q1 as f32;
                y128[l + 32] = d * f32::from(sc[is + 2]) * q2 as f32;
                y128[l + 64] = d * f32::from(sc[is + 4]) * q3 as f32;
                y128[l + 96] = d * f32::from(sc[is + 6]) * q4 as f32;
            }
        }
    }
}

pub fn dequantize_row_q8k(src: &[u8], dst: &mut [f32]) {
    let nb = check_len::<BlockQ8K>(dst.len(), src, "dequantize Q8_K");
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate().take(nb) {
        let b: BlockQ8K = read_block(src, i);
        for (yv, &q) in y.iter_mut().zip(b.qs.iter()) {
            *yv = b.d * f32::from(q);
        }
    }
}

// ---------------------------------------------------------------------------
// Q8_K quantization.

/// ggml's `nearest_int`: round to nearest, ties to even, by the magic-number
/// trick. Bit-identical to ggml for every input (meaningful for |x| < 2^22).
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// One Q8_K block from 256 floats, exactly as `quantize_row_q8_K_ref`:
/// `d = max/-127` where `max` is the first element of largest magnitude,
/// `q = min(127, nearest_int(x * -127/max))`, `bsums` = sums of 16.
/// An all-zero block gets `d = 0`, zero quants and zero sums (ggml leaves
/// `bsums` untouched there; they are multiplied by `d = 0` either way).
#[inline]
pub fn quantize_block_q8k(x: &[f32]) -> BlockQ8K {
    let x: &[f32; QK_K] = x.try_into().expect("a Q8_K block is 256 floats");
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    let mut b = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
    if amax == 0.0 {
        return b;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in b.qs.iter_mut().zip(x.iter()) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (g, s) in b.bsums.iter_mut().enumerate() {
        *s = b.qs[16 * g..16 * g + 16]
            .iter()
            .map(|&q| i16::from(q))
            .sum();
    }
    b.d = 1.0 / iscale;
    b
}

/// Scalar reference Q8_K quantizer (`src.len()` a multiple of 256, `dst` at
/// least `src.len()/256 * 292` bytes).
pub fn quantize_row_q8k_ref(src: &[f32], dst: &mut [u8]) {
    let nb = check_len::<BlockQ8K>(src.len(), dst, "quantize Q8_K");
    for i in 0..nb {
        write_block(dst, i, &quantize_block_q8k(&src[i * QK_K..(i + 1) * QK_K]));
    }
}

// ---------------------------------------------------------------------------
// Reference dot products: weight row (n elements) . Q8_K activation row.

#[inline(always)]
fn idot<A: Copy + Into<i32>>(a: &[A], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x.into() * i32::from(y))
        .sum()
}

pub fn vec_dot_q2k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_len::<BlockQ2K>(n, w, "vec_dot Q2_K");
    check_len::<BlockQ8K>(n, a, "vec_dot Q2_K activations");
    let mut sumf = 0.0f32;
    for i in 0..nb {
        let x: BlockQ2K = read_block(w, i);
        let y: BlockQ8K = read_block(a, i);
        let q = quants_q2k(&x);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for g in 0..16 {
            let r = 16 * g..16 * g + 16;
            sumi += i32::from(x.scales[g] & 0xF) * idot(&q[r.clone()], &y.qs[r]);
            summ += i32::from(x.scales[g] >> 4) * i32::from(y.bsums[g]);
        }
        sumf += y.d * x.d.to_f32() * sumi as f32 - y.d * x.dmin.to_f32() * summ as f32;
    }
    sumf
}

pub fn vec_dot_q3k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_len::<BlockQ3K>(n, w, "vec_dot Q3_K");
    check_len::<BlockQ8K>(n, a, "vec_dot Q3_K activations");
    let mut sumf = 0.0f32;
    for i in 0..nb {
        let x: BlockQ3K = read_block(w, i);
        let y: BlockQ8K = read_block(a, i);
        let q = quants_q3k(&x);
        let sc = unpack_scales_q3k(&x.scales);
        let mut sumi = 0i32;
        for (g, &s) in sc.iter().enumerate() {
            let r = 16 * g..16 * g + 16;
            sumi += i32::from(s) * idot(&q[r.clone()], &y.qs[r]);
        }
        sumf += y.d * x.d.to_f32() * sumi as f32;
    }
    sumf
}

pub fn vec_dot_q4k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_len::<BlockQ4K>(n, w, "vec_dot Q4_K");
    check_len::<BlockQ8K>(n, a, "vec_dot Q4_K activations");
    let mut sumf = 0.0f32;
    for i in 0..nb {
        let x: BlockQ4K = read_block(w, i);
        let y: BlockQ8K = read_block(a, i);
        let q = quants_q4k(&x);
        let (scales, mins) = unpack_scales_mins_k4(&x.scales);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for j in 0..8 {
            let (sc, m) = ((scales >> (8 * j)) as u8, (mins >> (8 * j)) as u8);
            let r = 32 * j..32 * j + 32;
            sumi += i32::from(sc) * idot(&q[r.clone()], &y.qs[r]);
            summ += i32::from(m) * (i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1]));
        }
        sumf += y.d * x.d.to_f32() * sumi as f32 - y.d * x.dmin.to_f32() * summ as f32;
    }
    sumf
}

pub fn vec_dot_q5k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_len::<BlockQ5K>(n, w, "vec_dot Q5_K");
    check_len::<BlockQ8K>(n, a, "vec_dot Q5_K activations");
    let mut sumf = 0.0f32;
    for i in 0..nb {
        let x: BlockQ5K = read_block(w, i);
        let y: BlockQ8K = read_block(a, i);
        let q = quants_q5k(&x);
        let (scales, mins) = unpack_scales_mins_k4(&x.scales);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for j in 0..8 {
            let (sc, m) = ((scales >> (8 * j)) as u8, (mins >> (8 * j)) as u8);
            let r = 32 * j..32 * j + 32;
            sumi += i32::from(sc) * idot(&q[r.clone()], &y.qs[r]);
            summ += i32::from(m) * (i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1]));
        }
        sumf += y.d * x.d.to_f32() * sumi as f32 - y.d * x.dmin.to_f32() * summ as f32;
    }
    sumf
}

pub fn vec_dot_q6k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_len::<BlockQ6K>(n, w, "vec_dot Q6_K");
    check_len::<BlockQ8K>(n, a, "vec_dot Q6_K activations");
    let mut sumf = 0.0f32;
    for i in 0..nb {
        let x: BlockQ6K = read_block(w, i);
        let y: BlockQ8K = read_block(a, i);
        let q = quants_q6k(&x);
        let mut sumi = 0i32;
        for g in 0..16 {
            let r = 16 * g..16 * g + 16;
            sumi += i32::from(x.scales[g]) * idot(&q[r.clone()], &y.qs[r]);
        }
        sumf += y.d * x.d.to_f32() * sumi as f32;
    }
    sumf
}

/// Q8_K . Q8_K (not a ggml kernel: Q8_K is only an activation format; this
/// fills the Q8_K entry of the traits table).
pub fn vec_dot_q8k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_len::<BlockQ8K>(n, w, "vec_dot Q8_K");
    check_len::<BlockQ8K>(n, a, "vec_dot Q8_K activations");
    let mut sumf = 0.0f32;
    for i in 0..nb {
        let x: BlockQ8K = read_block(w, i);
        let y: BlockQ8K = read_block(a, i);
        sumf += x.d * y.d * idot(&x.qs, &y.qs) as f32;
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_round_half_even() {
        for (x, r) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (126.49, 126),
            (-127.0, -127),
            (3.7, 4),
        ] {
            assert_eq!(nearest_int(x), r, "{x}");
        }
        for i in -100_000..100_000 {
            let x = i as f32 * 0.013_7;
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
    }
}
