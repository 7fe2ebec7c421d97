//! Host side of `kernels/layout.cu`: channel concat/slice, crop/pad, upsampling, max pooling.

use super::GpuBackend;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

impl GpuBackend {
    pub fn concat_c(&self, xs: &[&Tensor]) -> Result<Tensor> {
        let _ = &xs;
        bail!("gpu concat_c: not implemented yet")
    }
    pub fn slice_c(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let _ = (&x, &start, &len);
        bail!("gpu slice_c: not implemented yet")
    }
    pub fn crop(&self, x: &Tensor, origin: [usize; 3], size: [usize; 3]) -> Result<Tensor> {
        let _ = (&x, &origin, &size);
        bail!("gpu crop: not implemented yet")
    }
    pub fn pad(&self, x: &Tensor, origin: [usize; 3], full: [usize; 3]) -> Result<Tensor> {
        let _ = (&x, &origin, &full);
        bail!("gpu pad: not implemented yet")
    }
    pub fn upsample(&self, x: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        let _ = (&x, &factor);
        bail!("gpu upsample: not implemented yet")
    }
    pub fn upsample_bwd(&self, dy: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        let _ = (&dy, &factor);
        bail!("gpu upsample_bwd: not implemented yet")
    }
    pub fn maxpool(&self, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        let _ = (&x, &window);
        bail!("gpu maxpool: not implemented yet")
    }
    pub fn maxpool_bwd(&self, dy: &Tensor, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        let _ = (&dy, &x, &window);
        bail!("gpu maxpool_bwd: not implemented yet")
    }
}
