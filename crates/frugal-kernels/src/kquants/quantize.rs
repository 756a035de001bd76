//! ggml's reference k-quant quantizers (`quantize_row_q{2,3,4,5,6}_K_ref`,
//! i.e. what `llama-quantize` does without an importance matrix).
//!
//! The outputs must be byte-identical to ggml's, so every floating-point
//! expression is evaluated in the same order with the same f32 roundings as
//! the C code (ggml-base is built without FMA contraction, and Rust never
//! contracts), ties round to even through [`nearest_int`], and integer
//! conversions wrap exactly where C's do (`uint8_t`/`int8_t` stores).

use super::blocks::*;
use super::scalar::{check_len, nearest_int};
use half::f16;

/// ggml's `GROUP_MAX_EPS`.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qkx2_quants`: quants `l` in `0..=nmax` and a (scale, min)
/// with `x ~ scale*l - min`, from a weighted least-squares search over
/// `nstep+1` trial scales. Returns the scale; `*the_min` gets the (positive) min.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    the_min: &mut f32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> f32 {
    let n = x.len();
    let mut laux = [0u8; 32];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_mad += weights[i] * diff;
    }
    if nstep < 1 {
        *the_min = -min;
        return scale;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                mad += weights[i] * diff;
            }
            if mad < best_mad {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights:
/// symmetric quants `l + nmax` in `0..2*nmax`, scale chosen among 19 trial
/// scales by weighted (`x^2`) least squares. Returns the scale.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..x.len()].fill(0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = (-nmax) as f32 / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = q(iscale, v);
        l_out[i] = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = q(iscale, v);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l_out[i] = (nmax + q(iscale, v)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse = true`: symmetric quants `l + nmax`
/// refined coordinate-wise for up to 5 rounds. Returns the scale.
fn make_q3_quants_rmse(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = (-nmax) as f32 / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(l_out[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out[..n].iter_mut() {
        *l += nmax as i8;
    }
    sumlx / suml2
}

/// Pack 256 2-bit values as Q2_K/Q3_K `qs`.
fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
    qs
}

/// Quantize `src` (a multiple of 256 floats) to Q2_K, as ggml's `quantize_row_q2_K_ref`.
pub fn quantize_row_q2k_ref(src: &[f32], dst: &mut [u8]) {
    let nb = check_len::<BlockQ2K>(src.len(), dst, "quantize Q2_K");
    for (i, x) in src.chunks_exact(QK_K).enumerate().take(nb) {
        write_block(dst, i, &quantize_block_q2k(x));
    }
}

fn quantize_block_q2k(x: &[f32]) -> BlockQ2K {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let weights: [f32; 16] = std::array::from_fn(|k| xs[k].abs());
        scales[j] = make_qkx2_quants(
            3,
            xs,
            &weights,
            &mut l[16 * j..16 * j + 16],
            &mut mins[j],
            -0.5,
            0.1,
            15,
            true,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let mut b = BlockQ2K {
        scales: [0; 16],
        qs: [0; 64],
        d: f16::ZERO,
        dmin: f16::ZERO,
    };
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for (s, &v) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * v) as u8;
        }
        b.d = f16::from_f32(max_scale / Q4SCALE);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for (s, &m) in b.scales.iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * m) << 4) as u8;
        }
        b.dmin = f16::from_f32(max_min / Q4SCALE);
    }
    for j in 0..16 {
        let d = b.d.to_f32() * f32::from(b.scales[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let dm = b.dmin.to_f32() * f32::from(b.scales[j] >> 4);
        for k in 0..16 {
            l[16 * j + k] = nearest_int((x[16 * j + k] + dm) / d).clamp(0, 3) as u8;
        }
    }
    b.qs = pack_2bit(&l);
    b
}

/// Quantize `src` (a multiple of 256 floats) to Q3_K, as ggml's `quantize_row_q3_K_ref`.
pub fn quantize_row_q3k_ref(src: &[f32], dst: &mut [u8]) {
    let nb = check_len::<BlockQ3K>(src.len(), dst, "quantize Q3_K");
    for (i, x) in src.chunks_exact(QK_K).enumerate().take(nb) {
        write_block(dst, i, &quantize_block_q3k(x));
    }
}

fn quantize_block_q3k(x: &[f32]) -> BlockQ3K {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants_rmse(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    let mut b = BlockQ3K {
        hmask: [0; 32],
        qs: [0; 64],
        scales: [0; 12],
        d: f16::ZERO,
    };
    if max_scale != 0.0 {
        let iscale = -32.0f32 / max_scale;
        let ls: [u8; 16] = std::array::from_fn(|j| {
            (i32::from(nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8
        });
        b.scales = pack_scales_q3k(&ls);
        b.d = f16::from_f32(1.0 / iscale);
    }
    let sc = unpack_scales_q3k(&b.scales);
    for j in 0..16 {
        let d = b.d.to_f32() * f32::from(sc[j]);
        if d == 0.0 {
            continue;
        }
        for k in 0..16 {
            l[16 * j + k] = (nearest_int(x[16 * j + k] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    // High bit of element j goes to bit j/32 of hmask[j%32].
    let mut low = [0u8; QK_K];
    for (j, &v) in l.iter().enumerate() {
        let mut v = v as u8;
        if v > 3 {
            b.hmask[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        low[j] = v;
    }
    b.qs = pack_2bit(&low);
    b
}

/// Quantize `src` (a multiple of 256 floats) to Q4_K, as ggml's `quantize_row_q4_K_ref`.
pub fn quantize_row_q4k_ref(src: &[f32], dst: &mut [u8]) {
    let nb = check_len::<BlockQ4K>(src.len(), dst, "quantize Q4_K");
    for (i, x) in src.chunks_exact(QK_K).enumerate().take(nb) {
        let (d, dmin, scales, l) = quantize_k4(x, 15, -1.0, 0.1, 20);
        let mut b = BlockQ4K {
            d,
            dmin,
            scales,
            qs: [0; 128],
        };
        for j in 0..4 {
            for k in 0..32 {
                b.qs[32 * j + k] = l[64 * j + k] | (l[64 * j + 32 + k] << 4);
            }
        }
        write_block(dst, i, &b);
    }
}

/// Quantize `src` (a multiple of 256 floats) to Q5_K, as ggml's `quantize_row_q5_K_ref`.
pub fn quantize_row_q5k_ref(src: &[f32], dst: &mut [u8]) {
    let nb = check_len::<BlockQ5K>(src.len(), dst, "quantize Q5_K");
    for (i, x) in src.chunks_exact(QK_K).enumerate().take(nb) {
        let (d, dmin, scales, l) = quantize_k4(x, 31, -0.5, 0.1, 15);
        let mut b = BlockQ5K {
            d,
            dmin,
            scales,
            qh: [0; 32],
            qs: [0; 128],
        };
        for j in 0..4 {
            for k in 0..32 {
                let (l1, l2) = (l[64 * j + k], l[64 * j + 32 + k]);
                b.qs[32 * j + k] = (l1 & 0xF) | ((l2 & 0xF) << 4);
                b.qh[k] |= ((l1 >> 4) << (2 * j)) | ((l2 >> 4) << (2 * j + 1));
            }
        }
        write_block(dst, i, &b);
    }
}

/// The shared part of Q4_K and Q5_K: per sub-block (scale, min) search, the
/// 6-bit scales, and the final quants `0..=nmax` in element order.
fn quantize_k4(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|k| av_x + xs[k].abs());
        scales[j] = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut mins[j],
            rmin,
            rdelta,
            nstep,
            false,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    let packed = pack_scales_mins_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dd = d.to_f32() * f32::from(sc);
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for k in 0..32 {
            l[32 * j + k] = nearest_int((x[32 * j + k] + dm) / dd).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// Quantize `src` (a multiple of 256 floats) to Q6_K, as ggml's `quantize_row_q6_K_ref`.
pub fn quantize_row_q6k_ref(src: &[f32], dst: &mut [u8]) {
    let nb = check_len::<BlockQ6K>(src.len(), dst, "quantize Q6_K");
    for (i, x) in src.chunks_exact(QK_K).enumerate().take(nb) {
        write_block(dst, i, &quantize_block_q6k(x));
    }
}

fn quantize_block_q6k(x: &[f32]) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let scale =
            make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    let mut b = BlockQ6K {
        ql: [0; 128],
        qh: [0; 64],
        scales: [0; 16],
        d: f16::ZERO,
    };
    if max_abs_scale < GROUP_MAX_EPS {
        return b;
    }
    let iscale = -128.0f32 / max_scale;
    b.d = f16::from_f32(1.0 / iscale);
    for (s, &v) in b.scales.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * v).min(127) as i8;
    }
    for j in 0..16 {
        let d = b.d.to_f32() * f32::from(b.scales[j]);
        if d == 0.0 {
            continue;
        }
        for k in 0..16 {
            l[16 * j + k] = (nearest_int(x[16 * j + k] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let l = l.map(|v| v as u8);
    for h in 0..2 {
        let (j, ql, qh) = (128 * h, 64 * h, 32 * h);
        for k in 0..32 {
            b.ql[ql + k] = (l[j + k] & 0xF) | ((l[j + k + 64] & 0xF) << 4);
            b.ql[ql + k + 32] = (l[j + k + 32] & 0xF) | ((l[j + k + 96] & 0xF) << 4);
            b.qh[qh + k] = (l[j + k] >> 4)
                | ((l[j + k + 32] >> 4) << 2)
                | ((l[j + k + 64] >> 4) << 4)
                | ((l[j + k + 96] >> 4) << 6);
        }
    }
    b
}
