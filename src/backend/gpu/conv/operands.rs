//! Operands prepared for the cp.async kernels: the weight packed as bf16
//! (kept until the weights change; every weight an optimiser trains packed in
//! both layouts by one launch), activations with their channels zero-padded
//! to a multiple of 8.

use super::*;
use std::sync::{Arc, Weak};

/// What a packing depends on: the weight's bytes and the layout asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackKey {
    addr: u64,
    bytes: usize,
    /// taps, n_out, n_in, n_in_pad, then the tap, channel-in and channel-out strides.
    dims: [usize; 7],
}

impl PackKey {
    fn new(w: &Tensor, dims: [usize; 7]) -> PackKey {
        PackKey {
            addr: w.addr(),
            bytes: w.bytes(),
            dims,
        }
    }
    fn elements(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[3]
    }
}

/// The two layouts the conv kernels ask of an f32 weight `[kd, kh, kw, Cin,
/// Cout]`: the forward's `bt[tap][Cout][Cin_pad]` and the data gradient's
/// transpose `bt[tap][Cin][Cout_pad]` (channels padded to multiples of 8, as
/// `fprop.rs` asks for them; transposed convs read their weight the same way).
fn conv_layouts(w: &Tensor) -> Option<[PackKey; 2]> {
    let d = w.shape();
    if w.dtype() != DType::F32 || d.rank() != 5 || w.numel() == 0 {
        return None;
    }
    let (taps, cin, cout) = (d.dims()[..3].iter().product(), d.dims()[3], d.dims()[4]);
    let fwd = [
        taps,
        cout,
        cin,
        cin.next_multiple_of(8),
        cin * cout,
        cout,
        1,
    ];
    let dgrad = [
        taps,
        cin,
        cout,
        cout.next_multiple_of(8),
        cin * cout,
        1,
        cout,
    ];
    Some([PackKey::new(w, fwd), PackKey::new(w, dgrad)])
}

/// A packed weight, kept with the weight it was packed from (so its address
/// cannot be reused while the entry exists).
pub(crate) struct PackedWeight {
    key: PackKey,
    weight: Tensor,
    packed: Tensor,
}

/// A weight an optimiser trains (see [`GpuBackend::train_weights`]), held
/// weakly: the backend does not keep a model's parameters alive.
pub(crate) struct TrainedWeight {
    buffer: Weak<Buffer>,
    shape: Shape,
}

/// Mirrors `VdPackDesc` in kernels/conv3d.cu (56 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PackDesc {
    w: u64,
    bt: u64,
    start: i64,
    taps: i32,
    n_out: i32,
    n_in: i32,
    n_in_pad: i32,
    w_tap: i32,
    w_ci: i32,
    w_co: i32,
    pad: i32,
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

    /// The weights an optimiser trains: from now on, the first packing of
    /// a conv layout ([`conv_layouts`]: the forward's or the data
    /// gradient's) a convolution asks for after the weights changed (a
    /// training step begins, an AdamW step) packs that layout of every one of
    /// them that is still alive in the same launch (tensors that are not 5-D
    /// f32 conv weights are passed over). Replaces the previous list. [`crate::train::Optimizer::new`] calls it (through
    /// [`super::train_weights`]).
    pub fn train_weights(&self, weights: &[&Tensor]) {
        let list = weights
            .iter()
            .filter(|w| conv_layouts(w).is_some())
            .map(|w| TrainedWeight {
                buffer: Arc::downgrade(w.buffer()),
                shape: w.shape(),
            })
            .collect();
        *self
            .trained_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// The address of the weight as the B operand of the cp.async kernels:
    /// bf16 `bt[tap][n][c]` for n < `n_out` (the GEMM's N), c < `n_in_pad`
    /// (its input channels, zero past `n_in`), read from the f32 weight
    /// through the plan's strides. Packed once per value of the weight: the
    /// packing is kept (keyed by the weight's address and size and the
    /// layout) until the weight is written in place
    /// ([`Self::forget_packed_weights_of`]) or updated by the optimiser
    /// ([`Self::forget_packed_weights`]), so a training step's second forward
    /// (recycling) and its data gradients reuse the first forward's packing.
    ///
    /// A packing not kept is made by one launch of `vd_conv3d_pack_weights`
    /// over a table of packings, together with the same layout of every
    /// trained weight ([`Self::train_weights`]) not packed yet: in a
    /// training step the first forward convolution packs the forward layout
    /// of every weight, the first data gradient the transposed one, the
    /// other convolutions nothing — two launches per step. (Both layouts in
    /// the first launch would make it one, but the transposed packings would
    /// then live through the forward: 27 MB more peak memory for the paper
    /// step.) Each packing is a buffer of its own; one thread per element of
    /// all of them, blocks of 256, grid capped at 4096 (grid-stride beyond).
    pub(super) fn pack_weights(
        &self,
        plan: &GemmPlan,
        w: &Tensor,
        taps: usize,
        n_out: usize,
        n_in: usize,
        n_in_pad: usize,
    ) -> Result<u64> {
        let key = PackKey::new(
            w,
            [
                taps, n_out, n_in, n_in_pad, plan.w_tap, plan.w_ci, plan.w_co,
            ],
        );
        let mut cache = self
            .packed_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache.iter().find(|e| e.key == key) {
            return Ok(e.packed.addr());
        }
        // Weights only the cache still holds are dead: their packings go.
        cache.retain(|e| Arc::strong_count(e.weight.buffer()) > 1);
        // With it, the same layout of every trained weight not packed yet.
        let kind = conv_layouts(w).and_then(|ls| ls.iter().position(|k| *k == key));
        let mut want = vec![(w.clone(), key)];
        for t in self
            .trained_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let (Some(kind), Some(buffer)) = (kind, t.buffer.upgrade()) else {
                continue;
            };
            let tw = Tensor::from_buffer(t.shape, DType::F32, buffer);
            let Some(k) = conv_layouts(&tw).map(|ls| ls[kind]) else {
                continue;
            };
            if !cache.iter().any(|e| e.key == k) && !want.iter().any(|(_, x)| *x == k) {
                want.push((tw, k));
            }
        }
        let mut table = Vec::with_capacity(want.len());
        let mut packed = Vec::with_capacity(want.len());
        let mut total = 0usize;
        for (t, k) in &want {
            let d = k
                .dims
                .map(|v| i32_of(v as i64, "a packed weight's extent or stride"));
            let d = d.into_iter().collect::<Result<Vec<i32>>>()?;
            i32_of(k.elements() as i64, "packed weight elements")?;
            let bt = self.alloc(Shape::new(&[k.elements()]), DType::BF16)?;
            table.push(PackDesc {
                w: t.addr(),
                bt: bt.addr(),
                start: total as i64,
                taps: d[0],
                n_out: d[1],
                n_in: d[2],
                n_in_pad: d[3],
                w_tap: d[4],
                w_ci: d[5],
                w_co: d[6],
                pad: 0,
            });
            total += k.elements();
            packed.push(bt);
        }
        let dev = self.device();
        let table_buf = dev.alloc(std::mem::size_of_val(table.as_slice()))?;
        dev.memcpy_htod_table(table_buf.addr(), bytemuck::cast_slice(&table))?;
        let blocks = total
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut pargs = KernelArgs::new()
            .buffer(&table_buf)
            .i32(i32_of(table.len() as i64, "packings")?)
            .i64(total as i64);
        dev.launch(
            Kernel::Conv3dPackWeights,
            LaunchConfig::linear(blocks, REDUCE_THREADS),
            &mut pargs,
        )
        .context("packing the weights as bf16")?;
        let first = packed[0].addr();
        for ((weight, key), packed) in want.into_iter().zip(packed) {
            cache.push(PackedWeight {
                key,
                weight,
                packed,
            });
        }
        Ok(first)
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
