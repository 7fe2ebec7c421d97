//! Host side of `kernels/linear.cu`: dense layers on `[M, K]` f32 vectors.

use super::GpuBackend;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

impl GpuBackend {
    pub fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let _ = (&x, &w, &bias);
        bail!("gpu linear: not implemented yet")
    }
    pub fn linear_dgrad(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let _ = (&dy, &w);
        bail!("gpu linear_dgrad: not implemented yet")
    }
    pub fn linear_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let _ = (&x, &dy, &with_bias);
        bail!("gpu linear_wgrad: not implemented yet")
    }
}
