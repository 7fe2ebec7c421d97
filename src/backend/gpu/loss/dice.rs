//! Host side of the soft Dice kernels of `kernels/loss.cu`.
//!
//! Forward, two launches:
//! 1. `vd_loss_dice_partial`: grid `(bps, N)` of 256 threads. Each block sums
//!    (Σp·t, Σp, Σt) per channel over its share of one sample's voxels (thread
//!    t owns channel `t mod min(C, 256)` and every R-th voxel row of the block,
//!    R = ⌊256 / min(C, 256)⌋; the channel tiles loop when C > 256) and writes
//!    them to a workspace `[N, bps, C, 3]`. `bps = ⌈V·C / 2048⌉` (≈ 8 elements
//!    per thread), capped so the grid holds ≤ [`DICE_MAX_BLOCKS`] blocks and by
//!    ⌈V / R⌉ (a block must own at least one row).
//! 2. `vd_loss_dice_finish`: one block of 256: the sums `[N, C, 3]` in a fixed
//!    order of the `bps` partials, and the loss (mean of `1 − 2Σpt / (Σp + Σt)`
//!    over the present foreground pairs, 0 if none).
//!
//! Backward, one launch `vd_loss_dice_bwd`: grid `(blocks, N)` of 256 threads,
//! one thread per voxel row, `blocks = ⌈V / 256⌉` capped so the grid holds
//! ≤ 4096 blocks; 2·C floats of dynamic shared memory for the per-channel
//! coefficients (α, β) each block derives from `sums` and `dloss`:
//! `dp = α·t + β`.
//!
//! Floors (E = N·V·C elements, b bytes each): forward reads 2E·b (+ the
//! workspace, 12·N·bps·C bytes), 4E FLOPs; backward reads E·b + 12·N·C·blocks
//! bytes (each block reads the sums), writes E·b, 2E FLOPs.

use super::LOSS_THREADS;
use crate::backend::gpu::device::KernelArgs;
use crate::backend::gpu::device::LaunchConfig;
use crate::backend::gpu::elementwise::by_dtype;
use crate::backend::gpu::registry::Kernel;
use crate::backend::gpu::GpuBackend;
use crate::ops::MemoryOps;
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// Cap of the stage-1 grid (all samples together).
pub const DICE_MAX_BLOCKS: usize = 1024;
/// Cap of the backward grid (all samples together).
const DICE_BWD_MAX_BLOCKS: usize = 4096;
/// Largest C the backward's per-block coefficient table fits (48 KiB of shared memory).
const DICE_BWD_MAX_C: usize = 48 * 1024 / 8;

impl GpuBackend {
    /// (N, V = voxels per sample, C) of a Dice (prediction, target) pair.
    fn dice_dims(&self, op: &str, p: &Tensor, t: &Tensor) -> Result<(usize, usize, usize)> {
        let (rows, c) = self.loss_pair(op, p, "p", t, "target")?;
        ensure!(rows > 0, "{op}: empty input ({})", p.shape());
        let s = p.shape();
        ensure!(
            s.n() <= 65535,
            "{op}: {} samples exceed the grid's y extent (65535)",
            s.n()
        );
        ensure!(
            s.n() * c <= i32::MAX as usize,
            "{op}: N·C = {} is too large",
            s.n() * c
        );
        Ok((s.n(), s.voxels(), c))
    }

    /// Foreground soft Dice: (loss f32 `[1]`, sums f32 `[N, C, 3]` = Σp·t, Σp, Σt).
    pub(super) fn dice_loss_fwd(&self, p: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n, v, c) = self.dice_dims("dice_loss", p, target)?;
        let threads = LOSS_THREADS as usize;
        let rows_per_pass = threads / c.min(threads);
        let bps = (v * c)
            .div_ceil(threads * 8)
            .min((DICE_MAX_BLOCKS / n).max(1))
            .min(v.div_ceil(rows_per_pass))
            .max(1);
        let ws = self.device().alloc(4 * 3 * n * bps * c)?;
        let kernel = by_dtype(
            p.dtype(),
            Kernel::LossDicePartialF32,
            Kernel::LossDicePartialBf16,
        );
        let cfg = LaunchConfig {
            grid: [bps as u32, n as u32, 1],
            block: [LOSS_THREADS, 1, 1],
            shared_bytes: 0,
        };
        let mut args = KernelArgs::new()
            .tensor(p)
            .tensor(target)
            .i64(v as i64)
            .i32(c as i32)
            .buffer(&ws);
        self.device().launch(kernel, cfg, &mut args)?;

        let sums = self.alloc(Shape::new(&[n, c, 3]), DType::F32)?;
        let loss = self.alloc(Shape::scalar(), DType::F32)?;
        let mut args = KernelArgs::new()
            .buffer(&ws)
            .i32(n as i32)
            .i32(c as i32)
            .i32(bps as i32)
            .tensor(&sums)
            .tensor(&loss);
        self.device().launch(
            Kernel::LossDiceFinish,
            LaunchConfig::linear(1, LOSS_THREADS),
            &mut args,
        )?;
        Ok((loss, sums))
    }

    /// Gradient w.r.t. `p` of [`GpuBackend::dice_loss`]:
    /// `dp[n,v,c] = −dloss · 2(t·S − Σpt) / (K·S²)` (S = Σp + Σt) for the K
    /// averaged pairs, 0 elsewhere; in p's dtype. Only `target`, `sums` and
    /// `dloss` are read (the gradient does not depend on p's values).
    pub(super) fn dice_loss_grad(
        &self,
        p: &Tensor,
        target: &Tensor,
        sums: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        let (n, v, c) = self.dice_dims("dice_loss_bwd", p, target)?;
        self.check(sums, "dice_loss_bwd: sums")?;
        ensure!(
            sums.dtype() == DType::F32 && sums.shape().dims() == [n, c, 3],
            "dice_loss_bwd: sums must be f32 {n}×{c}×3, got {} {}",
            sums.dtype().name(),
            sums.shape()
        );
        self.check_scalar(dloss, "dice_loss_bwd: dloss")?;
        ensure!(
            c <= DICE_BWD_MAX_C,
            "dice_loss_bwd: {c} classes exceed the {DICE_BWD_MAX_C} the kernel's shared table holds"
        );
        let dp = self.alloc(p.shape(), p.dtype())?;
        let blocks = v
            .div_ceil(LOSS_THREADS as usize)
            .min((DICE_BWD_MAX_BLOCKS / n).max(1));
        let cfg = LaunchConfig {
            grid: [blocks as u32, n as u32, 1],
            block: [LOSS_THREADS, 1, 1],
            shared_bytes: (8 * c) as u32,
        };
        let kernel = by_dtype(p.dtype(), Kernel::LossDiceBwdF32, Kernel::LossDiceBwdBf16);
        let mut args = KernelArgs::new()
            .tensor(target)
            .tensor(sums)
            .tensor(dloss)
            .i64(v as i64)
            .i32(n as i32)
            .i32(c as i32)
            .tensor(&dp);
        self.device().launch(kernel, cfg, &mut args)?;
        Ok(dp)
    }
}
