//! The Pareto front: the models no other model beats on both axes at once.

/// `true` for each point that no other point dominates, both coordinates
/// minimized (negate one to maximize it). A point dominates another when it
/// is no worse in both and strictly better in one, so equal points do not
/// dominate each other: duplicates share the front. A point with a NaN
/// coordinate is never on the front and dominates nothing.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(x, y)| {
            !x.is_nan()
                && !y.is_nan()
                && !points
                    .iter()
                    .any(|&(a, b)| a <= x && b <= y && (a < x || b < y))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::pareto_front;

    #[test]
    fn empty_and_single_point() {
        assert!(pareto_front(&[]).is_empty());
        assert_eq!(pareto_front(&[(3.0, 4.0)]), vec![true]);
    }

    #[test]
    fn trade_off_chain_is_all_front_and_a_beaten_point_is_not() {
        // Size against loss: each smaller model loses more, except (90, 0.08),
        // which (80, 0.05) beats on both.
        let p = [(500.0, 0.0), (140.0, 0.001), (90.0, 0.08), (80.0, 0.05)];
        assert_eq!(pareto_front(&p), vec![true, true, false, true]);
    }

    #[test]
    fn ties_on_one_axis_are_broken_by_the_other() {
        // Same x: the lower y wins. Same y: the lower x wins.
        assert_eq!(pareto_front(&[(1.0, 2.0), (1.0, 3.0)]), vec![true, false]);
        assert_eq!(pareto_front(&[(2.0, 1.0), (1.0, 1.0)]), vec![false, true]);
    }

    #[test]
    fn duplicates_share_the_front() {
        let p = [(1.0, 1.0), (1.0, 1.0), (2.0, 2.0)];
        assert_eq!(pareto_front(&p), vec![true, true, false]);
    }

    #[test]
    fn maximizing_by_negation() {
        // Speed (higher better) against loss: negate speed.
        let p = [
            (-45.0, 0.0),
            (-150.0, 0.001),
            (-135.0, 0.05),
            (-160.0, 0.07),
        ];
        assert_eq!(pareto_front(&p), vec![true, true, false, true]);
    }

    #[test]
    fn nan_is_never_on_the_front_and_dominates_nothing() {
        let p = [(f64::NAN, 0.0), (1.0, 1.0)];
        assert_eq!(pareto_front(&p), vec![false, true]);
    }
}
