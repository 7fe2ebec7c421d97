//! Activations, linear combinations, per-channel broadcasts and sums.
use super::CpuBackend;
use crate::backend::Act;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

pub fn act(_b: &CpuBackend, _x: &Tensor, _act: Act) -> Result<Tensor> {
    bail!("act: not implemented yet")
}
pub fn act_bwd(_b: &CpuBackend, _dy: &Tensor, _x: &Tensor, _act: Act) -> Result<Tensor> {
    bail!("act_bwd: not implemented yet")
}
pub fn lincomb(_b: &CpuBackend, _terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    bail!("lincomb: not implemented yet")
}
pub fn add_nc(_b: &CpuBackend, _x: &Tensor, _v: &Tensor) -> Result<Tensor> {
    bail!("add_nc: not implemented yet")
}
pub fn sum_spatial(_b: &CpuBackend, _x: &Tensor) -> Result<Tensor> {
    bail!("sum_spatial: not implemented yet")
}
