//! Methods: how values are rounded, independent of how they are stored.
//!
//! A [`Method`] turns one f32 weight matrix into the bytes of a [`Format`],
//! optionally using statistics of the matrix's inputs gathered on
//! calibration text ([`InputStats`]). RTN rounds each block on its own with
//! the format's reference quantizer; GPTQ ([`super::gptq`]) rounds column by
//! column and spreads each column's error over the columns not yet rounded.

use super::format::Format;
use rayon::prelude::*;

/// What calibration measured about a matrix's inputs.
pub struct InputStats {
    /// `cols × cols`, row-major: the sum over calibration tokens of x·xᵀ.
    pub xtx: Vec<f32>,
    pub cols: usize,
    /// Tokens summed into `xtx`.
    pub tokens: usize,
    /// Per column: the largest |x| over the calibration tokens.
    pub absmax: Vec<f32>,
}

impl InputStats {
    pub fn new(cols: usize) -> InputStats {
        InputStats {
            xtx: vec![0.0; cols * cols],
            cols,
            tokens: 0,
            absmax: vec![0.0; cols],
        }
    }
}

/// A rounding method.
pub trait Method: Sync {
    /// Short name for logs and file metadata.
    fn name(&self) -> String;
    /// Whether the method needs [`InputStats`] from calibration.
    fn needs_calibration(&self) -> bool;
    /// Quantize `w` (`rows × cols`, row-major) into `fmt`: `rows` rows of
    /// `fmt.ty().row_bytes(cols)` bytes.
    fn quantize(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        fmt: &dyn Format,
        stats: Option<&InputStats>,
    ) -> Result<Vec<u8>, String>;
}

/// Bytes of a `rows × cols` matrix in `fmt`.
pub fn matrix_bytes(fmt: &dyn Format, rows: usize, cols: usize) -> Result<usize, String> {
    let rb = fmt.ty().row_bytes(cols as u64).ok_or_else(|| {
        format!(
            "rows of {cols} elements are not whole {} blocks ({} elements)",
            fmt.ty(),
            fmt.fit_len(cols)
        )
    })?;
    Ok(rows * rb as usize)
}

/// The statistics a calibrated method needs, checked against the matrix
/// width; `method` names the method in the error.
pub fn require_stats<'a>(
    stats: Option<&'a InputStats>,
    cols: usize,
    method: &str,
) -> Result<&'a InputStats, String> {
    let st = stats.ok_or_else(|| format!("{method} needs calibration statistics (--calib)"))?;
    if st.cols != cols {
        return Err(format!(
            "calibration statistics are for {} inputs, the matrix has {cols}",
            st.cols
        ));
    }
    Ok(st)
}

/// Quantizes `w` (`rows × cols`) block by block, rows in parallel:
/// `fit(x, col, out)` writes the fit block of `x`, which starts at column
/// `col`, into `out`.
pub fn quantize_blocks(
    w: &[f32],
    rows: usize,
    cols: usize,
    fmt: &dyn Format,
    fit: impl Fn(&[f32], usize, &mut [u8]) + Sync,
) -> Result<Vec<u8>, String> {
    let total = matrix_bytes(fmt, rows, cols)?;
    let mut out = vec![0u8; total];
    let rb = total / rows.max(1);
    let n = fmt.fit_len(cols);
    let bb = fmt.block_bytes(cols);
    out.par_chunks_mut(rb)
        .zip(w.par_chunks(cols))
        .for_each(|(o, row)| {
            for (b, (ob, x)) in o.chunks_mut(bb).zip(row.chunks(n)).enumerate() {
                fit(x, b * n, ob);
            }
        });
    Ok(out)
}

/// Round to nearest: each block on its own, by the format's reference
/// quantizer (byte-for-byte llama.cpp's for ggml types).
pub struct Rtn;

impl Method for Rtn {
    fn name(&self) -> String {
        "rtn".into()
    }

    fn needs_calibration(&self) -> bool {
        false
    }

    fn quantize(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        fmt: &dyn Format,
        _stats: Option<&InputStats>,
    ) -> Result<Vec<u8>, String> {
        quantize_blocks(w, rows, cols, fmt, |x, _, out| fmt.fit(x, out))
    }
}
