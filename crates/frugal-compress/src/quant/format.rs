//! Formats: how quantized values are stored.
//!
//! A [`Format`] knows its block layout and nothing about how the values were
//! chosen. Every format frugal writes is affine per small group: an element
//! with code `q` (0..=`qmax`) stands for `scale·q + offset`, where scale and
//! offset come from the block's header. That is what lets a method (RTN,
//! GPTQ, ...) decide the codes and any format store them:
//!
//! 1. [`Format::fit`] chooses a block's scales (with the format's own
//!    reference quantizer, so plain RTN is byte-for-byte what llama.cpp
//!    writes), producing a whole block;
//! 2. [`Format::levels`] reads back each element's `(scale, offset)`;
//! 3. the method picks codes, and [`Format::set_codes`] writes them into the block.

use frugal_formats::{FrugalType, GgmlType, QK_K};
use frugal_kernels::traits;

/// A storage format for quantized weights.
pub trait Format: Sync {
    /// The tensor type written to the file.
    fn ty(&self) -> GgmlType;
    /// Elements whose scales are chosen together (a block, a k-quant
    /// super-block, or the whole row for row-wise types), for rows of `cols`.
    fn fit_len(&self, cols: usize) -> usize;
    /// Bytes of one fitted block of `fit_len(cols)` elements.
    fn block_bytes(&self, cols: usize) -> usize {
        let n = self.fit_len(cols);
        self.ty().row_bytes(n as u64).expect("fit blocks are whole") as usize
    }
    /// The highest code.
    fn qmax(&self) -> u8;
    /// Choose the scales for `x` (one fit block) and round it: the format's
    /// reference quantizer.
    fn fit(&self, x: &[f32], out: &mut [u8]);
    /// Overwrite the codes of a fitted block (one code per element).
    fn set_codes(&self, block: &mut [u8], codes: &[u8]);
    /// Each element's `(scale, offset)` in a fitted block: its value is
    /// `scale·q + offset` for code `q`.
    fn levels(&self, block: &[u8], scale: &mut [f32], offset: &mut [f32]) {
        let n = scale.len();
        let to_float = traits(self.ty()).expect("formats have kernels").to_float;
        let mut b = block.to_vec();
        self.set_codes(&mut b, &vec![0; n]);
        to_float(&b, offset);
        self.set_codes(&mut b, &vec![1; n]);
        to_float(&b, scale);
        for (s, o) in scale.iter_mut().zip(offset.iter()) {
            *s -= o;
        }
    }
}

/// The nearest code to `x` on the grid `scale·q + offset`, q in 0..=qmax.
#[inline]
pub fn nearest_code(x: f32, scale: f32, offset: f32, qmax: u8) -> u8 {
    if scale == 0.0 || !scale.is_finite() {
        return 0;
    }
    let q = ((x - offset) / scale).round();
    q.clamp(0.0, qmax as f32) as u8
}

/// A ggml or frugal quantized type as a [`Format`].
#[derive(Clone, Copy, Debug)]
pub struct TypeFormat {
    ty: GgmlType,
}

/// Why a type cannot hold quantized codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAFormat(pub String);

impl TypeFormat {
    /// The format of `ty`, for the quantized types frugal can write.
    pub fn new(ty: GgmlType) -> Result<TypeFormat, NotAFormat> {
        use GgmlType::*;
        let ok = matches!(
            ty,
            Q4_0 | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q2K
                | Q3K
                | Q4K
                | Q5K
                | Q6K
                | Frugal(FrugalType::Affine { .. })
                | Frugal(FrugalType::W8Row)
        );
        let has_quantizer = traits(ty).is_some_and(|t| t.from_float.is_some());
        if !ok || !has_quantizer {
            return Err(NotAFormat(format!(
                "{ty} is not a quantized weight format frugal can write"
            )));
        }
        Ok(TypeFormat { ty })
    }
}

/// Sets bits `shift..shift+width` of `*b` to `v`.
#[inline]
fn put(b: &mut u8, shift: u32, width: u32, v: u8) {
    let mask = (((1u16 << width) - 1) as u8) << shift;
    *b = (*b & !mask) | ((v << shift) & mask);
}

/// Writes 4-bit codes in ggml's legacy order: element j < 16 in the low
/// nibble of qs[j], element j+16 in its high nibble.
fn legacy_nibbles(qs: &mut [u8], codes: &[u8]) {
    for j in 0..16 {
        qs[j] = (codes[j] & 0xF) | ((codes[j + 16] & 0xF) << 4);
    }
}

/// Writes the fifth bit of each code into the little-endian u32 `qh`.
fn legacy_high_bits(qh: &mut [u8], codes: &[u8]) {
    let mut h = 0u32;
    for (j, &c) in codes.iter().enumerate().take(32) {
        h |= ((c as u32 >> 4) & 1) << j;
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

impl Format for TypeFormat {
    fn ty(&self) -> GgmlType {
        self.ty
    }

    fn fit_len(&self, cols: usize) -> usize {
        match self.ty {
            GgmlType::Frugal(t) if t.is_row_wise() => cols,
            t => t.block_size(),
        }
    }

    fn qmax(&self) -> u8 {
        use GgmlType::*;
        match self.ty {
            Q4_0 | Q4_1 | Q4K => 15,
            Q5_0 | Q5_1 | Q5K => 31,
            Q8_0 | Frugal(FrugalType::W8Row) => 255,
            Q2K => 3,
            Q3K => 7,
            Q6K => 63,
            Frugal(FrugalType::Affine { bits, .. }) => ((1u16 << bits) - 1) as u8,
            _ => unreachable!("checked in TypeFormat::new"),
        }
    }

    fn fit(&self, x: &[f32], out: &mut [u8]) {
        let q = traits(self.ty)
            .and_then(|t| t.from_float)
            .expect("checked in TypeFormat::new");
        q(x, out);
    }

    fn set_codes(&self, b: &mut [u8], codes: &[u8]) {
        use GgmlType::*;
        match self.ty {
            Q4_0 => legacy_nibbles(&mut b[2..18], codes),
            Q4_1 => legacy_nibbles(&mut b[4..20], codes),
            Q5_0 => {
                legacy_high_bits(&mut b[2..6], codes);
                legacy_nibbles(&mut b[6..22], codes);
            }
            Q5_1 => {
                legacy_high_bits(&mut b[4..8], codes);
                legacy_nibbles(&mut b[8..24], codes);
            }
            Q8_0 => {
                for (q, &c) in b[2..34].iter_mut().zip(codes) {
                    *q = c.wrapping_sub(128);
                }
            }
            Frugal(FrugalType::W8Row) => {
                // Header: f32 scale, i32 sum of the codes; then i8 codes.
                let mut sum = 0i32;
                for (q, &c) in b[8..].iter_mut().zip(codes) {
                    let v = c.wrapping_sub(128) as i8;
                    *q = v as u8;
                    sum += v as i32;
                }
                b[4..8].copy_from_slice(&sum.to_le_bytes());
            }
            Q2K | Q3K => {
                // Low 2 bits: qs (at 16 for Q2_K, 32 for Q3_K); element
                // e = 128h + 32s + 16half + l sits in qs[32h + 16half + l]
                // at bit 2s. Q3_K's third bit is hmask[16half + l], bit 4h + s.
                let qs0 = if self.ty == Q2K { 16 } else { 32 };
                for (e, &c) in codes.iter().enumerate().take(QK_K) {
                    let (h, r) = (e / 128, e % 128);
                    let (s, l32) = (r / 32, r % 32);
                    put(&mut b[qs0 + 32 * h + l32], 2 * s as u32, 2, c & 3);
                    if self.ty == Q3K {
                        put(&mut b[l32], (4 * h + s) as u32, 1, (c >> 2) & 1);
                    }
                }
            }
            Q4K | Q5K => {
                // Element e = 64j + 32half + l: nibble `half` of qs[32j + l];
                // Q5_K's fifth bit is qh[l], bit 2j + half.
                let qs0 = if self.ty == Q4K { 16 } else { 48 };
                for (e, &c) in codes.iter().enumerate().take(QK_K) {
                    let (j, r) = (e / 64, e % 64);
                    let (half, l) = (r / 32, r % 32);
                    put(&mut b[qs0 + 32 * j + l], 4 * half as u32, 4, c & 0xF);
                    if self.ty == Q5K {
                        put(&mut b[16 + l], (2 * j + half) as u32, 1, (c >> 4) & 1);
                    }
                }
            }
            Q6K => {
                // Element e = 128h + 32k + l: low nibble in ql[64h + l + 32(k&1)]
                // (high half of the byte for k >= 2), top 2 bits in qh[32h + l] at 2k.
                for (e, &c) in codes.iter().enumerate().take(QK_K) {
                    let (h, r) = (e / 128, e % 128);
                    let (k, l) = (r / 32, r % 32);
                    let qi = 64 * h + l + 32 * (k & 1);
                    put(&mut b[qi], 4 * (k as u32 / 2), 4, c & 0xF);
                    put(&mut b[128 + 32 * h + l], 2 * k as u32, 2, (c >> 4) & 3);
                }
            }
            Frugal(t @ FrugalType::Affine { bits, .. }) => {
                // Header, then 32 codes at a time as `bits` u32 bit planes.
                let planes = &mut b[t.header_bytes()..];
                for (ci, chunk) in codes.chunks(32).enumerate() {
                    for k in 0..bits as usize {
                        let mut p = 0u32;
                        for (i, &c) in chunk.iter().enumerate() {
                            p |= ((c as u32 >> k) & 1) << i;
                        }
                        let at = (ci * bits as usize + k) * 4;
                        planes[at..at + 4].copy_from_slice(&p.to_le_bytes());
                    }
                }
            }
            _ => unreachable!("checked in TypeFormat::new"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every format with a block quantizer (all but frugal's activation type).
    pub(crate) fn all_formats() -> Vec<TypeFormat> {
        use GgmlType::*;
        let mut v: Vec<GgmlType> = vec![Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K];
        v.extend(
            FrugalType::all()
                .iter()
                .filter(|t| !matches!(t, FrugalType::I8Tok))
                .map(|&t| Frugal(t)),
        );
        v.into_iter()
            .filter_map(|t| TypeFormat::new(t).ok())
            .collect()
    }

    /// Rounding each element to its nearest level of the fitted block must
    /// give back the reference quantizer's block (up to ties), for every format:
    /// this holds `set_codes` and `levels` to the kernels' own layouts.
    #[test]
    fn codes_and_levels_reproduce_the_reference_quantizer() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let fmts = all_formats();
        assert!(fmts.len() > 20, "kernels for frugal types are registered");
        for f in fmts {
            let cols = 512;
            let n = f.fit_len(cols);
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let mut blk = vec![0u8; f.block_bytes(cols)];
            f.fit(&x, &mut blk);
            let (mut s, mut o) = (vec![0.0; n], vec![0.0; n]);
            f.levels(&blk, &mut s, &mut o);
            let codes: Vec<u8> = (0..n)
                .map(|i| nearest_code(x[i], s[i], o[i], f.qmax()))
                .collect();
            let mut mine = blk.clone();
            f.set_codes(&mut mine, &codes);
            // Dequantized values agree except where x sits halfway between levels.
            let to_float = traits(f.ty()).unwrap().to_float;
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            to_float(&blk, &mut a);
            to_float(&mine, &mut b);
            let mut differ = 0;
            for i in 0..n {
                if a[i] != b[i] {
                    let (ea, eb) = ((x[i] - a[i]).abs(), (x[i] - b[i]).abs());
                    // Ours is never farther from x than the reference (ties aside).
                    assert!(
                        eb <= ea + 1e-3 * s[i].abs() + 1e-7,
                        "{}: element {i}: x {} ours {} reference {}",
                        f.ty(),
                        x[i],
                        b[i],
                        a[i]
                    );
                    differ += 1;
                }
            }
            assert!(differ * 50 <= n, "{}: {differ} of {n} codes differ", f.ty());
        }
    }

    #[test]
    fn only_quantized_types_are_formats() {
        assert!(TypeFormat::new(GgmlType::F32).is_err());
        assert!(TypeFormat::new(GgmlType::Q8K).is_err());
        assert!(TypeFormat::new(GgmlType::Frugal(FrugalType::I8Tok)).is_err());
        assert!(TypeFormat::new(GgmlType::Q4K).is_ok());
    }
}
