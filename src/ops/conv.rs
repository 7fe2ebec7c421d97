//! The convolution family: [`ConvSpec`] (kernel, stride, padding rule), its
//! shape contract (written once here, called by every backend), and
//! [`ConvOps`]: forward, data gradient and weight gradient.

use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

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

/// Convolution forward and backward (see [`ConvSpec`]). Each implementation
/// checks its arguments with [`ConvSpec::forward_shapes`],
/// [`ConvSpec::dgrad_shapes`] or [`ConvSpec::wgrad_shapes`].
pub trait ConvOps {
    /// Convolution forward: x NDHWC, w f32 `[kd, kh, kw, Cin, Cout]`, bias f32 `[Cout]`.
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
}
