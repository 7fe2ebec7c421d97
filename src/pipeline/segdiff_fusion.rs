//! Fusing an ensemble of N probability maps into one foreground probability
//! (thresholded at ½ by the caller) and a pixelwise uncertainty:
//!
//! - **mean**: the pixelwise mean of the maps; the uncertainty is their
//!   (population) variance.
//! - **staple**: STAPLE (Warfield, Zou & Wells 2004, "Simultaneous Truth
//!   and Performance Level Estimation"): each map thresholded at ½ is a
//!   rater j with an unknown sensitivity p_j and specificity q_j; EM
//!   estimates them, the foreground prior f and the posterior
//!   W_i = P(T_i = 1 | decisions) of every pixel. E-step:
//!   `a_i = f ∏_j p_j^{D_ij} (1 − p_j)^{1 − D_ij}`,
//!   `b_i = (1 − f) ∏_j q_j^{1 − D_ij} (1 − q_j)^{D_ij}`, `W_i = a_i / (a_i + b_i)`;
//!   M-step: `p_j = Σ_i W_i D_ij / Σ_i W_i`,
//!   `q_j = Σ_i (1 − W_i)(1 − D_ij) / Σ_i (1 − W_i)`, `f = mean_i W_i`;
//!   from p_j = q_j = 0.99 and f the raters' mean foreground fraction, until
//!   no p_j, q_j moves by more than 10⁻⁷ (at most 1000 iterations). The
//!   prior is re-estimated rather than held at the raters' fraction: raters
//!   that over-segment would otherwise bias every p_j and q_j. The probability is W, the uncertainty W(1 − W) (the
//!   variance of the posterior Bernoulli, 0 … ¼ like the mean's).
//!   Products are computed as sums of logarithms, with p_j, q_j kept in
//!   [10⁻⁶, 1 − 10⁻⁶].

use serde::{Deserialize, Serialize};

/// How `voxdiff segment` fuses the ensemble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// The pixelwise mean and variance.
    Mean,
    /// STAPLE's posterior and its Bernoulli variance.
    Staple,
}

/// The fused foreground probability and the uncertainty of N maps of one
/// length (see the module docs).
pub fn fuse(samples: &[Vec<f32>], fusion: Fusion) -> (Vec<f32>, Vec<f32>) {
    match fusion {
        Fusion::Mean => mean_and_variance(samples),
        Fusion::Staple => {
            let decisions: Vec<Vec<bool>> = samples
                .iter()
                .map(|s| s.iter().map(|&v| v > 0.5).collect())
                .collect();
            let w = staple(&decisions).posterior;
            let var = w.iter().map(|&p| p * (1.0 - p)).collect();
            (w, var)
        }
    }
}

/// The pixelwise mean and (population) variance of N probability maps.
pub fn mean_and_variance(samples: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let n = samples.len() as f32;
    let len = samples[0].len();
    let mut mean = vec![0f32; len];
    let mut var = vec![0f32; len];
    for s in samples {
        for (m, v) in mean.iter_mut().zip(s) {
            *m += v / n;
        }
    }
    for s in samples {
        for ((q, m), v) in var.iter_mut().zip(&mean).zip(s) {
            *q += (v - m) * (v - m) / n;
        }
    }
    (mean, var)
}

/// STAPLE's estimate from binary decisions.
pub struct Staple {
    /// P(T_i = 1 | decisions) per pixel.
    pub posterior: Vec<f32>,
    /// Each rater's estimated sensitivity p_j and specificity q_j.
    pub sensitivity: Vec<f64>,
    pub specificity: Vec<f64>,
    /// The estimated foreground prior f.
    pub prior: f64,
    /// EM iterations run.
    pub iterations: usize,
}

/// STAPLE of `decisions[j][i]` (rater j, pixel i; every rater the same
/// length) — see the module docs.
pub fn staple(decisions: &[Vec<bool>]) -> Staple {
    const LO: f64 = 1e-6;
    let r = decisions.len();
    assert!(r >= 1, "STAPLE needs at least one rater");
    let len = decisions[0].len();
    assert!(
        decisions.iter().all(|d| d.len() == len),
        "STAPLE raters of different lengths"
    );
    let total = (r * len).max(1) as f64;
    let ones = decisions.iter().flatten().filter(|&&d| d).count() as f64;
    let mut f = (ones / total).clamp(LO, 1.0 - LO);
    let mut p = vec![0.99f64; r];
    let mut q = vec![0.99f64; r];
    let mut w = vec![f; len];
    let mut iterations = 0;
    while iterations < 1000 {
        iterations += 1;
        // E-step.
        let (lp1, lp0): (Vec<f64>, Vec<f64>) = p.iter().map(|&v| (v.ln(), (1.0 - v).ln())).unzip();
        let (lq1, lq0): (Vec<f64>, Vec<f64>) = q.iter().map(|&v| (v.ln(), (1.0 - v).ln())).unzip();
        for (i, wi) in w.iter_mut().enumerate() {
            let (mut la, mut lb) = (f.ln(), (1.0 - f).ln());
            for j in 0..r {
                if decisions[j][i] {
                    la += lp1[j];
                    lb += lq0[j];
                } else {
                    la += lp0[j];
                    lb += lq1[j];
                }
            }
            // a / (a + b) = 1 / (1 + e^{lb − la}).
            *wi = 1.0 / (1.0 + (lb - la).exp());
        }
        // M-step.
        let sw: f64 = w.iter().sum();
        let snw = len as f64 - sw;
        f = (sw / len.max(1) as f64).clamp(LO, 1.0 - LO);
        let mut moved = 0f64;
        for j in 0..r {
            let (mut tp, mut tn) = (0f64, 0f64);
            for (i, &wi) in w.iter().enumerate() {
                if decisions[j][i] {
                    tp += wi;
                } else {
                    tn += 1.0 - wi;
                }
            }
            let pj = if sw > 0.0 { tp / sw } else { 1.0 }.clamp(LO, 1.0 - LO);
            let qj = if snw > 0.0 { tn / snw } else { 1.0 }.clamp(LO, 1.0 - LO);
            moved = moved.max((pj - p[j]).abs()).max((qj - q[j]).abs());
            (p[j], q[j]) = (pj, qj);
        }
        if moved < 1e-7 {
            break;
        }
    }
    Staple {
        posterior: w.iter().map(|&v| v as f32).collect(),
        sensitivity: p,
        specificity: q,
        prior: f,
        iterations,
    }
}
