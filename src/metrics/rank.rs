//! Rank correlation: Spearman's ρ as scipy.stats.spearmanr computes it —
//! the Pearson correlation of the ranks, tied values sharing the mean of the
//! ranks they span.

/// Ranks 1..n of `x`, ties given the mean of their ranks ("average" method).
/// NaN values are not allowed (the caller filters them).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && x[order[j]] == x[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) hold ranks i+1..=j: their mean.
        let r = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = r;
        }
        i = j;
    }
    ranks
}

/// Pearson's correlation of `x` and `y` (equal lengths); NaN when either is
/// constant or there are fewer than two values.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: lengths differ");
    let n = x.len();
    if n < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rank correlation of `x` and `y`: 1 when y increases with x,
/// −1 when it decreases; NaN for constant input or n < 2.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_the_mean_rank() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0]),
            vec![3.5, 1.0, 3.5, 2.0]
        );
    }

    #[test]
    fn monotone_maps_give_plus_or_minus_one() {
        let x: Vec<f64> = (0..10).map(|i| i as f64).collect();
        let up: Vec<f64> = x.iter().map(|v| v.powi(3) + 2.0).collect();
        let down: Vec<f64> = x.iter().map(|v| -v.exp()).collect();
        assert!((spearman(&x, &up) - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &down) + 1.0).abs() < 1e-12);
        assert!(spearman(&x, &[1.0; 10]).is_nan());
    }

    #[test]
    fn a_case_with_ties_by_hand() {
        // y's ranks are [2, 1, 3.5, 3.5, 5]; their Pearson correlation with
        // 1..5 is 8.5 / sqrt(10 · 9.5) = 0.872081599272381 (what
        // scipy.stats.spearmanr computes for these inputs).
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 4.0, 5.0]);
        assert!((r - 0.872_081_599_272_380_9).abs() < 1e-12, "{r}");
    }
}
