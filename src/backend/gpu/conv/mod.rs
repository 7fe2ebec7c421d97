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
//!   included), once per value of the weight and layout: the packing is kept
//!   until the weight is written in place or an AdamW step updates it
//!   (`operands.rs`), so a step's second forward reuses the first's. The
//!   kernel runs over a table of packings: once an optimiser has named the
//!   weights it trains (`GpuBackend::train_weights`), the first packing of a
//!   layout after the weights change makes that layout of every trained
//!   weight in the same launch, so a training step packs all its weights
//!   with two launches (the forward layouts, then the transposed ones). Blocks of [`PIPE_THREADS`] = 128 threads (4 warps); the tile
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

//!
//! # Files
//!
//! `tiling.rs` chooses tiles and K splits, `operands.rs` prepares operands
//! (weight packing, channel padding), `fprop.rs` launches the forward and
//! data-gradient GEMMs, `wgrad.rs` the weight gradient, `launch_gemm.rs` reads
//! a launch's GEMM back from its arguments (for the plan's cost model).

mod fprop;
mod launch_gemm;
mod operands;
mod tiling;
mod wgrad;

pub use launch_gemm::{launch_gemm, LaunchGemm};
pub(crate) use operands::{PackedWeight, TrainedWeight};
pub use tiling::{fprop_tiling, gemm_kernel, takes_pipeline, wgrad_splits, FpropTiling};

use super::device::{KernelArgs, LaunchConfig};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::ConvSpec;
use crate::ops::{ConvOps, MemoryOps};
use crate::tensor::{Buffer, DType, Shape, Tensor};
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
