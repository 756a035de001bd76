use super::*;
use crate::testutil::{inputs, stats_of, value_error, weights};
use frugal_model::{Arch, RopeStyle};

/// SmolLM2-135M's shape.
fn smollm2() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        n_vocab: 49152,
        n_embd: 576,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        n_ff: 1536,
        n_ctx_train: 8192,
        rope_theta: 100000.0,
        rope_dim: 64,
        rope_style: RopeStyle::Interleaved,
        rms_eps: 1e-5,
    }
}

#[test]
fn bad_specs_name_the_limit() {
    let c = smollm2();
    let err = |s: Spec| s.check(&c).unwrap_err();
    let e = err(Spec {
        heads: 9,
        ..Spec::default()
    });
    assert!(e.contains("9 heads") && e.contains("has 9"), "{e}");
    let e = err(Spec {
        heads: 12,
        ..Spec::default()
    });
    assert!(e.contains("has 9"), "{e}");
    // 2 heads cannot come equally out of 3 groups of 3.
    let e = err(Spec {
        heads: 2,
        ..Spec::default()
    });
    assert!(e.contains("multiple of 3"), "{e}");
    let e = err(Spec {
        layers: 30,
        ..Spec::default()
    });
    assert!(e.contains("30 blocks"), "{e}");
    let e = err(Spec {
        ffn: 1536,
        ..Spec::default()
    });
    assert!(e.contains("FFN"), "{e}");
    assert!(Spec {
        heads: 6,
        ffn: 1500,
        layers: 29
    }
    .check(&c)
    .is_ok());
    for bad in [0.0, 1.0, -0.2, f64::NAN] {
        assert!(Spec::for_shrink(&c, bad, None, 0, OTHER).is_err(), "{bad}");
    }
}

/// SmolLM2's parameters outside the blocks: the tied embedding and the final norm.
const OTHER: usize = 49152 * 576 + 576;

#[test]
fn shrink_hits_the_asked_fraction() {
    let c = smollm2();
    for (shrink, layers, heads) in [(0.2, 0, 0), (0.4, 0, 3), (0.4, 4, 3), (0.3, 2, 3)] {
        let s = Spec::for_shrink(&c, shrink, None, layers, OTHER).unwrap();
        s.check(&c).unwrap();
        assert_eq!(s.layers, layers);
        // The blocks' share of each group of 3 query heads, rounded down:
        // 25% of the block parameters at 20% of the model, 38% at 30%,
        // 51% at 40%.
        assert_eq!(s.heads, heads, "{shrink}");
        assert_eq!((c.n_ff - s.ffn) % FFN_ALIGN, 0);
        let got = s.removed_fraction(&c, OTHER);
        // The FFN width moves in steps of 32 channels: 3·576·32 parameters
        // of a block's 3.54 M, under 1%.
        assert!((got - shrink).abs() < 0.01, "{shrink}: removed {got}");
        assert!(s.removed_fraction(&c, 0) > got);
    }
    // Explicit heads are kept; the rest comes from the FFN.
    let s = Spec::for_shrink(&c, 0.2, Some(3), 0, 0).unwrap();
    assert_eq!(s.heads, 3);
    assert!((s.removed_fraction(&c, 0) - 0.2).abs() < 0.01);
    // A target out of reach is refused rather than silently missed.
    assert!(Spec::for_shrink(&c, 0.9, Some(0), 0, OTHER).is_err());
    assert!(Spec::for_shrink(&c, 0.85, None, 0, OTHER).is_err());
}

#[test]
fn keep_top_drops_the_lowest_of_each_group() {
    let s = [5.0, 1.0, 3.0, 0.5, 9.0, 2.0];
    assert_eq!(keep_top(&s, 3, 1), vec![0, 2, 4, 5]);
    assert_eq!(keep_top(&s, 6, 2), vec![0, 2, 4, 5]);
    assert_eq!(keep_top(&s, 2, 1), vec![0, 2, 4]);
}

#[test]
fn activation_importance_and_refit_cut_the_output_error() {
    // Inputs of very unequal energy per column: magnitude alone misjudges
    // which channels matter; the refit then makes up for the dropped ones
    // through the correlations.
    let (rows, cols, n) = (24, 64, 512);
    let x = inputs(n, cols, 7);
    let st = stats_of(&x, cols);
    let w = weights(rows, cols, 8);
    let c = ModelConfig {
        n_ff: cols,
        ..smollm2()
    };
    let error = |scoring: Scoring, stats: Option<&InputStats>| {
        let mut l = LayerF32 {
            w_down: w.clone(),
            ..Default::default()
        };
        let keep = prune_channels(&c, &mut l, stats, 24, scoring).unwrap();
        assert_eq!(keep.len(), 40);
        // Only the kept columns are non-zero.
        for row in l.w_down.chunks_exact(cols) {
            for (j, v) in row.iter().enumerate() {
                assert!(keep.contains(&j) || *v == 0.0);
            }
        }
        value_error(&x, &w, &l.w_down, cols)
    };
    let magnitude = error(Scoring::Magnitude, None);
    let activation = error(Scoring::Activation, Some(&st));
    let refit = error(Scoring::ActivationRefit { damp: 0.01 }, Some(&st));
    assert!(activation < 0.8 * magnitude, "{activation} vs {magnitude}");
    assert!(refit < 0.5 * activation, "{refit} vs {activation}");
}

#[test]
fn heads_go_equally_from_each_group_and_by_their_output() {
    // 4 query heads of 8 values in 2 GQA groups; head 1's inputs are tiny
    // and head 2's O columns are zero: those are the ones to go.
    let c = ModelConfig {
        n_head: 4,
        n_head_kv: 2,
        head_dim: 8,
        n_embd: 16,
        ..smollm2()
    };
    let (rows, cols) = (16, 32);
    let mut x = inputs(256, cols, 3);
    for t in x.chunks_exact_mut(cols) {
        for v in &mut t[8..16] {
            *v *= 1e-3;
        }
    }
    let st = stats_of(&x, cols);
    let mut w = weights(rows, cols, 4);
    for row in w.chunks_exact_mut(cols) {
        for v in &mut row[16..24] {
            *v = 0.0;
        }
    }
    let mut l = LayerF32 {
        wo: w,
        wq: weights(cols, 16, 5),
        ..Default::default()
    };
    let keep = prune_heads(&c, &mut l, Some(&st), 2, Scoring::Activation).unwrap();
    assert_eq!(keep, vec![0, 3]);
    let cut = cut(&c, &l, &keep, &[]);
    assert_eq!(cut.wo.len(), rows * 16);
    assert_eq!(cut.wq.len(), 16 * 16);
    // Q's rows of head 3 are rows 24..32 of the original.
    assert_eq!(&cut.wq[8 * 16..], &l.wq[24 * 16..32 * 16]);
    assert!(prune_heads(&c, &mut l, Some(&st), 0, Scoring::Activation)
        .map(|k| k.len() == 4)
        .unwrap());
}

#[test]
fn block_influence_is_zero_for_an_unchanged_stream() {
    let a = inputs(10, 16, 1);
    assert!(block_influence(&a, &a, 16).abs() < 1e-9);
    let neg: Vec<f32> = a.iter().map(|v| -v).collect();
    assert!((block_influence(&a, &neg, 16) - 2.0).abs() < 1e-6);
}
