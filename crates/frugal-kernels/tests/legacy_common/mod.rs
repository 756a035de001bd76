//! Test helpers for the legacy formats: random and extreme blocks, and
//! straightforward decoders written from ggml's format description,
//! independent of the library's code.
#![allow(dead_code)]

use frugal_formats::GgmlType;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const WEIGHT_TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn f16_bits(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

pub fn f16_val(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

pub fn act_type(w: GgmlType) -> GgmlType {
    match w {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
        _ => GgmlType::Q8_0,
    }
}

/// How to fill random blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Random quant bytes, moderate scales.
    Random,
    /// Quants at their extremes (all 0x00 / all 0xFF, ±127/-128), large scales.
    Extreme,
    /// Some blocks all zero (d = 0 too), others random.
    SomeZero,
}

pub const MODES: [Mode; 3] = [Mode::Random, Mode::Extreme, Mode::SomeZero];

/// `nb` random weight blocks of `ty` (a legacy type).
pub fn weight_blocks(ty: GgmlType, nb: usize, mode: Mode, r: &mut StdRng) -> Vec<u8> {
    let bs = ty.type_size();
    let mut out = vec![0u8; nb * bs];
    for (i, b) in out.chunks_exact_mut(bs).enumerate() {
        if mode == Mode::SomeZero && i % 3 == 1 {
            continue; // all-zero block
        }
        r.fill(&mut b[..]);
        let (d, m) = match mode {
            Mode::Extreme => {
                let big = if i % 2 == 0 { 60000.0 } else { -60000.0 };
                let fill = if i % 4 < 2 { 0xFF } else { 0x00 };
                for x in &mut b[2..] {
                    *x = fill;
                }
                if ty == GgmlType::Q8_0 {
                    let q: u8 = if i % 4 < 2 { 0x7F } else { 0x80 };
                    for x in &mut b[2..] {
                        *x = q;
                    }
                }
                (big, -big * 0.5)
            }
            _ => (
                r.gen_range(-2.0f32..2.0) * 10f32.powi(r.gen_range(-3..2)),
                r.gen_range(-1.0f32..1.0),
            ),
        };
        b[..2].copy_from_slice(&f16_bits(d));
        if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
            b[2..4].copy_from_slice(&f16_bits(m));
        }
    }
    out
}

/// `nb` activation blocks of `ty` (Q8_0 or Q8_1), quants in [-127, 127] as
/// the quantizers make them; `s` consistent with the quants.
pub fn act_blocks(ty: GgmlType, nb: usize, mode: Mode, r: &mut StdRng) -> Vec<u8> {
    let bs = ty.type_size();
    let off = bs - 32;
    let mut out = vec![0u8; nb * bs];
    for (i, b) in out.chunks_exact_mut(bs).enumerate() {
        if mode == Mode::SomeZero && i % 4 == 2 {
            continue;
        }
        let d = match mode {
            Mode::Extreme => 30000.0,
            _ => r.gen_range(0.0f32..0.1),
        };
        let mut sum = 0i32;
        for j in 0..32 {
            let q: i8 = match mode {
                Mode::Extreme => {
                    if (i + j) % 2 == 0 {
                        127
                    } else {
                        -127
                    }
                }
                _ => r.gen_range(-127..=127),
            };
            sum += q as i32;
            b[off + j] = q as u8;
        }
        b[..2].copy_from_slice(&f16_bits(d));
        if ty == GgmlType::Q8_1 {
            let dd = f16_val(&b[..2]);
            b[2..4].copy_from_slice(&f16_bits(sum as f32 * dd));
        }
    }
    out
}

/// Decodes a weight block to `(d, m, q)` with `x[i] = d * q[i] + m`.
pub fn decode_weight(ty: GgmlType, b: &[u8]) -> (f32, f32, [i32; 32]) {
    let d = f16_val(&b[0..2]);
    let mut q = [0i32; 32];
    match ty {
        GgmlType::Q8_0 => {
            for j in 0..32 {
                q[j] = b[2 + j] as i8 as i32;
            }
            (d, 0.0, q)
        }
        GgmlType::Q8_1 => {
            for j in 0..32 {
                q[j] = b[4 + j] as i8 as i32;
            }
            (d, 0.0, q)
        }
        _ => {
            let (m, qh, qs, off): (f32, u32, &[u8], i32) = match ty {
                GgmlType::Q4_0 => (0.0, 0, &b[2..18], 8),
                GgmlType::Q4_1 => (f16_val(&b[2..4]), 0, &b[4..20], 0),
                GgmlType::Q5_0 => (
                    0.0,
                    u32::from_le_bytes(b[2..6].try_into().unwrap()),
                    &b[6..22],
                    16,
                ),
                GgmlType::Q5_1 => (
                    f16_val(&b[2..4]),
                    u32::from_le_bytes(b[4..8].try_into().unwrap()),
                    &b[8..24],
                    0,
                ),
                _ => unreachable!(),
            };
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) as i32 * 16;
                let h1 = ((qh >> (j + 16)) & 1) as i32 * 16;
                q[j] = (qs[j] & 15) as i32 + h0 - off;
                q[j + 16] = (qs[j] >> 4) as i32 + h1 - off;
            }
            (d, m, q)
        }
    }
}

/// Decodes an activation block to `(d, s, q)` (`s` = 0 for Q8_0).
pub fn decode_act(ty: GgmlType, b: &[u8]) -> (f32, f32, [i32; 32]) {
    let d = f16_val(&b[0..2]);
    let off = ty.type_size() - 32;
    let s = if ty == GgmlType::Q8_1 {
        f16_val(&b[2..4])
    } else {
        0.0
    };
    let mut q = [0i32; 32];
    for j in 0..32 {
        q[j] = b[off + j] as i8 as i32;
    }
    (d, s, q)
}

/// The exact dot product of `nb` weight blocks with `nb` activation blocks
/// (in f64, with ggml's formula), and the sum of the magnitudes of its terms.
pub fn exact_dot(ty: GgmlType, w: &[u8], a: &[u8], nb: usize) -> (f64, f64) {
    let aty = act_type(ty);
    let (ws, asz) = (ty.type_size(), aty.type_size());
    let (mut v, mut bound) = (0.0f64, 0.0f64);
    for i in 0..nb {
        let (dw, m, qw) = decode_weight(ty, &w[i * ws..(i + 1) * ws]);
        let (da, s, qa) = decode_act(aty, &a[i * asz..(i + 1) * asz]);
        let sumi: i64 = qw.iter().zip(&qa).map(|(&x, &y)| x as i64 * y as i64).sum();
        let abs: i64 = qw
            .iter()
            .zip(&qa)
            .map(|(&x, &y)| (x as i64 * y as i64).abs())
            .sum();
        let c = dw as f64 * da as f64;
        v += c * sumi as f64 + m as f64 * s as f64;
        bound += c.abs() * abs as f64 + (m as f64 * s as f64).abs();
    }
    (v, bound)
}

/// Copies `b` to a fresh buffer at an odd address, to exercise unaligned access.
pub struct Misaligned(Vec<u8>);
impl Misaligned {
    pub fn new(b: &[u8]) -> Self {
        let mut v = vec![0u8; b.len() + 1];
        v[1..].copy_from_slice(b);
        Misaligned(v)
    }
    pub fn get(&self) -> &[u8] {
        &self.0[1..]
    }
}
