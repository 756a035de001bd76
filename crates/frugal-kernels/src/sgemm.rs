//! Dense f32 matrix products for compression work (calibration passes,
//! Hessians, GPTQ updates), through the `gemm` crate's kernels behind a
//! bounds-checked view type.

/// A strided read-only view of an f32 matrix: element (i, j) is
/// `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `rows × cols` matrix (so `cols × rows`).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows: cols,
            cols: rows,
            rs: 1,
            cs: cols,
        }
    }

    /// Panics unless every element lies inside `data`.
    fn check(&self, what: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1).checked_mul(self.rs).and_then(|a| {
            (self.cols - 1)
                .checked_mul(self.cs)
                .and_then(|b| a.checked_add(b))
        });
        assert!(
            last.is_some_and(|l| l < self.data.len()),
            "sgemm: {what} view {}x{} (strides {}, {}) exceeds {} elements",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// `c = (accumulate ? c : 0) + alpha · a · b`, where `c` is `a.rows × b.cols`
/// with row stride `c_rs` (column stride 1). Runs on the rayon pool when
/// `parallel`. Panics on mismatched shapes or views outside their slices.
pub fn sgemm(
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    alpha: f32,
    parallel: bool,
) {
    assert_eq!(a.cols, b.rows, "sgemm: inner dimensions differ");
    a.check("left");
    b.check("right");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    let cv = View {
        data: c,
        rows: m,
        cols: n,
        rs: c_rs,
        cs: 1,
    };
    cv.check("output");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    let par = if parallel && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: all three views were checked to lie inside their slices for
    // the shapes passed (m × k, k × n, m × n with the given strides, all
    // non-negative); `c` is borrowed mutably, so it cannot alias `a` or `b`,
    // and the gemm crate reads `dst` only when `read_dst` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

/// Rows of the output per task in [`syrk_upper`].
const SYRK_BLOCK: usize = 64;

/// `c += xᵀ·x` for a row-major `rows × cols` matrix `x`, where `c` is
/// `cols × cols`: only the blocks on and above the diagonal are computed
/// (about half the work of a full product); call [`mirror_upper`] once the
/// last addition is done to fill in the rest. Runs on the rayon pool when
/// `parallel`.
pub fn syrk_upper(c: &mut [f32], x: &[f32], rows: usize, cols: usize, parallel: bool) {
    assert_eq!(
        c.len(),
        cols * cols,
        "syrk_upper: output is not cols × cols"
    );
    assert!(
        x.len() >= rows * cols,
        "syrk_upper: input shorter than rows × cols"
    );
    if rows == 0 || cols == 0 {
        return;
    }
    let x = &x[..rows * cols];
    let block = |(bi, cb): (usize, &mut [f32])| {
        let i0 = bi * SYRK_BLOCK;
        let i1 = (i0 + SYRK_BLOCK).min(cols);
        // Rows i0..i1 of xᵀ, times columns i0.. of x, into c[i0..i1][i0..].
        let a = View {
            data: &x[i0..],
            rows: i1 - i0,
            cols: rows,
            rs: 1,
            cs: cols,
        };
        let b = View {
            data: &x[i0..],
            rows,
            cols: cols - i0,
            rs: cols,
            cs: 1,
        };
        sgemm(&mut cb[i0..], cols, true, a, b, 1.0, false);
    };
    if parallel {
        use rayon::prelude::*;
        c.par_chunks_mut(SYRK_BLOCK * cols)
            .enumerate()
            .for_each(block);
    } else {
        c.chunks_mut(SYRK_BLOCK * cols).enumerate().for_each(block);
    }
}

/// Copies the upper triangle of the `n × n` matrix `c` onto its lower triangle.
pub fn mirror_upper(c: &mut [f32], n: usize) {
    assert_eq!(c.len(), n * n, "mirror_upper: not n × n");
    for i in 1..n {
        for j in 0..i {
            c[i * n + j] = c[j * n + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View, b: View) -> Vec<f32> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for k in 0..a.cols {
                    c[i * b.cols + j] += a.data[i * a.rs + k * a.cs] * b.data[k * b.rs + j * b.cs];
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_product_with_transposes_and_accumulation() {
        let (m, k, n) = (37, 129, 65);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 101) as f32 / 40.0 - 1.2)
            .collect();
        let a = View::rows(&x, m, k);
        let b = View::transposed(&w, n, k);
        let want = naive(a, b);
        for parallel in [false, true] {
            let mut c = vec![1.0f32; m * n];
            sgemm(&mut c, n, true, a, b, -2.0, parallel);
            for (g, w) in c.iter().zip(&want) {
                assert!(
                    (g - (1.0 - 2.0 * w)).abs() < 1e-3,
                    "{g} vs {}",
                    1.0 - 2.0 * w
                );
            }
            sgemm(&mut c, n, false, a, b, 1.0, parallel);
            for (g, w) in c.iter().zip(&want) {
                assert!((g - w).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn syrk_upper_then_mirror_equals_the_full_product() {
        for (rows, cols) in [(50, 130), (7, 64), (3, 1)] {
            let x: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.0)
                .collect();
            let want = naive(View::transposed(&x, rows, cols), View::rows(&x, rows, cols));
            for parallel in [false, true] {
                let mut c = vec![0.5f32; cols * cols];
                syrk_upper(&mut c, &x, rows, cols, parallel);
                syrk_upper(&mut c, &x, rows, cols, parallel);
                mirror_upper(&mut c, cols);
                for (g, w) in c.iter().zip(&want) {
                    assert!(
                        (g - (0.5 + 2.0 * w)).abs() < 1e-3,
                        "{g} vs {}",
                        0.5 + 2.0 * w
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn refuses_views_outside_the_slice() {
        let x = vec![0.0f32; 10];
        let mut c = vec![0.0f32; 4];
        sgemm(
            &mut c,
            2,
            false,
            View::rows(&x, 2, 6),
            View::rows(&x, 6, 2),
            1.0,
            false,
        );
    }
}
