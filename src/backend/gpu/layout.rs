//! Host side of `kernels/layout.cu`: channel concat/slice, crop/pad,
//! nearest upsampling and its backward, max pooling and its backward, and
//! permute (any rank ≤ 5; its own section below).
//!
//! Every kernel moves *units* of `vec` channels of one voxel: 8 (16-byte
//! accesses for bf16, two for f32) when every channel count and offset
//! involved is a multiple of 8, else 1. Every output element is written exactly
//! once; all ops are memory-bound, and their floors (e = bytes per element) are:
//! - concat_c: read every input, write y — 2·numel(y)·e; one launch per input.
//! - slice_c: read the slice, write it — 2·numel(y)·e.
//! - crop: 2·numel(y)·e. pad: numel(x)·e read + numel(y)·e written.
//! - upsample: numel(x)·e read (each source voxel is re-read by its f³
//!   copies, from cache) + numel(y)·e written.
//! - upsample_bwd: numel(dy)·e read + numel(dx)·e written.
//! - maxpool: numel(x)·e + numel(y)·e. maxpool_bwd: x and dy read, dx
//!   written: (2·numel(x) + numel(dy))·e — each thread scans its window
//!   once for the first maximum and then writes the whole window.
//!
//! # Launch geometry
//! - channel copies (concat, slice): a flat grid-stride loop over
//!   `rows · len/vec` units (rows = N·D·H·W voxels), blocks of 256 threads,
//!   `ceil(units / 256)` blocks capped at 4096.
//! - spatial kernels walk the rows (n, d, h) of a grid "out" (the output; for
//!   maxpool_bwd the pooled grid): block x = one row, `threads` =
//!   the next power of two ≥ `W·lanes`, clamped to 32..256, and
//!   `grid.y = ceil(W·lanes / threads)`; thread u of the row owns voxel
//!   `w = u / lanes`, lane `u % lanes`.
//!
//! # permute
//! Reads and writes every element once: 2·numel·e bytes, no arithmetic. The
//! [`crate::ops::layout::PermutePlan`] (dims merged where they stay adjacent)
//! picks the kernel:
//! - x's innermost run stays innermost (`keeps_last`): `permute_copy`, a
//!   grid-stride loop over units of 8 elements (16-byte accesses for bf16, two
//!   for f32; every unit is aligned because the run is a multiple of 8) or of 1
//!   otherwise; blocks of 256, at most 4096. Consecutive threads move
//!   consecutive elements of both tensors (coalesced); each unit costs up to 4
//!   divisions to find its source.
//! - otherwise `permute_transpose`: the plane of the group contiguous in x (I)
//!   and the output's last group (J) is transposed in 32 × 32 tiles through
//!   shared memory (4224 or 2112 bytes), blocks of 32 × 8 threads, grid
//!   `(ceil(I / 32), ceil(J / 32), min(positions of the other groups, 65535))`;
//!   reads are coalesced along i, writes along j.

use super::device::{KernelArgs, LaunchConfig};
use super::pointwise::check_ndhwc;
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::layout::permute_plan;
use crate::ops::{LayoutOps, MemoryOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// Threads per block of the channel copies.
const COPY_THREADS: u32 = 256;
/// Grid cap of the channel copies (the grid-stride loop covers the rest).
const COPY_MAX_BLOCKS: usize = 4096;
/// Largest block of the row-walking kernels.
const ROW_MAX_THREADS: usize = 256;

/// Mirrors `VdLayoutArgs` in kernels/layout.cu (88 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LayoutArgs {
    src: u64,
    aux: u64,
    dst: u64,
    out: [i32; 3],
    inp: [i32; 3],
    c: i32,
    lanes: i32,
    lo: [i32; 3],
    f: [i32; 3],
    pad: [i32; 2],
}

/// Mirrors `VdPermuteArgs` in kernels/layout.cu (136 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PermuteArgs {
    src: u64,
    dst: u64,
    n: i64,
    rank: i32,
    q: i32,
    dims: [i32; 5],
    pad: i32,
    src_strides: [i64; 5],
    dst_strides: [i64; 5],
}

/// Tile edge of `permute_transpose` (blocks of 32 × 8 threads).
const PERMUTE_TILE: usize = 32;

/// One of the four variants of a spatial kernel.
#[derive(Clone, Copy)]
enum Op {
    Gather,
    UpsampleBwd,
    Maxpool,
    MaxpoolBwd,
}

fn spatial_kernel(op: Op, dtype: DType, vec: usize) -> Kernel {
    use Kernel::*;
    let v8 = vec == 8;
    match (op, dtype) {
        (Op::Gather, DType::F32) if v8 => LayoutGatherF32x8,
        (Op::Gather, DType::F32) => LayoutGatherF32x1,
        (Op::Gather, DType::BF16) if v8 => LayoutGatherBf16x8,
        (Op::Gather, DType::BF16) => LayoutGatherBf16x1,
        (Op::UpsampleBwd, DType::F32) if v8 => LayoutUpsampleBwdF32x8,
        (Op::UpsampleBwd, DType::F32) => LayoutUpsampleBwdF32x1,
        (Op::UpsampleBwd, DType::BF16) if v8 => LayoutUpsampleBwdBf16x8,
        (Op::UpsampleBwd, DType::BF16) => LayoutUpsampleBwdBf16x1,
        (Op::Maxpool, DType::F32) if v8 => LayoutMaxpoolF32x8,
        (Op::Maxpool, DType::F32) => LayoutMaxpoolF32x1,
        (Op::Maxpool, DType::BF16) if v8 => LayoutMaxpoolBf16x8,
        (Op::Maxpool, DType::BF16) => LayoutMaxpoolBf16x1,
        (Op::MaxpoolBwd, DType::F32) if v8 => LayoutMaxpoolBwdF32x8,
        (Op::MaxpoolBwd, DType::F32) => LayoutMaxpoolBwdF32x1,
        (Op::MaxpoolBwd, DType::BF16) if v8 => LayoutMaxpoolBwdBf16x8,
        (Op::MaxpoolBwd, DType::BF16) => LayoutMaxpoolBwdBf16x1,
    }
}

fn vec_for(channels: &[usize]) -> usize {
    if channels.iter().all(|c| c.is_multiple_of(8)) {
        8
    } else {
        1
    }
}

fn i32_dims(what: &str, v: [usize; 3]) -> Result<[i32; 3]> {
    let mut o = [0; 3];
    for i in 0..3 {
        o[i] = i32::try_from(v[i])
            .map_err(|_| anyhow::anyhow!("{what}: extent {} does not fit in 32 bits", v[i]))?;
    }
    Ok(o)
}

fn check_factor(op: &str, name: &str, f: [usize; 3]) -> Result<()> {
    ensure!(
        f.iter().all(|&v| v >= 1),
        "{op}: {name} {f:?} must be at least 1 in every dimension"
    );
    Ok(())
}

impl GpuBackend {
    /// Launches a spatial kernel that walks the rows of `out_shape`
    /// (see the module docs); `a` has its pointers and extents filled in.
    fn launch_rows(
        &self,
        op: Op,
        dtype: DType,
        out_shape: Shape,
        mut a: LayoutArgs,
        what: &str,
    ) -> Result<()> {
        let c = out_shape.c();
        let vec = vec_for(&[c]);
        let lanes = c / vec;
        let row_units = out_shape.w() * lanes;
        let rows = out_shape.n() * out_shape.d() * out_shape.h();
        if rows == 0 || row_units == 0 {
            return Ok(());
        }
        let threads = row_units.next_power_of_two().clamp(32, ROW_MAX_THREADS);
        let tiles = row_units.div_ceil(threads);
        ensure!(
            rows <= i32::MAX as usize && tiles <= 65535 && row_units <= i32::MAX as usize,
            "{what}: shape {out_shape} exceeds the launch grid"
        );
        a.c = c as i32;
        a.lanes = lanes as i32;
        let cfg = LaunchConfig {
            grid: [rows as u32, tiles as u32, 1],
            block: [threads as u32, 1, 1],
            shared_bytes: 0,
        };
        let mut args = KernelArgs::new().pod(&a);
        self.device()
            .launch(spatial_kernel(op, dtype, vec), cfg, &mut args)
    }

    /// `dst[row, dst_off .. dst_off + len] = src[row, src_off .. src_off + len]` for every voxel row.
    fn copy_channels(
        &self,
        src: &Tensor,
        src_off: usize,
        dst: &Tensor,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        let (sc, dc) = (src.shape().c(), dst.shape().c());
        let rows = src.numel() / sc.max(1);
        let vec = vec_for(&[sc, dc, src_off, dst_off, len]);
        let units = rows * (len / vec);
        if units == 0 {
            return Ok(());
        }
        let kernel = match (src.dtype(), vec) {
            (DType::F32, 8) => Kernel::LayoutChannelsF32x8,
            (DType::F32, _) => Kernel::LayoutChannelsF32x1,
            (DType::BF16, 8) => Kernel::LayoutChannelsBf16x8,
            (DType::BF16, _) => Kernel::LayoutChannelsBf16x1,
        };
        let blocks = units
            .div_ceil(COPY_THREADS as usize)
            .clamp(1, COPY_MAX_BLOCKS);
        let mut args = KernelArgs::new()
            .tensor(src)
            .tensor(dst)
            .i64(rows as i64)
            .i32(sc as i32)
            .i32(src_off as i32)
            .i32(dc as i32)
            .i32(dst_off as i32)
            .i32(len as i32);
        self.device().launch(
            kernel,
            LaunchConfig::linear(blocks as u32, COPY_THREADS),
            &mut args,
        )
    }
}

impl LayoutOps for GpuBackend {
    /// Concatenates NDHWC tensors of equal N, D, H, W and dtype along channels.
    fn concat_c(&self, xs: &[&Tensor]) -> Result<Tensor> {
        ensure!(!xs.is_empty(), "concat_c: no tensors to concatenate");
        let first = xs[0];
        let mut c_total = 0usize;
        for (i, x) in xs.iter().enumerate() {
            let what = format!("concat_c: tensor {i}");
            check_ndhwc(self, x, &what)?;
            ensure!(
                x.shape().dims()[..4] == first.shape().dims()[..4] && x.dtype() == first.dtype(),
                "{what} is {} {} but tensor 0 is {} {} (N, D, H, W and dtype must match)",
                x.dtype().name(),
                x.shape(),
                first.dtype().name(),
                first.shape()
            );
            c_total += x.shape().c();
        }
        ensure!(c_total <= i32::MAX as usize, "concat_c: {c_total} channels");
        let y = self.alloc(first.shape().with_c(c_total), first.dtype())?;
        let mut off = 0;
        for x in xs {
            let c = x.shape().c();
            self.copy_channels(x, 0, &y, off, c)?;
            off += c;
        }
        Ok(y)
    }

    /// Channels `[start, start + len)` of x.
    fn slice_c(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        check_ndhwc(self, x, "slice_c: x")?;
        let c = x.shape().c();
        ensure!(len >= 1, "slice_c: len must be at least 1");
        ensure!(
            start.checked_add(len).is_some_and(|e| e <= c),
            "slice_c: channels [{start}, {start}+{len}) outside the {c} channels of x ({})",
            x.shape()
        );
        let y = self.alloc(x.shape().with_c(len), x.dtype())?;
        self.copy_channels(x, start, &y, 0, len)?;
        Ok(y)
    }

    /// `y[n, p, c] = x[n, origin + p, c]` for p in the box of extents `size`.
    fn crop(&self, x: &Tensor, origin: [usize; 3], size: [usize; 3]) -> Result<Tensor> {
        check_ndhwc(self, x, "crop: x")?;
        let sp = x.shape().spatial();
        for i in 0..3 {
            ensure!(
                size[i] >= 1 && origin[i].checked_add(size[i]).is_some_and(|e| e <= sp[i]),
                "crop: box at origin {origin:?} of size {size:?} is empty or exceeds the extents {sp:?} of x"
            );
        }
        let y = self.alloc(x.shape().with_spatial(size), x.dtype())?;
        let o = i32_dims("crop: origin", origin)?;
        let a = LayoutArgs {
            src: x.addr(),
            dst: y.addr(),
            out: i32_dims("crop: size", size)?,
            inp: i32_dims("crop: x", sp)?,
            lo: [-o[0], -o[1], -o[2]],
            f: [1, 1, 1],
            ..Default::default()
        };
        self.launch_rows(Op::Gather, x.dtype(), y.shape(), a, "crop")?;
        Ok(y)
    }

    /// Zeros of spatial extents `full` with x placed at `origin` (the backward of crop).
    fn pad(&self, x: &Tensor, origin: [usize; 3], full: [usize; 3]) -> Result<Tensor> {
        check_ndhwc(self, x, "pad: x")?;
        let sp = x.shape().spatial();
        for i in 0..3 {
            ensure!(
                origin[i].checked_add(sp[i]).is_some_and(|e| e <= full[i]),
                "pad: x of extents {sp:?} at origin {origin:?} exceeds the full extents {full:?}"
            );
        }
        let y = self.alloc(x.shape().with_spatial(full), x.dtype())?;
        let a = LayoutArgs {
            src: x.addr(),
            dst: y.addr(),
            out: i32_dims("pad: full", full)?,
            inp: i32_dims("pad: x", sp)?,
            lo: i32_dims("pad: origin", origin)?,
            f: [1, 1, 1],
            ..Default::default()
        };
        self.launch_rows(Op::Gather, x.dtype(), y.shape(), a, "pad")?;
        Ok(y)
    }

    /// Nearest-neighbour upsampling: `y[n, q, c] = x[n, q / factor, c]`.
    fn upsample(&self, x: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        check_ndhwc(self, x, "upsample: x")?;
        check_factor("upsample", "factor", factor)?;
        let sp = x.shape().spatial();
        let out = [sp[0] * factor[0], sp[1] * factor[1], sp[2] * factor[2]];
        let y = self.alloc(x.shape().with_spatial(out), x.dtype())?;
        let a = LayoutArgs {
            src: x.addr(),
            dst: y.addr(),
            out: i32_dims("upsample: output", out)?,
            inp: i32_dims("upsample: x", sp)?,
            f: i32_dims("upsample: factor", factor)?,
            ..Default::default()
        };
        self.launch_rows(Op::Gather, x.dtype(), y.shape(), a, "upsample")?;
        Ok(y)
    }

    /// Backward of upsample: `dx[n, p, c] = Σ_{k < factor} dy[n, p·factor + k, c]`.
    fn upsample_bwd(&self, dy: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        check_ndhwc(self, dy, "upsample_bwd: dy")?;
        check_factor("upsample_bwd", "factor", factor)?;
        let sp = dy.shape().spatial();
        ensure!(
            (0..3).all(|i| sp[i].is_multiple_of(factor[i])),
            "upsample_bwd: dy extents {sp:?} are not multiples of the factor {factor:?}"
        );
        let out = [sp[0] / factor[0], sp[1] / factor[1], sp[2] / factor[2]];
        let dx = self.alloc(dy.shape().with_spatial(out), dy.dtype())?;
        let a = LayoutArgs {
            src: dy.addr(),
            dst: dx.addr(),
            out: i32_dims("upsample_bwd: dx", out)?,
            inp: i32_dims("upsample_bwd: dy", sp)?,
            f: i32_dims("upsample_bwd: factor", factor)?,
            ..Default::default()
        };
        self.launch_rows(Op::UpsampleBwd, dy.dtype(), dx.shape(), a, "upsample_bwd")?;
        Ok(dx)
    }

    /// Max pooling, window = stride, ceil mode (`out = ceil(in / window)`, clipped windows).
    fn maxpool(&self, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        check_ndhwc(self, x, "maxpool: x")?;
        check_factor("maxpool", "window", window)?;
        let sp = x.shape().spatial();
        let out = [
            sp[0].div_ceil(window[0]),
            sp[1].div_ceil(window[1]),
            sp[2].div_ceil(window[2]),
        ];
        let y = self.alloc(x.shape().with_spatial(out), x.dtype())?;
        let a = LayoutArgs {
            src: x.addr(),
            dst: y.addr(),
            out: i32_dims("maxpool: output", out)?,
            inp: i32_dims("maxpool: x", sp)?,
            f: i32_dims("maxpool: window", window)?,
            ..Default::default()
        };
        self.launch_rows(Op::Maxpool, x.dtype(), y.shape(), a, "maxpool")?;
        Ok(y)
    }

    /// Backward of maxpool: each output's gradient goes to the first voxel (in
    /// D, H, W scan order) of its window that holds the maximum; dx is 0 elsewhere.
    fn maxpool_bwd(&self, dy: &Tensor, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        check_ndhwc(self, x, "maxpool_bwd: x")?;
        check_ndhwc(self, dy, "maxpool_bwd: dy")?;
        check_factor("maxpool_bwd", "window", window)?;
        let sp = x.shape().spatial();
        let out = [
            sp[0].div_ceil(window[0]),
            sp[1].div_ceil(window[1]),
            sp[2].div_ceil(window[2]),
        ];
        ensure!(
            dy.shape() == x.shape().with_spatial(out) && dy.dtype() == x.dtype(),
            "maxpool_bwd: dy is {} {}, expected {} {} (the pooled shape of x)",
            dy.dtype().name(),
            dy.shape(),
            x.dtype().name(),
            x.shape().with_spatial(out)
        );
        let dx = self.alloc(x.shape(), x.dtype())?;
        let a = LayoutArgs {
            src: dy.addr(),
            aux: x.addr(),
            dst: dx.addr(),
            out: i32_dims("maxpool_bwd: dy", out)?,
            inp: i32_dims("maxpool_bwd: x", sp)?,
            f: i32_dims("maxpool_bwd: window", window)?,
            ..Default::default()
        };
        self.launch_rows(Op::MaxpoolBwd, x.dtype(), dy.shape(), a, "maxpool_bwd")?;
        Ok(dx)
    }

    /// Output dim k is x's dim `perm[k]` (see the module docs).
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        self.check(x, "permute: x")?;
        let plan = permute_plan(x.shape(), perm)?;
        let y = self.alloc(plan.out, x.dtype())?;
        let n = x.numel();
        if n == 0 {
            return Ok(y);
        }
        let mut a = PermuteArgs {
            src: x.addr(),
            dst: y.addr(),
            n: n as i64,
            rank: plan.rank as i32,
            q: plan.contiguous_group() as i32,
            dims: [1; 5],
            pad: 0,
            src_strides: [0; 5],
            dst_strides: [0; 5],
        };
        for g in 0..plan.rank {
            a.dims[g] = i32::try_from(plan.dims[g]).map_err(|_| {
                anyhow::anyhow!(
                    "permute: x ({}) has a dim of more than 2³¹ elements",
                    x.shape()
                )
            })?;
            a.src_strides[g] = plan.src_strides[g] as i64;
            a.dst_strides[g] = plan.dst_strides[g] as i64;
        }
        let mut args = KernelArgs::new().pod(&a);
        if plan.keeps_last() {
            let vec = vec_for(&[plan.dims[plan.rank - 1]]);
            let kernel = match (x.dtype(), vec) {
                (DType::F32, 8) => Kernel::LayoutPermuteCopyF32x8,
                (DType::F32, _) => Kernel::LayoutPermuteCopyF32x1,
                (DType::BF16, 8) => Kernel::LayoutPermuteCopyBf16x8,
                (DType::BF16, _) => Kernel::LayoutPermuteCopyBf16x1,
            };
            let blocks = (n / vec)
                .div_ceil(COPY_THREADS as usize)
                .clamp(1, COPY_MAX_BLOCKS);
            let cfg = LaunchConfig::linear(blocks as u32, COPY_THREADS);
            self.device().launch(kernel, cfg, &mut args)?;
        } else {
            let last = plan.rank - 1;
            let (ni, nj) = (plan.dims[plan.contiguous_group()], plan.dims[last]);
            let j_tiles = nj.div_ceil(PERMUTE_TILE);
            ensure!(
                j_tiles <= 65535,
                "permute: x ({}) moves a dim of {nj} elements to the end (at most {})",
                x.shape(),
                65535 * PERMUTE_TILE
            );
            let kernel = match x.dtype() {
                DType::F32 => Kernel::LayoutPermuteTransposeF32,
                DType::BF16 => Kernel::LayoutPermuteTransposeBf16,
            };
            let cfg = LaunchConfig {
                grid: [
                    ni.div_ceil(PERMUTE_TILE) as u32,
                    j_tiles as u32,
                    (n / (ni * nj)).min(65535) as u32,
                ],
                block: [PERMUTE_TILE as u32, 8, 1],
                shared_bytes: 0,
            };
            self.device().launch(kernel, cfg, &mut args)?;
        }
        Ok(y)
    }
}
