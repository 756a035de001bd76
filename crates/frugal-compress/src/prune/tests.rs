use super::*;
use crate::quant::gptq::{Gptq, ObsMask};
use crate::quant::{Method, Rtn, TypeFormat};
use crate::testutil::{inputs, output_error, stats_of, value_error, weights};
use frugal_formats::GgmlType;

#[test]
fn patterns_parse_and_refuse_bad_ratios() {
    assert_eq!(Pattern::parse("0.5"), Ok(Pattern::Unstructured(0.5)));
    assert_eq!(Pattern::parse("2:4"), Ok(Pattern::NM { n: 2, m: 4 }));
    assert_eq!(Pattern::parse("4:8"), Ok(Pattern::NM { n: 4, m: 8 }));
    for bad in [
        "0", "1", "1.5", "-0.2", "nan", "x", "4:4", "0:4", "5:4", "a:4", "2:128",
    ] {
        assert!(Pattern::parse(bad).is_err(), "{bad} was accepted");
    }
    let e = Pattern::NM { n: 2, m: 4 }.check_cols(30).unwrap_err();
    assert!(e.contains("30"), "{e}");
    assert!(Pattern::NM { n: 2, m: 4 }.check_cols(32).is_ok());
}

#[test]
fn counts_of_consecutive_spans_add_up() {
    let p = Pattern::Unstructured(0.3);
    let total: usize = (0..10)
        .map(|b| p.pruned_in_first((b + 1) * 100) - p.pruned_in_first(b * 100))
        .sum();
    assert_eq!(total, 300);
    let nm = Pattern::NM { n: 2, m: 4 };
    assert_eq!(nm.pruned_in_first(8), 4);
    assert_eq!(nm.pruned_in_first(7), 3);
    assert_eq!(nm.pruned_in_first(6), 2);
}

fn zeros_in(row: &[f32]) -> usize {
    row.iter().filter(|&&v| v == 0.0).count()
}

#[test]
fn magnitude_prunes_the_smallest_of_each_row() {
    let (rows, cols) = (6, 64);
    let w = weights(rows, cols, 1);
    let sp = Sparsity::new(Criterion::Magnitude, Pattern::Unstructured(0.5));
    let p = sp.prune(&w, rows, cols, None).unwrap();
    for r in 0..rows {
        let (orig, new) = (&w[r * cols..][..cols], &p[r * cols..][..cols]);
        assert_eq!(zeros_in(new), 32);
        let kept_min = (0..cols)
            .filter(|&c| new[c] != 0.0)
            .map(|c| orig[c].abs())
            .fold(f32::MAX, f32::min);
        let pruned_max = (0..cols)
            .filter(|&c| new[c] == 0.0)
            .map(|c| orig[c].abs())
            .fold(0.0, f32::max);
        assert!(kept_min >= pruned_max, "row {r}: {kept_min} < {pruned_max}");
        for c in 0..cols {
            assert!(
                new[c] == 0.0 || new[c] == orig[c],
                "kept weights are unchanged"
            );
        }
    }
}

#[test]
fn wanda_weighs_weights_by_their_input_norm() {
    // Column 0 has the largest weights but a dead-quiet input; Wanda prunes
    // it where magnitude keeps it.
    let (rows, cols) = (4, 8);
    let mut w = weights(rows, cols, 2);
    let mut st = InputStats::new(cols);
    st.tokens = 1;
    for j in 0..cols {
        st.xtx[j * cols + j] = if j == 0 { 1e-6 } else { 1.0 };
    }
    for r in 0..rows {
        w[r * cols] = 10.0;
    }
    let mag = Sparsity::new(Criterion::Magnitude, Pattern::Unstructured(0.25));
    let wanda = Sparsity::new(Criterion::Wanda, Pattern::Unstructured(0.25));
    let pm = mag.prune(&w, rows, cols, None).unwrap();
    let pw = wanda.prune(&w, rows, cols, Some(&st)).unwrap();
    for r in 0..rows {
        assert_eq!(pm[r * cols], 10.0);
        assert_eq!(pw[r * cols], 0.0);
        assert_eq!(zeros_in(&pw[r * cols..][..cols]), 2);
    }
    assert!(
        wanda.prune(&w, rows, cols, None).is_err(),
        "Wanda needs statistics"
    );
}

#[test]
fn n_m_keeps_n_of_every_m() {
    let (rows, cols) = (8, 256);
    let x = inputs(300, cols, 3);
    let st = stats_of(&x, cols);
    let w = weights(rows, cols, 4);
    for (n, m) in [(2, 4), (4, 8)] {
        for c in [Criterion::Magnitude, Criterion::Wanda, Criterion::SparseGpt] {
            let sp = Sparsity::new(c, Pattern::NM { n, m });
            let p = sp.prune(&w, rows, cols, Some(&st)).unwrap();
            for g in p.chunks(m) {
                assert_eq!(zeros_in(g), m - n, "{c:?} {n}:{m}: group {g:?}");
            }
        }
    }
    let sp = Sparsity::new(Criterion::Wanda, Pattern::NM { n: 2, m: 4 });
    assert!(sp
        .prune(&w[..6 * 30], 6, 30, Some(&stats_of(&x[..300 * 30], 30)))
        .is_err());
}

#[test]
fn sparsegpt_beats_wanda_and_magnitude_on_correlated_inputs() {
    let (rows, cols) = (16, 256);
    let x = inputs(1024, cols, 5);
    let st = stats_of(&x, cols);
    let w = weights(rows, cols, 6);
    for pattern in [Pattern::Unstructured(0.5), Pattern::NM { n: 2, m: 4 }] {
        let err = |c: Criterion| {
            let p = Sparsity::new(c, pattern)
                .prune(&w, rows, cols, Some(&st))
                .unwrap();
            for r in 0..rows {
                assert_eq!(
                    zeros_in(&p[r * cols..][..cols]),
                    cols / 2,
                    "{c:?} {pattern}"
                );
            }
            value_error(&x, &w, &p, cols)
        };
        let (e_mag, e_wanda, e_sgpt) = (
            err(Criterion::Magnitude),
            err(Criterion::Wanda),
            err(Criterion::SparseGpt),
        );
        assert!(
            e_wanda < e_mag,
            "{pattern}: Wanda {e_wanda:.1} vs magnitude {e_mag:.1}"
        );
        assert!(
            e_sgpt < 0.6 * e_wanda,
            "{pattern}: SparseGPT {e_sgpt:.1} vs Wanda {e_wanda:.1}"
        );
    }
}

#[test]
fn joint_sparsegpt_and_gptq_prunes_and_rounds_in_one_sweep() {
    let (rows, cols) = (16, 256);
    let x = inputs(1024, cols, 7);
    let st = stats_of(&x, cols);
    let w = weights(rows, cols, 8);
    let ty = GgmlType::Q8_0;
    let f = TypeFormat::new(ty).unwrap();
    let pattern = Pattern::Unstructured(0.5);
    let joint = Gptq {
        mask: ObsMask::Select(pattern),
        ..Gptq::default()
    }
    .quantize(&w, rows, cols, &f, Some(&st))
    .unwrap();
    // Wanda's mask, then GPTQ holding its zeros, and then plain RTN.
    let pw = Sparsity::new(Criterion::Wanda, pattern)
        .prune(&w, rows, cols, Some(&st))
        .unwrap();
    let held = Gptq {
        mask: ObsMask::KeepZeros,
        ..Gptq::default()
    }
    .quantize(&pw, rows, cols, &f, Some(&st))
    .unwrap();
    let rtn = Rtn.quantize(&pw, rows, cols, &f, None).unwrap();
    let deq = |q: &[u8]| {
        let mut v = vec![0.0f32; rows * cols];
        frugal_kernels::dequantize_rows(ty, q, &mut v, cols).unwrap();
        v
    };
    for (name, q) in [("joint", &joint), ("held", &held)] {
        let v = deq(q);
        for r in 0..rows {
            assert!(
                zeros_in(&v[r * cols..][..cols]) >= cols / 2,
                "{name}: row {r} has fewer than half zeros"
            );
        }
    }
    // Wanda's zeros stay where they were.
    let vh = deq(&held);
    for (a, b) in pw.iter().zip(&vh) {
        if *a == 0.0 {
            assert_eq!(*b, 0.0);
        }
    }
    // Holding the zeros, GPTQ still beats RTN at rounding what is left...
    let (e_held, e_rtn) = (
        output_error(&x, &pw, &held, ty, rows, cols),
        output_error(&x, &pw, &rtn, ty, rows, cols),
    );
    assert!(
        e_held < 0.8 * e_rtn,
        "held mask {e_held:.3} vs RTN {e_rtn:.3}"
    );
    // ...and the joint sweep, which also chose the mask, is closest to the
    // dense weights.
    let (e_joint, e_wanda_gptq) = (
        output_error(&x, &w, &joint, ty, rows, cols),
        output_error(&x, &w, &held, ty, rows, cols),
    );
    assert!(
        e_joint < 0.6 * e_wanda_gptq,
        "joint {e_joint:.1} vs Wanda then GPTQ {e_wanda_gptq:.1}"
    );
}

#[test]
fn act_order_and_straddling_groups_are_refused_with_pruning() {
    let (rows, cols) = (2, 256);
    let x = inputs(300, cols, 9);
    let st = stats_of(&x, cols);
    let w = weights(rows, cols, 10);
    let f = TypeFormat::new(GgmlType::Q4_0).unwrap();
    let g = Gptq {
        mask: ObsMask::KeepZeros,
        act_order: true,
        ..Gptq::default()
    };
    assert!(g.quantize(&w, rows, cols, &f, Some(&st)).is_err());
    // 384 columns take 16:48 groups, but each straddles Q4_0's 32-blocks.
    let cols = 384;
    let st = stats_of(&inputs(400, cols, 11), cols);
    let w = weights(rows, cols, 12);
    let g = Gptq {
        mask: ObsMask::Select(Pattern::NM { n: 16, m: 48 }),
        ..Gptq::default()
    };
    let e = g.quantize(&w, rows, cols, &f, Some(&st)).unwrap_err();
    assert!(e.contains("straddle"), "{e}");
}
