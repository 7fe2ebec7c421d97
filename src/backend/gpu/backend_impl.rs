//! `impl Backend for GpuBackend`: the trait routed to the inherent methods of
//! the kernel-family files (`conv.rs`, `norm.rs`, …), which check arguments,
//! compute launch geometry and launch.

use super::GpuBackend;
use crate::backend::{Act, AdamW, Backend, ConvSpec, NormArgs, NormGrads, NormOut, ParamSlot};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

impl Backend for GpuBackend {
    fn name(&self) -> String {
        GpuBackend::name(self)
    }
    fn act_dtype(&self) -> DType {
        GpuBackend::act_dtype(self)
    }
    fn alloc(&self, shape: Shape, dtype: DType) -> Result<Tensor> {
        GpuBackend::alloc(self, shape, dtype)
    }
    fn zeros(&self, shape: Shape, dtype: DType) -> Result<Tensor> {
        GpuBackend::zeros(self, shape, dtype)
    }
    fn upload(&self, data: &[f32], shape: Shape, dtype: DType) -> Result<Tensor> {
        GpuBackend::upload(self, data, shape, dtype)
    }
    fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        GpuBackend::download(self, t)
    }
    fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        GpuBackend::write(self, t, data)
    }
    fn fill(&self, t: &Tensor, value: f32) -> Result<()> {
        GpuBackend::fill(self, t, value)
    }
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        GpuBackend::cast(self, x, dtype)
    }
    fn synchronize(&self) -> Result<()> {
        GpuBackend::synchronize(self)
    }

    fn conv3d(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        GpuBackend::conv3d(self, x, w, bias, spec)
    }
    fn conv3d_dgrad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: Shape,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        GpuBackend::conv3d_dgrad(self, dy, w, x_shape, spec)
    }
    fn conv3d_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        GpuBackend::conv3d_wgrad(self, x, dy, spec, with_bias)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        GpuBackend::linear(self, x, w, bias)
    }
    fn linear_dgrad(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        GpuBackend::linear_dgrad(self, dy, w)
    }
    fn linear_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        GpuBackend::linear_wgrad(self, x, dy, with_bias)
    }

    fn norm_fwd(&self, x: &Tensor, args: &NormArgs) -> Result<NormOut> {
        GpuBackend::norm_fwd(self, x, args)
    }
    fn norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        stats: &Tensor,
        args: &NormArgs,
    ) -> Result<NormGrads> {
        GpuBackend::norm_bwd(self, dy, x, stats, args)
    }

    fn act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        GpuBackend::act(self, x, act)
    }
    fn act_bwd(&self, dy: &Tensor, x: &Tensor, act: Act) -> Result<Tensor> {
        GpuBackend::act_bwd(self, dy, x, act)
    }
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        GpuBackend::lincomb(self, terms)
    }
    fn add_nc(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        GpuBackend::add_nc(self, x, v)
    }
    fn sum_spatial(&self, x: &Tensor) -> Result<Tensor> {
        GpuBackend::sum_spatial(self, x)
    }

    fn concat_c(&self, xs: &[&Tensor]) -> Result<Tensor> {
        GpuBackend::concat_c(self, xs)
    }
    fn slice_c(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        GpuBackend::slice_c(self, x, start, len)
    }
    fn crop(&self, x: &Tensor, origin: [usize; 3], size: [usize; 3]) -> Result<Tensor> {
        GpuBackend::crop(self, x, origin, size)
    }
    fn pad(&self, x: &Tensor, origin: [usize; 3], full: [usize; 3]) -> Result<Tensor> {
        GpuBackend::pad(self, x, origin, full)
    }
    fn upsample(&self, x: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        GpuBackend::upsample(self, x, factor)
    }
    fn upsample_bwd(&self, dy: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        GpuBackend::upsample_bwd(self, dy, factor)
    }
    fn maxpool(&self, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        GpuBackend::maxpool(self, x, window)
    }
    fn maxpool_bwd(&self, dy: &Tensor, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        GpuBackend::maxpool_bwd(self, dy, x, window)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        GpuBackend::softmax(self, x)
    }
    fn softmax_bwd(&self, dp: &Tensor, p: &Tensor) -> Result<Tensor> {
        GpuBackend::softmax_bwd(self, dp, p)
    }
    fn argmax_c(&self, x: &Tensor) -> Result<Tensor> {
        GpuBackend::argmax_c(self, x)
    }
    fn one_hot(&self, labels: &Tensor, classes: usize, on: f32, off: f32) -> Result<Tensor> {
        GpuBackend::one_hot(self, labels, classes, on, off)
    }
    fn cross_entropy(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        GpuBackend::cross_entropy(self, logits, target)
    }
    fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        GpuBackend::cross_entropy_bwd(self, logits, target, dloss)
    }
    fn dice_loss(&self, p: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
        GpuBackend::dice_loss(self, p, target)
    }
    fn dice_loss_bwd(
        &self,
        p: &Tensor,
        target: &Tensor,
        sums: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        GpuBackend::dice_loss_bwd(self, p, target, sums, dloss)
    }
    fn mse(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        GpuBackend::mse(self, a, b)
    }
    fn mse_bwd(&self, a: &Tensor, b: &Tensor, dloss: &Tensor) -> Result<Tensor> {
        GpuBackend::mse_bwd(self, a, b, dloss)
    }
    fn scaled_to_logits(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        GpuBackend::scaled_to_logits(self, x, eps)
    }
    fn scaled_to_logits_bwd(&self, dy: &Tensor, x: &Tensor, eps: f32) -> Result<Tensor> {
        GpuBackend::scaled_to_logits_bwd(self, dy, x, eps)
    }
    fn scalar_lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        GpuBackend::scalar_lincomb(self, terms)
    }

    fn adamw_step(&self, slots: &[ParamSlot], hp: &AdamW, lr: f32, step: u64) -> Result<Tensor> {
        GpuBackend::adamw_step(self, slots, hp, lr, step)
    }

    fn randn(&self, shape: Shape, dtype: DType, seed: u64, offset: u64) -> Result<Tensor> {
        GpuBackend::randn(self, shape, dtype, seed, offset)
    }
}
