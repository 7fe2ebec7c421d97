//! The optimiser family: fused AdamW with global-norm clipping over all
//! parameters in one call ([`OptimOps::adamw_step`]).

use crate::tensor::Tensor;
use anyhow::Result;

/// One parameter and its optimiser state, updated in place by
/// [`Backend::adamw_step`].
pub struct ParamSlot<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    /// Apply decoupled weight decay to this parameter.
    pub decay: bool,
}

/// AdamW hyper-parameters (the learning rate is passed per step).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm (over all slots) before the update.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            max_grad_norm: Some(1.0),
        }
    }
}

/// The optimiser update.
pub trait OptimOps {
    /// One AdamW step over all slots, in place, with global-norm clipping:
    /// `g' = g` if `‖g‖ < max_norm` else `g · max_norm / ‖g‖` (‖g‖₂ over all slots, as
    /// optax `clip_by_global_norm`),
    /// `m = β1 m + (1−β1) g'`, `v = β2 v + (1−β2) g'²`,
    /// `p −= lr · ( m/(1−β1^step) / (sqrt(v/(1−β2^step)) + eps) + wd·p )`
    /// (wd only where `decay`). `step` counts from 1. Returns the global gradient
    /// norm before clipping, f32 `[1]`.
    fn adamw_step(&self, slots: &[ParamSlot], hp: &AdamW, lr: f32, step: u64) -> Result<Tensor>;
}
