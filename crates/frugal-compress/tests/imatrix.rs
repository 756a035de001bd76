//! The imatrix method against RTN on a matrix whose inputs have very
//! unequal energy per channel: the error that matters (the matrix's output
//! error on the calibration inputs) must go down, and the bytes must be
//! what the kernels read.

use frugal_compress::quant::imatrix::{channel_importance, Imatrix};
use frugal_compress::quant::{InputStats, Method, Rtn, TypeFormat};
use frugal_formats::{FrugalType, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: usize = 24;
const COLS: usize = 512;
const TOKENS: usize = 256;

fn gauss(rng: &mut StdRng) -> f32 {
    (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.866
}

/// Activations (tokens × cols) with per-channel scales over three decades,
/// and their statistics.
fn activations(rng: &mut StdRng) -> (Vec<f32>, InputStats) {
    let scale: Vec<f32> = (0..COLS)
        .map(|_| 10f32.powf(rng.gen_range(-1.5f32..1.5)))
        .collect();
    let x: Vec<f32> = (0..TOKENS * COLS)
        .map(|i| gauss(rng) * scale[i % COLS])
        .collect();
    let mut st = InputStats::new(COLS);
    for t in x.chunks(COLS) {
        for i in 0..COLS {
            for j in 0..COLS {
                st.xtx[i * COLS + j] += t[i] * t[j];
            }
        }
    }
    st.tokens = TOKENS;
    (x, st)
}

/// Σ over tokens and rows of (x·(w − ŵ))².
fn output_error(x: &[f32], w: &[f32], q: &[u8], ty: GgmlType) -> f64 {
    let mut back = vec![0.0f32; w.len()];
    frugal_kernels::dequantize_rows(ty, q, &mut back, COLS).expect("the kernels read the bytes");
    let mut e = 0.0f64;
    for t in x.chunks(COLS) {
        for r in 0..ROWS {
            let d: f64 = (0..COLS)
                .map(|j| (t[j] * (w[r * COLS + j] - back[r * COLS + j])) as f64)
                .sum();
            e += d * d;
        }
    }
    e
}

#[test]
fn imatrix_beats_rtn_on_the_output_error() {
    let mut rng = StdRng::seed_from_u64(21);
    let (x, st) = activations(&mut rng);
    let w: Vec<f32> = (0..ROWS * COLS).map(|_| gauss(&mut rng) * 0.05).collect();
    let fq = |bits, group, sym| GgmlType::Frugal(FrugalType::Affine { bits, group, sym });
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        fq(3, 128, false),
        fq(4, 0, true),
    ] {
        let f = TypeFormat::new(ty).unwrap();
        let rtn = Rtn.quantize(&w, ROWS, COLS, &f, None).unwrap();
        let imx = Imatrix.quantize(&w, ROWS, COLS, &f, Some(&st)).unwrap();
        assert_eq!(imx.len(), rtn.len(), "{ty}: bytes");
        let (e_rtn, e_imx) = (
            output_error(&x, &w, &rtn, ty),
            output_error(&x, &w, &imx, ty),
        );
        eprintln!("{ty}: output error imatrix/rtn {:.3}", e_imx / e_rtn);
        assert!(e_imx < 0.9 * e_rtn, "{ty}: imatrix {e_imx} rtn {e_rtn}");
    }
    // 8-bit types keep the reference quantizer: the same bytes as RTN.
    let f = TypeFormat::new(GgmlType::Q8_0).unwrap();
    assert_eq!(
        Imatrix.quantize(&w, ROWS, COLS, &f, Some(&st)).unwrap(),
        Rtn.quantize(&w, ROWS, COLS, &f, None).unwrap()
    );
}

#[test]
fn importance_is_the_mean_square_activation() {
    let mut st = InputStats::new(3);
    for t in [[1.0f32, 0.0, 2.0], [3.0, 0.0, -2.0]] {
        for i in 0..3 {
            for j in 0..3 {
                st.xtx[i * 3 + j] += t[i] * t[j];
            }
        }
    }
    st.tokens = 2;
    let imp = channel_importance(&st);
    assert_eq!(imp[0], 5.0);
    assert_eq!(imp[2], 4.0);
    // A channel no token reached still counts a little.
    assert!(imp[1] > 0.0 && imp[1] < 1e-4);
}

#[test]
fn imatrix_needs_matching_statistics() {
    let m = Imatrix;
    assert!(m.needs_calibration());
    assert_eq!(m.name(), "imatrix");
    let f = TypeFormat::new(GgmlType::Q4_0).unwrap();
    let w = vec![0.5f32; 2 * 64];
    assert!(m.quantize(&w, 2, 64, &f, None).is_err());
    let st = InputStats::new(32);
    assert!(m.quantize(&w, 2, 64, &f, Some(&st)).is_err());
}
