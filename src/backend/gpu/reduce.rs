//! Host side of `kernels/reduce.cu`: sums down to a broadcast shape
//! ([`Bcast`]), the broadcast back up, and the softmax over the last dim. Also home of [`RowTiles`], the
//! column-tile launch geometry (`kernels/channel_rows.cuh`) that the sums
//! here and the norm passes (`norm.rs`) share.
//!
//! # reduce_sum: which kernels run
//! x is seen as `[outer, mid, inner]` ([`Bcast::split`]) and summed over mid.
//! - Full: a cast to f32 (no reduction).
//! - Row (`inner` = 1, `mid` = the row length L, `outer` = rows):
//!   L ≤ [`ROW_THREAD_MAX`] = 32: `row_sum_thread`, one thread per row
//!   (blocks of 256 threads, `⌈rows / 256⌉` blocks capped at 4096, grid
//!   stride beyond; a warp's 32 rows are one contiguous span);
//!   L ≤ [`ROW_WARP_MAX`] = 4096, or more than 65535 rows: `row_sum_warp`,
//!   one warp per row (8 warps per block of 256, `⌈rows / 8⌉` blocks capped at
//!   4096), lanes reading consecutive elements — 16-byte vectors of 8 when
//!   `L % 8 == 0`;
//!   longer rows, at most 65535 of them: the two-stage sum below with
//!   samples = rows.
//! - SampleChannel, Channel, Scalar (and long rows): two stages, no block
//!   waiting on another. `sum_partial` in the [`RowTiles`] geometry over x as
//!   `[samples = outer, rows = mid, C = inner]` writes f32 partials
//!   `[samples, chunks, C]`; `sum_merge` adds them in chunk order with one
//!   warp per (sample, c) (8 warps per block). When `inner` is 1 and `mid` a
//!   multiple of 8, x is seen as `[outer, mid/8, 8]` instead (16-byte loads,
//!   one warp lane per 8 columns) and the merge adds the `chunks·8` partials
//!   of each sample as one run.
//!
//! Counted floor (n elements of e bytes): reading x once, n·e bytes; the
//! output (4 bytes per sum) and the workspace (2·4·samples·chunks·C bytes,
//! ≤ 1024 chunks in all, so ≤ 8 KiB per output column) are small next to x
//! for any real volume. FLOPs: n adds — far below the bandwidth.
//!
//! # softmax, softmax_bwd (over the last dim, rows of L)
//! - L ≤ [`SOFTMAX_THREAD_MAX`] = 32: `softmax_thread`, one thread per row
//!   (the launch of `row_sum_thread`): a thread's row is a few loads, a
//!   warp's 32 rows one contiguous span.
//! - L ≤ [`SOFTMAX_WARP_MAX`] = 1024: `softmax_warp`, one warp per row (8 per
//!   block of 256, `⌈rows / 8⌉` blocks capped at 4096): lanes read
//!   consecutive elements, 16-byte vectors of 8 when `L % 8 == 0`; each lane
//!   holds ≤ 32 elements' worth of the row.
//! - longer rows: `softmax_block`, one block of 256 threads per row
//!   (`rows` blocks capped at 4096), the warps' partials merged through
//!   shared memory.
//!
//! The forward keeps a running max and sum in one pass (online softmax), then
//! writes p: x is read twice (the second time from cache: a row is at most
//! 16 KiB of f32 per warp or block). The backward reads dp and p for the dot
//! product and again to write dx.
//!
//! Counted floors (E = rows·L elements of e bytes): softmax reads E·e and
//! writes E·e, ≈ 2E exp + 4E FLOPs; softmax_bwd reads 2E·e and writes E·e,
//! 4E FLOPs. Memory-bound: on an H100 (≈ 3 TB/s) a 1×96³×3 bf16 softmax
//! (5.3 MB in, 5.3 MB out) has a floor of ≈ 3.5 µs.
//!
//! # expand
//! `out[i] = y[bcast index of i]` (`kernels/bcast.cuh`): chunks of 8 elements
//! (16-byte stores), the launch of [`ew_config`]. Floor: n·e written plus
//! y read (4·|y|, mostly from cache). Full is a cast.

use super::device::{KernelArgs, LaunchConfig};
use super::elementwise::{by_dtype, ew_config};
use super::pointwise::check_aligned16;
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::bcast::Bcast;
use crate::ops::reduce::{check_expand, check_reduce, check_softmax, check_softmax_bwd};
use crate::ops::{MemoryOps, ReduceOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

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

/// Longest row summed by one thread.
pub const ROW_THREAD_MAX: usize = 32;
/// Longest row summed by one warp whatever the row count (longer rows, if at
/// most 65535, take the two-stage sum).
pub const ROW_WARP_MAX: usize = 4096;
/// Longest softmax row done by one thread.
pub const SOFTMAX_THREAD_MAX: usize = 32;
/// Longest softmax row done by one warp (longer ones: one block).
pub const SOFTMAX_WARP_MAX: usize = 1024;
/// Threads per block of the row kernels.
const ROW_KERNEL_THREADS: u32 = 256;
/// Grid cap of the row kernels (grid-stride loops cover the rest).
const ROW_MAX_BLOCKS: usize = 4096;

/// The column-tile geometry of `kernels/channel_rows.cuh` for x seen as
/// `[samples, rows, c]` (an NDHWC tensor: samples = N, rows = voxels).
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
    /// The geometry of an NDHWC tensor.
    pub fn new(shape: Shape) -> Result<RowTiles> {
        ensure!(
            shape.rank() == 5,
            "expected an NDHWC tensor, got shape {shape}"
        );
        RowTiles::groups(shape.n(), shape.voxels(), shape.c())
            .map_err(|e| e.context(format!("shape {shape}")))
    }

    /// The geometry of x seen as `[samples, rows, c]`.
    pub fn groups(samples: usize, rows: usize, c: usize) -> Result<RowTiles> {
        ensure!(
            samples >= 1 && rows >= 1 && c >= 1,
            "{samples} samples of {rows} rows of {c} have no elements"
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
            "{samples} samples and {col_tiles} column tiles exceed the grid (65535 each)"
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

/// One thread per row.
fn thread_rows_config(rows: usize) -> LaunchConfig {
    let blocks = rows
        .div_ceil(ROW_KERNEL_THREADS as usize)
        .clamp(1, ROW_MAX_BLOCKS);
    LaunchConfig::linear(blocks as u32, ROW_KERNEL_THREADS)
}

/// One warp per row, 8 rows per block.
fn warp_rows_config(rows: usize) -> LaunchConfig {
    let per_block = ROW_KERNEL_THREADS as usize / 32;
    let blocks = rows.div_ceil(per_block).clamp(1, ROW_MAX_BLOCKS);
    LaunchConfig::linear(blocks as u32, ROW_KERNEL_THREADS)
}

impl GpuBackend {
    /// `s[o, i] = Σ_m x[o, m, i]` in two stages (see the module doc); `s`
    /// f32 `[outer·inner]`.
    fn sum_two_stage(
        &self,
        x: &Tensor,
        (outer, mid, inner): (usize, usize, usize),
        s: &Tensor,
    ) -> Result<()> {
        // A flat run of a multiple of 8 is read as rows of 8 columns whose
        // partials the merge adds as one run per sample.
        let flat8 = inner == 1 && mid.is_multiple_of(VEC);
        let t = if flat8 {
            RowTiles::groups(outer, mid / VEC, VEC)?
        } else {
            RowTiles::groups(outer, mid, inner)?
        };
        let c = t.lanes * t.vec;
        let kernel = match (x.dtype(), t.vec) {
            (DType::F32, VEC) => Kernel::ReduceSumPartialF32x8,
            (DType::F32, _) => Kernel::ReduceSumPartialF32x1,
            (DType::BF16, VEC) => Kernel::ReduceSumPartialBf16x8,
            (DType::BF16, _) => Kernel::ReduceSumPartialBf16x1,
        };
        let partial = self.alloc(Shape::new(&[t.samples * t.chunks * c]), DType::F32)?;
        // Shared memory: one f32 partial per channel of every thread.
        let cfg = t
            .config()
            .with_shared_bytes((t.threads() * t.vec * 4) as u32);
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&partial)
            .i64(t.rows as i64)
            .i64(t.rows_per_chunk as i64)
            .i32(c as i32)
            .i32(t.lanes as i32);
        self.device().launch(kernel, cfg, &mut args)?;
        let (c_out, runs) = if flat8 {
            (1, t.chunks * VEC)
        } else {
            (c, t.chunks)
        };
        // One warp per (sample, channel), 8 warps per block.
        let pairs = outer * c_out;
        let merge = LaunchConfig::linear(pairs.div_ceil(8) as u32, 256);
        let mut args = KernelArgs::new()
            .tensor(&partial)
            .tensor(s)
            .i32(outer as i32)
            .i32(c_out as i32)
            .i32(runs as i32);
        self.device()
            .launch(Kernel::ReduceSumMerge, merge, &mut args)
    }

    /// `s[r] = Σ_j x[r, j]` over rows of `len` (see the module doc for the path).
    fn row_sum(&self, x: &Tensor, rows: usize, len: usize, s: &Tensor) -> Result<()> {
        if len > ROW_WARP_MAX && rows <= 65535 {
            return self.sum_two_stage(x, (rows, len, 1), s);
        }
        ensure!(
            len <= i32::MAX as usize,
            "reduce_sum: rows of {len} are too long"
        );
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(s)
            .i64(rows as i64)
            .i32(len as i32);
        if len <= ROW_THREAD_MAX {
            let kernel = by_dtype(
                x.dtype(),
                Kernel::ReduceRowSumThreadF32,
                Kernel::ReduceRowSumThreadBf16,
            );
            self.device()
                .launch(kernel, thread_rows_config(rows), &mut args)
        } else {
            let kernel = by_dtype(
                x.dtype(),
                Kernel::ReduceRowSumWarpF32,
                Kernel::ReduceRowSumWarpBf16,
            );
            let mut args = args.i32(len.is_multiple_of(VEC) as i32);
            self.device()
                .launch(kernel, warp_rows_config(rows), &mut args)
        }
    }
}

/// Which softmax kernel runs a row of `len` (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxPath {
    Thread,
    Warp,
    Block,
}

impl SoftmaxPath {
    pub fn of(len: usize) -> SoftmaxPath {
        if len <= SOFTMAX_THREAD_MAX {
            SoftmaxPath::Thread
        } else if len <= SOFTMAX_WARP_MAX {
            SoftmaxPath::Warp
        } else {
            SoftmaxPath::Block
        }
    }
    fn config(self, rows: usize) -> LaunchConfig {
        match self {
            SoftmaxPath::Thread => thread_rows_config(rows),
            SoftmaxPath::Warp => warp_rows_config(rows),
            SoftmaxPath::Block => {
                LaunchConfig::linear(rows.clamp(1, ROW_MAX_BLOCKS) as u32, ROW_KERNEL_THREADS)
            }
        }
    }
}

impl GpuBackend {
    /// Launches a softmax kernel (forward or backward by `kernels`:
    /// [thread, warp, block] × [f32, bf16]) over `rows` rows of `len`, the
    /// arguments being `tensors` then (rows, len[, vec8]).
    fn softmax_launch(
        &self,
        kernels: [[Kernel; 2]; 3],
        tensors: &[&Tensor],
        rows: usize,
        len: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        ensure!(
            len <= i32::MAX as usize,
            "softmax: rows of {len} are too long"
        );
        let path = SoftmaxPath::of(len);
        let [f32_kernel, bf16_kernel] = kernels[path as usize];
        let kernel = by_dtype(tensors[0].dtype(), f32_kernel, bf16_kernel);
        let mut args = KernelArgs::new();
        for t in tensors {
            args = args.tensor(t);
        }
        let mut args = args.i64(rows as i64).i32(len as i32);
        if path != SoftmaxPath::Thread {
            args = args.i32(len.is_multiple_of(VEC) as i32);
        }
        self.device().launch(kernel, path.config(rows), &mut args)
    }
}

impl ReduceOps for GpuBackend {
    /// `Σ x` down to the broadcast shape `to`, f32 (see the module doc).
    fn reduce_sum(&self, x: &Tensor, to: Bcast) -> Result<Tensor> {
        self.check(x, "reduce_sum: x")?;
        check_aligned16(x, "reduce_sum: x")?;
        let shape = check_reduce(x, to)?;
        if to == Bcast::Full {
            return self.cast(x, DType::F32);
        }
        let s = self.alloc(shape, DType::F32)?;
        if x.numel() == 0 {
            self.device().memset(s.addr(), 0, s.bytes())?;
            return Ok(s);
        }
        let split = to.split(x.shape());
        if to == Bcast::Row {
            self.row_sum(x, split.0, split.1, &s)?;
        } else {
            self.sum_two_stage(x, split, &s)
                .map_err(|e| e.context(format!("reduce_sum of {} to {to:?}", x.shape())))?;
        }
        Ok(s)
    }

    /// Softmax over the last dim (see the module doc for the kernels).
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x, "softmax: x")?;
        check_aligned16(x, "softmax: x")?;
        let (rows, len) = check_softmax(x)?;
        let p = self.alloc(x.shape(), x.dtype())?;
        let kernels = [
            [
                Kernel::ReduceSoftmaxThreadF32,
                Kernel::ReduceSoftmaxThreadBf16,
            ],
            [Kernel::ReduceSoftmaxWarpF32, Kernel::ReduceSoftmaxWarpBf16],
            [
                Kernel::ReduceSoftmaxBlockF32,
                Kernel::ReduceSoftmaxBlockBf16,
            ],
        ];
        self.softmax_launch(kernels, &[x, &p], rows, len)?;
        Ok(p)
    }

    /// `dx = p ⊙ (dp − Σ_row dp·p)` (see the module doc for the kernels).
    fn softmax_bwd(&self, dp: &Tensor, p: &Tensor) -> Result<Tensor> {
        self.check(dp, "softmax_bwd: dp")?;
        self.check(p, "softmax_bwd: p")?;
        check_aligned16(dp, "softmax_bwd: dp")?;
        check_aligned16(p, "softmax_bwd: p")?;
        let (rows, len) = check_softmax_bwd(dp, p)?;
        let dx = self.alloc(p.shape(), p.dtype())?;
        let kernels = [
            [
                Kernel::ReduceSoftmaxBwdThreadF32,
                Kernel::ReduceSoftmaxBwdThreadBf16,
            ],
            [
                Kernel::ReduceSoftmaxBwdWarpF32,
                Kernel::ReduceSoftmaxBwdWarpBf16,
            ],
            [
                Kernel::ReduceSoftmaxBwdBlockF32,
                Kernel::ReduceSoftmaxBwdBlockBf16,
            ],
        ];
        self.softmax_launch(kernels, &[dp, p, &dx], rows, len)?;
        Ok(dx)
    }

    /// `out = y` broadcast to `like` in `dtype` (see the module doc).
    fn expand(&self, y: &Tensor, like: Shape, dtype: DType) -> Result<Tensor> {
        self.check(y, "expand: y")?;
        let to = check_expand(y, like)?;
        if to == Bcast::Full {
            return self.cast(y, dtype);
        }
        let out = self.alloc(like, dtype)?;
        let n = like.numel();
        if n == 0 {
            return Ok(out);
        }
        let (_, mid, inner) = to.split(like);
        ensure!(
            inner <= i32::MAX as usize,
            "expand: {inner} channels are too many"
        );
        let kernel = by_dtype(dtype, Kernel::ReduceExpandF32, Kernel::ReduceExpandBf16);
        let mut args = KernelArgs::new()
            .tensor(y)
            .tensor(&out)
            .i64(n as i64)
            .i64((mid * inner) as i64)
            .i32(inner as i32);
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(out)
    }
}
