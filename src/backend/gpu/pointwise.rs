//! Host side of the activation, per-channel broadcast and spatial-sum kernels.

use super::GpuBackend;
use crate::backend::Act;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

impl GpuBackend {
    pub fn act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        let _ = (&x, &act);
        bail!("gpu act: not implemented yet")
    }
    pub fn act_bwd(&self, dy: &Tensor, x: &Tensor, act: Act) -> Result<Tensor> {
        let _ = (&dy, &x, &act);
        bail!("gpu act_bwd: not implemented yet")
    }
    pub fn add_nc(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let _ = (&x, &v);
        bail!("gpu add_nc: not implemented yet")
    }
    pub fn sum_spatial(&self, x: &Tensor) -> Result<Tensor> {
        let _ = &x;
        bail!("gpu sum_spatial: not implemented yet")
    }
}
