//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// Linear warm-up from `init` to `peak` over `warmup_steps`, then cosine decay
/// from `peak` to `end` at `decay_steps` (constant `end` after), as optax's
/// `warmup_cosine_decay_schedule`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedule {
    pub init: f32,
    pub peak: f32,
    pub end: f32,
    pub warmup_steps: u64,
    /// Total steps including warm-up.
    pub decay_steps: u64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule {
            init: 1e-5,
            peak: 1e-3,
            end: 1e-6,
            warmup_steps: 100,
            decay_steps: 10_000,
        }
    }
}

impl LrSchedule {
    /// Learning rate at optimiser step `step` (counting from 0).
    pub fn at(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            let f = step as f32 / self.warmup_steps as f32;
            return self.init + (self.peak - self.init) * f;
        }
        let span = self.decay_steps.saturating_sub(self.warmup_steps).max(1);
        let f = ((step - self.warmup_steps) as f32 / span as f32).min(1.0);
        self.end + (self.peak - self.end) * 0.5 * (1.0 + (std::f32::consts::PI * f).cos())
    }
    /// The rate at `step` or further along: read at the later of `step` and
    /// `progress · decay_steps`, where `progress` is the fraction of a time
    /// budget spent. A run stopped by its time limit then ends annealed.
    pub fn at_progress(&self, step: u64, progress: f64) -> f32 {
        let by_time = (progress.clamp(0.0, 1.0) * self.decay_steps as f64) as u64;
        self.at(step.max(by_time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule {
            init: 0.0,
            peak: 1.0,
            end: 0.1,
            warmup_steps: 10,
            decay_steps: 110,
        };
        assert_eq!(s.at(0), 0.0);
        assert!((s.at(5) - 0.5).abs() < 1e-6);
        assert!((s.at(10) - 1.0).abs() < 1e-6);
        assert!((s.at(60) - 0.55).abs() < 1e-6);
        assert!((s.at(110) - 0.1).abs() < 1e-6);
        // Time ahead of the steps moves the schedule on; time behind does not hold it back.
        assert_eq!(s.at_progress(60, 1.0), s.at(110));
        assert_eq!(s.at_progress(60, 0.1), s.at(60));
        assert_eq!(s.at_progress(5, 0.5), s.at(55));
        assert!((s.at(500) - 0.1).abs() < 1e-6);
    }
}
