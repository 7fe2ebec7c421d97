//! Host side of `kernels/conv3d.cu`: 3D convolution forward, data gradient and
//! weight gradient for every [`ConvSpec`], as implicit GEMM over NDHWC tensors.
//!
//! # Which kernel runs each case
//!
//! The forward and data-gradient kernels compute
//! `out[m, co] = bias[co] + Σ_{k=(tap, ci)} A[m, k] · B[k, co]`, A gathered from
//! an activation through an index mapping (see the top of `conv3d.cu`), B the
//! f32 weight read through strides (the data gradient reads it transposed,
//! `B[(t, co), ci] = w[t, ci, co]`, no copy):
//!
//! | op | kernel | rows (GEMM M) | K | mapping |
//! |---|---|---|---|---|
//! | forward, regular | gather | N·out voxels | taps·Cin | `q = o·s + t − pad_lo` |
//! | forward, transposed | scatter (z = tap) | N·in voxels | Cin | out `i·s + t` |
//! | dgrad, transposed | gather | N·in voxels | taps·Cout | `q = i·s + t` |
//! | dgrad, kernel == stride | scatter (z = tap) | N·out voxels | Cout | dx at `o·s + t − pad_lo` |
//! | dgrad, any other | gather | N·in voxels | taps·Cout | `q = i + pad_lo − t`, input `q / s` if `s ∣ q` |
//!
//! In bf16, the gathers with `s = 1` in the last column (`e = 1`: no division
//! to find the input voxel) run on the pipelined kernels below.
//!
//! Stride-1 data gradients are the forward with flipped taps (the `b = −1` of
//! the mapping). Strided data gradients other than kernel == stride (e.g. 3×3×3
//! stride 2) take the general row: every tap is visited and the ones that fall
//! between strided positions read zeros, so such a kernel executes `s_d·s_h·s_w`
//! times the useful multiply-adds — correct, slower, and used by no model.
//!
//! The weight gradient is a GEMM per tap group: `M = taps_per_group · Cin`,
//! `N = Cout`, `K = N · voxels` (regular convs: one group of all taps, K over
//! dy voxels; transposed: one group per tap, K over x voxels), split into K
//! ranges over blocks; `vd_conv3d_wgrad_reduce` sums the partials in split order
//! (deterministic) and the bias gradient `Σ dy` alongside.
//!
//! # Launch geometry
//!
//! - gather / scatter: blocks of [`CONV_THREADS`] = 256 threads compute a
//!   [`CONV_BM`] × [`CONV_BN`] = 64 voxels × 64 channels output tile. The K
//!   loop stages [`CONV_BK`] = 16 columns of A and B per step (each thread
//!   gathers 4 + 4 elements: K column `t % 16`, rows/channels `t / 16 + 16j`),
//!   two barriers per step, then the compute core runs the step:
//!   f32 activations on the FMA core (each thread a 4 × 4 micro-tile, rows
//!   `4·(t / 16)..`, channels `4·(t % 16)..`; tiles in f32, 8704 bytes of
//!   static shared memory), bf16 activations on tensor cores (8 warps in a
//!   2 × 4 grid, each 32 voxels × 16 channels = 2 × 2 `mma.sync.m16n8k16`
//!   per step from ldmatrix.x4 fragments; tiles in bf16, 6144 bytes). Grid
//!   `(ceil(M / 64), ceil(N / 64), 1 | taps)`.
//! - bf16 gathers with `e == 1` and at most [`PIPE_MAX_TAPS`] taps (every
//!   forward, stride-1 and transposed data gradient: [`takes_pipeline`]) run
//!   on the pipelined kernels `vd_conv3d_fprop_{128x32,128x64,64x64}[_splitk]_bf16`
//!   (kernels/conv3d_pipe.cuh). An activation whose channels are not a
//!   multiple of 8 (the stem's 15, the head gradient's 14) or not 16-byte
//!   aligned is first copied with its channels zero-padded to the next
//!   multiple of 8 (`vd_conv3d_pad_channels`, one 16-byte chunk per thread);
//!   `vd_conv3d_pack_weights` writes the weight as bf16 `[tap][N][Cin_pad]`
//!   (zeros past Cin; one thread per element, the data gradient's transpose
//!   included). Blocks of [`PIPE_THREADS`] = 128 threads (4 warps); the tile
//!   per layer ([`fprop_tiling`]): 128 × 32 (warp tiles 32 × 32) when
//!   Cout ≤ 32, else 128 × 64 (warp tiles 64 × 32) when that still gives a
//!   block per SM ([`SMS`]), else 64 × 64 (warp tiles 32 × 32). Each thread
//!   computes, once, its rows' element offsets and 32-bit masks of the taps
//!   that land inside the input; the K loop (steps of [`FPROP_BK`] = 64
//!   columns, [`FPROP_STAGES`] = 3 cp.async stages in dynamic shared memory
//!   (69–83 KB per block), one barrier per step) adds the tap's offset and
//!   tests a mask bit per 16-byte chunk (8 channels of one voxel, zero-filled
//!   where the tap leaves the input): 8 chunks of A and 2–4 of B per thread
//!   per step.
//!   Grid `(ceil(M / BM), ceil(N / BN), splits)`. When that grid has fewer
//!   blocks than SMs, K is split (`_splitk`: each split at least
//!   [`SPLIT_MIN_STEPS`] steps) into f32 partials `[splits][M][N]` that
//!   `vd_conv3d_splitk_reduce_bf16` sums in split order with the bias
//!   (deterministic; a thread per 4 outputs, blocks of 256, grid ≤ 4096);
//!   without a split the epilogue adds the bias, stages the bf16 tile in
//!   shared memory and stores 16-byte vectors.
//! - bf16 scatters (channels zero-padded to a multiple of 8 first where
//!   they are not, e.g. the head's data gradient from 14 channels):
//!   `vd_conv3d_pack_weights`, then `vd_conv3d_scatter_async_bf16` runs the
//!   64 × 64 tile with 32-column steps in a two-stage cp.async pipeline: each
//!   thread copies one 16-byte chunk of A and one of B per step; 20480 bytes
//!   of static shared memory. bf16 gathers with `e > 1` (strided data
//!   gradients other than kernel == stride, used by no model) take the
//!   register loader above.
//! - wgrad partial, f32: the same tile, step and cores over (tap, ci) rows ×
//!   Cout (loader: row/channel `t % 64`, K columns `t / 64 + 4j`); grid
//!   `(M tiles · N tiles, splits, tap groups)`. Blocks of the first M tile
//!   also sum the dy values they load (the bias partial, 1 KiB more shared
//!   memory for the in-block sum).
//! - wgrad partial, bf16: the pipelined tensor-core loop
//!   (`vd_conv3d_wgrad_pipe[_transposed]_{128x32,64x64}_bf16`, 128 threads,
//!   warp tiles 32 × 32; 128 × 32 when Cout ≤ 32, else 64 × 64): x and dy
//!   with channels zero-padded to multiples of 8 where needed; K steps of
//!   [`WGRAD_BK`] = 32 voxels, 4 cp.async stages (45056 / 36864 bytes of
//!   dynamic shared memory), each thread copying, per step, 16-byte chunks of
//!   one voxel (`t / 4`): 8 channels of A (x at the voxel's base address plus
//!   the chunk's precomputed tap offset, a range test per axis) and of B (dy). Tiles are staged k-major as
//!   they lie in memory and read with ldmatrix.trans; the voxel advances by
//!   carries, no division. The bias gradient is one more GEMM row of ones
//!   (its product is `Σ_v dy[v, co]`). Grid `(M tiles, N tiles, splits ·
//!   groups)`.
//! - Both: `splits` is chosen so the grid has about [`WGRAD_TARGET_BLOCKS`]
//!   blocks (4 per SM of an H100) but each split keeps at least
//!   [`WGRAD_MIN_STEPS`] K steps; workspace `splits · taps · Cin_pad ·
//!   Cout_pad` f32 (+ `splits · groups · Cout_pad` for the bias).
//! - wgrad reduce: one thread per weight (and bias) element, summing the
//!   splits in order (deterministic) and dropping padded channels, blocks of
//!   256, grid `ceil(elements / 256)` capped at 4096 (grid-stride beyond).
//!
//! # Cost (counted)
//!
//! One pass (forward, data or weight gradient) of a convolution costs
//! `2 · N · V · taps · Cin · Cout` FLOPs, V = output voxels for regular convs
//! and input voxels for transposed ones ([`ConvSpec::macs`]; [`conv_flops`]).
//! The fewest bytes each must move (every tensor read or written once, weights
//! f32, activations in their dtype): forward `|x| + |w| + |y| (+ |b|)`, data
//! gradient `|dy| + |w| + |dx|`, weight gradient `|x| + |dy| + |dw| (+ |db|)`
//! ([`conv_min_bytes`]). Example, the 32→32 3×3×3 layer of the ImgX UNet at
//! 1×32×128×128 bf16: 29.0 GFLOP per pass against 67 MB, arithmetic intensity
//! ≈ 430 FLOP/byte, so compute-bound on an H100 (≈ 267 FLOP/byte at 800 TFLOP/s
//! and 3 TB/s): floor ≈ 36 µs. The f32 path can reach at most the f32 FMA peak
//! (≈ 67 TFLOP/s on an H100 SXM). Packing the weight adds `|w|·(4 + 2)` bytes
//! per call, padding channels `|x|·(1 + pad/C)`; the weight gradient also
//! moves its workspace, `2 · splits · |dw|` f32, and a split-K forward
//! `2 · splits · |y|` f32.
//!
//! Issue, counted: on an H100 one SM retires one m16n8k16 HMMA per clock at
//! the dense bf16 peak and each of its 4 sub-partitions issues one warp
//! instruction per clock, so a warp may issue about 4 instructions per HMMA
//! before instruction issue, not the tensor cores, sets the pace. Static
//! instructions of the K loop body per HMMA in it, from the SASS of the
//! embedded CUBINs (`nvdisasm`; sm_90, sm_80 in brackets):
//!
//! | kernel | instructions / HMMA in the K loop |
//! |---|---|
//! | before: `gather_async` (64 × 64, 32 columns, 2 stages) | 241 / 8 = 30.1 (215 / 8 = 26.9) |
//! | before: `gather` bf16 register loader (stem, e > 1) | 670 / 4 = 167 |
//! | before: `wgrad` bf16 register loader | 395 / 4 = 98.8 (350 / 4 = 87.5) |
//! | `fprop_128x32` (Cout ≤ 32 layers) | 171 / 32 = 5.3 (157 / 32 = 4.9) |
//! | `fprop_128x64` | 222 / 64 = 3.5 (207 / 64 = 3.2) |
//! | `fprop_64x64` (and `_splitk`) | 158 / 32 = 4.9 (143 / 32 = 4.5) |
//! | `wgrad_pipe_128x32` | 209 / 16 = 13.1 (186 / 16 = 11.6) |
//! | `wgrad_pipe_64x64` | 160 / 16 = 10.0 (145 / 16 = 9.1) |
//! | `scatter_async` (unchanged) | 90 / 8 = 11.2 |
//!
//! The 64-column step amortises the barrier, the wait and the K advance over
//! 32 HMMA per warp; a loader chunk costs a 64-bit add, a mask AND, a select
//! and the LDGSTS. The weight gradient's step is 16 HMMA per warp (32 voxels)
//! and each A chunk still tests its tap's range on three axes: with 2× the
//! forward's issue per HMMA it is the kernel to tune next.
//!
//! Modelled H100 time of the conv passes of the paper step (the ImgX UNet
//! 32/64/128/256 on 1×32×128×128, recycling: two forwards, one backward;
//! `scripts/model-conv-h100.py` holds the model and its inputs, per launch
//! `max(executed FLOPs / (989 TFLOP/s · min(0.67, 4 / I) · wave efficiency),
//! bytes / 3 TB/s)`): before 18.5 ms (forwards 7.6, data gradients 2.7,
//! weight gradients 8.1); now 1.53 ms (0.62, 0.29, 0.63) for 625 GFLOP,
//! 409 TFLOP/s. A modelled figure, not a measurement: no GPU has run these
//! kernels.

use super::device::{KernelArgs, LaunchConfig};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::ConvSpec;
use crate::ops::{ConvOps, MemoryOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Context, Result};

/// Output voxels per block tile (GEMM M).
pub const CONV_BM: usize = 64;
/// Output channels per block tile (GEMM N).
pub const CONV_BN: usize = 64;
/// K columns staged per step.
pub const CONV_BK: usize = 16;
/// Threads per block (a 16 × 16 grid of 4 × 4 micro-tiles).
pub const CONV_THREADS: u32 = 256;
/// The weight gradient splits K until its grid has about this many blocks.
pub const WGRAD_TARGET_BLOCKS: usize = 4 * 132;
/// Fewest K steps of [`CONV_BK`] voxels per weight-gradient split.
pub const WGRAD_MIN_STEPS: usize = 4;
const REDUCE_THREADS: u32 = 256;
const REDUCE_MAX_BLOCKS: usize = 4096;

/// FLOPs of one pass (forward, data or weight gradient) of `spec` on input `x` to `cout` channels.
pub fn conv_flops(spec: ConvSpec, x: Shape, cout: usize) -> u64 {
    2 * spec.macs(x, cout)
}

/// Fewest bytes one pass must move: input activation, weight (f32), output
/// activation, each once (the same for forward, data and weight gradient up to
/// which of them is read and which written), plus the bias when present.
pub fn conv_min_bytes(spec: ConvSpec, x: Shape, cout: usize, act: DType, bias: bool) -> u64 {
    let y = x.with_spatial(spec.out_spatial(x.spatial())).with_c(cout);
    let w = spec.taps() * x.c() * cout;
    ((x.numel() + y.numel()) * act.size() + (w + if bias { cout } else { 0 }) * 4) as u64
}

/// Mirrors `VdConvArgs` in kernels/conv3d.cu (144 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvGemmArgs {
    x: u64,
    w: u64,
    bias: u64,
    y: u64,
    n: i32,
    cin: i32,
    cout: i32,
    rows: i32,
    in_dims: [i32; 3],
    out_dims: [i32; 3],
    kernel: [i32; 3],
    map_a: [i32; 3],
    map_b: [i32; 3],
    map_c: [i32; 3],
    map_e: [i32; 3],
    w_tap: i32,
    w_ci: i32,
    w_co: i32,
}

/// Mirrors `VdConvWgradArgs` in kernels/conv3d.cu (120 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvWgradArgs {
    x: u64,
    dy: u64,
    ws: u64,
    ws_bias: u64,
    n: i32,
    cin: i32,
    cout: i32,
    taps_m: i32,
    x_dims: [i32; 3],
    dy_dims: [i32; 3],
    kernel: [i32; 3],
    stride: [i32; 3],
    pad: [i32; 3],
    n_tiles: i32,
    k_total: i32,
    k_chunk: i32,
}

/// Mirrors `VdConvPipeArgs` in kernels/conv3d_pipe.cuh (152 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvPipeArgs {
    x: u64,
    bt: u64,
    bias: u64,
    y: u64,
    ws: u64,
    rows: i32,
    cin: i32,
    cout: i32,
    taps: i32,
    in_dims: [i32; 3],
    out_dims: [i32; 3],
    kernel: [i32; 3],
    map_a: [i32; 3],
    map_b: [i32; 3],
    map_c: [i32; 3],
    tap_step: [i32; 3],
    steps: i32,
    split_steps: i32,
    pad: i32,
}

/// Mirrors `VdConvWgradPipeArgs` in kernels/conv3d_pipe.cuh (112 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvWgradPipeArgs {
    x: u64,
    dy: u64,
    ws: u64,
    ws_bias: u64,
    cin: i32,
    cout: i32,
    rows: i32,
    x_dims: [i32; 3],
    dy_dims: [i32; 3],
    kernel: [i32; 3],
    stride: [i32; 3],
    pad: [i32; 3],
    k_total: i32,
    k_chunk: i32,
}

/// Streaming multiprocessors of the GPU the tiles are chosen for (H100 SXM).
pub const SMS: usize = 132;
/// K columns per step of the pipelined forward / data gradient.
pub const FPROP_BK: usize = 64;
/// Cp.async stages of the pipelined forward / data gradient.
pub const FPROP_STAGES: usize = 3;
/// K voxels per step of the pipelined weight gradient.
pub const WGRAD_BK: usize = 32;
/// Threads per block of the pipelined kernels (4 warps).
pub const PIPE_THREADS: u32 = 128;
/// Fewest K steps of [`FPROP_BK`] a split of a split-K forward gets.
pub const SPLIT_MIN_STEPS: usize = 4;
/// The pipelined forward handles kernels of at most this many taps (a 32-bit tap mask per row).
pub const PIPE_MAX_TAPS: usize = 32;

/// The block tile, kernel and K split of a pipelined forward / data gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpropTiling {
    pub kernel: Kernel,
    pub bm: usize,
    pub bn: usize,
    /// K steps of [`FPROP_BK`] in all.
    pub steps: usize,
    /// K splits (grid z); 1 = no split.
    pub splits: usize,
    /// K steps per split.
    pub split_steps: usize,
    /// Dynamic shared memory per block: the pipeline stages.
    pub shared_bytes: u32,
}

/// The tile of a pipelined forward / data gradient with `rows` GEMM rows,
/// `cout` output channels and `k` GEMM K columns (steps of [`FPROP_BK`]): a
/// 32-wide N tile when Cout ≤ 32 (no half-empty tiles at the 32-channel
/// levels), else 64; 128-row M tiles where that still gives a block per SM,
/// else 64; and when the grid has fewer blocks than [`SMS`], K split until it
/// has about one per SM, each split keeping at least [`SPLIT_MIN_STEPS`] steps.
pub fn fprop_tiling(rows: usize, cout: usize, k: usize) -> FpropTiling {
    let steps = k.div_ceil(FPROP_BK);
    let bn = if cout <= 32 { 32 } else { 64 };
    let bm = if bn == 32 || rows.div_ceil(128) * cout.div_ceil(64) >= SMS {
        128
    } else {
        64
    };
    let blocks = rows.div_ceil(bm) * cout.div_ceil(bn);
    let want = if blocks < SMS {
        SMS.div_ceil(blocks).min(steps / SPLIT_MIN_STEPS).max(1)
    } else {
        1
    };
    let split_steps = steps.div_ceil(want).max(1);
    let splits = steps.div_ceil(split_steps).max(1);
    let kernel = match (bm, bn, splits > 1) {
        (128, 32, false) => Kernel::Conv3dFprop128x32Bf16,
        (128, 32, true) => Kernel::Conv3dFprop128x32SplitkBf16,
        (128, 64, _) => Kernel::Conv3dFprop128x64Bf16,
        (_, _, false) => Kernel::Conv3dFprop64x64Bf16,
        (_, _, true) => Kernel::Conv3dFprop64x64SplitkBf16,
    };
    FpropTiling {
        kernel,
        bm,
        bn,
        steps,
        splits,
        split_steps,
        shared_bytes: (FPROP_STAGES * (bm + bn) * (FPROP_BK + 8) * 2) as u32,
    }
}

/// How the forward / data-gradient GEMM reads its operands (see the table above).
struct GemmPlan {
    /// Scatter (one tap per grid z, K = Cin) or gather (K = taps · Cin).
    scatter: bool,
    kernel: [usize; 3],
    /// Per axis `q = o·a + t·b + c`, input `q / e` (gather) or output `q` (scatter).
    map_a: [i64; 3],
    map_b: [i64; 3],
    map_c: [i64; 3],
    map_e: [i64; 3],
    /// Element `(t, k, n)` of B at `t·w_tap + k·w_ci + n·w_co`.
    w_tap: usize,
    w_ci: usize,
    w_co: usize,
}

fn i32_of(v: i64, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} does not fit the kernel's 32-bit index"))
}

fn dims_i32(d: [usize; 3], what: &str) -> Result<[i32; 3]> {
    Ok([
        i32_of(d[0] as i64, what)?,
        i32_of(d[1] as i64, what)?,
        i32_of(d[2] as i64, what)?,
    ])
}

fn map_i32(v: [i64; 3], what: &str) -> Result<[i32; 3]> {
    Ok([
        i32_of(v[0], what)?,
        i32_of(v[1], what)?,
        i32_of(v[2], what)?,
    ])
}

/// The kernel of a forward / data-gradient GEMM that does not take the
/// pipelined path ([`takes_pipeline`]): f32 on the FMA core; bf16 scatters
/// through the cp.async pipeline (channels padded to a multiple of 8 first
/// when they are not), bf16 gathers with `e > 1` on the register loader.
pub fn gemm_kernel(scatter: bool, dtype: DType) -> Kernel {
    match (scatter, dtype) {
        (false, DType::F32) => Kernel::Conv3dGatherF32,
        (true, DType::F32) => Kernel::Conv3dScatterF32,
        (false, DType::BF16) => Kernel::Conv3dGatherBf16,
        (true, DType::BF16) => Kernel::Conv3dScatterAsyncBf16,
    }
}

/// Whether a forward / data-gradient GEMM takes the pipelined kernels: bf16,
/// a gather whose input index needs no division (e == 1), at most
/// [`PIPE_MAX_TAPS`] taps.
pub fn takes_pipeline(scatter: bool, dtype: DType, map_e: [i64; 3], taps: usize) -> bool {
    dtype == DType::BF16 && !scatter && map_e == [1; 3] && taps <= PIPE_MAX_TAPS
}

impl GpuBackend {
    /// A non-empty NDHWC activation on this device.
    fn check_activation(&self, t: &Tensor, what: &str) -> Result<()> {
        self.check(t, what)?;
        ensure!(
            t.shape().rank() == 5 && t.numel() > 0,
            "{what}: shape {:?} is not a non-empty NDHWC shape",
            t.shape()
        );
        i32_of(t.shape().n() as i64 * t.shape().voxels() as i64, what)?;
        Ok(())
    }

    /// One launch of `vd_conv3d_gather_*` / `vd_conv3d_scatter_*`: `x` is the
    /// GEMM's input activation, `y` its output (allocated by the caller, same dtype).
    fn implicit_gemm(
        &self,
        plan: &GemmPlan,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<()> {
        let taps: usize = plan.kernel.iter().product();
        if takes_pipeline(plan.scatter, x.dtype(), plan.map_e, taps) {
            return self.fprop_pipelined(plan, x, w, bias, y);
        }
        let (xs, ys) = (x.shape(), y.shape());
        let kernel = gemm_kernel(plan.scatter, x.dtype());
        // The bf16 scatter reads 16-byte chunks: channels padded to a multiple of 8.
        let cin = xs.c();
        let cin_pad = if kernel == Kernel::Conv3dScatterAsyncBf16 {
            cin.next_multiple_of(8)
        } else {
            cin
        };
        let padded;
        let x = if kernel == Kernel::Conv3dScatterAsyncBf16
            && (cin_pad != cin || !x.addr().is_multiple_of(16))
        {
            padded = self.pad_channels(x, cin_pad)?;
            &padded
        } else {
            x
        };
        // Gather rows are output voxels; scatter rows are input voxels.
        let rows = if plan.scatter {
            xs.n() * xs.voxels()
        } else {
            ys.n() * ys.voxels()
        };
        let args = ConvGemmArgs {
            x: x.addr(),
            w: w.addr(),
            bias: bias.map_or(0, |b| b.addr()),
            y: y.addr(),
            n: i32_of(xs.n() as i64, "batch")?,
            cin: i32_of(cin_pad as i64, "input channels")?,
            cout: i32_of(ys.c() as i64, "output channels")?,
            rows: i32_of(rows as i64, "rows")?,
            in_dims: dims_i32(xs.spatial(), "input extent")?,
            out_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(plan.kernel, "kernel")?,
            map_a: map_i32(plan.map_a, "stride")?,
            map_b: map_i32(plan.map_b, "tap step")?,
            map_c: map_i32(plan.map_c, "padding")?,
            map_e: map_i32(plan.map_e, "stride")?,
            w_tap: i32_of(plan.w_tap as i64, "weight tap stride")?,
            w_ci: i32_of(plan.w_ci as i64, "weight channel stride")?,
            w_co: i32_of(plan.w_co as i64, "weight channel stride")?,
        };
        let grid = [
            i32_of(rows.div_ceil(CONV_BM) as i64, "row tiles")? as u32,
            i32_of(ys.c().div_ceil(CONV_BN) as i64, "channel tiles")? as u32,
            if plan.scatter {
                u32::try_from(taps)
                    .ok()
                    .filter(|&t| t <= 65535)
                    .context("more than 65535 taps")?
            } else {
                1
            },
        ];
        let cfg = LaunchConfig {
            grid,
            block: [CONV_THREADS, 1, 1],
            shared_bytes: 0,
        };
        if kernel != Kernel::Conv3dScatterAsyncBf16 {
            let mut kargs = KernelArgs::new().pod(&args);
            return self.device().launch(kernel, cfg, &mut kargs);
        }
        let bt = self.pack_weights(plan, w, taps, ys.c(), cin, cin_pad)?;
        let mut kargs = KernelArgs::new().pod(&args).tensor(&bt);
        self.device().launch(kernel, cfg, &mut kargs)
    }

    /// The weight as the B operand of the cp.async kernels: bf16
    /// `bt[tap][n][c]` for n < `n_out` (the GEMM's N), c < `n_in_pad` (its
    /// input channels, zero past `n_in`), read from the f32 weight through the
    /// plan's strides: one thread per element, blocks of 256, grid capped at
    /// 4096 (grid-stride beyond).
    fn pack_weights(
        &self,
        plan: &GemmPlan,
        w: &Tensor,
        taps: usize,
        n_out: usize,
        n_in: usize,
        n_in_pad: usize,
    ) -> Result<Tensor> {
        let packed = taps * n_out * n_in_pad;
        i32_of(packed as i64, "packed weight elements")?;
        let bt = self.alloc(Shape::new(&[packed]), DType::BF16)?;
        let blocks = packed
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut pargs = KernelArgs::new()
            .tensor(w)
            .tensor(&bt)
            .i32(taps as i32)
            .i32(n_out as i32)
            .i32(n_in as i32)
            .i32(n_in_pad as i32)
            .i32(i32_of(plan.w_tap as i64, "weight tap stride")?)
            .i32(i32_of(plan.w_ci as i64, "weight channel stride")?)
            .i32(i32_of(plan.w_co as i64, "weight channel stride")?);
        self.device()
            .launch(
                Kernel::Conv3dPackWeights,
                LaunchConfig::linear(blocks, REDUCE_THREADS),
                &mut pargs,
            )
            .context("packing the weight as bf16")?;
        Ok(bt)
    }

    /// `x` with its channels zero-padded to `c_pad` (a multiple of 8) in a new
    /// tensor: one 16-byte output chunk per thread, blocks of 256, grid capped
    /// at 4096. Costs one read and one write of `x`.
    fn pad_channels(&self, x: &Tensor, c_pad: usize) -> Result<Tensor> {
        let xs = x.shape();
        let voxels = xs.n() * xs.voxels();
        let out = self.alloc(xs.with_c(c_pad), DType::BF16)?;
        let blocks = (voxels * c_pad / 8)
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&out)
            .i64(voxels as i64)
            .i32(xs.c() as i32)
            .i32(c_pad as i32);
        self.device()
            .launch(
                Kernel::Conv3dPadChannels,
                LaunchConfig::linear(blocks, REDUCE_THREADS),
                &mut args,
            )
            .context("padding the channels to a multiple of 8")?;
        Ok(out)
    }

    /// A bf16 gather GEMM with e == 1 on the pipelined kernels
    /// (`vd_conv3d_fprop_*`, see the module doc): channels padded to a
    /// multiple of 8 when they are not, the weight packed, the tile chosen by
    /// [`fprop_tiling`], and with split K the reduction that adds the bias.
    fn fprop_pipelined(
        &self,
        plan: &GemmPlan,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<()> {
        let (xs, ys) = (x.shape(), y.shape());
        let (cin, cout) = (xs.c(), ys.c());
        let cin_pad = cin.next_multiple_of(8);
        let padded;
        let x = if cin_pad != cin || !x.addr().is_multiple_of(16) {
            padded = self.pad_channels(x, cin_pad)?;
            &padded
        } else {
            x
        };
        let taps: usize = plan.kernel.iter().product();
        let rows = ys.n() * ys.voxels();
        // 32-bit element offsets inside the kernel.
        i32_of((xs.n() * xs.voxels() * cin_pad) as i64, "input elements")?;
        i32_of((rows * cout) as i64, "output elements")?;
        let t = fprop_tiling(rows, cout, taps * cin_pad);
        let bt = self.pack_weights(plan, w, taps, cout, cin, cin_pad)?;
        let ws = if t.splits > 1 {
            i32_of((t.splits * rows * cout) as i64, "split-K workspace")?;
            Some(self.alloc(Shape::new(&[t.splits * rows * cout]), DType::F32)?)
        } else {
            None
        };
        let [_, in_h, in_w] = xs.spatial().map(|v| v as i64);
        let [_, kh, kw] = plan.kernel.map(|v| v as i64);
        let c = cin_pad as i64;
        // A's offset per tap step along w, h, d (map_b is ±1 per axis).
        let dw = plan.map_b[2] * c;
        let dh = plan.map_b[1] * in_w * c;
        let dd = plan.map_b[0] * in_h * in_w * c;
        let args = ConvPipeArgs {
            x: x.addr(),
            bt: bt.addr(),
            bias: bias.map_or(0, |b| b.addr()),
            y: y.addr(),
            ws: ws.as_ref().map_or(0, |t| t.addr()),
            rows: i32_of(rows as i64, "rows")?,
            cin: i32_of(c, "input channels")?,
            cout: i32_of(cout as i64, "output channels")?,
            taps: taps as i32,
            in_dims: dims_i32(xs.spatial(), "input extent")?,
            out_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(plan.kernel, "kernel")?,
            map_a: map_i32(plan.map_a, "stride")?,
            map_b: map_i32(plan.map_b, "tap step")?,
            map_c: map_i32(plan.map_c, "padding")?,
            tap_step: map_i32(
                [dw, dh - (kw - 1) * dw, dd - (kh - 1) * dh - (kw - 1) * dw],
                "tap offset",
            )?,
            steps: i32_of(t.steps as i64, "K steps")?,
            split_steps: t.split_steps as i32,
            pad: 0,
        };
        let cfg = LaunchConfig {
            grid: [
                i32_of(rows.div_ceil(t.bm) as i64, "row tiles")? as u32,
                i32_of(cout.div_ceil(t.bn) as i64, "channel tiles")? as u32,
                t.splits as u32,
            ],
            block: [PIPE_THREADS, 1, 1],
            shared_bytes: t.shared_bytes,
        };
        let mut kargs = KernelArgs::new().pod(&args);
        self.device().launch(t.kernel, cfg, &mut kargs)?;
        let Some(ws) = ws else { return Ok(()) };
        // y = bias + Σ partials, split order: a thread per 4 outputs (per
        // output when Cout is not a multiple of 4), blocks of 256, grid ≤ 4096.
        let elems = rows * cout;
        let items = if cout.is_multiple_of(4) {
            elems / 4
        } else {
            elems
        };
        let blocks = items
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut rargs = KernelArgs::new()
            .tensor(&ws)
            .ptr(bias.map_or(0, |b| b.addr()))
            .tensor(y)
            .i64(elems as i64)
            .i32(cout as i32)
            .i32(t.splits as i32);
        self.device()
            .launch(
                Kernel::Conv3dSplitkReduceBf16,
                LaunchConfig::linear(blocks, REDUCE_THREADS),
                &mut rargs,
            )
            .context("split-K reduction")
    }

    /// The f32 weight gradient's partial sums (FMA core, register loader).
    fn wgrad_f32(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<WgradPartials> {
        let (xs, ys) = (x.shape(), dy.shape());
        let x_dims = xs.spatial();
        let (cin, cout, taps) = (xs.c(), ys.c(), spec.taps());
        // Regular: one group of all taps, K over dy voxels; transposed: a group per tap, K over x voxels.
        let (groups, taps_m, k_total) = if spec.transposed {
            (taps, 1, xs.n() * xs.voxels())
        } else {
            (1, taps, ys.n() * ys.voxels())
        };
        // The kernel steps its voxel counters up to 4·CONV_BK past k_total.
        i32_of((k_total + 4 * CONV_BK) as i64, "voxels")?;
        let (m_tiles, n_tiles) = ((taps_m * cin).div_ceil(CONV_BM), cout.div_ceil(CONV_BN));
        let (k_chunk, splits) = wgrad_splits(m_tiles * n_tiles * groups, k_total, CONV_BK);
        let ws = self.alloc(Shape::new(&[splits * taps * cin * cout]), DType::F32)?;
        let ws_bias = if with_bias {
            Some(self.alloc(Shape::new(&[splits * groups * cout]), DType::F32)?)
        } else {
            None
        };
        let args = ConvWgradArgs {
            x: x.addr(),
            dy: dy.addr(),
            ws: ws.addr(),
            ws_bias: ws_bias.as_ref().map_or(0, |t| t.addr()),
            n: i32_of(xs.n() as i64, "batch")?,
            cin: i32_of(cin as i64, "input channels")?,
            cout: i32_of(cout as i64, "output channels")?,
            taps_m: i32_of(taps_m as i64, "taps")?,
            x_dims: dims_i32(x_dims, "input extent")?,
            dy_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(spec.kernel, "kernel")?,
            stride: dims_i32(spec.stride, "stride")?,
            pad: dims_i32(spec.pad_lo(x_dims), "padding")?,
            n_tiles: i32_of(n_tiles as i64, "channel tiles")?,
            k_total: i32_of(k_total as i64, "voxels")?,
            k_chunk: i32_of(k_chunk as i64, "voxels per split")?,
        };
        let kernel = if spec.transposed {
            Kernel::Conv3dWgradTransposedF32
        } else {
            Kernel::Conv3dWgradF32
        };
        let cfg = LaunchConfig {
            grid: [
                i32_of((m_tiles * n_tiles) as i64, "tiles")? as u32,
                splits as u32,
                u32::try_from(groups)
                    .ok()
                    .filter(|&g| g <= 65535)
                    .context("more than 65535 taps")?,
            ],
            block: [CONV_THREADS, 1, 1],
            shared_bytes: 0,
        };
        let mut kargs = KernelArgs::new().pod(&args);
        self.device()
            .launch(kernel, cfg, &mut kargs)
            .context("conv3d_wgrad partial sums")?;
        Ok(WgradPartials {
            ws,
            ws_bias,
            splits,
            groups,
            cin_pad: cin,
            cout_pad: cout,
        })
    }

    /// The bf16 weight gradient's partial sums on the pipelined tensor-core
    /// kernels (`vd_conv3d_wgrad_pipe_*`, see the module doc): x and dy with
    /// their channels zero-padded to multiples of 8 when they are not, and the
    /// bias gradient as the product of an extra M row of ones.
    fn wgrad_pipelined(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<WgradPartials> {
        let (xs, ys) = (x.shape(), dy.shape());
        let x_dims = xs.spatial();
        let (cin, cout, taps) = (xs.c(), ys.c(), spec.taps());
        let (cin_pad, cout_pad) = (cin.next_multiple_of(8), cout.next_multiple_of(8));
        let (px, pdy);
        let x = if cin_pad != cin || !x.addr().is_multiple_of(16) {
            px = self.pad_channels(x, cin_pad)?;
            &px
        } else {
            x
        };
        let dy = if cout_pad != cout || !dy.addr().is_multiple_of(16) {
            pdy = self.pad_channels(dy, cout_pad)?;
            &pdy
        } else {
            dy
        };
        // 32-bit element offsets inside the kernel (64-bit for the voxel offsets).
        i32_of((xs.n() * xs.voxels() * cin_pad) as i64, "input elements")?;
        let (groups, taps_m, k_total) = if spec.transposed {
            (taps, 1, xs.n() * xs.voxels())
        } else {
            (1, taps, ys.n() * ys.voxels())
        };
        // The voxel counter runs up to WGRAD_BK · stages past k_total.
        i32_of((k_total + 8 * WGRAD_BK) as i64, "voxels")?;
        let rows = taps_m * cin_pad;
        let (bm, bn, kernel) = match (cout_pad <= 32, spec.transposed) {
            (true, false) => (128, 32, Kernel::Conv3dWgradPipe128x32Bf16),
            (false, false) => (64, 64, Kernel::Conv3dWgradPipe64x64Bf16),
            (true, true) => (128, 32, Kernel::Conv3dWgradPipeTransposed128x32Bf16),
            (false, true) => (64, 64, Kernel::Conv3dWgradPipeTransposed64x64Bf16),
        };
        let (m_tiles, n_tiles) = (
            (rows + with_bias as usize).div_ceil(bm),
            cout_pad.div_ceil(bn),
        );
        let (k_chunk, splits) = wgrad_splits(m_tiles * n_tiles * groups, k_total, WGRAD_BK);
        let ws = self.alloc(
            Shape::new(&[splits * taps * cin_pad * cout_pad]),
            DType::F32,
        )?;
        let ws_bias = if with_bias {
            Some(self.alloc(Shape::new(&[splits * groups * cout_pad]), DType::F32)?)
        } else {
            None
        };
        let args = ConvWgradPipeArgs {
            x: x.addr(),
            dy: dy.addr(),
            ws: ws.addr(),
            ws_bias: ws_bias.as_ref().map_or(0, |t| t.addr()),
            cin: cin_pad as i32,
            cout: cout_pad as i32,
            rows: i32_of(rows as i64, "weight rows")?,
            x_dims: dims_i32(x_dims, "input extent")?,
            dy_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(spec.kernel, "kernel")?,
            stride: dims_i32(spec.stride, "stride")?,
            pad: dims_i32(spec.pad_lo(x_dims), "padding")?,
            k_total: k_total as i32,
            k_chunk: k_chunk as i32,
        };
        let z = u32::try_from(splits * groups)
            .ok()
            .filter(|&z| z <= 65535)
            .context("more than 65535 splits × tap groups")?;
        let cfg = LaunchConfig {
            grid: [m_tiles as u32, n_tiles as u32, z],
            block: [PIPE_THREADS, 1, 1],
            shared_bytes: (4 * WGRAD_BK * (bm + 8 + bn + 8) * 2) as u32,
        };
        let mut kargs = KernelArgs::new().pod(&args).i32(splits as i32);
        self.device()
            .launch(kernel, cfg, &mut kargs)
            .context("conv3d_wgrad partial sums")?;
        Ok(WgradPartials {
            ws,
            ws_bias,
            splits,
            groups,
            cin_pad,
            cout_pad,
        })
    }
}

impl ConvOps for GpuBackend {
    /// `y = conv(x, w) + bias` ([`ConvSpec`]); y has x's dtype.
    fn conv3d(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        self.check_activation(x, "conv3d input")?;
        self.check(w, "conv3d weight")?;
        let (cin, cout, y_shape) = spec.forward_shapes(x.shape(), w, bias)?;
        if let Some(b) = bias {
            self.check(b, "conv3d bias")?;
            ensure!(
                b.dtype() == DType::F32,
                "conv3d bias: dtype {} (f32 expected)",
                b.dtype().name()
            );
        }
        let x_dims = x.shape().spatial();
        let y = self.alloc(y_shape, x.dtype())?;
        self.check_activation(&y, "conv3d output")?;
        let s = spec.stride.map(|v| v as i64);
        let plan = if spec.transposed {
            // y[i·s + t] = x[i] · w[t]
            GemmPlan {
                scatter: true,
                kernel: spec.kernel,
                map_a: s,
                map_b: [1; 3],
                map_c: [0; 3],
                map_e: [1; 3],
                w_tap: cin * cout,
                w_ci: cout,
                w_co: 1,
            }
        } else {
            // y[o] = Σ_t x[o·s + t − pad_lo] · w[t]
            GemmPlan {
                scatter: false,
                kernel: spec.kernel,
                map_a: s,
                map_b: [1; 3],
                map_c: spec.pad_lo(x_dims).map(|p| -(p as i64)),
                map_e: [1; 3],
                w_tap: cin * cout,
                w_ci: cout,
                w_co: 1,
            }
        };
        self.implicit_gemm(&plan, x, w, bias, &y)
            .context("conv3d")?;
        Ok(y)
    }

    /// `dx = ∂(Σ dy ⊙ conv(x, w)) / ∂x` for an input of shape `x_shape`; dx has dy's dtype.
    fn conv3d_dgrad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: Shape,
        spec: ConvSpec,
    ) -> Result<Tensor> {
        self.check_activation(dy, "conv3d_dgrad output gradient")?;
        self.check(w, "conv3d_dgrad weight")?;
        let (cin, cout) = spec.dgrad_shapes(dy.shape(), w, x_shape)?;
        let x_dims = x_shape.spatial();
        let dx = self.alloc(x_shape, dy.dtype())?;
        self.check_activation(&dx, "conv3d_dgrad input gradient")?;
        let s = spec.stride.map(|v| v as i64);
        let pad = spec.pad_lo(x_dims).map(|p| p as i64);
        // B[(t, co), ci] = w[t, ci, co]: the GEMM's input channel is the conv's output channel.
        let (w_tap, w_ci, w_co) = (cin * cout, 1, cout);
        let plan = if spec.transposed {
            // dx[i] = Σ_t dy[i·s + t] · w[t]ᵀ
            GemmPlan {
                scatter: false,
                kernel: spec.kernel,
                map_a: s,
                map_b: [1; 3],
                map_c: [0; 3],
                map_e: [1; 3],
                w_tap,
                w_ci,
                w_co,
            }
        } else if spec.kernel == spec.stride {
            // dx[o·s + t − pad_lo] = dy[o] · w[t]ᵀ, every dx voxel exactly once
            GemmPlan {
                scatter: true,
                kernel: spec.kernel,
                map_a: s,
                map_b: [1; 3],
                map_c: pad.map(|p| -p),
                map_e: [1; 3],
                w_tap,
                w_ci,
                w_co,
            }
        } else {
            // dx[i] = Σ_t dy[(i + pad_lo − t) / s] · w[t]ᵀ where s divides i + pad_lo − t
            GemmPlan {
                scatter: false,
                kernel: spec.kernel,
                map_a: [1; 3],
                map_b: [-1; 3],
                map_c: pad,
                map_e: s,
                w_tap,
                w_ci,
                w_co,
            }
        };
        self.implicit_gemm(&plan, dy, w, None, &dx)
            .context("conv3d_dgrad")?;
        Ok(dx)
    }

    /// `(dw, db)`: gradients of `Σ dy ⊙ (conv(x, w) + bias)` w.r.t. the weight
    /// `[kd, kh, kw, Cin, Cout]` (f32) and, if `with_bias`, the bias `[Cout]` (f32).
    fn conv3d_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.check_activation(x, "conv3d_wgrad input")?;
        self.check_activation(dy, "conv3d_wgrad output gradient")?;
        spec.wgrad_shapes(x.shape(), dy.shape())?;
        let (xs, ys) = (x.shape(), dy.shape());
        ensure!(
            x.dtype() == dy.dtype(),
            "conv3d_wgrad: input is {} but the output gradient is {}",
            x.dtype().name(),
            dy.dtype().name()
        );
        let (cin, cout, taps) = (xs.c(), ys.c(), spec.taps());
        let part = if x.dtype() == DType::BF16 {
            self.wgrad_pipelined(x, dy, spec, with_bias)?
        } else {
            self.wgrad_f32(x, dy, spec, with_bias)?
        };
        // dw (and db) = Σ partials in split order, padded channels dropped:
        // one thread per output element, blocks of 256, grid ≤ 4096.
        let dw = self.alloc(spec.weight_shape(cin, cout), DType::F32)?;
        let db = if with_bias {
            Some(self.alloc(Shape::new(&[cout]), DType::F32)?)
        } else {
            None
        };
        let outputs = taps * cin * cout + if with_bias { cout } else { 0 };
        let blocks = outputs
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut rargs = KernelArgs::new()
            .tensor(&part.ws)
            .ptr(part.ws_bias.as_ref().map_or(0, |t| t.addr()))
            .tensor(&dw)
            .ptr(db.as_ref().map_or(0, |t| t.addr()))
            .i32(taps as i32)
            .i32(cin as i32)
            .i32(part.cin_pad as i32)
            .i32(cout as i32)
            .i32(part.cout_pad as i32)
            .i32(part.splits as i32)
            .i32((part.splits * part.groups) as i32);
        self.device()
            .launch(
                Kernel::Conv3dWgradReduce,
                LaunchConfig::linear(blocks, REDUCE_THREADS),
                &mut rargs,
            )
            .context("conv3d_wgrad reduction")?;
        Ok((dw, db))
    }
}

/// Partial sums of a weight gradient: `ws` `[splits][taps · cin_pad][cout_pad]`
/// (tap-major rows whatever the grouping) and, with a bias, `ws_bias`
/// `[splits][groups][cout_pad]`.
struct WgradPartials {
    ws: Tensor,
    ws_bias: Option<Tensor>,
    splits: usize,
    groups: usize,
    cin_pad: usize,
    cout_pad: usize,
}

/// `(K per split, splits)` of a weight gradient over `tiles` output tiles and
/// `k_total` voxels in steps of `bk`: enough splits for about
/// [`WGRAD_TARGET_BLOCKS`] blocks, each split at least [`WGRAD_MIN_STEPS`] steps.
pub fn wgrad_splits(tiles: usize, k_total: usize, bk: usize) -> (usize, usize) {
    let max_splits = k_total.div_ceil(bk * WGRAD_MIN_STEPS);
    let want = WGRAD_TARGET_BLOCKS
        .div_ceil(tiles)
        .clamp(1, max_splits.max(1));
    let k_chunk = k_total.div_ceil(want).div_ceil(bk) * bk;
    (k_chunk, k_total.div_ceil(k_chunk))
}

/// The GEMM one conv launch computes, read back from its packed arguments
/// (for the cost model of a static plan, `crate::plan::cost`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchGemm {
    /// Rows, columns and depth of the product (per tap group).
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// K as the kernel executes it (rounded up to its step), over all splits.
    pub k_exec: u64,
    /// Independent products in the launch (taps of a scatter or of a
    /// transposed weight gradient; 1 otherwise).
    pub groups: u64,
    /// The block tile.
    pub bm: u64,
    pub bn: u64,
    /// Tensor cores (bf16) or the FMA core (f32).
    pub tensor_cores: bool,
}

impl LaunchGemm {
    /// FLOPs of the product as stated (multiply-add = 2).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.groups) as f64
    }
    /// FLOPs the tiles execute: M and N rounded up to the tile, K to the step.
    pub fn executed_flops(&self) -> f64 {
        let m = self.m.div_ceil(self.bm) * self.bm;
        let n = self.n.div_ceil(self.bn) * self.bn;
        2.0 * (m * n * self.k_exec * self.groups) as f64
    }
}

/// The GEMM of a conv GEMM launch (`None` for every other kernel, including
/// the conv family's helpers: padding, packing, reductions).
pub fn launch_gemm(kernel: Kernel, cfg: &LaunchConfig, args: &KernelArgs) -> Option<LaunchGemm> {
    use Kernel as K;
    let pod = |i: usize| args.param_bytes(i);
    let int = |i: usize| {
        let b = pod(i);
        i32::from_ne_bytes(b.get(..4)?.try_into().ok()?)
            .try_into()
            .ok()
    };
    match kernel {
        K::Conv3dFprop128x32Bf16
        | K::Conv3dFprop128x32SplitkBf16
        | K::Conv3dFprop128x64Bf16
        | K::Conv3dFprop64x64Bf16
        | K::Conv3dFprop64x64SplitkBf16 => {
            let a: ConvPipeArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let (bm, bn) = match kernel {
                K::Conv3dFprop128x32Bf16 | K::Conv3dFprop128x32SplitkBf16 => (128, 32),
                K::Conv3dFprop128x64Bf16 => (128, 64),
                _ => (64, 64),
            };
            Some(LaunchGemm {
                m: a.rows as u64,
                n: a.cout as u64,
                k: (a.taps * a.cin) as u64,
                k_exec: a.steps as u64 * FPROP_BK as u64,
                groups: 1,
                bm,
                bn,
                tensor_cores: true,
            })
        }
        K::Conv3dGatherF32
        | K::Conv3dScatterF32
        | K::Conv3dGatherBf16
        | K::Conv3dScatterAsyncBf16 => {
            let a: ConvGemmArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let taps = (a.kernel[0] * a.kernel[1] * a.kernel[2]) as u64;
            let scatter = matches!(kernel, K::Conv3dScatterF32 | K::Conv3dScatterAsyncBf16);
            let k = if scatter {
                a.cin as u64
            } else {
                taps * a.cin as u64
            };
            let step = if kernel == K::Conv3dScatterAsyncBf16 {
                32
            } else {
                CONV_BK as u64
            };
            Some(LaunchGemm {
                m: a.rows as u64,
                n: a.cout as u64,
                k,
                k_exec: k.div_ceil(step) * step,
                groups: if scatter { cfg.grid[2] as u64 } else { 1 },
                bm: CONV_BM as u64,
                bn: CONV_BN as u64,
                tensor_cores: kernel != K::Conv3dGatherF32 && kernel != K::Conv3dScatterF32,
            })
        }
        K::Conv3dWgradPipe128x32Bf16
        | K::Conv3dWgradPipe64x64Bf16
        | K::Conv3dWgradPipeTransposed128x32Bf16
        | K::Conv3dWgradPipeTransposed64x64Bf16 => {
            let a: ConvWgradPipeArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let splits: u64 = int(1)?;
            let (bm, bn) = match kernel {
                K::Conv3dWgradPipe128x32Bf16 | K::Conv3dWgradPipeTransposed128x32Bf16 => (128, 32),
                _ => (64, 64),
            };
            let k = a.k_total as u64;
            Some(LaunchGemm {
                m: a.rows as u64,
                n: a.cout as u64,
                k,
                k_exec: k.div_ceil(WGRAD_BK as u64) * WGRAD_BK as u64,
                groups: (cfg.grid[2] as u64 / splits.max(1)).max(1),
                bm,
                bn,
                tensor_cores: true,
            })
        }
        K::Conv3dWgradF32 | K::Conv3dWgradTransposedF32 => {
            let a: ConvWgradArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let k = a.k_total as u64;
            Some(LaunchGemm {
                m: (a.taps_m * a.cin) as u64,
                n: a.cout as u64,
                k,
                k_exec: k.div_ceil(CONV_BK as u64) * CONV_BK as u64,
                groups: cfg.grid[2] as u64,
                bm: CONV_BM as u64,
                bn: CONV_BN as u64,
                tensor_cores: false,
            })
        }
        _ => None,
    }
}
