//! Dense f32 matrix products for compression work (calibration passes,
//! Hessians, GPTQ updates) behind a bounds-checked view type: a packed
//! AVX-512 GEMM ([`avx512`]) where the CPU has AVX-512F, the `gemm` crate's
//! kernels elsewhere.

#[cfg(target_arch = "x86_64")]
mod avx512;

use std::sync::OnceLock;

/// The implementations behind [`sgemm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgemmKernel {
    /// The `gemm` crate (AVX2/FMA on stable Rust, scalar elsewhere).
    GemmCrate,
    /// The packed AVX-512F kernel of this crate (x86-64 with AVX-512F only).
    Avx512,
}

impl SgemmKernel {
    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            SgemmKernel::GemmCrate => true,
            #[cfg(target_arch = "x86_64")]
            SgemmKernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            SgemmKernel::Avx512 => false,
        }
    }

    /// The one [`sgemm`] uses: AVX-512 where available, unless `FRUGAL_ISA`
    /// is `avx2` or `scalar` (as for [`crate::detected_isa`]).
    pub fn detected() -> SgemmKernel {
        static KERNEL: OnceLock<SgemmKernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let lowered = matches!(
                std::env::var("FRUGAL_ISA").ok().as_deref(),
                Some("avx2" | "scalar")
            );
            if !lowered && SgemmKernel::Avx512.available() {
                SgemmKernel::Avx512
            } else {
                SgemmKernel::GemmCrate
            }
        })
    }
}

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
/// with row stride `c_rs` (column stride 1), on the kernel of
/// [`SgemmKernel::detected`]. Runs on the rayon pool when `parallel`. Panics
/// on mismatched shapes, views outside their slices, or output rows that
/// overlap (`c_rs < b.cols` with more than one row).
pub fn sgemm(
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    alpha: f32,
    parallel: bool,
) {
    sgemm_with(
        SgemmKernel::detected(),
        c,
        c_rs,
        accumulate,
        a,
        b,
        alpha,
        parallel,
    );
}

/// [`sgemm`] on a given implementation (for tests and benchmarks). Panics if
/// this CPU cannot run it.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    kernel: SgemmKernel,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    alpha: f32,
    parallel: bool,
) {
    assert!(
        kernel.available(),
        "sgemm: {kernel:?} is not available on this CPU"
    );
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
    assert!(
        m == 1 || c_rs >= n,
        "sgemm: output rows overlap (row stride {c_rs} < {n} columns)"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if kernel == SgemmKernel::Avx512 {
        avx512::sgemm(c, c_rs, accumulate, a, b, alpha, parallel);
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

    /// The kernels this CPU can run.
    fn kernels() -> Vec<SgemmKernel> {
        let all = [SgemmKernel::GemmCrate, SgemmKernel::Avx512];
        let have: Vec<_> = all.into_iter().filter(|k| k.available()).collect();
        if have.len() < all.len() {
            eprintln!("sgemm tests: only {have:?} on this CPU");
        }
        have
    }

    /// A matrix stored as `layout` (0: row-major, 1: transposed, 2: both
    /// strides > 1, with gaps), its values a hash of (i, j): the view and the
    /// dense row-major values.
    fn matrix(rows: usize, cols: usize, layout: u8, seed: usize) -> (Vec<f32>, Vec<f32>) {
        let val = |i: usize, j: usize| {
            let h = (i * 7919 + j * 104729 + seed * 1299709) % 2003;
            h as f32 / 1001.0 - 1.0
        };
        let dense: Vec<f32> = (0..rows * cols).map(|x| val(x / cols, x % cols)).collect();
        let (rs, cs, len) = strides(rows, cols, layout);
        let mut data = vec![f32::NAN; len];
        for i in 0..rows {
            for j in 0..cols {
                data[i * rs + j * cs] = val(i, j);
            }
        }
        (data, dense)
    }

    fn strides(rows: usize, cols: usize, layout: u8) -> (usize, usize, usize) {
        let (rs, cs) = match layout {
            0 => (cols, 1),
            1 => (1, rows),
            _ => (2 * cols + 3, 2),
        };
        let len = if rows * cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        (rs, cs, len)
    }

    /// `a·b` and `|a|·|b|` (for the error bound), in f64.
    fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0.0f64; m * n];
        let mut mag = vec![0.0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                let x = a[i * k + p] as f64;
                for j in 0..n {
                    let y = b[p * n + j] as f64;
                    c[i * n + j] += x * y;
                    mag[i * n + j] += (x * y).abs();
                }
            }
        }
        (c, mag)
    }

    /// One implementation: `(c, c_rs, accumulate, a, b, alpha, parallel)`.
    type Run<'r> = (
        String,
        Box<dyn Fn(&mut [f32], usize, bool, View, View, f32, bool) + Sync + 'r>,
    );

    /// Every kernel against the f64 reference for one shape (see
    /// [`check_runs`]).
    fn check_shape(m: usize, n: usize, k: usize, layouts: &[u8], pool: Option<&rayon::ThreadPool>) {
        let runs: Vec<Run> = kernels()
            .into_iter()
            .map(|kernel| -> Run {
                (
                    format!("{kernel:?}"),
                    Box::new(move |c, c_rs, acc, a, b, alpha, par| {
                        sgemm_with(kernel, c, c_rs, acc, a, b, alpha, par)
                    }),
                )
            })
            .collect();
        check_runs(m, n, k, layouts, pool, &runs);
    }

    /// `runs` against the f64 reference for one shape, over layouts of both
    /// operands, accumulate, alpha and parallel; `c` has a padded row stride
    /// whose gaps must stay untouched.
    fn check_runs(
        m: usize,
        n: usize,
        k: usize,
        layouts: &[u8],
        pool: Option<&rayon::ThreadPool>,
        runs: &[Run],
    ) {
        let c_rs = n + 3;
        for &la in layouts {
            for &lb in layouts {
                let (ad, a_dense) = matrix(m, k, la, 1);
                let (bd, b_dense) = matrix(k, n, lb, 2);
                let (rs, cs, _) = strides(m, k, la);
                let a = View {
                    data: &ad,
                    rows: m,
                    cols: k,
                    rs,
                    cs,
                };
                let (rs, cs, _) = strides(k, n, lb);
                let b = View {
                    data: &bd,
                    rows: k,
                    cols: n,
                    rs,
                    cs,
                };
                let (want, mag) = reference(&a_dense, &b_dense, m, n, k);
                for (kernel, f) in runs {
                    for (accumulate, alpha, parallel) in [
                        (false, 1.0f32, false),
                        (true, -0.75, false),
                        (false, 1.0, true),
                        (true, 2.5, true),
                    ] {
                        let c0 = |i: usize, j: usize| ((i * 31 + j * 17) % 13) as f32 / 13.0 - 0.5;
                        let len = if m == 0 { 0 } else { (m - 1) * c_rs + n };
                        let mut c: Vec<f32> = (0..len).map(|x| c0(x / c_rs, x % c_rs)).collect();
                        let run = |c: &mut [f32]| f(c, c_rs, accumulate, a, b, alpha, parallel);
                        match pool {
                            Some(p) => p.install(|| run(&mut c)),
                            None => run(&mut c),
                        }
                        for (x, &got) in c.iter().enumerate() {
                            let (i, j) = (x / c_rs, x % c_rs);
                            if j >= n {
                                assert_eq!(got, c0(i, j), "{kernel} wrote a gap at ({i}, {j})");
                                continue;
                            }
                            let base = if accumulate { c0(i, j) as f64 } else { 0.0 };
                            let w = base + alpha as f64 * want[i * n + j];
                            // Rounding of k products and sums in f32, plus the final update.
                            let tol = (k as f64 + 2.0)
                                * 1.2e-7
                                * (alpha.abs() as f64 * mag[i * n + j] + base.abs())
                                + 1e-30;
                            assert!(
                                (got as f64 - w).abs() <= tol,
                                "{kernel} {m}x{n}x{k} layouts ({la}, {lb}) acc {accumulate} \
                                 alpha {alpha} par {parallel}: c[{i}][{j}] = {got}, want {w} (tol {tol:e})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn all_kernels_match_the_reference_on_small_and_edge_shapes() {
        let shapes = [
            (1, 1, 1),
            (1, 1, 0),
            (5, 7, 0),
            (2, 3, 1),
            (1, 40, 17),
            (40, 1, 17),
            (13, 31, 15),
            (14, 32, 16),
            (15, 33, 17),
            (28, 64, 48),
            (37, 129, 65),
            (16, 48, 23),
            (6, 64, 9),
        ];
        for (m, n, k) in shapes {
            check_shape(m, n, k, &[0, 1, 2], None);
        }
    }

    #[test]
    fn all_kernels_match_the_reference_across_blocks() {
        // Deeper than one depth block (384), wider than one column block
        // (1024), and past the parallel threshold, on 1 to 4 threads: tall
        // (tasks over rows) and flat (tasks over columns too).
        let shapes = [(29, 45, 800), (3, 1100, 70), (300, 200, 60), (64, 600, 100)];
        for threads in [1, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (m, n, k) in shapes {
                check_shape(m, n, k, &[0, 1], Some(&pool));
            }
        }
        check_shape(64, 600, 100, &[2], None);
    }

    /// Both tile shapes of the AVX-512 kernel, whichever `sgemm` would pick.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_avx512_tile_shapes_match_the_reference() {
        if !SgemmKernel::Avx512.available() {
            eprintln!("sgemm tests: no AVX-512F on this CPU");
            return;
        }
        let runs: Vec<Run> = vec![
            ("avx512 12x32".into(), Box::new(avx512::gemm::<12, 2>)),
            ("avx512 8x48".into(), Box::new(avx512::gemm::<8, 3>)),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, n, k) in [(1, 1, 1), (13, 31, 15), (37, 129, 65), (24, 96, 400)] {
            check_runs(m, n, k, &[0, 1, 2], None, &runs);
        }
        for (m, n, k) in [(64, 600, 100), (300, 200, 60)] {
            check_runs(m, n, k, &[0, 1], Some(&pool), &runs);
        }
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn refuses_overlapping_output_rows() {
        let x = vec![0.0f32; 16];
        let mut c = vec![0.0f32; 16];
        sgemm(
            &mut c,
            2,
            false,
            View::rows(&x, 4, 4),
            View::rows(&x, 4, 4),
            1.0,
            false,
        );
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
