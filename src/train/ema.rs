//! An exponential moving average of the weights, kept beside them: after
//! every optimiser update, `ē ← rate·ē + (1 − rate)·p` for each trainable
//! parameter p (frozen ones keep their copy). improved diffusion samples
//! with these weights (rate 0.9999); they start equal to the initial
//! weights, so a run of n steps keeps `rate^n` of its initialisation in
//! them (0.9999: 90 % after 1,000 steps — use a smaller rate for short runs).

use crate::backend::Backend;
use crate::nn::ParamStore;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

/// The averaged weights, one f32 tensor per parameter of the store.
pub struct Ema {
    pub rate: f32,
    pub shadow: Vec<Tensor>,
}

impl Ema {
    /// A copy of every parameter of `ps`; `rate` in (0, 1).
    pub fn new(dev: &dyn Backend, ps: &ParamStore, rate: f32) -> Result<Ema> {
        ensure!(
            rate > 0.0 && rate < 1.0,
            "an EMA rate must lie in (0, 1), got {rate}"
        );
        let shadow = ps
            .entries
            .iter()
            .map(|e| dev.lincomb(&[(1.0, &e.t)]))
            .collect::<Result<_>>()?;
        Ok(Ema { rate, shadow })
    }

    /// One step of the average toward the current weights.
    pub fn update(&mut self, dev: &dyn Backend, ps: &ParamStore) -> Result<()> {
        ensure!(
            self.shadow.len() == ps.len(),
            "an EMA of {} tensors for {} parameters",
            self.shadow.len(),
            ps.len()
        );
        for (id, e) in ps.trainable() {
            let s = &mut self.shadow[id.0];
            *s = dev.lincomb(&[(self.rate, s), (1.0 - self.rate, &e.t)])?;
        }
        Ok(())
    }
}
