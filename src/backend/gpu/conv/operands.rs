//! Operands prepared for the cp.async kernels: the weight packed as bf16
//! (kept until the weights change), activations with their channels
//! zero-padded to a multiple of 8.

use super::*;

/// What a packing depends on: the weight's bytes and the layout asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackKey {
    addr: u64,
    bytes: usize,
    /// taps, n_out, n_in, n_in_pad, then the tap, channel-in and channel-out strides.
    dims: [usize; 7],
}

/// A packed weight, kept with the weight it was packed from (so its address
/// cannot be reused while the entry exists).
pub(crate) struct PackedWeight {
    key: PackKey,
    weight: Tensor,
    packed: Tensor,
}

impl GpuBackend {
    /// Forgets every packed weight: called when an optimiser step updates
    /// the weights (`adamw_step`) and when a training step begins.
    pub(crate) fn forget_packed_weights(&self) {
        self.packed_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Forgets the packings of weights that share bytes with `t`: called by
    /// the in-place writes (`write`, `fill`) before they write `t`, so a
    /// packing never outlives the values it was made from.
    pub(crate) fn forget_packed_weights_of(&self, t: &Tensor) {
        let (lo, hi) = (t.addr(), t.addr() + t.bytes() as u64);
        self.packed_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| e.key.addr + e.key.bytes as u64 <= lo || e.key.addr >= hi);
    }

    /// The weight as the B operand of the cp.async kernels: bf16
    /// `bt[tap][n][c]` for n < `n_out` (the GEMM's N), c < `n_in_pad` (its
    /// input channels, zero past `n_in`), read from the f32 weight through the
    /// plan's strides: one thread per element, blocks of 256, grid capped at
    /// 4096 (grid-stride beyond). Packed once per value of the weight: the
    /// packing is kept (keyed by the weight's address and size and the
    /// layout) until the weight is written in place
    /// ([`Self::forget_packed_weights_of`]) or updated by the optimiser
    /// ([`Self::forget_packed_weights`]), so a training step's second forward
    /// (recycling) and its data gradients reuse the first forward's packing.
    pub(super) fn pack_weights(
        &self,
        plan: &GemmPlan,
        w: &Tensor,
        taps: usize,
        n_out: usize,
        n_in: usize,
        n_in_pad: usize,
    ) -> Result<Tensor> {
        let key = PackKey {
            addr: w.addr(),
            bytes: w.bytes(),
            dims: [
                taps, n_out, n_in, n_in_pad, plan.w_tap, plan.w_ci, plan.w_co,
            ],
        };
        let mut cache = self
            .packed_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache.iter().find(|e| e.key == key) {
            return Ok(e.packed.clone());
        }
        // Weights only the cache still holds are dead: their packings go.
        cache.retain(|e| std::sync::Arc::strong_count(e.weight.buffer()) > 1);
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
        cache.push(PackedWeight {
            key,
            weight: w.clone(),
            packed: bt.clone(),
        });
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
