//! Diffusion-space conversions.
use super::{check_same_shape, view, view_mut, CpuBackend};
use crate::tensor::Tensor;
use anyhow::Result;
use rayon::prelude::*;

/// `y = ln(clamp((x + 1)/2, eps, 1))`.
pub fn scaled_to_logits(b: &CpuBackend, x: &Tensor, eps: f32) -> Result<Tensor> {
    let xs = view(x, "scaled_to_logits")?;
    let y = b.out(x.shape())?;
    view_mut(&y)
        .par_iter_mut()
        .zip(xs.par_iter())
        .for_each(|(y, &x)| *y = ((x + 1.0) * 0.5).clamp(eps, 1.0).ln());
    Ok(y)
}

/// `dx = dy / (x + 1)` inside the clamp range, 0 outside.
pub fn scaled_to_logits_bwd(b: &CpuBackend, dy: &Tensor, x: &Tensor, eps: f32) -> Result<Tensor> {
    check_same_shape(dy, x, "scaled_to_logits_bwd")?;
    let xs = view(x, "scaled_to_logits_bwd x")?;
    let ds = view(dy, "scaled_to_logits_bwd dy")?;
    let dx = b.out(x.shape())?;
    view_mut(&dx)
        .par_iter_mut()
        .zip(xs.par_iter().zip(ds.par_iter()))
        .for_each(|(o, (&x, &d))| {
            let p = (x + 1.0) * 0.5;
            // NaN fails both comparisons and propagates through the product.
            *o = if p > eps && p < 1.0 {
                d / (x + 1.0)
            } else if p.is_nan() {
                f32::NAN
            } else {
                0.0
            };
        });
    Ok(dx)
}
