//! Host side of `kernels/loss.cu`: argmax, one-hot, cross-entropy and MSE
//! (the soft Dice loss is in `loss/dice.rs`).
//!
//! Dtypes: the activation inputs of one op share a dtype (f32 or bf16, not
//! necessarily the backend's act dtype); the kernel variant is that dtype and
//! activation outputs have it too. `one_hot` writes the backend's act dtype
//! from labels of either dtype. Losses, `dloss`, Dice sums and scalars are f32.
//!
//! Launch geometry (blocks of [`LOSS_THREADS`] = 256 threads everywhere):
//! - Row ops (argmax, one_hot, cross_entropy_bwd): one thread per voxel row
//!   of C channels, `blocks = ⌈rows / 256⌉` capped at
//!   [`LOSS_MAX_BLOCKS`] = 4096 (grid-stride beyond). A warp covers 32
//!   consecutive rows = one contiguous span of 32·C elements.
//! - Elementwise ops (mse_bwd): chunks of 8
//!   elements with 16-byte vector access, as the elementwise family
//!   ([`ew_config`]).
//! - Reductions (cross_entropy, mse): stage 1 with
//!   `blocks = ⌈work / 256⌉` capped at [`LOSS_MAX_PARTIALS`] = 1024 (work =
//!   rows, or chunks of 8 for MSE), each block writing one f32 partial to a
//!   workspace; stage 2 `vd_loss_mean_partials`, one block of 256 threads
//!   summing the partials in a fixed order and dividing by the count. The grid
//!   depends only on the shape, so results are reproducible run to run.
//!
//! Counted floors (E = elements = rows·C, b = bytes per activation element):
//! - argmax: reads E·b, writes rows·b; E compares. one_hot: reads rows·b,
//!   writes E·b.
//! - cross_entropy: reads 2E·b + 4·blocks; ≈ 5E FLOPs + E exp + rows log.
//!   cross_entropy_bwd: reads 2E·b, writes E·b; ≈ 6E FLOPs + 2E exp.
//! - mse: reads 2n·b; 2n FLOPs. mse_bwd: reads 2n·b, writes n·b; 2n FLOPs.
//!
//! These are memory-bound: the floor is bytes / bandwidth (an H100 moves
//! ≈3 TB/s, so cross_entropy_bwd of a 1×96³×3 bf16 volume — 10.6 MB in,
//! 5.3 MB out — has a floor of ≈5 µs).

mod dice;

use super::device::{KernelArgs, LaunchConfig};
use super::elementwise::{by_dtype, ew_config};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::{LossOps, MemoryOps};
use crate::tensor::{Buffer, DType, Shape, Tensor};
use anyhow::{bail, ensure, Result};
use std::sync::Arc;

/// Threads per block of every kernel of the family.
pub const LOSS_THREADS: u32 = 256;
/// Grid cap of the row kernels; the grid-stride loop covers the rest.
pub const LOSS_MAX_BLOCKS: usize = 4096;
/// Grid cap of the stage-1 reduction kernels (= the most partials a loss writes).
pub const LOSS_MAX_PARTIALS: usize = 1024;

/// One thread per row.
fn rows_config(rows: usize) -> LaunchConfig {
    let blocks = rows
        .div_ceil(LOSS_THREADS as usize)
        .clamp(1, LOSS_MAX_BLOCKS);
    LaunchConfig::linear(blocks as u32, LOSS_THREADS)
}

/// Stage-1 blocks for `work` items (rows or chunks), one partial each.
fn partial_blocks(work: usize) -> usize {
    work.div_ceil(LOSS_THREADS as usize)
        .clamp(1, LOSS_MAX_PARTIALS)
}

/// One `one_hot` launch's id check, read back later (see [`GpuBackend::one_hot`]).
pub(super) struct LabelCheck {
    /// u64: the first row with a bad id, or u64::MAX.
    first_bad: Arc<Buffer>,
    labels: Tensor,
    classes: usize,
}

/// Unread `one_hot` checks after which the next call reads them.
pub const PENDING_LABEL_CHECKS: usize = 8;

impl GpuBackend {
    /// Checks that `t` lives on this device and starts 16-byte aligned (the
    /// kernels use vector accesses).
    pub(super) fn check_loss_input(&self, t: &Tensor, what: &str) -> Result<()> {
        self.check(t, what)?;
        ensure!(
            t.addr().is_multiple_of(16),
            "{what}: tensor at {:#x} is not 16-byte aligned",
            t.addr()
        );
        Ok(())
    }

    /// An NDHWC activation with at least one channel: (rows = N·D·H·W, C).
    pub(super) fn loss_rows(&self, t: &Tensor, what: &str) -> Result<(usize, usize)> {
        self.check_loss_input(t, what)?;
        ensure!(
            t.shape().rank() == 5,
            "{what}: expected an NDHWC tensor, got shape {}",
            t.shape()
        );
        let c = t.shape().c();
        ensure!(c >= 1, "{what}: has no channels ({})", t.shape());
        ensure!(c <= i32::MAX as usize, "{what}: {c} channels is too many");
        Ok((t.numel() / c, c))
    }

    /// Two activations of one shape and dtype (prediction, target): (rows, C).
    pub(super) fn loss_pair(
        &self,
        op: &str,
        a: &Tensor,
        a_name: &str,
        b: &Tensor,
        b_name: &str,
    ) -> Result<(usize, usize)> {
        let (rows, c) = self.loss_rows(a, &format!("{op}: {a_name}"))?;
        self.loss_rows(b, &format!("{op}: {b_name}"))?;
        ensure!(
            a.shape() == b.shape(),
            "{op}: {a_name} has shape {} but {b_name} has shape {}",
            a.shape(),
            b.shape()
        );
        ensure!(
            a.dtype() == b.dtype(),
            "{op}: {a_name} is {} but {b_name} is {} (one dtype expected)",
            a.dtype().name(),
            b.dtype().name()
        );
        Ok((rows, c))
    }

    /// An f32 `[1]` device scalar (an upstream loss gradient or a loss).
    pub(super) fn check_scalar(&self, t: &Tensor, what: &str) -> Result<()> {
        self.check(t, what)?;
        ensure!(
            t.dtype() == DType::F32 && t.numel() == 1,
            "{what}: expected an f32 scalar [1], got {} {}",
            t.dtype().name(),
            t.shape()
        );
        Ok(())
    }

    /// Stage 2 of a mean: `out[0] = Σ partials / denom`, one block.
    fn mean_partials(&self, partials: &Buffer, count: usize, denom: f32) -> Result<Tensor> {
        let out = self.alloc(Shape::scalar(), DType::F32)?;
        let mut args = KernelArgs::new()
            .buffer(partials)
            .i32(count as i32)
            .f32(denom)
            .tensor(&out);
        self.device().launch(
            Kernel::LossMeanPartials,
            LaunchConfig::linear(1, LOSS_THREADS),
            &mut args,
        )?;
        Ok(out)
    }

    /// Reads back the pending `one_hot` id checks; the first bad id is an
    /// error naming its voxel and value.
    pub(super) fn settle_label_checks(&self) -> Result<()> {
        let checks = std::mem::take(&mut *self.label_checks.lock().unwrap());
        for c in checks {
            let mut raw = [0u8; 8];
            self.device().memcpy_dtoh(&mut raw, c.first_bad.addr())?;
            let bad = u64::from_ne_bytes(raw);
            if bad != u64::MAX {
                let size = c.labels.dtype().size();
                let mut v = [0u8; 4];
                self.device()
                    .memcpy_dtoh(&mut v[..size], c.labels.addr() + bad * size as u64)?;
                let value = match c.labels.dtype() {
                    DType::F32 => f32::from_ne_bytes(v),
                    DType::BF16 => half::bf16::from_ne_bytes([v[0], v[1]]).to_f32(),
                };
                bail!(
                    "one_hot: label {value} at voxel {bad} is not a class id in 0..{}",
                    c.classes
                );
            }
        }
        Ok(())
    }

    /// Two tensors of one shape (any rank) and dtype; their element count.
    fn same_elements(&self, op: &str, a: &Tensor, b: &Tensor) -> Result<usize> {
        self.check_loss_input(a, &format!("{op}: a"))?;
        self.check_loss_input(b, &format!("{op}: b"))?;
        ensure!(
            a.shape() == b.shape(),
            "{op}: a has shape {} but b has shape {}",
            a.shape(),
            b.shape()
        );
        ensure!(
            a.dtype() == b.dtype(),
            "{op}: a is {} but b is {} (one dtype expected)",
            a.dtype().name(),
            b.dtype().name()
        );
        ensure!(a.numel() > 0, "{op}: empty input ({})", a.shape());
        Ok(a.numel())
    }
}

impl LossOps for GpuBackend {
    /// Foreground soft Dice (`loss/dice.rs`).
    fn dice_loss(&self, p: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
        self.dice_loss_fwd(p, target)
    }
    fn dice_loss_bwd(
        &self,
        p: &Tensor,
        target: &Tensor,
        sums: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        self.dice_loss_grad(p, target, sums, dloss)
    }

    /// `y[…, 0]` = the first channel holding the maximum, as a float (NaN for a
    /// row holding NaN), in x's dtype.
    fn argmax_c(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, c) = self.loss_rows(x, "argmax_c: x")?;
        let y = self.alloc(x.shape().with_c(1), x.dtype())?;
        if rows == 0 {
            return Ok(y);
        }
        let kernel = by_dtype(x.dtype(), Kernel::LossArgmaxF32, Kernel::LossArgmaxBf16);
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&y)
            .i64(rows as i64)
            .i32(c as i32);
        self.device().launch(kernel, rows_config(rows), &mut args)?;
        Ok(y)
    }

    /// One-hot of float class ids `[N,D,H,W,1]` (f32 or bf16) in the act dtype:
    /// `on` at the class, `off` elsewhere.
    ///
    /// An id that is not an integer in `0..classes` is an error naming the
    /// first such voxel. The kernel lowers a `u64` in a small device buffer to
    /// the index of every bad row (atomicMin). Reading it back would wait for
    /// the launch, once per training step; instead the check is kept (with the
    /// labels) and read at this backend's next `download` or `synchronize`,
    /// which report the error — as a CUDA device-side assertion surfaces at
    /// the next synchronising call. At most [`PENDING_LABEL_CHECKS`] stay
    /// unread, so the labels they keep alive stay bounded.
    fn one_hot(&self, labels: &Tensor, classes: usize, on: f32, off: f32) -> Result<Tensor> {
        let (rows, c) = self.loss_rows(labels, "one_hot: labels")?;
        ensure!(
            c == 1,
            "one_hot: labels must have one channel, got shape {}",
            labels.shape()
        );
        ensure!(
            (1..=1 << 24).contains(&classes),
            "one_hot: classes must be in 1..=2^24, got {classes}"
        );
        let y = self.alloc(labels.shape().with_c(classes), self.act_dtype())?;
        if rows == 0 {
            return Ok(y);
        }
        let kernel = match (labels.dtype(), y.dtype()) {
            (DType::F32, DType::F32) => Kernel::LossOneHotF32F32,
            (DType::F32, DType::BF16) => Kernel::LossOneHotF32Bf16,
            (DType::BF16, DType::F32) => Kernel::LossOneHotBf16F32,
            (DType::BF16, DType::BF16) => Kernel::LossOneHotBf16Bf16,
        };
        let first_bad = self.device().alloc(8)?;
        self.device().memset(first_bad.addr(), 0xFF, 8)?;
        let mut args = KernelArgs::new()
            .tensor(labels)
            .tensor(&y)
            .i64(rows as i64)
            .i32(classes as i32)
            .f32(on)
            .f32(off)
            .buffer(&first_bad);
        self.device().launch(kernel, rows_config(rows), &mut args)?;
        let pending = {
            let mut checks = self.label_checks.lock().unwrap();
            checks.push(LabelCheck {
                first_bad,
                labels: labels.clone(),
                classes,
            });
            checks.len()
        };
        if pending >= PENDING_LABEL_CHECKS {
            self.settle_label_checks()?;
        }
        Ok(y)
    }

    /// Mean over voxels of `−Σ_c t_c · log softmax(logits)_c`, f32 `[1]`.
    fn cross_entropy(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let (rows, c) = self.loss_pair("cross_entropy", logits, "logits", target, "target")?;
        ensure!(rows > 0, "cross_entropy: empty input ({})", logits.shape());
        let blocks = partial_blocks(rows);
        let partials = self.device().alloc(4 * blocks)?;
        let kernel = by_dtype(
            logits.dtype(),
            Kernel::LossCePartialF32,
            Kernel::LossCePartialBf16,
        );
        let mut args = KernelArgs::new()
            .tensor(logits)
            .tensor(target)
            .i64(rows as i64)
            .i32(c as i32)
            .buffer(&partials);
        self.device().launch(
            kernel,
            LaunchConfig::linear(blocks as u32, LOSS_THREADS),
            &mut args,
        )?;
        self.mean_partials(&partials, blocks, rows as f32)
    }

    /// `dlogits = dloss · (softmax(logits) − t) / rows`, dloss read on the device.
    fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        let (rows, c) = self.loss_pair("cross_entropy_bwd", logits, "logits", target, "target")?;
        self.check_scalar(dloss, "cross_entropy_bwd: dloss")?;
        ensure!(
            rows > 0,
            "cross_entropy_bwd: empty input ({})",
            logits.shape()
        );
        let dx = self.alloc(logits.shape(), logits.dtype())?;
        let kernel = by_dtype(logits.dtype(), Kernel::LossCeBwdF32, Kernel::LossCeBwdBf16);
        let mut args = KernelArgs::new()
            .tensor(logits)
            .tensor(target)
            .tensor(dloss)
            .i64(rows as i64)
            .i32(c as i32)
            .tensor(&dx);
        self.device().launch(kernel, rows_config(rows), &mut args)?;
        Ok(dx)
    }

    /// Mean of `(a − b)²` over all elements, f32 `[1]`.
    fn mse(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let n = self.same_elements("mse", a, b)?;
        let blocks = partial_blocks(n.div_ceil(8));
        let partials = self.device().alloc(4 * blocks)?;
        let kernel = by_dtype(
            a.dtype(),
            Kernel::LossMsePartialF32,
            Kernel::LossMsePartialBf16,
        );
        let mut args = KernelArgs::new()
            .tensor(a)
            .tensor(b)
            .i64(n as i64)
            .buffer(&partials);
        self.device().launch(
            kernel,
            LaunchConfig::linear(blocks as u32, LOSS_THREADS),
            &mut args,
        )?;
        self.mean_partials(&partials, blocks, n as f32)
    }

    /// `da = dloss · 2(a − b) / numel`, dloss read on the device.
    fn mse_bwd(&self, a: &Tensor, b: &Tensor, dloss: &Tensor) -> Result<Tensor> {
        let n = self.same_elements("mse_bwd", a, b)?;
        self.check_scalar(dloss, "mse_bwd: dloss")?;
        let da = self.alloc(a.shape(), a.dtype())?;
        let kernel = by_dtype(a.dtype(), Kernel::LossMseBwdF32, Kernel::LossMseBwdBf16);
        let mut args = KernelArgs::new()
            .tensor(a)
            .tensor(b)
            .tensor(dloss)
            .i64(n as i64)
            .tensor(&da);
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(da)
    }
}
