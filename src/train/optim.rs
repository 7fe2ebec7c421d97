//! The AdamW optimiser state around [`Backend::adamw_step`], and the EMA of
//! the weights it updates after every step (when one is kept).

use crate::autograd::Grads;
use crate::backend::Backend;
use crate::nn::ParamStore;
use crate::ops::{AdamW, ParamSlot};
use crate::tensor::{DType, Tensor};
use crate::train::Ema;
use anyhow::{ensure, Context, Result};

/// Moments for every parameter and the step counter.
pub struct Optimizer {
    pub hp: AdamW,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Updates applied so far.
    pub step: u64,
    /// The moving average of the weights, updated after every step.
    pub ema: Option<Ema>,
}

impl Optimizer {
    /// Zero moments for every parameter of `ps`.
    pub fn new(b: &dyn Backend, ps: &ParamStore, hp: AdamW) -> Result<Optimizer> {
        let mut m = Vec::with_capacity(ps.len());
        let mut v = Vec::with_capacity(ps.len());
        for e in &ps.entries {
            m.push(b.zeros(e.t.shape(), DType::F32)?);
            v.push(b.zeros(e.t.shape(), DType::F32)?);
        }
        let trained: Vec<&Tensor> = ps
            .entries
            .iter()
            .filter(|e| !e.frozen)
            .map(|e| &e.t)
            .collect();
        crate::backend::gpu::train_weights(b, &trained);
        Ok(Optimizer {
            hp,
            m,
            v,
            step: 0,
            ema: None,
        })
    }

    /// Keep an EMA of the weights at `rate` (none when `rate` is 0).
    pub fn with_ema(mut self, b: &dyn Backend, ps: &ParamStore, rate: f32) -> Result<Optimizer> {
        self.ema = if rate == 0.0 {
            None
        } else {
            Some(Ema::new(b, ps, rate)?)
        };
        Ok(self)
    }

    /// Apply one update with learning rate `lr`. Parameters without a
    /// gradient (unused in this step) are left alone. Returns the global
    /// gradient norm before clipping (a device scalar).
    pub fn update(
        &mut self,
        b: &dyn Backend,
        ps: &ParamStore,
        grads: &Grads,
        lr: f32,
    ) -> Result<Tensor> {
        ensure!(
            grads.by_param.len() == ps.len(),
            "gradients for {} of {} parameters",
            grads.by_param.len(),
            ps.len()
        );
        let mut slots = Vec::with_capacity(ps.len());
        for (i, e) in ps.entries.iter().enumerate() {
            if let Some(g) = &grads.by_param[i] {
                slots.push(ParamSlot {
                    param: &e.t,
                    grad: g,
                    m: &self.m[i],
                    v: &self.v[i],
                    decay: e.decay,
                });
            }
        }
        ensure!(!slots.is_empty(), "no parameter received a gradient");
        self.step += 1;
        let norm = b
            .adamw_step(&slots, &self.hp, lr, self.step)
            .context("optimiser step")?;
        if let Some(ema) = &mut self.ema {
            ema.update(b, ps).context("EMA of the weights")?;
        }
        Ok(norm)
    }
}
