//! Host side of `kernels/optim.cu`: fused AdamW with global-norm clipping.

use super::GpuBackend;
use crate::backend::{AdamW, ParamSlot};
use crate::tensor::Tensor;
use anyhow::{bail, Result};

impl GpuBackend {
    pub fn adamw_step(
        &self,
        slots: &[ParamSlot],
        hp: &AdamW,
        lr: f32,
        step: u64,
    ) -> Result<Tensor> {
        let _ = (&slots, &hp, &lr, &step);
        bail!("gpu adamw_step: not implemented yet")
    }
}
