//! The row engine: implicit-GEMM convolution over NDHWC rows, the one driver
//! behind the forward pass, the data gradient and the transposed convolution.
//!
//! A *pass* is a convolution in the general form
//! ```text
//! y[n, t_d·σ_d + o_d, t_h·σ_h + o_h, t_w·σ_w + o_w, c] =
//!     bias[c] + Σ_{kd,kh,kw,ci} x[n, t_d·s_d + kd + e_d, t_h·s_h + kh + e_h, t_w·s_w + kw + e_w, ci]
//!                               · w[kd, kh, kw, ci, c]
//! ```
//! for `t` in the pass's extents (per axis: output stride `σ`, output offset
//! `o`, input stride `s`, signed input offset `e`; input outside the tensor
//! reads 0). A regular convolution is one pass; the data gradient of a strided
//! one is one pass per phase; a transposed one is one pass per `(kd, kh)`
//! (see `passes.rs`). Several passes may write one output; each output element
//! belongs to at most one pass, and elements no pass writes keep their zeros.
//!
//! Loop order: parallel over (group of channel blocks, output row `(n, t_d,
//! t_h)`), group-major (rayon; each item writes its own channels of its own
//! row; the groups keep a layer's packed weights within ~1 MiB of L2, so wide
//! layers stream the input once per group instead of the weights once per
//! tile); within an item, every pass, then tiles of at most `Isa::max_rows`
//! output voxels along W (balanced sizes), then the group's blocks of 32
//! output channels (of ≤ 4 channels for the dot tile, used when a layer has
//! at most 8); the tile's micro-kernel sums over the valid kernel rows `(kd, kh)` — rows
//! outside the input in D or H are skipped, not read — and over
//! `q = kw·C_in + ci`, contiguous in NDHWC. Tiles whose W window leaves the
//! input (the padding) first copy their window of each kernel row into a small
//! zero-padded buffer, so the micro-kernel never branches.
use super::kernel::{
    balanced_split, dot_max_rows, dot_tile_fn, row_tile_fn, DotTile, Isa, RowOperand, RowTile,
};
use super::pack::{Layout, Packed};
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// One spatial axis of a pass (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Axis {
    /// Number of output positions `t`.
    pub extent: usize,
    /// Kernel taps along the axis.
    pub kernel: usize,
    /// Input stride `s`.
    pub stride: usize,
    /// Signed input offset `e` (minus the zero padding before).
    pub in_off: isize,
    /// Output stride `σ`.
    pub y_stride: usize,
    /// Output offset `o`.
    pub y_off: usize,
}

/// One pass: its geometry and its packed weights.
pub(super) struct Pass {
    pub axes: [Axis; 3],
    pub packed: Packed,
}

/// Everything the row engine reads.
pub(super) struct RowProblem<'a> {
    /// Input, NDHWC `[n, x_dims, cx]`.
    pub x: &'a [f32],
    pub n: usize,
    pub x_dims: [usize; 3],
    pub cx: usize,
    /// Output extents and channels (the output is `[n, y_dims, cy]`).
    pub y_dims: [usize; 3],
    pub cy: usize,
    pub passes: Vec<Pass>,
}

impl RowProblem<'_> {
    /// Check every index a pass can form stays inside `x` and `y`; the unsafe
    /// micro-kernels rely on it.
    fn validate(&self, y_len: usize) -> Result<()> {
        let [xd, xh, xw] = self.x_dims;
        let [yd, yh, yw] = self.y_dims;
        ensure!(
            self.x.len() == self.n * xd * xh * xw * self.cx,
            "row engine: input of {} values for {}×{:?}×{}",
            self.x.len(),
            self.n,
            self.x_dims,
            self.cx
        );
        ensure!(
            y_len == self.n * yd * yh * yw * self.cy,
            "row engine: output of {y_len} values for {}×{:?}×{}",
            self.n,
            self.y_dims,
            self.cy
        );
        for (p, pass) in self.passes.iter().enumerate() {
            for (axis, &y_ext) in pass.axes.iter().zip(&self.y_dims) {
                ensure!(
                    axis.kernel >= 1 && axis.stride >= 1 && axis.y_stride >= 1,
                    "row engine: pass {p}: degenerate axis {axis:?}"
                );
                if axis.extent > 0 {
                    ensure!(
                        (axis.extent - 1) * axis.y_stride + axis.y_off < y_ext,
                        "row engine: pass {p}: axis {axis:?} writes past extent {y_ext}"
                    );
                }
            }
            let packed = &pass.packed;
            ensure!(
                packed.k == pass.axes[2].kernel * self.cx,
                "row engine: pass {p}: packed reduction length {} for kernel width {} × {} channels",
                packed.k,
                pass.axes[2].kernel,
                self.cx
            );
            ensure!(
                packed.kernel_rows == pass.axes[0].kernel * pass.axes[1].kernel,
                "row engine: pass {p}: {} packed kernel rows for kernel {:?}",
                packed.kernel_rows,
                pass.axes.map(|a| a.kernel)
            );
            let first = &self.passes[0].packed.blocks;
            ensure!(
                packed.blocks.len() == first.len()
                    && packed
                        .blocks
                        .iter()
                        .zip(first)
                        .all(|(a, b)| a.n0 == b.n0 && a.width == b.width),
                "row engine: pass {p}: channel blocks differ from pass 0"
            );
            let covered: usize = packed.blocks.iter().map(|b| b.width).sum();
            ensure!(
                covered == self.cy,
                "row engine: pass {p}: packed weights cover {covered} of {} channels",
                self.cy
            );
        }
        Ok(())
    }
}

/// Per-worker scratch: the valid kernel rows of the current output row, the
/// tile's operands, and the zero-padded windows of border tiles.
#[derive(Default)]
struct Scratch {
    /// `(offset of the input row in x, kernel row index kd·KH + kh)`.
    kernel_rows: Vec<(usize, usize)>,
    operands: Vec<RowOperand>,
    stage: Vec<f32>,
}

/// Packed weights a group of channel blocks may occupy: they are re-read for
/// every tile, so a group's panels should stay in the 2 MiB L2 next to the
/// input rows.
const GROUP_WEIGHT_BYTES: usize = 1 << 20;

/// Cut the channel blocks into consecutive groups whose packed weights (over
/// all passes) fit [`GROUP_WEIGHT_BYTES`]; at least one block per group.
fn block_groups(p: &RowProblem) -> Vec<std::ops::Range<usize>> {
    let blocks = p.passes.first().map_or(0, |q| q.packed.blocks.len());
    let bytes = |b: usize| -> usize {
        p.passes
            .iter()
            .map(|q| q.axes[0].kernel * q.axes[1].kernel * q.packed.blocks[b].panel_len * 4)
            .sum()
    };
    let mut groups = Vec::new();
    let (mut start, mut used) = (0, 0);
    for b in 0..blocks {
        let size = bytes(b);
        if b > start && used + size > GROUP_WEIGHT_BYTES {
            groups.push(start..b);
            start = b;
            used = 0;
        }
        used += size;
    }
    if blocks > start {
        groups.push(start..blocks);
    }
    groups
}

/// Run every pass of `p` into `y` (zeroed by the caller where no pass writes).
///
/// Work items are (channel-block group, output row), group-major, so a group's
/// weights stay in cache while the rows stream by; small layers have one group.
pub(super) fn run(isa: Isa, p: &RowProblem, y: &mut [f32]) -> Result<()> {
    p.validate(y.len())?;
    let rows_d = p.passes.iter().map(|q| q.axes[0].extent).max().unwrap_or(0);
    let rows_h = p.passes.iter().map(|q| q.axes[1].extent).max().unwrap_or(0);
    let rows = p.n * rows_d * rows_h;
    let groups = block_groups(p);
    // Raw address so workers can write their disjoint rows.
    let y_addr = y.as_mut_ptr() as usize;
    (0..groups.len() * rows)
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, item| {
            let group = groups[item / rows].clone();
            let row = item % rows;
            let n = row / (rows_d * rows_h);
            let td = (row / rows_h) % rows_d;
            let th = row % rows_h;
            for pass in &p.passes {
                if td < pass.axes[0].extent && th < pass.axes[1].extent {
                    // SAFETY: `validate` bounds every index; (group, row)
                    // items write disjoint channels of disjoint rows.
                    unsafe {
                        output_row(
                            isa,
                            p,
                            pass,
                            [n, td, th],
                            group.clone(),
                            y_addr as *mut f32,
                            scratch,
                        )
                    };
                }
            }
        });
    Ok(())
}

/// One output row `(n, t_d, t_h)` of one pass, channel blocks `blocks`.
///
/// # Safety
/// `p` was validated against the output at `y`; no other thread writes these
/// channels of this row.
unsafe fn output_row(
    isa: Isa,
    p: &RowProblem,
    pass: &Pass,
    [n, td, th]: [usize; 3],
    blocks: std::ops::Range<usize>,
    y: *mut f32,
    s: &mut Scratch,
) {
    let [ad, ah, aw] = pass.axes;
    let [xd, xh, xw] = p.x_dims;
    let cx = p.cx;
    let x_row_len = xw * cx;

    // Kernel rows whose input row exists.
    s.kernel_rows.clear();
    for kd in 0..ad.kernel {
        let id = (td * ad.stride + kd) as isize + ad.in_off;
        if id < 0 || id >= xd as isize {
            continue;
        }
        for kh in 0..ah.kernel {
            let ih = (th * ah.stride + kh) as isize + ah.in_off;
            if ih < 0 || ih >= xh as isize {
                continue;
            }
            let x_off = ((n * xd + id as usize) * xh + ih as usize) * x_row_len;
            s.kernel_rows.push((x_off, kd * ah.kernel + kh));
        }
    }

    let [_, yh, yw] = p.y_dims;
    let yd_idx = td * ad.y_stride + ad.y_off;
    let yh_idx = th * ah.y_stride + ah.y_off;
    let y_row = unsafe { y.add(((n * p.y_dims[0] + yd_idx) * yh + yh_idx) * yw * p.cy) };
    let x = p.x.as_ptr();
    let packed = &pass.packed;

    let group = &packed.blocks[blocks];
    let max_rows = match packed.layout {
        Layout::Channels => isa.max_rows(),
        Layout::Dot { .. } => dot_max_rows(isa, group.iter().map(|b| b.width).max().unwrap_or(1)),
    };
    for (t0, r) in balanced_split(aw.extent, max_rows) {
        // The input window of the tile along W, in voxels.
        let start = (t0 * aw.stride) as isize + aw.in_off;
        let window = (r - 1) * aw.stride + aw.kernel;
        let interior = start >= 0 && start + window as isize <= xw as isize;
        let stage_len = window * cx;
        if !interior {
            s.stage.clear();
            s.stage.resize(s.kernel_rows.len() * stage_len, 0.0);
            for (i, &(x_off, _)) in s.kernel_rows.iter().enumerate() {
                let lo = start.max(0) as usize;
                let hi = (start + window as isize).min(xw as isize).max(0) as usize;
                if lo < hi {
                    let dst = i * stage_len + (lo as isize - start) as usize * cx;
                    s.stage[dst..dst + (hi - lo) * cx]
                        .copy_from_slice(&p.x[x_off + lo * cx..x_off + hi * cx]);
                }
            }
        }
        for blk in group {
            s.operands.clear();
            for (i, &(x_off, kernel_row)) in s.kernel_rows.iter().enumerate() {
                let a = if interior {
                    unsafe { x.add(x_off + start as usize * cx) }
                } else {
                    unsafe { s.stage.as_ptr().add(i * stage_len) }
                };
                s.operands.push(RowOperand {
                    a,
                    b: packed.panel(blk, kernel_row),
                });
            }
            let y_tile = unsafe { y_row.add((t0 * aw.y_stride + aw.y_off) * p.cy + blk.n0) };
            match packed.layout {
                Layout::Channels => {
                    let tile = RowTile {
                        rows: &s.operands,
                        k: packed.k,
                        astride: aw.stride * cx,
                        y: y_tile,
                        ystride: aw.y_stride * p.cy,
                        bias: packed.bias_ptr(blk),
                        lanes_last: blk.lanes_last(),
                    };
                    unsafe { row_tile_fn(isa, r, blk.nv)(&tile) };
                }
                Layout::Dot { kp } => {
                    let tile = DotTile {
                        rows: &s.operands,
                        k: packed.k,
                        kp,
                        astride: aw.stride * cx,
                        y: y_tile,
                        ystride: aw.y_stride * p.cy,
                        bias: packed.bias_ptr(blk),
                    };
                    unsafe { dot_tile_fn(isa, r, blk.width)(&tile) };
                }
            }
        }
    }
}
