//! Fusing a SegDiff ensemble (`voxdiff::pipeline::segdiff_fusion`): STAPLE
//! on synthetic raters whose sensitivity and specificity are known recovers
//! them and the truth better than the mean does; unanimous raters are their
//! own answer; the mean fusion is the pixelwise mean and variance.

mod common;

use common::Rng;
use voxdiff::pipeline::segdiff_fusion::{fuse, staple, Fusion};

/// Raters of a known truth: rater j reports a foreground pixel as
/// foreground with probability p_j, a background pixel as background with
/// probability q_j.
fn raters(truth: &[bool], pq: &[(f64, f64)], rng: &mut Rng) -> Vec<Vec<bool>> {
    pq.iter()
        .map(|&(p, q)| {
            truth
                .iter()
                .map(|&t| {
                    let u = rng.uniform(0.0, 1.0) as f64;
                    if t {
                        u < p
                    } else {
                        u >= q
                    }
                })
                .collect()
        })
        .collect()
}

fn accuracy(fused: &[f32], truth: &[bool]) -> f64 {
    fused
        .iter()
        .zip(truth)
        .filter(|(&w, &t)| (w > 0.5) == t)
        .count() as f64
        / truth.len() as f64
}

#[test]
fn staple_recovers_known_rater_performance_and_the_truth() {
    let mut rng = Rng::new(17);
    let truth: Vec<bool> = (0..40_000).map(|_| rng.uniform(0.0, 1.0) < 0.3).collect();
    // Two good raters, three poor ones that over-segment.
    let pq = [
        (0.95, 0.97),
        (0.92, 0.95),
        (0.70, 0.60),
        (0.75, 0.55),
        (0.65, 0.62),
    ];
    let d = raters(&truth, &pq, &mut rng);
    let s = staple(&d);
    assert!(
        s.iterations < 100,
        "EM converged ({} iterations)",
        s.iterations
    );
    for (j, &(p, q)) in pq.iter().enumerate() {
        assert!(
            (s.sensitivity[j] - p).abs() < 0.02 && (s.specificity[j] - q).abs() < 0.02,
            "rater {j}: estimated ({:.3}, {:.3}), true ({p}, {q})",
            s.sensitivity[j],
            s.specificity[j]
        );
    }
    // STAPLE weighs the good raters up; the mean (majority vote) cannot.
    let as_maps: Vec<Vec<f32>> = d
        .iter()
        .map(|r| r.iter().map(|&b| b as u8 as f32).collect())
        .collect();
    let (mean, _) = fuse(&as_maps, Fusion::Mean);
    let (w, var) = fuse(&as_maps, Fusion::Staple);
    let (acc_mean, acc_staple) = (accuracy(&mean, &truth), accuracy(&w, &truth));
    assert!(
        acc_staple > acc_mean + 0.03 && acc_staple > 0.965,
        "accuracy: STAPLE {acc_staple:.4}, mean {acc_mean:.4}"
    );
    for (&p, &v) in w.iter().zip(&var) {
        assert!((0.0..=1.0).contains(&p) && (v - p * (1.0 - p)).abs() < 1e-7);
    }
}

#[test]
fn unanimous_raters_are_the_answer_and_mean_is_the_mean() {
    let one: Vec<f32> = (0..50)
        .map(|i| if i % 3 == 0 { 0.9 } else { 0.1 })
        .collect();
    let maps = vec![one.clone(); 4];
    let (w, var) = fuse(&maps, Fusion::Staple);
    for (i, (&p, &v)) in w.iter().zip(&var).enumerate() {
        let want = i % 3 == 0;
        assert_eq!(p > 0.5, want, "pixel {i}: {p}");
        assert!(if want { p > 0.999 } else { p < 0.001 } && v < 1e-3);
    }
    let maps = vec![vec![0.0f32, 1.0, 0.5], vec![1.0, 1.0, 0.0]];
    let (m, v) = fuse(&maps, Fusion::Mean);
    assert_eq!(m, vec![0.5, 1.0, 0.25]);
    assert_eq!(v, vec![0.25, 0.0, 0.0625]);
}
