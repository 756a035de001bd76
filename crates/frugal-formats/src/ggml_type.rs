//! The tensor element types: ggml's, with the ids GGUF stores, and frugal's
//! own quantization types for schemes no ggml type expresses.
//!
//! This is pure data (the "type traits" table of ggml minus the kernels); the
//! kernels crate attaches dequantization and dot products to each type.
//!
//! frugal's own types ([`FrugalType`]) get ids far above ggml's
//! (`0x4652_xxxx`, "FR"), so a tool that does not know them stops on the
//! first such tensor with an "invalid ggml type" error instead of
//! misreading its bytes.

use std::fmt;
use std::sync::OnceLock;

/// A tensor element type: one of ggml's, or one of frugal's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    /// A frugal type, not readable by ggml.
    Frugal(FrugalType),
}

/// frugal's own quantization types.
///
/// * `Affine`: `bits`-bit codes (2..=8) in groups of `group` elements (32,
///   64, 128 or 256), or one group per row when `group == 0`. Each group
///   starts with an f16 scale `d` and, when asymmetric, an f16 offset `m`;
///   then come its codes, 32 at a time as `bits` little-endian `u32` bit
///   planes (plane k holds bit k of each of the 32 codes). A code q stands
///   for `d·q + m` (asymmetric) or `d·(q − 2^(bits−1))` (symmetric).
///   Rows must be whole groups, and whole multiples of 32.
/// * `W8Row`: SmoothQuant-style int8 weights, one scale per row. Each row is
///   an f32 scale `d`, the i32 sum of its codes, then one i8 code per element
///   (value `d·q`). Its dot products take [`FrugalType::I8Tok`] activations.
/// * `I8Tok`: int8 activations, one scale per token (row), same layout as
///   `W8Row`: f32 scale, i32 code sum, i8 codes.
/// * `SparseQ8 { keep }` (`SQ8_{keep}of64`): unstructured sparse int8
///   weights whose rows keep at most `keep` of every 64 weights on average.
///   Rows are whole multiples of 64, taken in groups of 4 blocks of 32 (128
///   weights; a row's last group may hold 2 blocks). Within a group of m
///   blocks, "lane" `16k + i` of half h (0 or 1) is weight `16h + i` of
///   block k. A row of n weights is n/32 · 6 bytes of headers, then the
///   codes. The headers, group by group: the little-endian bitmap (16m bits)
///   of the first half's nonzero lanes, the same for the second half, then
///   the m blocks' f16 scales `d`. The codes, group by group: the nonzero
///   lanes' i8 codes q of the first half in lane order, then of the second,
///   each stored as `q ^ 0x80` (q + 128 as an unsigned byte; value `d·q`);
///   then padding up to `n/64·keep` code bytes.
/// * `Sparse24Q8` (`SQ8_2of4`): 2:4 sparse int8 weights, 22 bytes per block
///   of 32, in groups of 4 blocks (a row's last group may hold fewer). A
///   group of m blocks is the m blocks' f16 scales `d`, then the positions
///   (0..4, within their group of 4 weights) of each block's 16 kept
///   weights as 2-bit fields: m little-endian `u16` for codes 0..8 of each
///   block (code c at bits 2c), m `u16` for codes 8..16 (code c at bits
///   2(c − 8)), then each block's 16 i8 codes; code c stands for weight
///   4⌊c/2⌋ + its position (value `d·q`).
/// * `Q4_0x16`, `Q4_1x16`, `Q8_0x16`, `SQ8_2of4x16`, `SQ8_{keep}of64x16`:
///   Q4_0, Q4_1, Q8_0, `SQ8_2of4` and `SQ8_{keep}of64` matrices re-laid out in memory for
///   the one-token kernel, 16 rows at a time (see `frugal_kernels::interleave`).
///   A group of 16 rows takes the bytes of its 16 rows of the ggml type, a
///   row's bytes spread over the group (for `SQ8_{keep}of64x16` its codes
///   have no fixed place and the rows' padding is pooled at the group's
///   end). A run-time layout only: never read from or
///   written to a file (not in [`FrugalType::all`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrugalType {
    Affine { bits: u8, group: u16, sym: bool },
    W8Row,
    I8Tok,
    SparseQ8 { keep: u8 },
    Sparse24Q8,
    Q4_0x16,
    Q4_1x16,
    Q8_0x16,
    Sparse24Q8x16,
    SparseQ8x16 { keep: u8 },
}

/// The id prefix of frugal's types ("FR").
const FRUGAL_ID: u32 = 0x4652_0000;

impl FrugalType {
    /// Every valid frugal type.
    pub fn all() -> &'static [FrugalType] {
        static ALL: OnceLock<Vec<FrugalType>> = OnceLock::new();
        ALL.get_or_init(|| {
            let mut v = Vec::new();
            for sym in [false, true] {
                for bits in 2..=8u8 {
                    for group in [32u16, 64, 128, 256, 0] {
                        v.push(FrugalType::Affine { bits, group, sym });
                    }
                }
            }
            v.push(FrugalType::W8Row);
            v.push(FrugalType::I8Tok);
            for keep in 1..=63 {
                v.push(FrugalType::SparseQ8 { keep });
            }
            v.push(FrugalType::Sparse24Q8);
            v
        })
    }

    /// Whether the parameters are ones frugal has kernels for.
    pub fn is_valid(self) -> bool {
        match self {
            FrugalType::Affine { bits, group, .. } => {
                (2..=8).contains(&bits) && matches!(group, 0 | 32 | 64 | 128 | 256)
            }
            FrugalType::W8Row
            | FrugalType::I8Tok
            | FrugalType::Sparse24Q8
            | FrugalType::Q4_0x16
            | FrugalType::Q4_1x16
            | FrugalType::Q8_0x16
            | FrugalType::Sparse24Q8x16 => true,
            FrugalType::SparseQ8 { keep } | FrugalType::SparseQ8x16 { keep } => {
                (1..=63).contains(&keep)
            }
        }
    }

    /// The ggml type an interleaved run-time layout holds (Q4_0 for
    /// `Q4_0x16`), or `None` for the other types.
    pub fn interleaved_base(self) -> Option<GgmlType> {
        match self {
            FrugalType::Q4_0x16 => Some(GgmlType::Q4_0),
            FrugalType::Q4_1x16 => Some(GgmlType::Q4_1),
            FrugalType::Q8_0x16 => Some(GgmlType::Q8_0),
            FrugalType::Sparse24Q8x16 => Some(GgmlType::Frugal(FrugalType::Sparse24Q8)),
            FrugalType::SparseQ8x16 { keep } => {
                Some(GgmlType::Frugal(FrugalType::SparseQ8 { keep }))
            }
            _ => None,
        }
    }

    pub fn id(self) -> u32 {
        match self {
            FrugalType::Affine { bits, group, sym } => {
                let g = if group == 0 {
                    0
                } else {
                    group.trailing_zeros()
                };
                FRUGAL_ID | (sym as u32) << 12 | (bits as u32) << 8 | g
            }
            FrugalType::W8Row => FRUGAL_ID | 0xFF00,
            FrugalType::I8Tok => FRUGAL_ID | 0xFF01,
            FrugalType::SparseQ8 { keep } => FRUGAL_ID | 0xFE00 | keep as u32,
            FrugalType::Sparse24Q8 => FRUGAL_ID | 0xFD00,
            // Reserved: the GGUF writer refuses run-time layouts.
            FrugalType::Q4_0x16 => FRUGAL_ID | 0xFC00,
            FrugalType::Q8_0x16 => FRUGAL_ID | 0xFC01,
            FrugalType::Q4_1x16 => FRUGAL_ID | 0xFC02,
            FrugalType::Sparse24Q8x16 => FRUGAL_ID | 0xFC03,
            FrugalType::SparseQ8x16 { keep } => FRUGAL_ID | 0xFB00 | keep as u32,
        }
    }

    /// Bytes of each group's (or row's) header.
    pub fn header_bytes(self) -> usize {
        match self {
            FrugalType::Affine { sym: true, .. } => 2,
            FrugalType::Affine { sym: false, .. } => 4,
            FrugalType::W8Row | FrugalType::I8Tok => 8,
            // Sparse rows: headers per block, counted in the type size.
            FrugalType::SparseQ8 { .. }
            | FrugalType::Sparse24Q8
            | FrugalType::SparseQ8x16 { .. } => 0,
            // The ggml block's scale, counted in the type size.
            FrugalType::Q4_0x16
            | FrugalType::Q4_1x16
            | FrugalType::Q8_0x16
            | FrugalType::Sparse24Q8x16 => 0,
        }
    }

    /// Whether the row is the unit of the layout (one header for the whole
    /// row, codes packed across the row, or blocks grouped within the row,
    /// as the sparse types' groups of 4) rather than each block.
    pub fn is_row_wise(self) -> bool {
        !matches!(
            self,
            FrugalType::Affine {
                group: 32..=256,
                ..
            } | FrugalType::Q4_0x16
                | FrugalType::Q4_1x16
                | FrugalType::Q8_0x16
                | FrugalType::Sparse24Q8x16
        )
    }

    /// Bits of code per element.
    pub fn code_bits(self) -> usize {
        match self {
            FrugalType::Affine { bits, .. } => bits as usize,
            FrugalType::Q4_0x16 | FrugalType::Q4_1x16 => 4,
            FrugalType::Q8_0x16
            | FrugalType::Sparse24Q8x16
            | FrugalType::W8Row
            | FrugalType::I8Tok
            | FrugalType::SparseQ8 { .. }
            | FrugalType::SparseQ8x16 { .. }
            | FrugalType::Sparse24Q8 => 8,
        }
    }

    fn name(self) -> String {
        match self {
            FrugalType::Affine { bits, group, sym } => {
                let s = if sym { 's' } else { 'a' };
                if group == 0 {
                    format!("FQ{bits}{s}_row")
                } else {
                    format!("FQ{bits}{s}_g{group}")
                }
            }
            FrugalType::W8Row => "W8_row".into(),
            FrugalType::I8Tok => "I8_tok".into(),
            FrugalType::SparseQ8 { keep } => format!("SQ8_{keep}of64"),
            FrugalType::Sparse24Q8 => "SQ8_2of4".into(),
            FrugalType::Q4_0x16 => "Q4_0x16".into(),
            FrugalType::Q4_1x16 => "Q4_1x16".into(),
            FrugalType::Sparse24Q8x16 => "SQ8_2of4x16".into(),
            FrugalType::Q8_0x16 => "Q8_0x16".into(),
            FrugalType::SparseQ8x16 { keep } => format!("SQ8_{keep}of64x16"),
        }
    }
}

/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;

impl GgmlType {
    /// Every ggml type frugal knows, in id order (frugal's own types are in
    /// [`FrugalType::all`]).
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::BF16,
    ];

    /// The type for a GGUF type id, or `None` for ids frugal does not handle.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        if id & 0xFFFF_0000 == FRUGAL_ID {
            return FrugalType::all()
                .iter()
                .find(|t| t.id() == id)
                .map(|&t| GgmlType::Frugal(t));
        }
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The id GGUF stores.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            BF16 => 30,
            Frugal(t) => t.id(),
        }
    }

    /// The interleaved run-time layout of this type (`Q4_0x16` for Q4_0),
    /// if it has one.
    pub fn interleaved16(self) -> Option<GgmlType> {
        match self {
            GgmlType::Q4_0 => Some(GgmlType::Frugal(FrugalType::Q4_0x16)),
            GgmlType::Q4_1 => Some(GgmlType::Frugal(FrugalType::Q4_1x16)),
            GgmlType::Frugal(FrugalType::Sparse24Q8) => {
                Some(GgmlType::Frugal(FrugalType::Sparse24Q8x16))
            }
            GgmlType::Q8_0 => Some(GgmlType::Frugal(FrugalType::Q8_0x16)),
            GgmlType::Frugal(FrugalType::SparseQ8 { keep }) => {
                Some(GgmlType::Frugal(FrugalType::SparseQ8x16 { keep }))
            }
            _ => None,
        }
    }

    /// For an interleaved run-time layout, the ggml type it holds.
    pub fn interleaved_base(self) -> Option<GgmlType> {
        match self {
            GgmlType::Frugal(t) => t.interleaved_base(),
            _ => None,
        }
    }

    /// Whether ggml (llama.cpp) can read this type.
    pub fn is_ggml(self) -> bool {
        !matches!(self, GgmlType::Frugal(_))
    }

    /// Elements per block. Row-wise frugal types pack 32 elements at a
    /// time after a header per row (see [`GgmlType::row_bytes`]).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            Frugal(FrugalType::Affine {
                group: g @ 32..=256,
                ..
            }) => g as usize,
            Frugal(FrugalType::SparseQ8 { .. } | FrugalType::SparseQ8x16 { .. }) => 64,
            Frugal(_) => 32,
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => QK_K,
        }
    }

    /// Bytes per block (for row-wise frugal types, without the row's header).
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            // Two block headers and (at most) `keep` codes per 64 weights.
            Frugal(FrugalType::SparseQ8 { keep } | FrugalType::SparseQ8x16 { keep }) => {
                12 + keep as usize
            }
            Frugal(FrugalType::Sparse24Q8) => 6 + 16,
            Frugal(FrugalType::Q4_0x16) => Q4_0.type_size(),
            Frugal(FrugalType::Q4_1x16) => Q4_1.type_size(),
            Frugal(FrugalType::Sparse24Q8x16) => 6 + 16,
            Frugal(FrugalType::Q8_0x16) => Q8_0.type_size(),
            Frugal(t) if t.is_row_wise() => 4 * t.code_bits(),
            Frugal(t) => t.header_bytes() + self.block_size() / 8 * t.code_bits(),
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 2 + 16,
            Q4_1 => 2 + 2 + 16,
            Q5_0 => 2 + 4 + 16,
            Q5_1 => 2 + 2 + 4 + 16,
            Q8_0 => 2 + 32,
            Q8_1 => 2 + 2 + 32,
            Q2K => 2 + 2 + QK_K / 16 + QK_K / 4,
            Q3K => 2 + QK_K / 4 + QK_K / 8 + 12,
            Q4K => 2 + 2 + 12 + QK_K / 2,
            Q5K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            Q6K => 2 + QK_K / 16 + 3 * QK_K / 4,
            Q8K => 4 + QK_K + 2 * (QK_K / 16),
        }
    }

    /// Whether the type stores plain floats (no blocks, no scales).
    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// Bits per weight, including block scales (for row-wise frugal types,
    /// without the row header, which adds `64 / row length` or less).
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        let blocks = (n / bs).checked_mul(self.type_size() as u64)?;
        match self {
            GgmlType::Frugal(t) if t.is_row_wise() => {
                // A row needs at least one element to carry a header.
                if n == 0 {
                    Some(0)
                } else {
                    blocks.checked_add(t.header_bytes() as u64)
                }
            }
            _ => Some(blocks),
        }
    }

    /// The name ggml and llama.cpp print for this type (frugal's own names
    /// for its types, e.g. `FQ3a_g128`, `FQ8s_row`, `W8_row`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            Frugal(FrugalType::Q4_0x16) => "Q4_0x16",
            Frugal(FrugalType::Q4_1x16) => "Q4_1x16",
            Frugal(FrugalType::Sparse24Q8x16) => "SQ8_2of4x16",
            Frugal(FrugalType::Q8_0x16) => "Q8_0x16",
            Frugal(t) => {
                static NAMES: OnceLock<Vec<(FrugalType, &'static str)>> = OnceLock::new();
                NAMES
                    .get_or_init(|| {
                        // The files' types, and the run-time sparse layouts.
                        FrugalType::all()
                            .iter()
                            .copied()
                            .chain((1..=63).map(|keep| FrugalType::SparseQ8x16 { keep }))
                            .map(|t| (t, &*Box::leak(t.name().into_boxed_str())))
                            .collect()
                    })
                    .iter()
                    .find(|(u, _)| *u == t)
                    .map_or("FQ?", |(_, n)| n)
            }
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
        }
    }

    /// Parse a type name as printed by [`GgmlType::name`] (case-insensitive).
    pub fn from_name(s: &str) -> Option<GgmlType> {
        Self::ALL
            .iter()
            .copied()
            .chain(FrugalType::all().iter().map(|&t| GgmlType::Frugal(t)))
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        // Sizes from ggml-common.h's static asserts.
        assert_eq!(GgmlType::Q4_0.type_size(), 18);
        assert_eq!(GgmlType::Q4_1.type_size(), 20);
        assert_eq!(GgmlType::Q5_0.type_size(), 22);
        assert_eq!(GgmlType::Q5_1.type_size(), 24);
        assert_eq!(GgmlType::Q8_0.type_size(), 34);
        assert_eq!(GgmlType::Q8_1.type_size(), 36);
        assert_eq!(GgmlType::Q2K.type_size(), 84);
        assert_eq!(GgmlType::Q3K.type_size(), 110);
        assert_eq!(GgmlType::Q4K.type_size(), 144);
        assert_eq!(GgmlType::Q5K.type_size(), 176);
        assert_eq!(GgmlType::Q6K.type_size(), 210);
        assert_eq!(GgmlType::Q8K.type_size(), 292);
    }

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None); // removed Q4_2
        assert_eq!(GgmlType::from_id(9999), None);
        for &t in FrugalType::all() {
            let g = GgmlType::Frugal(t);
            assert!(t.is_valid());
            assert_eq!(GgmlType::from_id(g.id()), Some(g), "{g}");
            assert_eq!(GgmlType::from_name(g.name()), Some(g), "{g}");
            assert!(g.id() > i32::MAX as u32 / 2, "far from ggml's ids");
            assert!(!g.is_ggml());
        }
        // Distinct ids and names.
        let all = FrugalType::all();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.id(), b.id());
                assert_ne!(GgmlType::Frugal(*a).name(), GgmlType::Frugal(*b).name());
            }
        }
        assert_eq!(GgmlType::from_id(FRUGAL_ID | 0x0999), None);
    }

    #[test]
    fn frugal_sizes() {
        let g = |bits, group, sym| GgmlType::Frugal(FrugalType::Affine { bits, group, sym });
        // 3-bit, groups of 128, f16 scale and offset: 4 + 48 bytes.
        assert_eq!(g(3, 128, false).row_bytes(256), Some(2 * 52));
        assert_eq!(g(3, 128, false).row_bytes(96), None);
        // Symmetric: scale only.
        assert_eq!(g(4, 32, true).row_bytes(64), Some(2 * 18));
        // Row-wise: one header, then 32 codes at a time.
        assert_eq!(g(2, 0, false).row_bytes(576), Some(4 + 576 / 4));
        assert_eq!(g(2, 0, false).row_bytes(48), None);
        let w8 = GgmlType::Frugal(FrugalType::W8Row);
        assert_eq!(w8.row_bytes(576), Some(8 + 576));
        assert_eq!(w8.row_bytes(0), Some(0));
        // Sparse int8: 6-byte headers per 32, `keep` codes per 64.
        let sp = GgmlType::Frugal(FrugalType::SparseQ8 { keep: 32 });
        assert_eq!(sp.row_bytes(576), Some(576 / 32 * 6 + 576 / 2));
        assert_eq!(sp.row_bytes(96), None);
        assert_eq!(sp.bits_per_weight(), 5.5);
        let s24 = GgmlType::Frugal(FrugalType::Sparse24Q8);
        assert_eq!(s24.row_bytes(64), Some(2 * 22));
        assert_eq!(s24.row_bytes(48), None);
    }

    #[test]
    fn row_bytes_checks_blocks() {
        assert_eq!(GgmlType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
    }
}
