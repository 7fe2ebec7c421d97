//! 3D convolution on the CPU: forward, data gradient, weight gradient.
//!
//! The math is the [`ConvSpec`] contract (NDHWC activations, weights
//! `[kd, kh, kw, Cin, Cout]`, "SAME" padding, transposed with kernel ==
//! stride). Every case reduces to two engines built on register-blocked
//! micro-kernels (`kernel.rs`: AVX-512F when the CPU has it, else AVX2 + FMA,
//! else portable Rust):
//!
//! - the row engine (`rows.rs`) computes convolutions as implicit GEMM over
//!   NDHWC rows — the forward pass and the data gradient of every spec map onto
//!   its passes (`passes.rs`), weights packed once per call (`pack.rs`);
//! - the weight-gradient engine (`wgrad.rs`) reduces `xᵀ · dy` per tap over all
//!   voxels with per-thread partial sums.
//!
//! Cost of one pass (forward, data or weight gradient) of a regular
//! convolution: `2 · taps · Cin · Cout · N · out_voxels` flops
//! ([`ConvSpec::macs`]).
mod kernel;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
mod kernel_portable;
mod pack;
mod passes;
mod rows;
mod wgrad;

use super::{check_ndhwc, view, view_mut, CpuBackend};
use crate::ops::ConvOps;
use crate::ops::ConvSpec;
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Context, Result};
use rows::RowProblem;

impl ConvOps for CpuBackend {
    /// `y = conv(x, w) + bias` (see [`ConvSpec`]).
    fn conv3d(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        let xv = activation(x, "conv3d input")?;
        let (cin, cout, y_shape) = spec.forward_shapes(x.shape(), w, bias)?;
        let wv = view(w, "conv3d weight")?;
        let bias_v = bias.map(|t| view(t, "conv3d bias")).transpose()?;
        let isa = kernel::isa()?;
        let x_dims = x.shape().spatial();
        let n = x.shape().n();
        let (y_dims, cy, passes) = passes::forward(spec, x_dims, wv, cin, cout, bias_v);
        // The forward is one pass over every output voxel (a transposed conv: one
        // pass per (kd, kh) phase, which tile the output as kernel == stride).
        let y = self.out_uninit(y_shape)?;
        let problem = RowProblem {
            x: xv,
            n,
            x_dims,
            cx: cin,
            y_dims,
            cy,
            passes,
        };
        rows::run(isa, &problem, view_mut(&y)).context("conv3d")?;
        Ok(y)
    }

    /// `dx = ∂(Σ dy ⊙ conv(x, w)) / ∂x` for an input of shape `x_shape`.
    fn conv3d_dgrad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: Shape,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        let (cin, cout) = spec.dgrad_shapes(dy.shape(), w, x_shape)?;
        let dyv = activation(dy, "conv3d_dgrad output gradient")?;
        let wv = view(w, "conv3d_dgrad weight")?;
        let x_dims = x_shape.spatial();
        let dy_dims = dy.shape().spatial();
        let isa = kernel::isa()?;
        // The phases of the data gradient cover every input voxel when no axis
        // strides past its kernel; otherwise the skipped voxels keep zeros.
        let covered = spec.kernel.iter().zip(&spec.stride).all(|(k, s)| k >= s);
        let dx = if covered {
            self.out_uninit(x_shape)?
        } else {
            self.out(x_shape)?
        };
        let problem = RowProblem {
            x: dyv,
            n: x_shape.n(),
            x_dims: dy_dims,
            cx: cout,
            y_dims: x_dims,
            cy: cin,
            passes: passes::dgrad(spec, x_dims, wv, cin, cout),
        };
        rows::run(isa, &problem, view_mut(&dx)).context("conv3d_dgrad")?;
        Ok(dx)
    }

    /// `(dw, db)`: gradients of `Σ dy ⊙ (conv(x, w) + bias)` w.r.t. the weight
    /// `[kd, kh, kw, Cin, Cout]` and, if `with_bias`, the bias `[Cout]`.
    fn conv3d_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let xv = activation(x, "conv3d_wgrad input")?;
        let dyv = activation(dy, "conv3d_wgrad output gradient")?;
        spec.wgrad_shapes(x.shape(), dy.shape())?;
        let (xs, ys) = (x.shape(), dy.shape());
        let x_dims = xs.spatial();
        let isa = kernel::isa()?;
        let problem = wgrad::WgradProblem {
            spec,
            x: xv,
            dy: dyv,
            n: xs.n(),
            x_dims,
            cin: xs.c(),
            dy_dims: ys.spatial(),
            cout: ys.c(),
            with_bias,
        };
        let (dw, db) = wgrad::wgrad(isa, &problem);
        let dw_t = self.out(spec.weight_shape(xs.c(), ys.c()))?;
        view_mut(&dw_t).copy_from_slice(&dw);
        let db_t = if with_bias {
            let t = self.out(Shape::new(&[ys.c()]))?;
            view_mut(&t).copy_from_slice(&db);
            Some(t)
        } else {
            None
        };
        Ok((dw_t, db_t))
    }
}

/// The host view of a non-empty NDHWC f32 activation.
fn activation<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    let v = view(t, what)?;
    check_ndhwc(t, what)?;
    ensure!(t.numel() > 0, "{what}: empty shape {}", t.shape());
    Ok(v)
}
