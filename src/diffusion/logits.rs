//! ImgX's map from [−1, 1]-space probabilities back to logits, the first
//! custom op ([`crate::ops::custom`]):
//! `y = ln(clamp((x + 1)/2, eps, 1))` (the reference's `x_to_logits`), with
//! `dx = dy / (x + 1)` where `eps < (x + 1)/2 < 1`, 0 where the clamp is
//! active, NaN where x is NaN. ε-prediction turns its x̂₀ into logits with it
//! for the segmentation loss.
//!
//! GPU: `vd_diffusion_scaled_to_logits[_bwd]_{f32,bf16}` in
//! `kernels/diffusion.cu`, elementwise in chunks of 8 with the launch of
//! [`ew_config`]; memory-bound: n·e bytes in and out (e = bytes per element),
//! the backward 2n·e in, n·e out.

use crate::autograd::{Graph, Var};
use crate::backend::cpu::{view, view_mut, CpuBackend};
use crate::backend::gpu::device::KernelArgs;
use crate::backend::gpu::elementwise::ew_config;
use crate::backend::gpu::pointwise::check_aligned16;
use crate::backend::gpu::registry::Kernel;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::ops::custom::{self, CustomGrad, CustomOp};
use crate::ops::MemoryOps;
use crate::tensor::{DType, Tensor};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// Clamp floor of the map (the ImgX reference's `EPS`).
pub const PROB_EPS: f32 = 1e-5;

/// `ln(clamp((x + 1)/2, PROB_EPS, 1))` on the graph.
pub fn scaled_to_logits(g: &mut Graph, x: &Var) -> Result<Var> {
    g.custom(Arc::new(ScaledToLogits { eps: PROB_EPS }), &[x])
}

/// The forward: one input x (any shape, f32 or bf16), one output of x's
/// shape and dtype.
pub struct ScaledToLogits {
    pub eps: f32,
}

/// The backward: inputs (dy, x) of one shape and dtype; output dx.
pub struct ScaledToLogitsGrad {
    pub eps: f32,
}

fn check_eps(eps: f32) -> Result<()> {
    ensure!(
        eps > 0.0 && eps < 1.0,
        "scaled_to_logits: eps must be in (0, 1), got {eps}"
    );
    Ok(())
}

/// The GPU launch shared by both directions: `kernel(inputs…, out, n, eps)`.
fn launch(dev: &GpuBackend, kernels: [Kernel; 2], inputs: &[&Tensor], eps: f32) -> Result<Tensor> {
    let x = inputs[inputs.len() - 1];
    for (i, t) in inputs.iter().enumerate() {
        let what = format!("scaled_to_logits: input {i}");
        dev.check(t, &what)?;
        check_aligned16(t, &what)?;
    }
    let y = dev.alloc(x.shape(), x.dtype())?;
    let n = x.numel();
    if n == 0 {
        return Ok(y);
    }
    let kernel = kernels[(x.dtype() == DType::BF16) as usize];
    let mut args = KernelArgs::new();
    for t in inputs {
        args = args.tensor(t);
    }
    let mut args = args.tensor(&y).i64(n as i64).f32(eps);
    dev.device().launch(kernel, ew_config(n), &mut args)?;
    Ok(y)
}

impl CustomOp for ScaledToLogits {
    fn name(&self) -> String {
        "scaled_to_logits".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        check_eps(self.eps)?;
        ensure!(
            inputs.len() == 1,
            "scaled_to_logits: one input, got {}",
            inputs.len()
        );
        Ok(())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let xs = view(inputs[0], "scaled_to_logits: x")?;
        let y = dev.out_uninit(inputs[0].shape())?;
        let eps = self.eps;
        view_mut(&y)
            .par_iter_mut()
            .zip(xs.par_iter())
            .for_each(|(y, &x)| *y = ((x + 1.0) * 0.5).clamp(eps, 1.0).ln());
        Ok(vec![y])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let kernels = [
            Kernel::DiffusionScaledToLogitsF32,
            Kernel::DiffusionScaledToLogitsBf16,
        ];
        Ok(vec![launch(dev, kernels, inputs, self.eps)?])
    }
}

impl CustomGrad for ScaledToLogits {
    fn backward(
        &self,
        dev: &dyn Backend,
        dy: &Tensor,
        inputs: &[Tensor],
        _outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>> {
        let grad = ScaledToLogitsGrad { eps: self.eps };
        let dx = custom::run(dev, &grad, &[dy, &inputs[0]])?;
        Ok(vec![dx.into_iter().next()])
    }
}

impl CustomOp for ScaledToLogitsGrad {
    fn name(&self) -> String {
        "scaled_to_logits_bwd".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        check_eps(self.eps)?;
        ensure!(
            inputs.len() == 2,
            "scaled_to_logits_bwd: inputs (dy, x), got {}",
            inputs.len()
        );
        let (dy, x) = (inputs[0], inputs[1]);
        ensure!(
            dy.shape() == x.shape() && dy.dtype() == x.dtype(),
            "scaled_to_logits_bwd: dy ({} {}) and x ({} {}) differ",
            dy.dtype().name(),
            dy.shape(),
            x.dtype().name(),
            x.shape()
        );
        Ok(())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let ds = view(inputs[0], "scaled_to_logits_bwd: dy")?;
        let xs = view(inputs[1], "scaled_to_logits_bwd: x")?;
        let dx = dev.out_uninit(inputs[1].shape())?;
        let eps = self.eps;
        view_mut(&dx)
            .par_iter_mut()
            .zip(xs.par_iter().zip(ds.par_iter()))
            .for_each(|(o, (&x, &d))| {
                let p = (x + 1.0) * 0.5;
                // NaN fails both comparisons and propagates.
                *o = if p > eps && p < 1.0 {
                    d / (x + 1.0)
                } else if p.is_nan() {
                    f32::NAN
                } else {
                    0.0
                };
            });
        Ok(vec![dx])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let kernels = [
            Kernel::DiffusionScaledToLogitsBwdF32,
            Kernel::DiffusionScaledToLogitsBwdBf16,
        ];
        Ok(vec![launch(dev, kernels, inputs, self.eps)?])
    }
}
