//! Summaries over cases: nan-mean, standard deviation and counts.

use serde::{Deserialize, Serialize};

/// Mean ± sd of the finite values of a list, with how many there were.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    /// Mean of the finite values (NaN when there is none).
    pub mean: f64,
    /// Population standard deviation (ddof = 0, numpy's default) of the finite values.
    pub sd: f64,
    /// Number of finite values.
    pub n: usize,
    /// Number of values skipped (NaN or infinite).
    pub skipped: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let n = finite.len();
        let skipped = values.len() - n;
        if n == 0 {
            return Stat {
                mean: f64::NAN,
                sd: f64::NAN,
                n,
                skipped,
            };
        }
        let mean = finite.iter().sum::<f64>() / n as f64;
        let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        Stat {
            mean,
            sd: var.sqrt(),
            n,
            skipped,
        }
    }
}
