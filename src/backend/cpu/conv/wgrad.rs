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
//! Parallelism: the rows are cut into `2 × threads` contiguous ranges (rayon
//! balances them); each range accumulates its own partial dw/db (tiles of at
//! most `Isa::max_rows` input channels × 32 output channels, held in registers
//! across one row), and the partials are added at the end.
use super::kernel::{balanced_split, wgrad_tile_fn, Isa, WgradTile};
use super::pack::channel_blocks;
use crate::backend::ConvSpec;
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
    let parts = (2 * rayon::current_num_threads()).clamp(1, rows.max(1));
    let total = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut acc = Partial {
                dw: vec![0f32; dw_len],
                db: vec![0f32; p.cout],
            };
            let lo = rows * part / parts;
            let hi = rows * (part + 1) / parts;
            for row in lo..hi {
                let n = row / (row_dims[0] * row_dims[1]);
                let rd = (row / row_dims[1]) % row_dims[0];
                let rh = row % row_dims[1];
                // SAFETY: all indices are derived from the validated shapes.
                unsafe {
                    if p.spec.transposed {
                        transposed_row(isa, p, [n, rd, rh], &mut acc);
                    } else {
                        regular_row(isa, p, [n, rd, rh], &mut acc);
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

/// `db += Σ_voxels dy_row[voxel, :]` over a row of `len` values.
fn add_row_sum(db: &mut [f32], dy_row: &[f32]) {
    for voxel in dy_row.chunks_exact(db.len()) {
        for (d, v) in db.iter_mut().zip(voxel) {
            *d += v;
        }
    }
}

/// One output row `(n, o_d, o_h)` of a regular convolution.
///
/// # Safety
/// The shapes of `p` are consistent (validated by the caller).
unsafe fn regular_row(isa: Isa, p: &WgradProblem, [n, od, oh]: [usize; 3], acc: &mut Partial) {
    let spec = p.spec;
    let [kd_n, kh_n, kw_n] = spec.kernel;
    let [sd, sh, sw] = spec.stride;
    let pad = spec.pad_lo(p.x_dims);
    let [xd, xh, xw] = p.x_dims;
    let [yd_n, yh_n, yw_n] = p.dy_dims;
    let (cin, cout) = (p.cin, p.cout);
    let dy_off = ((n * yd_n + od) * yh_n + oh) * yw_n * cout;
    if p.with_bias {
        add_row_sum(&mut acc.db, &p.dy[dy_off..dy_off + yw_n * cout]);
    }
    for kd in 0..kd_n {
        let id = (od * sd + kd) as isize - pad[0] as isize;
        if id < 0 || id >= xd as isize {
            continue;
        }
        for kh in 0..kh_n {
            let ih = (oh * sh + kh) as isize - pad[1] as isize;
            if ih < 0 || ih >= xh as isize {
                continue;
            }
            let x_off = ((n * xd + id as usize) * xh + ih as usize) * xw * cin;
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
                let tap = (kd * kh_n + kh) * kw_n + kw;
                unsafe {
                    accumulate(
                        isa,
                        acc.dw.as_mut_ptr().add(tap * cin * cout),
                        cin,
                        cout,
                        p.x.as_ptr().add(x_off + first_in * cin),
                        sw * cin,
                        p.dy.as_ptr().add(dy_off + t_lo * cout),
                        cout,
                        t_hi - t_lo,
                    )
                };
            }
        }
    }
}

/// One input row `(n, i_d, i_h)` of a transposed convolution; accumulates into
/// the layout `[kd, kh, ci, kw·Cout + co]`.
///
/// # Safety
/// The shapes of `p` are consistent (validated by the caller).
unsafe fn transposed_row(isa: Isa, p: &WgradProblem, [n, id, ih]: [usize; 3], acc: &mut Partial) {
    let [kd_n, kh_n, kw_n] = p.spec.kernel;
    let [sd, sh, _] = p.spec.stride;
    let [xd, xh, xw] = p.x_dims;
    let [yd_n, yh_n, yw_n] = p.dy_dims;
    let (cin, cout) = (p.cin, p.cout);
    let wide = kw_n * cout;
    let x_off = ((n * xd + id) * xh + ih) * xw * cin;
    for kd in 0..kd_n {
        for kh in 0..kh_n {
            let yd = id * sd + kd;
            let yh = ih * sh + kh;
            let dy_off = ((n * yd_n + yd) * yh_n + yh) * yw_n * cout;
            if p.with_bias {
                add_row_sum(&mut acc.db, &p.dy[dy_off..dy_off + yw_n * cout]);
            }
            unsafe {
                accumulate(
                    isa,
                    acc.dw.as_mut_ptr().add((kd * kh_n + kh) * cin * wide),
                    cin,
                    wide,
                    p.x.as_ptr().add(x_off),
                    cin,
                    p.dy.as_ptr().add(dy_off),
                    wide,
                    xw,
                )
            };
        }
    }
}

/// `acc[q, m] += Σ_{t<count} a[t·astride + q] · b[t·bstride + m]` for
/// `q < rows`, `m < cols`, where `acc` rows are `cols` apart, in tiles.
///
/// # Safety
/// Every index formed is inside the buffers behind the pointers.
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate(
    isa: Isa,
    acc: *mut f32,
    rows: usize,
    cols: usize,
    a: *const f32,
    astride: usize,
    b: *const f32,
    bstride: usize,
    count: usize,
) {
    for (q0, r) in balanced_split(rows, isa.max_rows()) {
        for (m0, nv, width) in channel_blocks(cols) {
            let tile = WgradTile {
                acc: unsafe { acc.add(q0 * cols + m0) },
                ld: cols,
                a: unsafe { a.add(q0) },
                astride,
                b: unsafe { b.add(m0) },
                bstride,
                count,
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
