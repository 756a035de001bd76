//! Small statistics shared by the metrics: mean with standard error,
//! percentiles, and the standard error of an accuracy.

/// Mean and standard error of the mean (0 when fewer than two values).
pub fn mean_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// The `q` quantile (0..=1) of `sorted` (ascending), interpolating linearly
/// between neighbours as numpy's default does.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Standard error of an accuracy of `correct` out of `n` (binomial, n-1 in the denominator).
pub fn accuracy_stderr(correct: usize, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let p = correct as f64 / n as f64;
    (p * (1.0 - p) / (n - 1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let (m, se) = mean_stderr(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        // sample sd = sqrt(5/3), se = sd / 2
        assert!((se - (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert_eq!(quantile(&s, 0.99), 4.96);
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert!((accuracy_stderr(50, 101) - 0.05).abs() < 1e-3);
        assert_eq!(accuracy_stderr(1, 1), 0.0);
    }
}
