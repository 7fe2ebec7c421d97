//! The weight (and bias) gradient: a reduction GEMM over voxels.
//!
//! Regular: `dw[kd,kh,kw,ci,co] = Σ_{n,o} x[n, o·s + k − p, ci] · dy[n, o, co]`.
//! For one output row `(n, o_d, o_h)` and one tap `(kd, kh, kw)` whose input row
//! exists, the output voxels `o_w` whose input `o_w·s_w + kw − p_w` lies inside
//! the row form one interval, so the row adds `Σ_{o_w} x_row[(o_w·s_w + kw −
//! p_w)·Cin + ci] · dy_row[o_w·Cout + co]` — an `[Cin × Cout]` tile of dw fed by
//! a strided run of the input row and a contiguous run of the dy row, with no
//! padding to test inside the sum.
//!
//! Transposed (`kernel == stride`): `dw[k, ci, co] = Σ_{n,i} x[n, i, ci] ·
//! dy[n, i·s + k, co]`. Per input row and `(kd, kh)` the dy row is viewed as
//! `[W_in][KW·Cout]`, giving one `[Cin × KW·Cout]` product per row; the result
//! is reordered to `[kd, kh, kw, ci, co]` at the end.
//!
//! `db[co] = Σ dy[…, co]` is summed from the same dy rows.
//!
//! Narrow layers: with fewer than 14 input channels the input is first copied
//! zero-padded along W, so every tap reads the same `o_w` range and one tile
//! spans `q = kw·Cin + ci` over all KW taps of a kernel row; with fewer than
//! 16 output channels the tile computes `dwᵀ` (dy broadcast, vectors over input
//! channels) and adds it back transposed.
//!
//! Parallelism and loop order: the rows are cut into `2 × threads` contiguous
//! ranges (rayon balances them); each range accumulates its own partial dw/db,
//! and the partials are added at the end. Within a range, rows go in groups
//! whose dy and input rows fit in L2 (~512 KiB); per group and tap, tiles of
//! at most `Isa::max_rows` input channels × 32 output channels sum over all
//! the group's rows while held in registers, so the partial dw is loaded and
//! stored once per group, not once per row.
use super::kernel::{balanced_split, wgrad_tile_fn, Isa, Segment, WgradTile, MAX_R};
use super::pack::channel_blocks;
use crate::ops::ConvSpec;
use rayon::prelude::*;

/// The inputs of a weight gradient (shapes already validated).
pub(super) struct WgradProblem<'a> {
    pub spec: ConvSpec,
    pub x: &'a [f32],
    pub dy: &'a [f32],
    pub n: usize,
    pub x_dims: [usize; 3],
    pub cin: usize,
    pub dy_dims: [usize; 3],
    pub cout: usize,
    pub with_bias: bool,
}

/// Per-range scratch: the segments of one tap, the same shifted to a tile,
/// and the transposed tile of the small-`Cout` form.
#[derive(Default)]
struct Scratch {
    segments: Vec<Segment>,
    shifted: Vec<Segment>,
    transposed: Vec<f32>,
}

/// The input zero-padded along W so that every tap reads the same `o_w`
/// range: `x_pad[.., w', ci] = x[.., w' − p_w, ci]`, `w' < (W_out − 1)·s_w + KW`.
struct PaddedInput {
    data: Vec<f32>,
    width: usize,
}

fn pad_w(p: &WgradProblem) -> PaddedInput {
    let [xd, xh, xw] = p.x_dims;
    let cin = p.cin;
    let pad = p.spec.pad_lo(p.x_dims)[2];
    let width = (p.dy_dims[2] - 1) * p.spec.stride[2] + p.spec.kernel[2];
    let mut data = vec![0f32; p.n * xd * xh * width * cin];
    for (row, dst) in data.chunks_exact_mut(width * cin).enumerate() {
        let src = &p.x[row * xw * cin..(row + 1) * xw * cin];
        let n = (xw * cin).min((width - pad) * cin);
        dst[pad * cin..pad * cin + n].copy_from_slice(&src[..n]);
    }
    PaddedInput { data, width }
}

/// A partial result: dw in the engine's layout and db.
struct Partial {
    dw: Vec<f32>,
    db: Vec<f32>,
}

impl Partial {
    fn add(mut self, other: Partial) -> Partial {
        for (a, b) in self.dw.iter_mut().zip(&other.dw) {
            *a += b;
        }
        for (a, b) in self.db.iter_mut().zip(&other.db) {
            *a += b;
        }
        self
    }
}

/// Bytes of dy and input rows one row group may touch: the group's rows are
/// re-read once per tile of dw, so they should stay in L2.
const GROUP_BYTES: usize = 512 << 10;
/// Reduction steps (voxels) per tile call a row group aims for.
const MIN_GROUP_STEPS: usize = 256;

/// `(dw [kd, kh, kw, ci, co], db [co])`; db is all zeros unless `with_bias`.
pub(super) fn wgrad(isa: Isa, p: &WgradProblem) -> (Vec<f32>, Vec<f32>) {
    let taps = p.spec.taps();
    let dw_len = taps * p.cin * p.cout;
    // Reduction rows: output rows (regular) or input rows (transposed).
    let row_dims = if p.spec.transposed {
        p.x_dims
    } else {
        p.dy_dims
    };
    let rows = p.n * row_dims[0] * row_dims[1];
    // Enough rows per group that a tile's ~256 reduction steps amortise its
    // accumulator loads and stores, few enough to stay near L1 and in L2.
    let row_bytes = 4 * (p.x_dims[2] * p.cin + p.dy_dims[2] * p.cout);
    let group = MIN_GROUP_STEPS
        .div_ceil(row_dims[2].max(1))
        .min(GROUP_BYTES / row_bytes)
        .max(1);
    let parts = (2 * rayon::current_num_threads()).clamp(1, rows.max(1));
    // Few input channels: one tile spans all KW taps of a kernel row (q = kw·Cin
    // + ci is contiguous in a W-padded copy), instead of tiles of Cin rows.
    let padded = (!p.spec.transposed && p.cin < MAX_R && p.spec.kernel[2] > 1).then(|| pad_w(p));
    let total = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut acc = Partial {
                dw: vec![0f32; dw_len],
                db: vec![0f32; p.cout],
            };
            let mut scratch = Scratch::default();
            let lo = rows * part / parts;
            let hi = rows * (part + 1) / parts;
            for g0 in (lo..hi).step_by(group) {
                let rows = g0..(g0 + group).min(hi);
                // SAFETY: all indices are derived from the validated shapes.
                unsafe {
                    if p.spec.transposed {
                        transposed_rows(isa, p, row_dims, rows, &mut acc, &mut scratch);
                    } else {
                        regular_rows(isa, p, padded.as_ref(), rows, &mut acc, &mut scratch);
                    }
                }
            }
            acc
        })
        .reduce_with(Partial::add);
    let Some(total) = total else {
        return (vec![0f32; dw_len], vec![0f32; p.cout]);
    };
    let dw = if p.spec.transposed {
        reorder_transposed(p, &total.dw)
    } else {
        total.dw
    };
    (dw, total.db)
}

/// `db += Σ_voxels dy_row[voxel, :]`.
fn add_row_sum(db: &mut [f32], dy_row: &[f32]) {
    for voxel in dy_row.chunks_exact(db.len()) {
        for (d, v) in db.iter_mut().zip(voxel) {
            *d += v;
        }
    }
}

/// A group of output rows of a regular convolution: for each tap, one
/// segment per row whose input row exists and whose valid `o_w` interval is
/// not empty, then one tiled accumulation over all of them.
///
/// # Safety
/// The shapes of `p` are consistent (validated by the caller).
unsafe fn regular_rows(
    isa: Isa,
    p: &WgradProblem,
    padded: Option<&PaddedInput>,
    rows: std::ops::Range<usize>,
    acc: &mut Partial,
    s: &mut Scratch,
) {
    let spec = p.spec;
    let [kd_n, kh_n, kw_n] = spec.kernel;
    let [sd, sh, sw] = spec.stride;
    let pad = spec.pad_lo(p.x_dims);
    let [xd, xh, xw] = p.x_dims;
    let [yd_n, yh_n, yw_n] = p.dy_dims;
    let (cin, cout) = (p.cin, p.cout);
    let dy_row_off = |row: usize| row * yw_n * cout;
    if p.with_bias {
        for row in rows.clone() {
            let off = dy_row_off(row);
            add_row_sum(&mut acc.db, &p.dy[off..off + yw_n * cout]);
        }
    }
    // The input row (n, id, ih) of output row `row` for tap (kd, kh), if it exists.
    let input_row = |row: usize, kd: usize, kh: usize| -> Option<usize> {
        let n = row / (yd_n * yh_n);
        let od = (row / yh_n) % yd_n;
        let oh = row % yh_n;
        let id = (od * sd + kd) as isize - pad[0] as isize;
        let ih = (oh * sh + kh) as isize - pad[1] as isize;
        let inside = id >= 0 && id < xd as isize && ih >= 0 && ih < xh as isize;
        inside.then(|| (n * xd + id as usize) * xh + ih as usize)
    };
    if let Some(xp) = padded {
        for kd in 0..kd_n {
            for kh in 0..kh_n {
                s.segments.clear();
                for row in rows.clone() {
                    if let Some(x_row) = input_row(row, kd, kh) {
                        s.segments.push(Segment {
                            a: unsafe { xp.data.as_ptr().add(x_row * xp.width * cin) },
                            b: unsafe { p.dy.as_ptr().add(dy_row_off(row)) },
                            count: yw_n,
                        });
                    }
                }
                let tap = (kd * kh_n + kh) * kw_n;
                unsafe {
                    accumulate(
                        isa,
                        acc.dw.as_mut_ptr().add(tap * cin * cout),
                        kw_n * cin,
                        cout,
                        s,
                        sw * cin,
                        cout,
                    )
                };
            }
        }
        return;
    }
    for kd in 0..kd_n {
        for kh in 0..kh_n {
            for kw in 0..kw_n {
                // Valid o_w: 0 ≤ o_w·sw + kw − pw < xw, 0 ≤ o_w < yw_n.
                let shift = kw as isize - pad[2] as isize;
                let t_lo = if shift < 0 {
                    ((-shift) as usize).div_ceil(sw)
                } else {
                    0
                };
                let last = xw as isize - 1 - shift;
                if last < 0 {
                    continue;
                }
                let t_hi = (last as usize / sw + 1).min(yw_n);
                if t_lo >= t_hi {
                    continue;
                }
                let first_in = (t_lo as isize * sw as isize + shift) as usize;
                s.segments.clear();
                for row in rows.clone() {
                    if let Some(x_row) = input_row(row, kd, kh) {
                        s.segments.push(Segment {
                            a: unsafe { p.x.as_ptr().add((x_row * xw + first_in) * cin) },
                            b: unsafe { p.dy.as_ptr().add(dy_row_off(row) + t_lo * cout) },
                            count: t_hi - t_lo,
                        });
                    }
                }
                let tap = (kd * kh_n + kh) * kw_n + kw;
                unsafe {
                    accumulate(
                        isa,
                        acc.dw.as_mut_ptr().add(tap * cin * cout),
                        cin,
                        cout,
                        s,
                        sw * cin,
                        cout,
                    )
                };
            }
        }
    }
}

/// A group of input rows `(n, i_d, i_h)` of a transposed convolution;
/// accumulates into the layout `[kd, kh, ci, kw·Cout + co]`.
///
/// # Safety
/// The shapes of `p` are consistent (validated by the caller).
unsafe fn transposed_rows(
    isa: Isa,
    p: &WgradProblem,
    row_dims: [usize; 3],
    rows: std::ops::Range<usize>,
    acc: &mut Partial,
    s: &mut Scratch,
) {
    let [kd_n, kh_n, kw_n] = p.spec.kernel;
    let [sd, sh, _] = p.spec.stride;
    let [xd, xh, xw] = p.x_dims;
    let [yd_n, yh_n, yw_n] = p.dy_dims;
    let (cin, cout) = (p.cin, p.cout);
    let wide = kw_n * cout;
    for kd in 0..kd_n {
        for kh in 0..kh_n {
            s.segments.clear();
            for row in rows.clone() {
                let n = row / (row_dims[0] * row_dims[1]);
                let id = (row / row_dims[1]) % row_dims[0];
                let ih = row % row_dims[1];
                let x_off = ((n * xd + id) * xh + ih) * xw * cin;
                let dy_off = ((n * yd_n + id * sd + kd) * yh_n + ih * sh + kh) * yw_n * cout;
                if p.with_bias {
                    add_row_sum(&mut acc.db, &p.dy[dy_off..dy_off + yw_n * cout]);
                }
                s.segments.push(Segment {
                    a: unsafe { p.x.as_ptr().add(x_off) },
                    b: unsafe { p.dy.as_ptr().add(dy_off) },
                    count: xw,
                });
            }
            unsafe {
                accumulate(
                    isa,
                    acc.dw.as_mut_ptr().add((kd * kh_n + kh) * cin * wide),
                    cin,
                    wide,
                    s,
                    cin,
                    wide,
                )
            };
        }
    }
}

/// `acc[q, m] += Σ_segments Σ_{t<count} a[t·astride + q] · b[t·bstride + m]`
/// for `q < rows`, `m < cols` (`acc` rows are `cols` apart) over the segments
/// in `s.segments`, in register tiles.
///
/// With fewer than 16 columns and at least 16 rows the vectors would be mostly
/// empty lanes, so the transpose `accᵀ[m, q]` is computed instead (`b`
/// broadcast, `a` loaded as vectors) and added back transposed.
///
/// # Safety
/// Every index formed is inside the buffers behind the pointers.
unsafe fn accumulate(
    isa: Isa,
    acc: *mut f32,
    rows: usize,
    cols: usize,
    s: &mut Scratch,
    astride: usize,
    bstride: usize,
) {
    if s.segments.is_empty() {
        return;
    }
    if cols < 16 && rows >= 16 {
        s.transposed.clear();
        s.transposed.resize(cols * rows, 0.0);
        let swapped: Vec<Segment> = s
            .segments
            .iter()
            .map(|g| Segment {
                a: g.b,
                b: g.a,
                count: g.count,
            })
            .collect();
        let tmp = s.transposed.as_mut_ptr();
        unsafe {
            tiles(
                isa,
                tmp,
                cols,
                rows,
                &swapped,
                &mut s.shifted,
                bstride,
                astride,
            )
        };
        for q in 0..rows {
            for m in 0..cols {
                unsafe { *acc.add(q * cols + m) += s.transposed[m * rows + q] };
            }
        }
        return;
    }
    unsafe {
        tiles(
            isa,
            acc,
            rows,
            cols,
            &s.segments,
            &mut s.shifted,
            astride,
            bstride,
        )
    };
}

/// The tiling of [`accumulate`]: tiles of at most `Isa::max_rows` rows × 32
/// columns, each summing over every segment.
///
/// # Safety
/// As [`accumulate`].
#[allow(clippy::too_many_arguments)]
unsafe fn tiles(
    isa: Isa,
    acc: *mut f32,
    rows: usize,
    cols: usize,
    segments: &[Segment],
    shifted: &mut Vec<Segment>,
    astride: usize,
    bstride: usize,
) {
    for (q0, r) in balanced_split(rows, isa.max_rows()) {
        for (m0, nv, width) in channel_blocks(cols) {
            shifted.clear();
            shifted.extend(segments.iter().map(|g| Segment {
                a: unsafe { g.a.add(q0) },
                b: unsafe { g.b.add(m0) },
                count: g.count,
            }));
            let tile = WgradTile {
                acc: unsafe { acc.add(q0 * cols + m0) },
                ld: cols,
                segments: shifted,
                astride,
                bstride,
                lanes_last: width - 16 * (nv - 1),
            };
            unsafe { wgrad_tile_fn(isa, r, nv)(&tile) };
        }
    }
}

/// `[kd, kh, ci, kw, co]` → `[kd, kh, kw, ci, co]`.
fn reorder_transposed(p: &WgradProblem, dwv: &[f32]) -> Vec<f32> {
    let [kd_n, kh_n, kw_n] = p.spec.kernel;
    let (cin, cout) = (p.cin, p.cout);
    let mut dw = vec![0f32; dwv.len()];
    for kdh in 0..kd_n * kh_n {
        for ci in 0..cin {
            for kw in 0..kw_n {
                let src = ((kdh * cin + ci) * kw_n + kw) * cout;
                let dst = ((kdh * kw_n + kw) * cin + ci) * cout;
                dw[dst..dst + cout].copy_from_slice(&dwv[src..src + cout]);
            }
        }
    }
    dw
}
