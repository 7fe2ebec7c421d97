//! Host side of `kernels/conv3d.cu`: 3D convolution forward, data gradient and weight gradient for every `ConvSpec`.

use super::GpuBackend;
use crate::backend::ConvSpec;
use crate::tensor::{Shape, Tensor};
use anyhow::{bail, Result};

impl GpuBackend {
    pub fn conv3d(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        let _ = (&x, &w, &bias, &spec);
        bail!("gpu conv3d: not implemented yet")
    }
    pub fn conv3d_dgrad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: Shape,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        let _ = (&dy, &w, &x_shape, &spec);
        bail!("gpu conv3d_dgrad: not implemented yet")
    }
    pub fn conv3d_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let _ = (&x, &dy, &spec, &with_bias);
        bail!("gpu conv3d_wgrad: not implemented yet")
    }
}
