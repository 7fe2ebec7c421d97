//! Weight panels for the row engine, packed once per call (blocks of output
//! channels in parallel), in one of two layouts.
//!
//! - Channels (the usual one): the output channels are cut into blocks of 32
//!   (two vectors) with one last block of 1..=32 channels (one vector when it
//!   has at most 16). Block `b` holds, for every input row `(kd, kh)` of the
//!   kernel, the panel `[q = kw·C_in + ci][NV·16]` with zeros past the last
//!   valid channel, so a tile reads one contiguous, aligned, full-width vector
//!   per reduction step.
//! - Dot (at most 8 output channels and a reduction of at least 16): vectors
//!   over output channels would be mostly empty lanes, so the tile vectorises
//!   the reduction instead. Groups of at most 4 channels hold, per kernel row,
//!   `[c][q]` with `q` zero-padded to `kp`, a multiple of 16.

use rayon::prelude::*;

/// 64-byte aligned, zero-initialised f32 storage (aligned vector loads never
/// split a cache line).
pub(super) struct AlignedBuf {
    data: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(super) fn zeros(len: usize) -> AlignedBuf {
        let data = vec![0f32; len + 16];
        let start = data.as_ptr().align_offset(64).min(16);
        AlignedBuf { data, start, len }
    }
    pub(super) fn as_slice(&self) -> &[f32] {
        &self.data[self.start..self.start + self.len]
    }
    pub(super) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[self.start..self.start + self.len]
    }
}

/// One block of output channels.
#[derive(Clone, Copy, Debug)]
pub(super) struct Block {
    /// First output channel of the block.
    pub n0: usize,
    /// Vectors per tile row (1 or 2); the panel width is `16·nv`.
    pub nv: usize,
    /// Valid channels (1..=16·nv).
    pub width: usize,
    /// Offset of the block's panels in [`Packed::data`].
    pub offset: usize,
    /// Floats per kernel-row panel of the block.
    pub panel_len: usize,
    /// Offset of the block's zero-padded bias in [`Packed::bias`].
    pub bias_offset: usize,
}

impl Block {
    /// Valid lanes of the last vector.
    pub fn lanes_last(&self) -> usize {
        self.width - 16 * (self.nv - 1)
    }
}

/// Cut `channels` into blocks of at most 32 (see the module docs).
pub(super) fn channel_blocks(channels: usize) -> Vec<(usize, usize, usize)> {
    let mut blocks = Vec::new();
    let mut n0 = 0;
    while n0 < channels {
        let width = (channels - n0).min(32);
        blocks.push((n0, width.div_ceil(16), width));
        n0 += width;
    }
    blocks
}

/// How a [`Packed`] lays out its panels (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    Channels,
    /// Reduction padded to `kp` floats per channel.
    Dot {
        kp: usize,
    },
}

/// Fraction of 16-lane vectors doing useful work for `n` values.
fn lane_use(n: usize) -> f64 {
    n as f64 / (16 * n.div_ceil(16)) as f64
}

/// Whether passes whose shortest reduction per kernel row is `k_min` and whose
/// output has `cout` channels use the dot layout. All passes of one problem
/// must share the layout (the row engine indexes their blocks alike), so the
/// choice is made once, from the shortest reduction among them.
pub(super) fn use_dot(k_min: usize, cout: usize) -> bool {
    cout <= 8 && k_min >= 16 && lane_use(k_min) > lane_use(cout)
}

/// The packed weights (and bias) of one pass of the row engine.
pub(super) struct Packed {
    pub data: AlignedBuf,
    pub bias: Option<AlignedBuf>,
    pub blocks: Vec<Block>,
    /// Reduction length per kernel row: `KW · C_in`.
    pub k: usize,
    /// Kernel rows `KD · KH` (panels per block).
    pub kernel_rows: usize,
    pub layout: Layout,
}

impl Packed {
    /// Pack a kernel of extents `kernel` from `C_in = cin` to `C_out = cout`
    /// channels whose tap `(kd, kh, kw)` weight from input channel `ci` to
    /// output channel `co` is `w[index(kd, kh, kw, ci, co)]`; `bias(co)` if given;
    /// in the dot layout if `dot` (see [`use_dot`]).
    ///
    /// A panel row (one `(tap, ci)`, the block's output channels) whose indices
    /// are evenly spaced in `w` — the forward pass reads contiguous rows, the
    /// data gradient rows of stride `C_out` — is copied as one strided run;
    /// other rows (transposed kernels' rows crossing a tap) element by element.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        kernel: [usize; 3],
        cin: usize,
        cout: usize,
        w: &[f32],
        index: impl Fn(usize, usize, usize, usize, usize) -> usize + Sync,
        bias: Option<&dyn Fn(usize) -> f32>,
        dot: bool,
    ) -> Packed {
        let [kd_n, kh_n, kw_n] = kernel;
        let kernel_rows = kd_n * kh_n;
        let k = kw_n * cin;
        let layout = if dot {
            Layout::Dot {
                kp: k.next_multiple_of(16),
            }
        } else {
            Layout::Channels
        };
        let groups: Vec<(usize, usize, usize)> = match layout {
            Layout::Channels => channel_blocks(cout),
            Layout::Dot { .. } => super::kernel::balanced_split(cout, 4)
                .map(|(n0, width)| (n0, 1, width))
                .collect(),
        };
        let mut blocks = Vec::new();
        let mut total = 0;
        let mut bias_total = 0;
        for (n0, nv, width) in groups {
            let (panel_len, bias_len) = match layout {
                Layout::Channels => (k * 16 * nv, 16 * nv),
                Layout::Dot { kp } => (width * kp, width),
            };
            blocks.push(Block {
                n0,
                nv,
                width,
                offset: total,
                panel_len,
                bias_offset: bias_total,
            });
            total += kernel_rows * panel_len;
            bias_total += bias_len;
        }
        let mut data = AlignedBuf::zeros(total);
        // Blocks own disjoint, consecutive ranges of `data`: pack them in parallel.
        let mut parts: Vec<(&Block, &mut [f32])> = Vec::with_capacity(blocks.len());
        let mut rest = data.as_mut_slice();
        for blk in &blocks {
            let (head, tail) = rest.split_at_mut(kernel_rows * blk.panel_len);
            parts.push((blk, head));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(blk, out)| {
            for kd in 0..kd_n {
                for kh in 0..kh_n {
                    let panel = (kd * kh_n + kh) * blk.panel_len;
                    for kw in 0..kw_n {
                        for ci in 0..cin {
                            let q = kw * cin + ci;
                            let at = |n: usize| match layout {
                                Layout::Channels => panel + q * 16 * blk.nv + n,
                                Layout::Dot { kp } => panel + n * kp + q,
                            };
                            let idx = |n: usize| index(kd, kh, kw, ci, blk.n0 + n);
                            let (first, last) = (idx(0), idx(blk.width - 1));
                            let step = if blk.width > 1 {
                                idx(1).wrapping_sub(first)
                            } else {
                                1
                            };
                            let even = step.wrapping_mul(blk.width - 1) == last.wrapping_sub(first);
                            match (layout, even, step) {
                                (Layout::Channels, true, 1) => {
                                    let o = at(0);
                                    out[o..o + blk.width]
                                        .copy_from_slice(&w[first..first + blk.width]);
                                }
                                (_, true, _) => {
                                    for n in 0..blk.width {
                                        out[at(n)] = w[first.wrapping_add(step.wrapping_mul(n))];
                                    }
                                }
                                _ => {
                                    for n in 0..blk.width {
                                        out[at(n)] = w[idx(n)];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
        let bias = bias.map(|f| {
            let mut b = AlignedBuf::zeros(bias_total);
            let out = b.as_mut_slice();
            for blk in &blocks {
                for n in 0..blk.width {
                    out[blk.bias_offset + n] = f(blk.n0 + n);
                }
            }
            b
        });
        Packed {
            data,
            bias,
            blocks,
            k,
            kernel_rows,
            layout,
        }
    }

    /// The panel of kernel row `(kd, kh)` (index `kd·KH + kh`) of block `blk`.
    pub(super) fn panel(&self, blk: &Block, kernel_row: usize) -> *const f32 {
        let off = blk.offset + kernel_row * blk.panel_len;
        self.data.as_slice()[off..].as_ptr()
    }

    /// The bias of block `blk` (zero-padded to the panel width in the channels
    /// layout), or null.
    pub(super) fn bias_ptr(&self, blk: &Block) -> *const f32 {
        match &self.bias {
            Some(b) => b.as_slice()[blk.bias_offset..].as_ptr(),
            None => std::ptr::null(),
        }
    }
}
