//! Softmax, argmax, one-hot and the segmentation losses.
use super::CpuBackend;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

pub fn softmax(_b: &CpuBackend, _x: &Tensor) -> Result<Tensor> {
    bail!("softmax: not implemented yet")
}
pub fn softmax_bwd(_b: &CpuBackend, _dp: &Tensor, _p: &Tensor) -> Result<Tensor> {
    bail!("softmax_bwd: not implemented yet")
}
pub fn argmax_c(_b: &CpuBackend, _x: &Tensor) -> Result<Tensor> {
    bail!("argmax_c: not implemented yet")
}
pub fn one_hot(
    _b: &CpuBackend,
    _labels: &Tensor,
    _classes: usize,
    _on: f32,
    _off: f32,
) -> Result<Tensor> {
    bail!("one_hot: not implemented yet")
}
pub fn cross_entropy(_b: &CpuBackend, _logits: &Tensor, _target: &Tensor) -> Result<Tensor> {
    bail!("cross_entropy: not implemented yet")
}
pub fn cross_entropy_bwd(
    _b: &CpuBackend,
    _logits: &Tensor,
    _target: &Tensor,
    _dloss: &Tensor,
) -> Result<Tensor> {
    bail!("cross_entropy_bwd: not implemented yet")
}
pub fn dice_loss(_b: &CpuBackend, _p: &Tensor, _target: &Tensor) -> Result<(Tensor, Tensor)> {
    bail!("dice_loss: not implemented yet")
}
pub fn dice_loss_bwd(
    _b: &CpuBackend,
    _p: &Tensor,
    _target: &Tensor,
    _sums: &Tensor,
    _dloss: &Tensor,
) -> Result<Tensor> {
    bail!("dice_loss_bwd: not implemented yet")
}
pub fn mse(_b: &CpuBackend, _a: &Tensor, _b2: &Tensor) -> Result<Tensor> {
    bail!("mse: not implemented yet")
}
pub fn mse_bwd(_b: &CpuBackend, _a: &Tensor, _b2: &Tensor, _dloss: &Tensor) -> Result<Tensor> {
    bail!("mse_bwd: not implemented yet")
}
pub fn scalar_lincomb(_b: &CpuBackend, _terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    bail!("scalar_lincomb: not implemented yet")
}
