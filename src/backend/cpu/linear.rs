//! Dense layers on per-sample vectors.
use super::CpuBackend;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

pub fn linear(_b: &CpuBackend, _x: &Tensor, _w: &Tensor, _bias: Option<&Tensor>) -> Result<Tensor> {
    bail!("linear: not implemented yet")
}
pub fn linear_dgrad(_b: &CpuBackend, _dy: &Tensor, _w: &Tensor) -> Result<Tensor> {
    bail!("linear_dgrad: not implemented yet")
}
pub fn linear_wgrad(
    _b: &CpuBackend,
    _x: &Tensor,
    _dy: &Tensor,
    _with_bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    bail!("linear_wgrad: not implemented yet")
}
