//! Noise schedules: β tables, resampling to few steps, and every derived
//! coefficient of the forward process and its posterior (in f64).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// How β grows over the defining steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BetaSchedule {
    /// β evenly spaced from β_start to β_end.
    Linear,
    /// √β evenly spaced (squared).
    Quadratic,
    /// Nichol & Dhariwal's cosine ᾱ (β capped at 0.999); β_start/β_end unused.
    Cosine,
    /// Quadratic over the first 10 % of steps, then β_end.
    Warmup10,
    /// Quadratic over the first 50 % of steps, then β_end.
    Warmup50,
}

/// The β values of `n` steps.
pub fn betas(kind: BetaSchedule, n: usize, start: f64, end: f64) -> Vec<f64> {
    let lin = |a: f64, b: f64, m: usize| -> Vec<f64> {
        if m == 1 {
            return vec![a];
        }
        (0..m)
            .map(|i| a + (b - a) * i as f64 / (m - 1) as f64)
            .collect()
    };
    match kind {
        BetaSchedule::Linear => lin(start, end, n),
        BetaSchedule::Quadratic => lin(start.sqrt(), end.sqrt(), n)
            .iter()
            .map(|x| x * x)
            .collect(),
        BetaSchedule::Cosine => {
            let f = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| (1.0 - f((i + 1) as f64 / n as f64) / f(i as f64 / n as f64)).min(0.999))
                .collect()
        }
        BetaSchedule::Warmup10 | BetaSchedule::Warmup50 => {
            let frac = if kind == BetaSchedule::Warmup10 {
                10
            } else {
                2
            };
            let w = (n / frac).max(1);
            let mut v: Vec<f64> = lin(start.sqrt(), end.sqrt(), w)
                .iter()
                .map(|x| x * x)
                .collect();
            v.resize(n, end);
            v
        }
    }
}

/// A diffusion schedule of `T` steps, indexed t = 0 … T−1 (t = 0 is one step
/// of noise), with every coefficient the forward process, the posterior and
/// the samplers use.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub betas: Vec<f64>,
    /// ᾱ_t = Π_{s ≤ t} (1 − β_s).
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{t−1} (1 at t = 0).
    pub alphas_cumprod_prev: Vec<f64>,
    /// Variance of q(x_{t−1} | x_t, x_0): β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
    pub posterior_variance: Vec<f64>,
    /// Posterior mean = coef_start · x_0 + coef_t · x_t.
    pub posterior_coef_start: Vec<f64>,
    pub posterior_coef_t: Vec<f64>,
}

impl Schedule {
    /// A schedule from its β values.
    pub fn from_betas(betas: Vec<f64>) -> Result<Schedule> {
        ensure!(!betas.is_empty(), "a schedule needs at least one step");
        ensure!(
            betas.iter().all(|&b| b > 0.0 && b < 1.0),
            "every β must lie in (0, 1)"
        );
        let mut ac = Vec::with_capacity(betas.len());
        let mut p = 1.0;
        for &b in &betas {
            p *= 1.0 - b;
            ac.push(p);
        }
        let mut prev = vec![1.0];
        prev.extend_from_slice(&ac[..ac.len() - 1]);
        let t = betas.len();
        let mut var = vec![0.0; t];
        let mut cs = vec![0.0; t];
        let mut ct = vec![0.0; t];
        for i in 0..t {
            var[i] = betas[i] * (1.0 - prev[i]) / (1.0 - ac[i]);
            cs[i] = betas[i] * prev[i].sqrt() / (1.0 - ac[i]);
            ct[i] = (1.0 - betas[i]).sqrt() * (1.0 - prev[i]) / (1.0 - ac[i]);
        }
        Ok(Schedule {
            betas,
            alphas_cumprod: ac,
            alphas_cumprod_prev: prev,
            posterior_variance: var,
            posterior_coef_start: cs,
            posterior_coef_t: ct,
        })
    }

    /// `num_beta` β values of `kind`, then, if `steps < num_beta`, resampled to
    /// `steps` steps by keeping ᾱ at the evenly spaced indices
    /// `round(k·(num_beta − 1)/(steps − 1))`, k = 0 … steps−1 (so the first and
    /// the last ᾱ are kept), and β_k = 1 − ᾱ_k / ᾱ_{k−1}.
    pub fn new(
        kind: BetaSchedule,
        num_beta: usize,
        start: f64,
        end: f64,
        steps: usize,
    ) -> Result<Schedule> {
        ensure!(
            steps >= 1 && steps <= num_beta,
            "steps ({steps}) must be in 1..={num_beta}"
        );
        let full = Schedule::from_betas(betas(kind, num_beta, start, end))?;
        if steps == num_beta {
            return Ok(full);
        }
        let idx = even_indices(num_beta, steps);
        full.respaced(&idx)
    }

    /// The schedule that keeps ᾱ at the given increasing step indices.
    pub fn respaced(&self, idx: &[usize]) -> Result<Schedule> {
        ensure!(!idx.is_empty(), "no steps kept");
        ensure!(
            idx.windows(2).all(|w| w[0] < w[1]) && *idx.last().unwrap() < self.len(),
            "kept indices must increase and lie below {}",
            self.len()
        );
        let mut betas = Vec::with_capacity(idx.len());
        let mut prev = 1.0;
        for &i in idx {
            let a = self.alphas_cumprod[i];
            betas.push(1.0 - a / prev);
            prev = a;
        }
        Schedule::from_betas(betas)
    }

    /// Number of steps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I): returns (√ᾱ_t, √(1 − ᾱ_t)).
    pub fn q_coefs(&self, t: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[t];
        (a.sqrt(), (1.0 - a).sqrt())
    }
    /// x_0 = a·x_t − b·ε: returns (√(1/ᾱ_t), √(1/ᾱ_t − 1)).
    pub fn x0_from_eps_coefs(&self, t: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[t];
        ((1.0 / a).sqrt(), (1.0 / a - 1.0).sqrt())
    }
    /// Variance of p(x_{t−1} | x_t) under `v`.
    pub fn sampling_variance(&self, v: Variance, t: usize) -> f64 {
        match v {
            // The posterior variance, with its zero at t = 0 replaced by the
            // value at t = 1 (its log is what the reference keeps, "clipped").
            Variance::FixedSmall => {
                if t == 0 && self.len() > 1 {
                    self.posterior_variance[1]
                } else {
                    self.posterior_variance[t]
                }
            }
            // β_t, with β_0 replaced by the posterior variance at t = 1.
            Variance::FixedLarge => {
                if t == 0 && self.len() > 1 {
                    self.posterior_variance[1]
                } else {
                    self.betas[t]
                }
            }
        }
    }
}

/// `steps` evenly spaced indices over `0..n`, first and last included.
pub fn even_indices(n: usize, steps: usize) -> Vec<usize> {
    if steps == 1 {
        return vec![n - 1];
    }
    (0..steps)
        .map(|k| ((k * (n - 1)) as f64 / (steps - 1) as f64).round() as usize)
        .collect()
}

/// The variance of the reverse process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variance {
    FixedSmall,
    FixedLarge,
}
