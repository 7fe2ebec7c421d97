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
use crate::backend::ConvSpec;
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Context, Result};
use rows::RowProblem;

/// `y = conv(x, w) + bias` (see [`ConvSpec`]).
pub fn conv3d(
    b: &CpuBackend,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    spec: ConvSpec,
) -> Result<Tensor> {
    spec.validate("conv3d")?;
    let xv = activation(x, "conv3d input")?;
    let wv = view(w, "conv3d weight")?;
    let (cin, cout) = spec.weight_channels(w, "conv3d weight")?;
    ensure!(
        cin == x.shape().c(),
        "conv3d: the weight {} expects {cin} input channels, the input {} has {}",
        w.shape(),
        x.shape(),
        x.shape().c()
    );
    let bias_v = match bias {
        Some(t) => {
            let v = view(t, "conv3d bias")?;
            ensure!(
                t.shape() == Shape::new(&[cout]),
                "conv3d bias: expected shape [{cout}], got {}",
                t.shape()
            );
            Some(v)
        }
        None => None,
    };
    let isa = kernel::isa()?;
    let x_dims = x.shape().spatial();
    let n = x.shape().n();
    let (y_dims, cy, passes) = passes::forward(spec, x_dims, wv, cin, cout, bias_v);
    let y = b.out(
        x.shape()
            .with_spatial(spec.out_spatial(x_dims))
            .with_c(cout),
    )?;
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
pub fn conv3d_dgrad(
    b: &CpuBackend,
    dy: &Tensor,
    w: &Tensor,
    x_shape: Shape,
    spec: ConvSpec,
) -> Result<Tensor> {
    spec.validate("conv3d_dgrad")?;
    ensure!(
        x_shape.rank() == 5 && x_shape.numel() > 0,
        "conv3d_dgrad: the input shape must be a non-empty NDHWC shape, got {x_shape}"
    );
    let dyv = activation(dy, "conv3d_dgrad output gradient")?;
    let wv = view(w, "conv3d_dgrad weight")?;
    let (cin, cout) = spec.weight_channels(w, "conv3d_dgrad weight")?;
    ensure!(
        cin == x_shape.c(),
        "conv3d_dgrad: the weight {} expects {cin} input channels, the input shape {x_shape} has {}",
        w.shape(),
        x_shape.c()
    );
    let x_dims = x_shape.spatial();
    let want = x_shape.with_spatial(spec.out_spatial(x_dims)).with_c(cout);
    ensure!(
        dy.shape() == want,
        "conv3d_dgrad: output gradient has shape {}, expected {want} for input {x_shape} and {spec:?}",
        dy.shape()
    );
    let isa = kernel::isa()?;
    let dx = b.out(x_shape)?;
    let problem = RowProblem {
        x: dyv,
        n: x_shape.n(),
        x_dims: want.spatial(),
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
pub fn conv3d_wgrad(
    b: &CpuBackend,
    x: &Tensor,
    dy: &Tensor,
    spec: ConvSpec,
    with_bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    spec.validate("conv3d_wgrad")?;
    let xv = activation(x, "conv3d_wgrad input")?;
    let dyv = activation(dy, "conv3d_wgrad output gradient")?;
    let (xs, ys) = (x.shape(), dy.shape());
    let x_dims = xs.spatial();
    let want = xs.with_spatial(spec.out_spatial(x_dims)).with_c(ys.c());
    ensure!(
        ys == want,
        "conv3d_wgrad: output gradient has shape {ys}, expected {want} for input {xs} and {spec:?}"
    );
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
    let dw_t = b.out(spec.weight_shape(xs.c(), ys.c()))?;
    view_mut(&dw_t).copy_from_slice(&dw);
    let db_t = if with_bias {
        let t = b.out(Shape::new(&[ys.c()]))?;
        view_mut(&t).copy_from_slice(&db);
        Some(t)
    } else {
        None
    };
    Ok((dw_t, db_t))
}

/// The host view of a non-empty NDHWC f32 activation.
fn activation<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    let v = view(t, what)?;
    check_ndhwc(t, what)?;
    ensure!(t.numel() > 0, "{what}: empty shape {}", t.shape());
    Ok(v)
}
