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
//! - bf16 with GEMM input channels a multiple of 8 (every UNet layer but the
//!   first): `vd_conv3d_pack_weights` first writes the weight as bf16
//!   `[tap][N][Cin]` (one thread per element, the data gradient's transpose
//!   included), then the `_async_` kernels run the same tile and tensor-core
//!   step with 32-column steps in a two-stage cp.async pipeline: each thread
//!   copies one 16-byte chunk (8 channels of one voxel, zero-filled outside the
//!   input) of A and one of B per step, the copies of step s + 1 in flight
//!   during the mma of step s; 20480 bytes of static shared memory.
//! - wgrad partial: the same tile, step and cores over (tap, ci) rows × Cout
//!   (loader: row/channel `t % 64`, K columns `t / 64 + 4j`); grid
//!   `(M tiles · N tiles, splits, tap groups)`. `splits` is chosen so the grid
//!   has about [`WGRAD_TARGET_BLOCKS`] blocks (4 per SM of an H100) but each
//!   split keeps at least [`WGRAD_MIN_STEPS`] K steps; workspace
//!   `splits · taps · Cin · Cout` f32 (+ `splits · groups · Cout` for the
//!   bias). Blocks of the first M tile also sum the dy values they load (the
//!   bias partial, 1 KiB more shared memory for the in-block sum).
//! - wgrad reduce: one thread per weight (and bias) element, blocks of 256,
//!   grid `ceil(elements / 256)` capped at 4096 (grid-stride beyond).
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
//! (≈ 67 TFLOP/s on an H100 SXM). The bf16 forward / data gradient uses tensor
//! cores fed by cp.async, but with a 64 × 64 tile, two stages and 4 mma per
//! warp per 16 columns it is not tuned (no GPU to measure on here); the bf16
//! weight gradient still stages through registers. Packing the weight adds
//! `|w|·(4 + 2)` bytes per call. The weight gradient also moves the workspace:
//! `2 · splits · |dw|` f32.

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

/// The forward / data-gradient kernel for a GEMM input activation of `dtype`
/// with `cin` channels at address `addr`: f32 on the FMA core; bf16 on tensor
/// cores, through the cp.async pipeline when every 8-channel chunk is 16
/// contiguous, 16-byte aligned bytes (`cin % 8 == 0`), else the register loader.
pub fn gemm_kernel(scatter: bool, dtype: DType, cin: usize, addr: u64) -> Kernel {
    let vector = cin.is_multiple_of(8) && addr.is_multiple_of(16);
    match (scatter, dtype, vector) {
        (false, DType::F32, _) => Kernel::Conv3dGatherF32,
        (true, DType::F32, _) => Kernel::Conv3dScatterF32,
        (false, DType::BF16, false) => Kernel::Conv3dGatherBf16,
        (true, DType::BF16, false) => Kernel::Conv3dScatterBf16,
        (false, DType::BF16, true) => Kernel::Conv3dGatherAsyncBf16,
        (true, DType::BF16, true) => Kernel::Conv3dScatterAsyncBf16,
    }
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
        let (xs, ys) = (x.shape(), y.shape());
        let taps: usize = plan.kernel.iter().product();
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
            cin: i32_of(xs.c() as i64, "input channels")?,
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
        let kernel = gemm_kernel(plan.scatter, x.dtype(), xs.c(), x.addr());
        if !matches!(
            kernel,
            Kernel::Conv3dGatherAsyncBf16 | Kernel::Conv3dScatterAsyncBf16
        ) {
            let mut kargs = KernelArgs::new().pod(&args);
            return self.device().launch(kernel, cfg, &mut kargs);
        }
        // The cp.async kernels read B as bf16 bt[tap][n][ci], packed here from the
        // f32 weight through the plan's strides: one thread per element, blocks
        // of 256, grid capped at 4096 (grid-stride beyond).
        let packed = taps * ys.c() * xs.c();
        let bt = self.alloc(Shape::new(&[packed]), DType::BF16)?;
        let blocks = packed
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut pargs = KernelArgs::new()
            .pod(&args)
            .tensor(&bt)
            .i32(i32_of(taps as i64, "taps")?);
        self.device()
            .launch(
                Kernel::Conv3dPackWeights,
                LaunchConfig::linear(blocks, REDUCE_THREADS),
                &mut pargs,
            )
            .context("packing the weight as bf16")?;
        let mut kargs = KernelArgs::new().pod(&args).tensor(&bt);
        self.device().launch(kernel, cfg, &mut kargs)
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
        let x_dims = xs.spatial();
        ensure!(
            x.dtype() == dy.dtype(),
            "conv3d_wgrad: input is {} but the output gradient is {}",
            x.dtype().name(),
            dy.dtype().name()
        );
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
        let tiles = m_tiles * n_tiles * groups;
        let max_splits = k_total.div_ceil(CONV_BK * WGRAD_MIN_STEPS);
        let want_splits = WGRAD_TARGET_BLOCKS
            .div_ceil(tiles)
            .clamp(1, max_splits.max(1));
        let k_chunk = k_total.div_ceil(want_splits).div_ceil(CONV_BK) * CONV_BK;
        let splits = k_total.div_ceil(k_chunk);
        let w_elems = taps * cin * cout;
        let ws = self.alloc(Shape::new(&[splits * w_elems]), DType::F32)?;
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
        let kernel = match (spec.transposed, x.dtype()) {
            (false, DType::F32) => Kernel::Conv3dWgradF32,
            (false, DType::BF16) => Kernel::Conv3dWgradBf16,
            (true, DType::F32) => Kernel::Conv3dWgradTransposedF32,
            (true, DType::BF16) => Kernel::Conv3dWgradTransposedBf16,
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

        let dw = self.alloc(spec.weight_shape(cin, cout), DType::F32)?;
        let db = if with_bias {
            Some(self.alloc(Shape::new(&[cout]), DType::F32)?)
        } else {
            None
        };
        let outputs = w_elems + if with_bias { cout } else { 0 };
        let blocks = outputs
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut rargs = KernelArgs::new()
            .tensor(&ws)
            .ptr(ws_bias.as_ref().map_or(0, |t| t.addr()))
            .tensor(&dw)
            .ptr(db.as_ref().map_or(0, |t| t.addr()))
            .i64(w_elems as i64)
            .i32(splits as i32)
            .i32((splits * groups) as i32)
            .i32(cout as i32);
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
