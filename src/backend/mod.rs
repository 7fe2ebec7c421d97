//! The one seam between model code and hardware.
//!
//! [`Backend`] owns allocation, copies, and one method per op (forward and
//! backward). Model, nn, diffusion and autograd code call only this trait and
//! never learn which backend runs them. Implementations:
//! - [`cpu::CpuBackend`]: pure Rust, f32, rayon-parallel; the fast path for
//!   machines without a GPU and the independent reference for every kernel.
//! - `gpu::GpuBackend` over a device (`Cuda` or `Emu`): the CUDA kernels.
//!
//! # Conventions every implementation follows
//! - Activations are NDHWC in [`Backend::act_dtype`] (f32 on the CPU, bf16 on
//!   GPUs by default). Their gradients have the same dtype.
//! - Parameters, their gradients, optimiser state, per-sample vectors `[N, C]`,
//!   norm statistics and scalars (`[1]`, losses) are f32 everywhere.
//! - Reductions accumulate in f32 (or wider).
//! - Ops allocate their outputs. Only [`Backend::adamw_step`], [`Backend::fill`]
//!   and [`Backend::write`] modify existing tensors.
//! - Bad arguments (mismatched shapes, wrong dtypes) are errors, not panics.

pub mod cpu;
pub mod gpu;
pub mod philox;

use crate::tensor::{DType, Shape, Tensor};
use anyhow::{bail, Result};
use std::sync::Arc;

/// Open a backend by name: `cpu`, `emu` (CUDA kernels on the CPU emulation),
/// `cuda` / `cuda:N`, or `auto` (CUDA when a driver and a GPU are present,
/// else the CPU). Never panics where CUDA is absent: the driver is probed first.
pub fn select(spec: &str) -> Result<Arc<dyn Backend>> {
    let spec = spec.trim();
    match spec {
        "cpu" => Ok(Arc::new(cpu::CpuBackend::new())),
        "auto" => match gpu::cuda::probe() {
            Ok(n) if n > 0 => Ok(Arc::new(gpu::GpuBackend::new(gpu::open_device("cuda:0")?))),
            _ => Ok(Arc::new(cpu::CpuBackend::new())),
        },
        "emu" | "cuda" => Ok(Arc::new(gpu::GpuBackend::new(gpu::open_device(spec)?))),
        s if s.starts_with("cuda:") => Ok(Arc::new(gpu::GpuBackend::new(gpu::open_device(s)?))),
        other => bail!("unknown device `{other}`: expected auto, cpu, emu, cuda or cuda:N"),
    }
}

/// A convolution: kernel and stride per spatial dim (D, H, W), "SAME" padding.
///
/// Regular: `out = ceil(in / stride)`; the zero padding before is
/// `pad_lo = max((out - 1)·stride + kernel - in, 0) / 2` (the rest goes after),
/// as TensorFlow/Haiku "SAME". So 3×3×3 stride 1 pads 1 on each side, 1×3×3
/// pads only H and W (2D as depth 1), and 2×2×2 stride 2 of an odd extent pads
/// one zero plane at the end.
///
/// Transposed (`transposed == true`, requires `kernel == stride`):
/// `out = in · stride`, each input voxel writes one non-overlapping block.
///
/// Weights are `[kd, kh, kw, Cin, Cout]` (f32) for both; bias is `[Cout]`.
/// - regular:    `y[n,o,co] = b[co] + Σ_{k,ci} x[n, o·s + k - pad_lo, ci] · w[k,ci,co]`
///   (out-of-range input positions read 0)
/// - transposed: `y[n, i·s + k, co] = b[co] + Σ_ci x[n,i,ci] · w[k,ci,co]`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub transposed: bool,
}

impl ConvSpec {
    /// 3×3×3, stride 1.
    pub const K3: ConvSpec = ConvSpec {
        kernel: [3, 3, 3],
        stride: [1, 1, 1],
        transposed: false,
    };
    /// 1×3×3, stride 1 (a 2D convolution on a depth-1 volume).
    pub const K133: ConvSpec = ConvSpec {
        kernel: [1, 3, 3],
        stride: [1, 1, 1],
        transposed: false,
    };
    /// 1×1×1 (pointwise).
    pub const K1: ConvSpec = ConvSpec {
        kernel: [1, 1, 1],
        stride: [1, 1, 1],
        transposed: false,
    };
    /// 2×2×2 stride 2 (downsampling).
    pub const DOWN2: ConvSpec = ConvSpec {
        kernel: [2, 2, 2],
        stride: [2, 2, 2],
        transposed: false,
    };
    /// Transposed 2×2×2 stride 2 (upsampling).
    pub const UP2: ConvSpec = ConvSpec {
        kernel: [2, 2, 2],
        stride: [2, 2, 2],
        transposed: true,
    };

    pub fn new(kernel: [usize; 3], stride: [usize; 3], transposed: bool) -> ConvSpec {
        ConvSpec {
            kernel,
            stride,
            transposed,
        }
    }
    /// Number of kernel taps kd·kh·kw.
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }
    /// Output spatial extents for an input of extents `input`.
    pub fn out_spatial(&self, input: [usize; 3]) -> [usize; 3] {
        let mut o = [0; 3];
        for i in 0..3 {
            o[i] = if self.transposed {
                input[i] * self.stride[i]
            } else {
                input[i].div_ceil(self.stride[i])
            };
        }
        o
    }
    /// Zero padding before the first input element (regular convolutions).
    pub fn pad_lo(&self, input: [usize; 3]) -> [usize; 3] {
        let out = self.out_spatial(input);
        let mut p = [0; 3];
        if !self.transposed {
            for i in 0..3 {
                let need = (out[i] - 1) * self.stride[i] + self.kernel[i];
                p[i] = need.saturating_sub(input[i]) / 2;
            }
        }
        p
    }
    /// Kernel and stride at least 1 on every axis; transposed only with
    /// kernel == stride. `op` names the caller in the error.
    pub fn validate(&self, op: &str) -> Result<()> {
        anyhow::ensure!(
            self.kernel.iter().chain(&self.stride).all(|&v| v >= 1),
            "{op}: kernel {:?} and stride {:?} must be at least 1 on every axis",
            self.kernel,
            self.stride
        );
        anyhow::ensure!(
            !self.transposed || self.kernel == self.stride,
            "{op}: a transposed convolution needs kernel == stride, got kernel {:?} stride {:?}",
            self.kernel,
            self.stride
        );
        Ok(())
    }
    /// (Cin, Cout) of a weight, which must be f32 `[kd, kh, kw, Cin, Cout]`
    /// for this kernel with non-zero channels; `what` names it in the error.
    pub fn weight_channels(&self, w: &Tensor, what: &str) -> Result<(usize, usize)> {
        let s = w.shape();
        let d = s.dims();
        anyhow::ensure!(
            d.len() == 5 && d[..3] == self.kernel,
            "{what}: expected shape [{}, {}, {}, Cin, Cout] for kernel {:?}, got {s}",
            self.kernel[0],
            self.kernel[1],
            self.kernel[2],
            self.kernel
        );
        anyhow::ensure!(d[3] > 0 && d[4] > 0, "{what}: zero channels in shape {s}");
        anyhow::ensure!(
            w.dtype() == DType::F32,
            "{what}: dtype {} (f32 expected)",
            w.dtype().name()
        );
        Ok((d[3], d[4]))
    }
    /// The shape contract of `conv3d(x, w, bias)`, shared by every backend:
    /// a valid spec, a weight for this kernel whose Cin is x's channel count,
    /// a bias of shape `[Cout]`. Returns (Cin, Cout, the output's shape).
    pub fn forward_shapes(
        &self,
        x: Shape,
        w: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<(usize, usize, Shape)> {
        self.validate("conv3d")?;
        let (cin, cout) = self.weight_channels(w, "conv3d weight")?;
        anyhow::ensure!(
            cin == x.c(),
            "conv3d: the weight {} expects {cin} input channels, the input {x} has {}",
            w.shape(),
            x.c()
        );
        if let Some(b) = bias {
            anyhow::ensure!(
                b.shape() == Shape::new(&[cout]),
                "conv3d bias: expected shape [{cout}], got {}",
                b.shape()
            );
        }
        Ok((
            cin,
            cout,
            x.with_spatial(self.out_spatial(x.spatial())).with_c(cout),
        ))
    }
    /// The shape contract of `conv3d_dgrad(dy, w, x_shape)`: a non-empty NDHWC
    /// `x_shape` whose channels the weight takes, and `dy` shaped as the
    /// forward's output. Returns (Cin, Cout).
    pub fn dgrad_shapes(&self, dy: Shape, w: &Tensor, x: Shape) -> Result<(usize, usize)> {
        self.validate("conv3d_dgrad")?;
        anyhow::ensure!(
            x.rank() == 5 && x.numel() > 0,
            "conv3d_dgrad: the input shape must be a non-empty NDHWC shape, got {x}"
        );
        let (cin, cout) = self.weight_channels(w, "conv3d_dgrad weight")?;
        anyhow::ensure!(
            cin == x.c(),
            "conv3d_dgrad: the weight {} expects {cin} input channels, the input shape {x} has {}",
            w.shape(),
            x.c()
        );
        let want = x.with_spatial(self.out_spatial(x.spatial())).with_c(cout);
        anyhow::ensure!(
            dy == want,
            "conv3d_dgrad: output gradient has shape {dy}, expected {want} for input {x} and {self:?}"
        );
        Ok((cin, cout))
    }
    /// The shape contract of `conv3d_wgrad(x, dy)`: `dy` shaped as the
    /// forward's output for input `x` (its channel count is Cout).
    pub fn wgrad_shapes(&self, x: Shape, dy: Shape) -> Result<()> {
        self.validate("conv3d_wgrad")?;
        let want = x.with_spatial(self.out_spatial(x.spatial())).with_c(dy.c());
        anyhow::ensure!(
            dy == want,
            "conv3d_wgrad: output gradient has shape {dy}, expected {want} for input {x} and {self:?}"
        );
        Ok(())
    }
    /// Weight shape `[kd, kh, kw, cin, cout]`.
    pub fn weight_shape(&self, cin: usize, cout: usize) -> Shape {
        Shape::new(&[self.kernel[0], self.kernel[1], self.kernel[2], cin, cout])
    }
    /// Multiply-accumulates of one forward pass for an input `x` (NDHWC) to `cout` channels.
    pub fn macs(&self, x: Shape, cout: usize) -> u64 {
        let vox_in = x.n() * x.voxels();
        if self.transposed {
            (vox_in * x.c() * cout * self.taps()) as u64
        } else {
            let o = self.out_spatial(x.spatial());
            (x.n() * o[0] * o[1] * o[2] * x.c() * cout * self.taps()) as u64
        }
    }
}

/// Pointwise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    Identity,
    Relu,
    /// x·σ(x)
    Silu,
    /// Tanh form, as `jax.nn.gelu` (approximate = True):
    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    Gelu,
}

/// Arguments of the fused normalisation op.
///
/// Group norm over `groups` groups of `C / groups` consecutive channels
/// (instance norm: `groups == C`; layer norm over channels: `groups == 1`),
/// statistics per (sample, group) over all voxels and the group's channels,
/// biased variance, then the fused epilogue:
/// ```text
/// x̂ = (x - mean) · rstd,            rstd = 1 / sqrt(var + eps)
/// z = x̂ · gamma[c] + beta[c]         (gamma = 1, beta = 0 when absent)
/// z = z · (1 + scale[n,c]) + shift[n,c]   (when `film` is given)
/// u = z + residual                    (when `residual` is given; NDHWC like x)
/// y = act(u)
/// ```
#[derive(Clone, Copy)]
pub struct NormArgs<'a> {
    pub groups: usize,
    pub eps: f32,
    pub gamma: Option<&'a Tensor>,
    pub beta: Option<&'a Tensor>,
    /// (scale `[N, C]`, shift `[N, C]`), f32.
    pub film: Option<(&'a Tensor, &'a Tensor)>,
    pub residual: Option<&'a Tensor>,
    pub act: Act,
}

/// Result of [`Backend::norm_fwd`].
pub struct NormOut {
    /// The normalised activation, NDHWC in the activation dtype.
    pub y: Tensor,
    /// `[N, G, 2]` f32: mean and rstd per (sample, group), kept for backward.
    pub stats: Tensor,
}

/// Gradients of [`Backend::norm_bwd`]. An entry is `Some` exactly when the
/// matching input of [`NormArgs`] was given.
pub struct NormGrads {
    pub dx: Tensor,
    pub dgamma: Option<Tensor>,
    pub dbeta: Option<Tensor>,
    /// (dscale `[N, C]`, dshift `[N, C]`).
    pub dfilm: Option<(Tensor, Tensor)>,
    /// Gradient of `u` (what flows into the residual).
    pub dresidual: Option<Tensor>,
}

/// One parameter and its optimiser state, updated in place by
/// [`Backend::adamw_step`].
pub struct ParamSlot<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    /// Apply decoupled weight decay to this parameter.
    pub decay: bool,
}

/// AdamW hyper-parameters (the learning rate is passed per step).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm (over all slots) before the update.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            max_grad_norm: Some(1.0),
        }
    }
}

/// The backend interface. See the module docs for the conventions.
pub trait Backend: Send + Sync {
    /// Human-readable name, e.g. "cpu (2 threads)" or "emu".
    fn name(&self) -> String;
    /// The dtype activations are stored in on this backend.
    fn act_dtype(&self) -> DType;

    // ---------------------------------------------------------------- memory
    /// Uninitialised storage (implementations may poison it).
    fn alloc(&self, shape: Shape, dtype: DType) -> Result<Tensor>;
    fn zeros(&self, shape: Shape, dtype: DType) -> Result<Tensor>;
    /// Copy host data (converted to `dtype`) into a new tensor.
    fn upload(&self, data: &[f32], shape: Shape, dtype: DType) -> Result<Tensor>;
    /// Copy a tensor to the host as f32.
    fn download(&self, t: &Tensor) -> Result<Vec<f32>>;
    /// Overwrite a tensor's contents with host data (in place).
    fn write(&self, t: &Tensor, data: &[f32]) -> Result<()>;
    /// Set every element to `value` (in place).
    fn fill(&self, t: &Tensor, value: f32) -> Result<()>;
    /// A converted copy (also a plain copy when the dtype is unchanged).
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
    /// Wait until all queued work is done (a no-op on synchronous backends).
    fn synchronize(&self) -> Result<()>;

    // ----------------------------------------------------------- convolution
    /// Convolution forward (see [`ConvSpec`]): x NDHWC, w f32, bias f32 `[Cout]`.
    fn conv3d(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: ConvSpec,
    ) -> Result<Tensor>;
    /// Gradient w.r.t. the input of shape `x_shape`.
    fn conv3d_dgrad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: Shape,
        spec: ConvSpec,
    ) -> Result<Tensor>;
    /// Gradients w.r.t. the weight (f32 `[kd,kh,kw,Cin,Cout]`) and, if `with_bias`,
    /// the bias (f32 `[Cout]`).
    fn conv3d_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;

    // ---------------------------------------------------------------- linear
    /// `y[M,N] = x[M,K] · w[K,N] + b[N]`, all f32 (per-sample vectors).
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor>;
    /// `dx[M,K] = dy · wᵀ`.
    fn linear_dgrad(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor>;
    /// `dw[K,N] = xᵀ · dy`, `db[N] = Σ_m dy` (if `with_bias`).
    fn linear_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;

    // --------------------------------------------------------- normalisation
    /// Fused group norm + affine + FiLM + residual + activation ([`NormArgs`]).
    fn norm_fwd(&self, x: &Tensor, args: &NormArgs) -> Result<NormOut>;
    /// Backward of [`Backend::norm_fwd`] from the same `x`, `stats` and args.
    fn norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        stats: &Tensor,
        args: &NormArgs,
    ) -> Result<NormGrads>;

    // ------------------------------------------------------------ pointwise
    fn act(&self, x: &Tensor, act: Act) -> Result<Tensor>;
    /// `dx = dy · act'(x)`.
    fn act_bwd(&self, dy: &Tensor, x: &Tensor, act: Act) -> Result<Tensor>;
    /// `Σ_i coef_i · x_i` over tensors of one shape (≤ 4 terms); the output has
    /// the dtype of the first term. Covers add, scale, q_sample and posteriors.
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor>;
    /// `y[n,…,c] = x[n,…,c] + v[n,c]`, v f32 `[N, C]`.
    fn add_nc(&self, x: &Tensor, v: &Tensor) -> Result<Tensor>;
    /// `s[n,c] = Σ_voxels x[n,…,c]`, f32 `[N, C]` (the backward of `add_nc`).
    fn sum_spatial(&self, x: &Tensor) -> Result<Tensor>;

    // --------------------------------------------------------------- layout
    /// Concatenate NDHWC tensors of equal N, D, H, W along channels.
    fn concat_c(&self, xs: &[&Tensor]) -> Result<Tensor>;
    /// Channels `[start, start + len)` of x.
    fn slice_c(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor>;
    /// The spatial box `[origin, origin + size)` of x.
    fn crop(&self, x: &Tensor, origin: [usize; 3], size: [usize; 3]) -> Result<Tensor>;
    /// Zeros of spatial extents `full`, with x placed at `origin` (the backward of `crop`).
    fn pad(&self, x: &Tensor, origin: [usize; 3], full: [usize; 3]) -> Result<Tensor>;
    /// Nearest-neighbour upsampling by an integer factor per spatial dim.
    fn upsample(&self, x: &Tensor, factor: [usize; 3]) -> Result<Tensor>;
    /// Backward of `upsample`: sums each block of `factor` voxels.
    fn upsample_bwd(&self, dy: &Tensor, factor: [usize; 3]) -> Result<Tensor>;
    /// Max pooling with window = stride = `window`, ceil mode
    /// (`out = ceil(in / window)`, windows clipped at the edge).
    fn maxpool(&self, x: &Tensor, window: [usize; 3]) -> Result<Tensor>;
    /// Backward of `maxpool`: each output's gradient goes to the first voxel
    /// (in D, H, W scan order) of its window that equals the maximum.
    fn maxpool_bwd(&self, dy: &Tensor, x: &Tensor, window: [usize; 3]) -> Result<Tensor>;

    // --------------------------------------------------------- segmentation
    /// Softmax over channels.
    fn softmax(&self, x: &Tensor) -> Result<Tensor>;
    /// `dx = p ⊙ (dp − Σ_c dp·p)` from the softmax output `p`.
    fn softmax_bwd(&self, dp: &Tensor, p: &Tensor) -> Result<Tensor>;
    /// `y[n,…,0] = argmax_c x[n,…,c]` as a float class id (first maximum wins).
    fn argmax_c(&self, x: &Tensor) -> Result<Tensor>;
    /// One-hot of float class ids `[N,D,H,W,1]`: `on` at the class, `off` elsewhere.
    /// An id outside `0..classes` is an error: of this call on the CPU; on a
    /// GPU of the next `download` or `synchronize` (checking at the call
    /// would wait for the device once per training step).
    fn one_hot(&self, labels: &Tensor, classes: usize, on: f32, off: f32) -> Result<Tensor>;

    // ---------------------------------------------------------------- losses
    /// Mean over samples and voxels of `−Σ_c t_c · log softmax(logits)_c`; f32 `[1]`.
    fn cross_entropy(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor>;
    /// `dlogits = dloss · (softmax(logits) − t) / (N · voxels)`; `dloss` f32 `[1]`.
    fn cross_entropy_bwd(&self, logits: &Tensor, target: &Tensor, dloss: &Tensor)
        -> Result<Tensor>;
    /// Foreground soft Dice loss from probabilities `p` and one-hot target `t`:
    /// for each sample n and class c ≥ 1 with `Σ t > 0`,
    /// `l[n,c] = 1 − 2 Σ p·t / Σ (p + t)`; the loss is the mean of those `l`
    /// (0 when there are none). Returns (loss f32 `[1]`, sums f32 `[N, C, 3]`
    /// holding Σp·t, Σp, Σt for the backward).
    fn dice_loss(&self, p: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)>;
    /// Gradient w.r.t. `p` of [`Backend::dice_loss`].
    fn dice_loss_bwd(
        &self,
        p: &Tensor,
        target: &Tensor,
        sums: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor>;
    /// Mean of `(a − b)²` over all elements; f32 `[1]`.
    fn mse(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Gradient w.r.t. `a`: `dloss · 2(a − b) / numel` (w.r.t. `b` it is the negation).
    fn mse_bwd(&self, a: &Tensor, b: &Tensor, dloss: &Tensor) -> Result<Tensor>;

    /// Probabilities in [−1, 1] space back to logits, as the ImgX reference's
    /// `x_to_logits`: `y = ln(clamp((x + 1)/2, eps, 1))`.
    fn scaled_to_logits(&self, x: &Tensor, eps: f32) -> Result<Tensor>;
    /// `dx = dy / (x + 1)` where `eps < (x + 1)/2 < 1`, else 0.
    fn scaled_to_logits_bwd(&self, dy: &Tensor, x: &Tensor, eps: f32) -> Result<Tensor>;

    // --------------------------------------------------------------- scalars
    /// `Σ_i coef_i · s_i` over f32 `[1]` scalars (loss weighting on device).
    fn scalar_lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor>;

    // ------------------------------------------------------------- optimiser
    /// One AdamW step over all slots, in place, with global-norm clipping:
    /// `g' = g` if `‖g‖ < max_norm` else `g · max_norm / ‖g‖` (‖g‖₂ over all slots, as
    /// optax `clip_by_global_norm`),
    /// `m = β1 m + (1−β1) g'`, `v = β2 v + (1−β2) g'²`,
    /// `p −= lr · ( m/(1−β1^step) / (sqrt(v/(1−β2^step)) + eps) + wd·p )`
    /// (wd only where `decay`). `step` counts from 1. Returns the global gradient
    /// norm before clipping, f32 `[1]`.
    fn adamw_step(&self, slots: &[ParamSlot], hp: &AdamW, lr: f32, step: u64) -> Result<Tensor>;

    // ----------------------------------------------------------------- noise
    /// Standard normal noise from counter-based Philox4x32-10 ([`philox`]):
    /// element `i` is `philox::normal(seed, offset + i)`. The same seed and
    /// offset give the same values on every backend (up to float rounding).
    fn randn(&self, shape: Shape, dtype: DType, seed: u64, offset: u64) -> Result<Tensor>;
}
