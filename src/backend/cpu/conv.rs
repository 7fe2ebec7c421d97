//! 3D convolution on the CPU (forward, data gradient, weight gradient).
use super::CpuBackend;
use crate::backend::ConvSpec;
use crate::tensor::{Shape, Tensor};
use anyhow::{bail, Result};

pub fn conv3d(
    _b: &CpuBackend,
    _x: &Tensor,
    _w: &Tensor,
    _bias: Option<&Tensor>,
    _spec: ConvSpec,
) -> Result<Tensor> {
    bail!("conv3d: not implemented yet")
}
pub fn conv3d_dgrad(
    _b: &CpuBackend,
    _dy: &Tensor,
    _w: &Tensor,
    _x_shape: Shape,
    _spec: ConvSpec,
) -> Result<Tensor> {
    bail!("conv3d_dgrad: not implemented yet")
}
pub fn conv3d_wgrad(
    _b: &CpuBackend,
    _x: &Tensor,
    _dy: &Tensor,
    _spec: ConvSpec,
    _with_bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    bail!("conv3d_wgrad: not implemented yet")
}
