//! Host side of `kernels/pointwise.cu`: activations and their backward, the
//! per-(sample, channel) broadcast add, and the spatial sum (its backward).
//! Also home of [`RowTiles`], the column-tile launch geometry that the
//! per-channel reductions here and in `norm.rs` share (`kernels/channel_rows.cuh`).
//!
//! # act, act_bwd, add_nc
//! Elementwise: chunks of 8 elements (one 16-byte vector of bf16, two of f32),
//! a grid-stride loop over chunks with the launch of
//! [`super::elementwise::ew_config`] (blocks of 256 threads, at most 4096 blocks).
//! Memory-bound; the floor is the bytes moved: act 2·n·e, act_bwd 3·n·e,
//! add_nc 2·n·e + 4·N·C (e = bytes per element). FLOPs: ≤ ~20 per element
//! (GELU's derivative), below the ≈ 20 FLOP per byte (67 TFLOP/s f32 /
//! 3.35 TB/s) an H100 affords at its bandwidth.
//!
//! # sum_spatial
//! Two stages (no block waits on another): `sum_partial` in the [`RowTiles`]
//! geometry writes f32 partials `[N, chunks, C]`; `sum_merge` adds them in
//! chunk order with one warp per (n, c) (8 warps per block). Floor: reading x
//! once (n·e bytes); the workspace adds 2·4·N·chunks·C bytes (≤ 1024 chunks in
//! all, so ≤ 8 KiB per channel — small next to x for any real volume).

use super::device::{KernelArgs, LaunchConfig};
use super::elementwise::{check_vector_aligned, ew_config};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::pointwise::check_lincomb;
use crate::ops::Act;
use crate::ops::{MemoryOps, PointwiseOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// Mirrors `VdLincombArgs` in kernels/elementwise.cu (80 bytes; the launch
/// checks the size against the kernel's parameter).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LincombArgs {
    x: [u64; 4],
    coef: [f32; 4],
    x_is_bf16: [i32; 4],
    terms: i32,
    pad: i32,
    n: i64,
}

/// Channels per thread of the vector variants (one 16-byte vector of bf16).
pub const VEC: usize = 8;
/// Threads per block of the column-tile kernels (bx·by ≤ this).
pub const ROW_THREADS: usize = 256;
/// Target grid of the column-tile kernels: ≈ 132 SMs × 8 resident blocks of
/// 256 threads on an H100, so batch one fills the GPU.
pub const ROW_TARGET_BLOCKS: usize = 1024;
/// Each thread visits at least this many rows of its chunk (below it, a
/// thread's loads no longer hide the cost of the block's reduction).
pub const MIN_ROWS_PER_THREAD: usize = 2;

/// The column-tile geometry of `kernels/channel_rows.cuh` for an NDHWC shape.
///
/// - `vec` = 8 channels per thread when `C % 8 == 0` (16-byte accesses), else 1;
///   `lanes = C / vec` column vectors per row (voxel).
/// - block `(bx, by)`: `bx = min(lanes, 32)` column vectors side by side,
///   `by` = the largest power of two with `bx·by ≤ 256` row slots.
/// - grid `(chunks, ceil(lanes / bx), N)`: sample n's `rows` voxels are cut into
///   `chunks` ranges of `rows_per_chunk` rows; `chunks` is chosen so the grid has
///   about [`ROW_TARGET_BLOCKS`] blocks, but each thread still gets at least
///   [`MIN_ROWS_PER_THREAD`] rows.
///
/// Thread (tx, ty) of block (j, t, n) owns channels `(t·bx + tx)·vec ..+vec` and
/// visits rows `j·R + ty, j·R + ty + by, …` (R = `rows_per_chunk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowTiles {
    pub vec: usize,
    pub lanes: usize,
    pub bx: usize,
    pub by: usize,
    pub col_tiles: usize,
    pub samples: usize,
    pub rows: usize,
    pub chunks: usize,
    pub rows_per_chunk: usize,
}

impl RowTiles {
    pub fn new(shape: Shape) -> Result<RowTiles> {
        ensure!(
            shape.rank() == 5,
            "expected an NDHWC tensor, got shape {shape}"
        );
        let (samples, rows, c) = (shape.n(), shape.voxels(), shape.c());
        ensure!(
            samples >= 1 && rows >= 1 && c >= 1,
            "shape {shape} has no elements"
        );
        let vec = if c.is_multiple_of(VEC) { VEC } else { 1 };
        let lanes = c / vec;
        let bx = lanes.min(32);
        let mut by = 1;
        while bx * by * 2 <= ROW_THREADS {
            by *= 2;
        }
        let col_tiles = lanes.div_ceil(bx);
        ensure!(
            samples <= 65535 && col_tiles <= 65535,
            "shape {shape}: {samples} samples and {col_tiles} column tiles exceed the grid (65535 each)"
        );
        let max_chunks = rows.div_ceil(by * MIN_ROWS_PER_THREAD).max(1);
        let want = ROW_TARGET_BLOCKS.div_ceil(samples * col_tiles).max(1);
        let rows_per_chunk = rows.div_ceil(want.min(max_chunks));
        Ok(RowTiles {
            vec,
            lanes,
            bx,
            by,
            col_tiles,
            samples,
            rows,
            chunks: rows.div_ceil(rows_per_chunk),
            rows_per_chunk,
        })
    }
    /// The launch (no dynamic shared memory; add it per kernel).
    pub fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid: [
                self.chunks as u32,
                self.col_tiles as u32,
                self.samples as u32,
            ],
            block: [self.bx as u32, self.by as u32, 1],
            shared_bytes: 0,
        }
    }
    /// Threads per block.
    pub fn threads(&self) -> usize {
        self.bx * self.by
    }
}

/// The index of an activation as the kernels take it (`kernels/activation.cuh`).
pub fn act_code(act: Act) -> i32 {
    match act {
        Act::Identity => 0,
        Act::Relu => 1,
        Act::Silu => 2,
        Act::Gelu => 3,
    }
}

/// Errors unless `t` starts on a 16-byte boundary (the kernels' vector accesses).
pub(crate) fn check_aligned16(t: &Tensor, what: &str) -> Result<()> {
    ensure!(
        t.addr().is_multiple_of(16),
        "{what}: tensor at {:#x} is not 16-byte aligned (the kernels use 16-byte vector accesses)",
        t.addr()
    );
    Ok(())
}

/// Errors unless `t` is an NDHWC tensor on this device with 16-byte alignment.
pub(crate) fn check_ndhwc(b: &GpuBackend, t: &Tensor, what: &str) -> Result<()> {
    b.check(t, what)?;
    ensure!(
        t.shape().rank() == 5,
        "{what}: expected an NDHWC tensor, got shape {}",
        t.shape()
    );
    check_aligned16(t, what)
}

/// Errors unless `t` is an f32 `[N, C]` tensor on this device.
pub(crate) fn check_nc(b: &GpuBackend, t: &Tensor, x: Shape, what: &str) -> Result<()> {
    b.check(t, what)?;
    ensure!(
        t.dtype() == DType::F32 && t.shape().dims() == [x.n(), x.c()],
        "{what}: expected f32 [{}, {}] ([N, C] of {x}), got {} {}",
        x.n(),
        x.c(),
        t.dtype().name(),
        t.shape()
    );
    Ok(())
}

/// Errors unless `a` and `b` have the same shape and dtype.
pub(crate) fn check_like(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    ensure!(
        a.shape() == b.shape() && a.dtype() == b.dtype(),
        "{what}: {} {} differs from {} {}",
        a.dtype().name(),
        a.shape(),
        b.dtype().name(),
        b.shape()
    );
    Ok(())
}

impl PointwiseOps for GpuBackend {
    /// `y = act(x)` elementwise (any shape; f32 or bf16, the output in x's dtype).
    fn act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        self.check(x, "act: x")?;
        check_aligned16(x, "act: x")?;
        let y = self.alloc(x.shape(), x.dtype())?;
        let n = x.numel();
        if n == 0 {
            return Ok(y);
        }
        let kernel = match x.dtype() {
            DType::F32 => Kernel::PointwiseActF32,
            DType::BF16 => Kernel::PointwiseActBf16,
        };
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&y)
            .i64(n as i64)
            .i32(act_code(act));
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(y)
    }

    /// `dx = dy · act'(x)` elementwise (dy and x of one shape and dtype).
    fn act_bwd(&self, dy: &Tensor, x: &Tensor, act: Act) -> Result<Tensor> {
        self.check(dy, "act_bwd: dy")?;
        self.check(x, "act_bwd: x")?;
        check_like(dy, x, "act_bwd: dy vs x")?;
        check_aligned16(dy, "act_bwd: dy")?;
        check_aligned16(x, "act_bwd: x")?;
        let dx = self.alloc(x.shape(), x.dtype())?;
        let n = x.numel();
        if n == 0 {
            return Ok(dx);
        }
        let kernel = match x.dtype() {
            DType::F32 => Kernel::PointwiseActBwdF32,
            DType::BF16 => Kernel::PointwiseActBwdBf16,
        };
        let mut args = KernelArgs::new()
            .tensor(dy)
            .tensor(x)
            .tensor(&dx)
            .i64(n as i64)
            .i32(act_code(act));
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(dx)
    }

    /// `y[n,…,c] = x[n,…,c] + v[n,c]`, v f32 `[N, C]`; y in x's dtype.
    fn add_nc(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        check_ndhwc(self, x, "add_nc: x")?;
        check_nc(self, v, x.shape(), "add_nc: v")?;
        let y = self.alloc(x.shape(), x.dtype())?;
        let n = x.numel();
        if n == 0 {
            return Ok(y);
        }
        let kernel = match x.dtype() {
            DType::F32 => Kernel::PointwiseAddNcF32,
            DType::BF16 => Kernel::PointwiseAddNcBf16,
        };
        let sh = x.shape();
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(v)
            .tensor(&y)
            .i64(n as i64)
            .i64((sh.voxels() * sh.c()) as i64)
            .i32(sh.c() as i32);
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(y)
    }

    /// `s[n,c] = Σ_voxels x[n,…,c]`, f32 `[N, C]` (see the module docs for the passes).
    fn sum_spatial(&self, x: &Tensor) -> Result<Tensor> {
        check_ndhwc(self, x, "sum_spatial: x")?;
        let sh = x.shape();
        let s = self.alloc(Shape::new(&[sh.n(), sh.c()]), DType::F32)?;
        if x.numel() == 0 {
            self.device().memset(s.addr(), 0, s.bytes())?;
            return Ok(s);
        }
        let t = RowTiles::new(sh).map_err(|e| e.context("sum_spatial: x"))?;
        let partial = self.alloc(Shape::new(&[t.samples, t.chunks, sh.c()]), DType::F32)?;
        let kernel = match (x.dtype(), t.vec) {
            (DType::F32, 8) => Kernel::PointwiseSumPartialF32x8,
            (DType::F32, _) => Kernel::PointwiseSumPartialF32x1,
            (DType::BF16, 8) => Kernel::PointwiseSumPartialBf16x8,
            (DType::BF16, _) => Kernel::PointwiseSumPartialBf16x1,
        };
        // Shared memory: one f32 partial per channel of every thread.
        let cfg = t
            .config()
            .with_shared_bytes((t.threads() * t.vec * 4) as u32);
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&partial)
            .i64(t.rows as i64)
            .i64(t.rows_per_chunk as i64)
            .i32(sh.c() as i32)
            .i32(t.lanes as i32);
        self.device().launch(kernel, cfg, &mut args)?;
        // One warp per (n, c), 8 warps per block.
        let pairs = sh.n() * sh.c();
        let merge = LaunchConfig::linear(pairs.div_ceil(8) as u32, 256);
        let mut args = KernelArgs::new()
            .tensor(&partial)
            .tensor(&s)
            .i32(sh.n() as i32)
            .i32(sh.c() as i32)
            .i32(t.chunks as i32);
        self.device()
            .launch(Kernel::PointwiseSumMerge, merge, &mut args)?;
        Ok(s)
    }

    /// `Σ_i coef_i · x_i` over 1..=4 tensors of one shape (each f32 or bf16),
    /// accumulated in f32 in term order with fused multiply-adds; the output has
    /// the dtype of the first term.
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        let shape = check_lincomb(terms)?;
        let mut a = LincombArgs {
            x: [0; 4],
            coef: [0.0; 4],
            x_is_bf16: [0; 4],
            terms: terms.len() as i32,
            pad: 0,
            n: shape.numel() as i64,
        };
        for (i, (c, t)) in terms.iter().enumerate() {
            let what = format!("lincomb: term {i}");
            self.check(t, &what)?;
            check_vector_aligned(t, &what)?;
            a.x[i] = t.addr();
            a.coef[i] = *c;
            a.x_is_bf16[i] = (t.dtype() == DType::BF16) as i32;
        }
        let y = self.alloc(shape, terms[0].1.dtype())?;
        if shape.numel() == 0 {
            return Ok(y);
        }
        let kernel = match y.dtype() {
            DType::F32 => Kernel::ElementwiseLincombF32,
            DType::BF16 => Kernel::ElementwiseLincombBf16,
        };
        let mut args = KernelArgs::new().pod(&a).tensor(&y);
        self.device()
            .launch(kernel, ew_config(shape.numel()), &mut args)?;
        Ok(y)
    }
}
