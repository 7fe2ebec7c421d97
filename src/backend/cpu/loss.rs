//! Argmax, one-hot and the segmentation losses.
//!
//! All operate on NDHWC rows (one voxel's channel vector). Row-wise ops run in
//! parallel over chunks of rows. Loss reductions accumulate each chunk in f64
//! and combine the chunk partials in chunk order, so results are independent
//! of the thread count.
use super::reduce::{row_max, softmax_row};
use super::{check_ndhwc, check_same_shape, view, view_mut, CpuBackend};
use crate::ops::LossOps;
use crate::tensor::{Shape, Tensor};
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

/// Rows per parallel task.
const ROWS: usize = 4096;

/// Check `t` is an f32 NDHWC tensor with at least one channel; its view.
fn ndhwc<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    let s = view(t, what)?;
    check_ndhwc(t, what)?;
    ensure!(
        t.shape().c() >= 1,
        "{what}: has no channels ({})",
        t.shape()
    );
    Ok(s)
}

/// The value of an f32 `[1]` scalar (the upstream gradient of a loss).
fn scalar(t: &Tensor, what: &str) -> Result<f32> {
    let s = view(t, what)?;
    ensure!(
        t.numel() == 1,
        "{what}: expected a scalar [1], got shape {}",
        t.shape()
    );
    Ok(s[0])
}

/// An f32 `[1]` tensor holding `v`.
fn make_scalar(b: &CpuBackend, v: f32) -> Result<Tensor> {
    let t = b.out_uninit(Shape::scalar())?;
    view_mut(&t)[0] = v;
    Ok(t)
}

impl LossOps for CpuBackend {
    /// `y[…, 0] = argmax_c x[…, c]` as a float (first maximum wins); NaN when the
    /// row holds a NaN (there is no meaningful class then).
    fn argmax_c(&self, x: &Tensor) -> Result<Tensor> {
        let xs = ndhwc(x, "argmax_c: x")?;
        let c = x.shape().c();
        let y = self.out_uninit(x.shape().with_c(1))?;
        view_mut(&y)
            .par_chunks_mut(ROWS)
            .zip(xs.par_chunks(ROWS * c))
            .for_each(|(yc, xc)| {
                for (o, xr) in yc.iter_mut().zip(xc.chunks_exact(c)) {
                    let mut best = 0;
                    let mut nan = xr[0].is_nan();
                    for (i, &v) in xr.iter().enumerate().skip(1) {
                        nan |= v.is_nan();
                        if v > xr[best] {
                            best = i;
                        }
                    }
                    *o = if nan { f32::NAN } else { best as f32 };
                }
            });
        Ok(y)
    }

    /// One-hot of float class ids `[N,D,H,W,1]`; ids must be integers in `0..classes`.
    fn one_hot(&self, labels: &Tensor, classes: usize, on: f32, off: f32) -> Result<Tensor> {
        let ls = view(labels, "one_hot: labels")?;
        check_ndhwc(labels, "one_hot: labels")?;
        ensure!(
            labels.shape().c() == 1,
            "one_hot: labels must have one channel, got shape {}",
            labels.shape()
        );
        ensure!(classes >= 1, "one_hot: classes must be at least 1");
        if let Some((i, &bad)) = ls
            .iter()
            .enumerate()
            .find(|(_, &l)| !(l >= 0.0 && l < classes as f32 && l.fract() == 0.0))
        {
            bail!("one_hot: label {bad} at voxel {i} is not a class id in 0..{classes}");
        }
        let y = self.out_uninit(labels.shape().with_c(classes))?;
        view_mut(&y)
            .par_chunks_mut(ROWS * classes)
            .zip(ls.par_chunks(ROWS))
            .for_each(|(yc, lc)| {
                for (row, &l) in yc.chunks_exact_mut(classes).zip(lc) {
                    row.fill(off);
                    row[l as usize] = on;
                }
            });
        Ok(y)
    }

    /// Mean over rows of `−Σ_c t_c·(x_c − lse(x))`; f32 `[1]`.
    fn cross_entropy(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let (xs, ts) = pair("cross_entropy", logits, target)?;
        let c = logits.shape().c();
        let rows = xs.len() / c;
        let partial: Vec<f64> = xs
            .par_chunks(ROWS * c)
            .zip(ts.par_chunks(ROWS * c))
            .map(|(xc, tc)| {
                let mut acc = 0f64;
                for (xr, tr) in xc.chunks_exact(c).zip(tc.chunks_exact(c)) {
                    let lse = log_sum_exp(xr);
                    for (&x, &t) in xr.iter().zip(tr) {
                        acc -= t as f64 * (x as f64 - lse);
                    }
                }
                acc
            })
            .collect();
        make_scalar(self, (partial.iter().sum::<f64>() / rows as f64) as f32)
    }

    /// `dlogits = dloss · (softmax(logits) − t) / rows`. This is the exact
    /// gradient when every target row sums to 1 (one-hot or soft labels).
    fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        let (xs, ts) = pair("cross_entropy_bwd", logits, target)?;
        let g = scalar(dloss, "cross_entropy_bwd: dloss")?;
        let c = logits.shape().c();
        let rows = xs.len() / c;
        let k = g / rows as f32;
        let dx = self.out_uninit(logits.shape())?;
        view_mut(&dx)
            .par_chunks_mut(ROWS * c)
            .zip(xs.par_chunks(ROWS * c).zip(ts.par_chunks(ROWS * c)))
            .for_each(|(oc, (xc, tc))| {
                for ((o, xr), tr) in oc
                    .chunks_exact_mut(c)
                    .zip(xc.chunks_exact(c))
                    .zip(tc.chunks_exact(c))
                {
                    softmax_row(xr, o);
                    for (o, &t) in o.iter_mut().zip(tr) {
                        *o = k * (*o - t);
                    }
                }
            });
        Ok(dx)
    }

    /// Foreground soft Dice. Sums `[N, C, 3]` = (Σp·t, Σp, Σt) per (n, c) over
    /// voxels, each accumulated per chunk of rows in f64; loss = mean over the
    /// pairs c ≥ 1 with Σt > 0 of `1 − 2Σpt / (Σp + Σt)` (0 when none).
    fn dice_loss(&self, p: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
        let (ps, ts) = pair("dice_loss", p, target)?;
        let sh = p.shape();
        let (n, c, per_sample) = (sh.n(), sh.c(), sh.voxels() * sh.c());
        let chunks_per_sample = per_sample.div_ceil(ROWS * c);
        let mut partial = vec![0f64; n * chunks_per_sample * c * 3];
        partial
            .par_chunks_mut(c * 3)
            .enumerate()
            .for_each(|(task, acc)| {
                let (ni, j) = (task / chunks_per_sample, task % chunks_per_sample);
                let lo = ni * per_sample + j * ROWS * c;
                let hi = (lo + ROWS * c).min((ni + 1) * per_sample);
                for (pr, tr) in ps[lo..hi].chunks_exact(c).zip(ts[lo..hi].chunks_exact(c)) {
                    for (ci, (&pv, &tv)) in pr.iter().zip(tr).enumerate() {
                        acc[ci * 3] += pv as f64 * tv as f64;
                        acc[ci * 3 + 1] += pv as f64;
                        acc[ci * 3 + 2] += tv as f64;
                    }
                }
            });
        let sums = self.out_uninit(Shape::new(&[n, c, 3]))?;
        let sv = view_mut(&sums);
        for ni in 0..n {
            for k in 0..c * 3 {
                let mut total = 0f64;
                for j in 0..chunks_per_sample {
                    total += partial[(ni * chunks_per_sample + j) * c * 3 + k];
                }
                sv[ni * c * 3 + k] = total as f32;
            }
        }
        let (mut total, mut count) = (0f64, 0usize);
        for (ni, ci) in dice_pairs(sv, n, c) {
            let s = &sv[(ni * c + ci) * 3..][..3];
            total += 1.0 - 2.0 * s[0] as f64 / (s[1] as f64 + s[2] as f64);
            count += 1;
        }
        let loss = if count == 0 {
            0.0
        } else {
            total / count as f64
        };
        Ok((make_scalar(self, loss as f32)?, sums))
    }

    /// `dp[n,v,c] = −dloss · 2(t·(Σp + Σt) − Σpt) / (K·(Σp + Σt)²)` for the K
    /// averaged pairs (n, c), 0 elsewhere (background, absent classes).
    fn dice_loss_bwd(
        &self,
        p: &Tensor,
        target: &Tensor,
        sums: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor> {
        let (_, ts) = pair("dice_loss_bwd", p, target)?;
        let g = scalar(dloss, "dice_loss_bwd: dloss")?;
        let sh = p.shape();
        let (n, c, per_sample) = (sh.n(), sh.c(), sh.voxels() * sh.c());
        let sv = view(sums, "dice_loss_bwd: sums")?;
        ensure!(
            sums.shape().dims() == [n, c, 3],
            "dice_loss_bwd: sums must have shape {n}×{c}×3, got {}",
            sums.shape()
        );
        let count = dice_pairs(sv, n, c).count();
        // Per (n, c): dp = α·t + β with α = −2g / (K·S), β = 2g·I / (K·S²), S = Σp + Σt.
        let mut alpha = vec![0f32; n * c];
        let mut beta = vec![0f32; n * c];
        for (ni, ci) in dice_pairs(sv, n, c) {
            let s = &sv[(ni * c + ci) * 3..][..3];
            let (i, den) = (s[0] as f64, s[1] as f64 + s[2] as f64);
            let k = 2.0 * g as f64 / count as f64;
            alpha[ni * c + ci] = (-k / den) as f32;
            beta[ni * c + ci] = (k * i / (den * den)) as f32;
        }
        let dp = self.out_uninit(sh)?;
        view_mut(&dp)
            .par_chunks_mut(per_sample)
            .zip(ts.par_chunks(per_sample))
            .enumerate()
            .for_each(|(ni, (oc, tc))| {
                let (a, be) = (&alpha[ni * c..][..c], &beta[ni * c..][..c]);
                for (o, tr) in oc.chunks_exact_mut(c).zip(tc.chunks_exact(c)) {
                    for (((o, &t), &a), &be) in o.iter_mut().zip(tr).zip(a).zip(be) {
                        *o = a * t + be;
                    }
                }
            });
        Ok(dp)
    }

    /// Mean of `(a − self)²` over all elements (f64 per chunk, chunks in order).
    fn mse(&self, a: &Tensor, b2: &Tensor) -> Result<Tensor> {
        let (av, bv) = same("mse", a, b2)?;
        let partial: Vec<f64> = av
            .par_chunks(ROWS * 16)
            .zip(bv.par_chunks(ROWS * 16))
            .map(|(x, y)| {
                x.iter()
                    .zip(y)
                    .map(|(&x, &y)| {
                        let d = x as f64 - y as f64;
                        d * d
                    })
                    .sum::<f64>()
            })
            .collect();
        make_scalar(self, (partial.iter().sum::<f64>() / av.len() as f64) as f32)
    }

    /// `da = dloss · 2(a − self) / numel`.
    fn mse_bwd(&self, a: &Tensor, b2: &Tensor, dloss: &Tensor) -> Result<Tensor> {
        let (av, bv) = same("mse_bwd", a, b2)?;
        let g = scalar(dloss, "mse_bwd: dloss")?;
        let k = 2.0 * g / av.len() as f32;
        let da = self.out_uninit(a.shape())?;
        view_mut(&da)
            .par_chunks_mut(ROWS * 16)
            .zip(av.par_chunks(ROWS * 16).zip(bv.par_chunks(ROWS * 16)))
            .for_each(|(o, (x, y))| {
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = k * (x - y);
                }
            });
        Ok(da)
    }
}

/// Validate a (prediction, target) pair of equal NDHWC shapes.
fn pair<'a>(op: &str, a: &'a Tensor, t: &'a Tensor) -> Result<(&'a [f32], &'a [f32])> {
    let av = ndhwc(a, &format!("{op}: prediction"))?;
    let tv = ndhwc(t, &format!("{op}: target"))?;
    check_same_shape(a, t, &format!("{op}: prediction vs target"))?;
    ensure!(a.numel() > 0, "{op}: empty input ({})", a.shape());
    Ok((av, tv))
}

/// `log Σ_c e^{x_c}` of one row, stable: `m + ln Σ e^{x − m}` in f64.
#[inline(always)]
fn log_sum_exp(x: &[f32]) -> f64 {
    let m = row_max(x) as f64;
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    m + s.ln()
}

/// The (n, c) pairs the Dice loss averages over: c ≥ 1 with Σt > 0.
fn dice_pairs(sums: &[f32], n: usize, c: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..n)
        .flat_map(move |ni| (1..c).map(move |ci| (ni, ci)))
        .filter(move |&(ni, ci)| sums[(ni * c + ci) * 3 + 2] > 0.0)
}

/// Validate an (a, b) pair of equal shapes, any rank.
fn same<'a>(op: &str, a: &'a Tensor, bt: &'a Tensor) -> Result<(&'a [f32], &'a [f32])> {
    let av = view(a, &format!("{op}: a"))?;
    let bv = view(bt, &format!("{op}: b"))?;
    check_same_shape(a, bt, &format!("{op}: a vs b"))?;
    ensure!(a.numel() > 0, "{op}: empty input");
    Ok((av, bv))
}
