//! Operands prepared for the cp.async kernels: the weight packed as bf16,
//! activations with their channels zero-padded to a multiple of 8.

use super::*;

impl GpuBackend {
    /// The weight as the B operand of the cp.async kernels: bf16
    /// `bt[tap][n][c]` for n < `n_out` (the GEMM's N), c < `n_in_pad` (its
    /// input channels, zero past `n_in`), read from the f32 weight through the
    /// plan's strides: one thread per element, blocks of 256, grid capped at
    /// 4096 (grid-stride beyond).
    pub(super) fn pack_weights(
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
    pub(super) fn pad_channels(&self, x: &Tensor, c_pad: usize) -> Result<Tensor> {
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
}
