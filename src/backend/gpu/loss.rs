//! Host side of `kernels/loss.cu`: softmax, argmax, one-hot, the segmentation losses, scalar arithmetic.

use super::GpuBackend;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

impl GpuBackend {
    pub fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let _ = &x;
        bail!("gpu softmax: not implemented yet")
    }
    pub fn softmax_bwd(&self, dp: &Tensor, p: &Tensor) -> Result<Tensor> {
        let _ = (&dp, &p);
        bail!("gpu softmax_bwd: not implemented yet")
    }
    pub fn argmax_c(&self, x: &Tensor) -> Result<Tensor> {
        let _ = &x;
        bail!("gpu argmax_c: not implemented yet")
    }
    pub fn one_hot(&self, labels: &Tensor, classes: usize, on: f32, off: f32) -> Result<Tensor> {
        let _ = (&labels, &classes, &on, &off);
        bail!("gpu one_hot: not implemented yet")
    }
    pub fn cross_entropy(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let _ = (&logits, &target);
        bail!("gpu cross_entropy: not implemented yet")
    }
    pub fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        let _ = (&logits, &target, &dloss);
        bail!("gpu cross_entropy_bwd: not implemented yet")
    }
    pub fn dice_loss(&self, p: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
        let _ = (&p, &target);
        bail!("gpu dice_loss: not implemented yet")
    }
    pub fn dice_loss_bwd(
        &self,
        p: &Tensor,
        target: &Tensor,
        sums: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        let _ = (&p, &target, &sums, &dloss);
        bail!("gpu dice_loss_bwd: not implemented yet")
    }
    pub fn mse(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let _ = (&a, &b);
        bail!("gpu mse: not implemented yet")
    }
    pub fn mse_bwd(&self, a: &Tensor, b: &Tensor, dloss: &Tensor) -> Result<Tensor> {
        let _ = (&a, &b, &dloss);
        bail!("gpu mse_bwd: not implemented yet")
    }
    pub fn scaled_to_logits(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        let _ = (&x, &eps);
        bail!("gpu scaled_to_logits: not implemented yet")
    }
    pub fn scaled_to_logits_bwd(&self, dy: &Tensor, x: &Tensor, eps: f32) -> Result<Tensor> {
        let _ = (&dy, &x, &eps);
        bail!("gpu scaled_to_logits_bwd: not implemented yet")
    }
    pub fn scalar_lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        let _ = &terms;
        bail!("gpu scalar_lincomb: not implemented yet")
    }
}
