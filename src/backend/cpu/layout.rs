//! Channel concat/slice, spatial crop/pad, upsampling and max pooling.
use super::CpuBackend;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

pub fn concat_c(_b: &CpuBackend, _xs: &[&Tensor]) -> Result<Tensor> {
    bail!("concat_c: not implemented yet")
}
pub fn slice_c(_b: &CpuBackend, _x: &Tensor, _start: usize, _len: usize) -> Result<Tensor> {
    bail!("slice_c: not implemented yet")
}
pub fn crop(
    _b: &CpuBackend,
    _x: &Tensor,
    _origin: [usize; 3],
    _size: [usize; 3],
) -> Result<Tensor> {
    bail!("crop: not implemented yet")
}
pub fn pad(_b: &CpuBackend, _x: &Tensor, _origin: [usize; 3], _full: [usize; 3]) -> Result<Tensor> {
    bail!("pad: not implemented yet")
}
pub fn upsample(_b: &CpuBackend, _x: &Tensor, _factor: [usize; 3]) -> Result<Tensor> {
    bail!("upsample: not implemented yet")
}
pub fn upsample_bwd(_b: &CpuBackend, _dy: &Tensor, _factor: [usize; 3]) -> Result<Tensor> {
    bail!("upsample_bwd: not implemented yet")
}
pub fn maxpool(_b: &CpuBackend, _x: &Tensor, _window: [usize; 3]) -> Result<Tensor> {
    bail!("maxpool: not implemented yet")
}
pub fn maxpool_bwd(
    _b: &CpuBackend,
    _dy: &Tensor,
    _x: &Tensor,
    _window: [usize; 3],
) -> Result<Tensor> {
    bail!("maxpool_bwd: not implemented yet")
}
