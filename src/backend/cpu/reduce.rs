//! Sums down to a broadcast shape and their adjoint (the broadcast up); the
//! softmax over the last dim.
//!
//! A sum sees x as `[outer, mid, inner]` ([`Bcast::split`]) and sums over
//! `mid`. The work is cut into tasks of at most `4·CHUNK / inner` mid rows
//! per outer index; a task adds its rows into f32 lanes (one per inner
//! index) over runs of ≤ 256 rows and those runs into f64, and the task
//! partials are added in task order — so the result depends only on the
//! shape, never on the thread count.
//!
//! Softmax and its backward work row by row (f64 sums), in parallel over
//! runs of about [`ROW_TASK_ELEMS`] elements.
use super::pointwise::{with_simd, CHUNK};
use super::{f32_only, view, view_mut, CpuBackend};
use crate::ops::bcast::Bcast;
use crate::ops::reduce::{check_expand, check_reduce, check_softmax, check_softmax_bwd};
use crate::ops::{MemoryOps, ReduceOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;
use rayon::prelude::*;

impl ReduceOps for CpuBackend {
    /// `Σ x` over `mid` of x seen as `[outer, mid, inner]`, f32 (see the module doc).
    fn reduce_sum(&self, x: &Tensor, to: Bcast) -> Result<Tensor> {
        let xs = view(x, "reduce_sum: x")?;
        let shape = check_reduce(x, to)?;
        if to == Bcast::Full {
            return self.cast(x, DType::F32);
        }
        let (outer, mid, inner) = to.split(x.shape());
        let s = self.out_uninit(shape)?;
        sum_mid(xs, outer, mid, inner, view_mut(&s));
        Ok(s)
    }

    /// `out[o, m, i] = y[o, i]`; parallel over outer indices and, within
    /// one, over runs of about [`CHUNK`] elements.
    fn expand(&self, y: &Tensor, like: Shape, dtype: DType) -> Result<Tensor> {
        let ys = view(y, "expand: y")?;
        let to = check_expand(y, like)?;
        f32_only(dtype)?;
        if to == Bcast::Full {
            return self.cast(y, dtype);
        }
        let (_, mid, inner) = to.split(like);
        let out = self.out_uninit(like)?;
        let per = mid * inner;
        if per == 0 {
            return Ok(out);
        }
        let chunk = (CHUNK / inner).max(1) * inner;
        view_mut(&out)
            .par_chunks_mut(per)
            .zip(ys.par_chunks(inner))
            .for_each(|(oo, yo)| {
                oo.par_chunks_mut(chunk).for_each(|oc| {
                    if inner == 1 {
                        oc.fill(yo[0]);
                    } else {
                        for row in oc.chunks_exact_mut(inner) {
                            row.copy_from_slice(yo);
                        }
                    }
                })
            });
        Ok(out)
    }

    /// Softmax over the last dim: per row, `e^{x − max} / Σ e^{x − max}`.
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let xs = view(x, "softmax: x")?;
        let (_, len) = check_softmax(x)?;
        let p = self.out_uninit(x.shape())?;
        let run = row_task(len);
        view_mut(&p)
            .par_chunks_mut(run)
            .zip(xs.par_chunks(run))
            .for_each(|(pc, xc)| {
                for (pr, xr) in pc.chunks_exact_mut(len).zip(xc.chunks_exact(len)) {
                    softmax_row(xr, pr);
                }
            });
        Ok(p)
    }

    /// `dx = p ⊙ (dp − Σ_row dp·p)` per row (the dot product in f64).
    fn softmax_bwd(&self, dp: &Tensor, p: &Tensor) -> Result<Tensor> {
        let ps = view(p, "softmax_bwd: p")?;
        let gs = view(dp, "softmax_bwd: dp")?;
        let (_, len) = check_softmax_bwd(dp, p)?;
        let dx = self.out_uninit(p.shape())?;
        let run = row_task(len);
        view_mut(&dx)
            .par_chunks_mut(run)
            .zip(ps.par_chunks(run).zip(gs.par_chunks(run)))
            .for_each(|(oc, (pc, gc))| {
                for ((o, pr), gr) in oc
                    .chunks_exact_mut(len)
                    .zip(pc.chunks_exact(len))
                    .zip(gc.chunks_exact(len))
                {
                    let dot: f64 = pr.iter().zip(gr).map(|(&a, &g)| a as f64 * g as f64).sum();
                    let dot = dot as f32;
                    for ((o, &pv), &g) in o.iter_mut().zip(pr).zip(gr) {
                        *o = pv * (g - dot);
                    }
                }
            });
        Ok(dx)
    }
}

/// Elements per parallel task of the row ops (whole rows, at least one).
const ROW_TASK_ELEMS: usize = 1 << 16;

/// The elements of the whole rows of `len` one task takes.
fn row_task(len: usize) -> usize {
    (ROW_TASK_ELEMS / len).max(1) * len
}

/// Max of a row; NaN if any element is NaN.
#[inline(always)]
pub(super) fn row_max(x: &[f32]) -> f32 {
    let mut m = x[0];
    for &v in &x[1..] {
        if v > m || v.is_nan() {
            m = v;
        }
    }
    m
}

/// `p = softmax(x)` of one row: `e^{x − max} / Σ e^{x − max}` (sum in f64).
#[inline(always)]
pub(super) fn softmax_row(x: &[f32], p: &mut [f32]) {
    let m = row_max(x);
    let mut sum = 0f64;
    for (o, &v) in p.iter_mut().zip(x) {
        *o = (v - m).exp();
        sum += *o as f64;
    }
    let inv = (1.0 / sum) as f32;
    for o in p.iter_mut() {
        *o *= inv;
    }
}

/// `out[o, i] = Σ_m x[o, m, i]` (see the module doc for the order).
fn sum_mid(xs: &[f32], outer: usize, mid: usize, inner: usize, out: &mut [f32]) {
    if out.is_empty() {
        return;
    }
    let rows = (4 * CHUNK / inner).max(1);
    let tasks = mid.div_ceil(rows).max(1);
    let mut partial = vec![0f64; outer * tasks * inner];
    partial
        .par_chunks_mut(inner)
        .enumerate()
        .for_each(|(task, acc)| {
            let (o, j) = (task / tasks, task % tasks);
            let lo = (o * mid + (j * rows).min(mid)) * inner;
            let hi = (o * mid + ((j + 1) * rows).min(mid)) * inner;
            let x = &xs[lo..hi];
            if inner == 1 {
                acc[0] = with_simd(
                    #[inline(always)]
                    || flat_sum(x),
                );
            } else {
                let mut lane = vec![0f32; inner];
                with_simd(
                    #[inline(always)]
                    || add_channel_sums(x, inner, &mut lane, acc),
                );
            }
        });
    for (o, out_o) in out.chunks_exact_mut(inner).enumerate() {
        for (i, s) in out_o.iter_mut().enumerate() {
            let mut total = 0f64;
            for j in 0..tasks {
                total += partial[(o * tasks + j) * inner + i];
            }
            *s = total as f32;
        }
    }
}

/// Per-channel sums of a run of rows of `c` values (`x.len()` a multiple of
/// `c`): f32 lanes per channel over sub-runs of ≤ 256 rows, accumulated into
/// `acc` (f64) in row order.
#[inline(always)]
fn add_channel_sums(x: &[f32], c: usize, lane: &mut [f32], acc: &mut [f64]) {
    for sub in x.chunks(256 * c) {
        lane.fill(0.0);
        for row in sub.chunks_exact(c) {
            for (s, &v) in lane.iter_mut().zip(row) {
                *s += v;
            }
        }
        for (a, &s) in acc.iter_mut().zip(lane.iter()) {
            *a += s as f64;
        }
    }
}

/// Lanes of [`flat_sum`].
const FLAT_LANES: usize = 16;

/// `Σ x` of a contiguous run: 16 f32 lanes over sub-runs of 256·16 values
/// (the tail of a sub-run added in order after the lanes), each sub-run
/// added into f64.
#[inline(always)]
fn flat_sum(x: &[f32]) -> f64 {
    let mut total = 0f64;
    for sub in x.chunks(256 * FLAT_LANES) {
        let mut lane = [0f32; FLAT_LANES];
        let mut it = sub.chunks_exact(FLAT_LANES);
        for v in &mut it {
            for (s, &a) in lane.iter_mut().zip(v) {
                *s += a;
            }
        }
        let mut s = 0f32;
        for l in lane {
            s += l;
        }
        for &a in it.remainder() {
            s += a;
        }
        total += s as f64;
    }
    total
}
