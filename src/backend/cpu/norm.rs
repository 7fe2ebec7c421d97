//! Fused group norm + affine + FiLM + residual + activation ([`NormArgs`]).
//!
//! # Math
//! For sample n and group g (channels `g·cpg .. (g+1)·cpg`, `cpg = C / G`),
//! over the `M = voxels·cpg` elements of the group:
//! ```text
//! μ = mean x,  σ² = mean (x − μ)²  (biased),  r = 1 / sqrt(σ² + eps)
//! u = (x − μ)·a[n,c] + b[n,c] (+ residual),   y = act(u)
//! a = r·γ·(1 + s),   b = β·(1 + s) + h        (s, h: FiLM scale/shift)
//! ```
//! which is `((x − μ)·r·γ + β)·(1 + s) + h` regrouped so each element costs
//! one subtract and one multiply-add (x − μ first: no cancellation when |μ| ≫ σ).
//!
//! Backward, with `du = dy·act'(u)` and `k = γ·(1 + s)` (so `dx̂ = k·du`):
//! ```text
//! S1[n,c] = Σ_v du,   S2[n,c] = Σ_v du·x̂,     x̂ = (x − μ)·r
//! m1 = (1/M) Σ_{c∈g} k·S1,   m2 = (1/M) Σ_{c∈g} k·S2
//! dx = r·(k·du − m1 − x̂·m2) = P·du + Q·(x − μ) + R,   P = r·k, Q = −r²·m2, R = −r·m1
//! dγ[c] = Σ_n (1 + s)·S2,   dβ[c] = Σ_n (1 + s)·S1
//! dscale[n,c] = γ·S2 + β·S1,   dshift[n,c] = S1,   dresidual = du
//! ```
//!
//! # Passes and memory traffic
//! The tensor is split into tasks of (sample, block of [`BLOCK_ELEMS`]/C
//! voxels), run in parallel with rayon; per-task partial sums land in fixed
//! slots and are combined in task order in f64, so results do not depend on
//! the thread count or scheduling.
//! - forward: (1) statistics — read x; (2) normalise + epilogue — read x
//!   (+ residual), write y. Minimum traffic 3 tensors (4 with a residual).
//! - backward: (1) reduction — read x, dy (+ residual unless act is the
//!   identity) and, when a residual is given, write `dresidual = du`;
//!   (2) gradient — read x and dy (or the just written du), write dx.
//!   Minimum traffic 5 tensors without a residual.
//!
//! The pre-activation `u` is recomputed from x and the stats, never stored.
//!
//! # Statistics
//! Each task walks its block in sub-chunks of [`SUB_ELEMS`] elements (they
//! stay in L1): per channel a sum → sub-chunk mean m, then a second sweep over
//! the cached sub-chunk for `Σ(x − m)` and `Σ(x − m)²` (the corrected two-pass
//! formula), merged into per-channel f64 (count, mean, M2) with Chan's update.
//! Blocks and channels of a group are then combined exactly in f64:
//! `μ = Σ cnt·mean / M`, `M2 = Σ (M2_i + cnt_i·(mean_i − μ)²)`. No sum of
//! squares is ever formed, so there is no catastrophic cancellation.
//!
//! The forward normalises with μ in f64 (as the f32 pair mean + mean_lo), so
//! y is accurate even when |μ| ≫ σ. The stats tensor holds μ rounded to f32
//! (the contract), so the backward's x̂ carries a relative error of about
//! |μ|·2⁻²⁴/σ: negligible for activations (|μ|/σ ≲ 10³), 1e-2 at |μ|/σ ≈ 10⁵.
use super::pointwise::{check_nc, dispatch_act, with_simd, Activation};
use super::{check, check_ndhwc, view, view_mut, CpuBackend};
use crate::backend::{NormArgs, NormGrads, NormOut};
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::ops::Range;

/// Elements per parallel task (256 KiB of f32: fits the per-core L2).
const BLOCK_ELEMS: usize = 1 << 16;
/// Elements per statistics sub-chunk (16 KiB: stays in L1 for the second sweep).
const SUB_ELEMS: usize = 1 << 12;

/// Extents and task decomposition of one norm call.
struct Geom {
    n: usize,
    vox: usize,
    c: usize,
    groups: usize,
    cpg: usize,
    /// Voxels per task.
    block_vox: usize,
    /// Tasks per sample.
    blocks: usize,
}

impl Geom {
    fn new(shape: Shape, groups: usize) -> Geom {
        let (n, vox, c) = (shape.n(), shape.voxels(), shape.c());
        let block_vox = (BLOCK_ELEMS / c).max(1).min(vox);
        Geom {
            n,
            vox,
            c,
            groups,
            cpg: c / groups,
            block_vox,
            blocks: vox.div_ceil(block_vox),
        }
    }
    fn tasks(&self) -> usize {
        self.n * self.blocks
    }
    /// Sample and element range (in the whole tensor) of task `t`.
    fn task(&self, t: usize) -> (usize, Range<usize>) {
        let (n, j) = (t / self.blocks, t % self.blocks);
        let per_sample = self.vox * self.c;
        let lo = n * per_sample + j * self.block_vox * self.c;
        let hi = (lo + self.block_vox * self.c).min((n + 1) * per_sample);
        (n, lo..hi)
    }
    /// Elements per group (the M of the module docs).
    fn group_size(&self) -> f64 {
        (self.vox * self.cpg) as f64
    }
    /// Split an output buffer into the tasks' disjoint element ranges, in task order.
    fn split<'a>(&self, buf: &'a mut [f32]) -> Vec<&'a mut [f32]> {
        buf.chunks_mut(self.vox * self.c)
            .flat_map(|s| s.chunks_mut(self.block_vox * self.c))
            .collect()
    }
}

/// The validated host views of a norm call's inputs.
struct Inputs<'a> {
    x: &'a [f32],
    gamma: Option<&'a [f32]>,
    beta: Option<&'a [f32]>,
    film: Option<(&'a [f32], &'a [f32])>,
    residual: Option<&'a [f32]>,
}

fn validate<'a>(op: &str, x: &'a Tensor, args: &NormArgs<'a>) -> Result<(Geom, Inputs<'a>)> {
    let xs = view(x, &format!("{op}: x"))?;
    check_ndhwc(x, &format!("{op}: x"))?;
    let sh = x.shape();
    let c = sh.c();
    ensure!(
        args.groups >= 1 && c % args.groups == 0,
        "{op}: groups = {} must divide the {c} channels of x ({sh})",
        args.groups
    );
    ensure!(
        sh.voxels() >= 1 && sh.n() >= 1,
        "{op}: x ({sh}) has no voxels to normalise"
    );
    ensure!(
        args.eps >= 0.0 && args.eps.is_finite(),
        "{op}: eps must be finite and non-negative, got {}",
        args.eps
    );
    let vector = |t: Option<&'a Tensor>, name: &str| -> Result<Option<&'a [f32]>> {
        let Some(t) = t else { return Ok(None) };
        let what = format!("{op}: {name}");
        check(t, &what)?;
        ensure!(
            t.shape().dims() == [c],
            "{what}: expected shape [{c}] (the channels of x), got {}",
            t.shape()
        );
        Ok(Some(view(t, &what)?))
    };
    let gamma = vector(args.gamma, "gamma")?;
    let beta = vector(args.beta, "beta")?;
    let film = match args.film {
        None => None,
        Some((s, h)) => {
            check_nc(s, sh, &format!("{op}: film scale"))?;
            check_nc(h, sh, &format!("{op}: film shift"))?;
            Some((
                view(s, &format!("{op}: film scale"))?,
                view(h, &format!("{op}: film shift"))?,
            ))
        }
    };
    let residual = match args.residual {
        None => None,
        Some(r) => {
            let what = format!("{op}: residual");
            let rs = view(r, &what)?;
            ensure!(
                r.shape() == sh,
                "{what}: shape {} differs from x ({sh})",
                r.shape()
            );
            Some(rs)
        }
    };
    Ok((
        Geom::new(sh, args.groups),
        Inputs {
            x: xs,
            gamma,
            beta,
            film,
            residual,
        },
    ))
}

/// Per-(n, c) coefficients of the epilogue, all `[N·C]` f32.
struct Coefs {
    /// μ of the channel's group, rounded to f32 (as stored in the stats).
    mean: Vec<f32>,
    /// μ − mean[i] (forward only: μ is known in f64 there; the backward,
    /// reading f32 stats, has 0): `(x − mean) − mean_lo` is x − μ to f32
    /// precision even when |μ| ≫ σ.
    mean_lo: Vec<f32>,
    /// r of the channel's group.
    rstd: Vec<f32>,
    /// a = r·γ·(1 + s)
    a: Vec<f32>,
    /// b = β·(1 + s) + h
    b: Vec<f32>,
    /// k = γ·(1 + s)
    k: Vec<f32>,
}

impl Coefs {
    /// From stats `[N, G, 2]` (μ, r) — f64 in the forward, the f32 stats
    /// tensor in the backward — and the optional affine/FiLM inputs.
    fn new<S: Copy + Into<f64>>(g: &Geom, stats: &[S], inp: &Inputs) -> Coefs {
        let len = g.n * g.c;
        let mut co = Coefs {
            mean: vec![0.0; len],
            mean_lo: vec![0.0; len],
            rstd: vec![0.0; len],
            a: vec![0.0; len],
            b: vec![0.0; len],
            k: vec![0.0; len],
        };
        for n in 0..g.n {
            for c in 0..g.c {
                let i = n * g.c + c;
                let st = &stats[(n * g.groups + c / g.cpg) * 2..][..2];
                let gamma = inp.gamma.map_or(1.0, |v| v[c]);
                let beta = inp.beta.map_or(0.0, |v| v[c]);
                let (s1, h) = inp.film.map_or((1.0, 0.0), |(s, h)| (1.0 + s[i], h[i]));
                let (mu, rstd): (f64, f64) = (st[0].into(), st[1].into());
                co.mean[i] = mu as f32;
                co.mean_lo[i] = (mu - co.mean[i] as f64) as f32;
                co.rstd[i] = rstd as f32;
                co.k[i] = gamma * s1;
                co.a[i] = co.rstd[i] * co.k[i];
                co.b[i] = beta * s1 + h;
            }
        }
        co
    }
    fn row<'a>(v: &'a [f32], n: usize, c: usize) -> &'a [f32] {
        &v[n * c..(n + 1) * c]
    }
}

// ---------------------------------------------------------------- forward

/// Per-channel (mean, M2) of a block of rows, into `out` = [mean[0..c], m2[0..c]]
/// (f64), by sub-chunks as described in the module docs.
#[inline(always)]
fn block_moments(x: &[f32], c: usize, out: &mut [f64]) {
    let (mean, m2) = out.split_at_mut(c);
    mean.fill(0.0);
    m2.fill(0.0);
    let mut s = vec![0f32; c];
    let mut e = vec![0f32; c];
    let mut q = vec![0f32; c];
    let mut count = 0f64;
    for sub in x.chunks((SUB_ELEMS / c).max(1) * c) {
        let rows = sub.len() / c;
        s.fill(0.0);
        for row in sub.chunks_exact(c) {
            for (a, &v) in s.iter_mut().zip(row) {
                *a += v;
            }
        }
        let inv = 1.0 / rows as f32;
        for a in s.iter_mut() {
            *a *= inv; // s now holds the sub-chunk mean
        }
        e.fill(0.0);
        q.fill(0.0);
        for row in sub.chunks_exact(c) {
            for (((ea, qa), &v), &m) in e.iter_mut().zip(q.iter_mut()).zip(row).zip(&s) {
                let d = v - m;
                *ea += d;
                *qa += d * d;
            }
        }
        // Chan's merge of (count, mean, m2) with the sub-chunk's corrected moments.
        let nb = rows as f64;
        let total = count + nb;
        for ci in 0..c {
            let eb = e[ci] as f64;
            let mb = s[ci] as f64 + eb / nb;
            let m2b = q[ci] as f64 - eb * eb / nb;
            let delta = mb - mean[ci];
            mean[ci] += delta * nb / total;
            m2[ci] += m2b + delta * delta * count * nb / total;
        }
        count = total;
    }
}

/// Statistics pass: `[N, G, 2]` (μ, r) in f64.
fn statistics(g: &Geom, x: &[f32], eps: f32) -> Vec<f64> {
    let c = g.c;
    let mut partial = vec![0f64; g.tasks() * 2 * c];
    partial
        .par_chunks_mut(2 * c)
        .enumerate()
        .for_each(|(t, out)| {
            let (_, r) = g.task(t);
            with_simd(
                #[inline(always)]
                || block_moments(&x[r], c, out),
            );
        });
    let mut stats = vec![0f64; g.n * g.groups * 2];
    let m = g.group_size();
    for n in 0..g.n {
        for gi in 0..g.groups {
            // (task, channel, rows) of every partial belonging to this group, in order.
            let parts: Vec<(usize, usize, f64)> = (0..g.blocks)
                .flat_map(|j| {
                    let t = n * g.blocks + j;
                    let rows = (g.task(t).1.len() / c) as f64;
                    (gi * g.cpg..(gi + 1) * g.cpg).map(move |ci| (t, ci, rows))
                })
                .collect();
            let mut mu = 0f64;
            for &(t, ci, rows) in &parts {
                mu += rows * partial[t * 2 * c + ci];
            }
            mu /= m;
            let mut m2 = 0f64;
            for &(t, ci, rows) in &parts {
                let d = partial[t * 2 * c + ci] - mu;
                m2 += partial[t * 2 * c + c + ci] + rows * d * d;
            }
            let var = m2 / m;
            stats[(n * g.groups + gi) * 2] = mu;
            stats[(n * g.groups + gi) * 2 + 1] = 1.0 / (var + eps as f64).sqrt();
        }
    }
    stats
}

/// `y = act((x − μ)·a + b (+ res))` over a block of rows, x − μ as
/// `(x − mean) − mean_lo`.
#[inline(always)]
fn normalize<A: Activation>(
    x: &[f32],
    res: Option<&[f32]>,
    y: &mut [f32],
    (mean, lo, a, b): (&[f32], &[f32], &[f32], &[f32]),
) {
    let c = mean.len();
    // Re-sliced to length c so the inner loops carry no bounds checks.
    let (lo, a, b) = (&lo[..c], &a[..c], &b[..c]);
    match res {
        None => {
            for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                let (yr, xr) = (&mut yr[..c], &xr[..c]);
                for ci in 0..c {
                    yr[ci] = A::f(((xr[ci] - mean[ci]) - lo[ci]) * a[ci] + b[ci]);
                }
            }
        }
        Some(res) => {
            for ((yr, xr), rr) in y
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(res.chunks_exact(c))
            {
                let (yr, xr, rr) = (&mut yr[..c], &xr[..c], &rr[..c]);
                for ci in 0..c {
                    yr[ci] = A::f(((xr[ci] - mean[ci]) - lo[ci]) * a[ci] + b[ci] + rr[ci]);
                }
            }
        }
    }
}

pub fn norm_fwd(b: &CpuBackend, x: &Tensor, args: &NormArgs) -> Result<NormOut> {
    let (g, inp) = validate("norm_fwd", x, args)?;
    let stats = statistics(&g, inp.x, args.eps);
    let co = Coefs::new(&g, &stats, &inp);
    let y = b.out_uninit(x.shape())?;
    let tasks = g.split(view_mut(&y));
    dispatch_act!(args.act, A => {
        tasks.into_par_iter().enumerate().for_each(|(t, yc)| {
            let (n, r) = g.task(t);
            let coef = (
                Coefs::row(&co.mean, n, g.c),
                Coefs::row(&co.mean_lo, n, g.c),
                Coefs::row(&co.a, n, g.c),
                Coefs::row(&co.b, n, g.c),
            );
            let res = inp.residual.map(|s| &s[r.clone()]);
            with_simd(#[inline(always)] || normalize::<A>(&inp.x[r], res, yc, coef));
        })
    });
    let st = b.out_uninit(Shape::new(&[g.n, g.groups, 2]))?;
    for (o, &v) in view_mut(&st).iter_mut().zip(&stats) {
        *o = v as f32;
    }
    Ok(NormOut { y, stats: st })
}

// --------------------------------------------------------------- backward

/// Per-(n, c) row views of the coefficients the backward passes use.
#[derive(Clone, Copy)]
struct BwdRow<'a> {
    mean: &'a [f32],
    rstd: &'a [f32],
    a: &'a [f32],
    b: &'a [f32],
}

/// Reduction pass over a block: `out` = [S1[0..c], S2[0..c]] (f64). With a
/// residual, `res_du` = (residual, du output): `du = dy·act'(u)` is stored
/// there (it is `dresidual`). f32 lanes per sub-chunk of ≤ 256 rows, added
/// into f64 in order.
#[inline(always)]
fn grad_sums<A: Activation>(
    dy: &[f32],
    x: &[f32],
    mut res_du: Option<(&[f32], &mut [f32])>,
    co: BwdRow,
    out: &mut [f64],
) {
    let c = co.mean.len();
    // Re-sliced to length c so the inner loops carry no bounds checks.
    let (mean, rstd, a, b) = (co.mean, &co.rstd[..c], &co.a[..c], &co.b[..c]);
    out.fill(0.0);
    let mut s1 = vec![0f32; c];
    let mut s2 = vec![0f32; c];
    let sub = 256 * c;
    for (si, (dys, xs)) in dy.chunks(sub).zip(x.chunks(sub)).enumerate() {
        let (s1, s2) = (&mut s1[..c], &mut s2[..c]);
        s1.fill(0.0);
        s2.fill(0.0);
        let span = si * sub..si * sub + xs.len();
        match res_du.as_mut() {
            Some((res, du)) => {
                let rows = dys
                    .chunks_exact(c)
                    .zip(xs.chunks_exact(c))
                    .zip(res[span.clone()].chunks_exact(c))
                    .zip(du[span].chunks_exact_mut(c));
                for (((gr, xr), rr), dr) in rows {
                    let (gr, xr, rr, dr) = (&gr[..c], &xr[..c], &rr[..c], &mut dr[..c]);
                    for ci in 0..c {
                        let d = xr[ci] - mean[ci];
                        let du = gr[ci] * A::df(d * a[ci] + b[ci] + rr[ci]);
                        dr[ci] = du;
                        s1[ci] += du;
                        s2[ci] += du * (d * rstd[ci]);
                    }
                }
            }
            None => {
                for (gr, xr) in dys.chunks_exact(c).zip(xs.chunks_exact(c)) {
                    let (gr, xr) = (&gr[..c], &xr[..c]);
                    for ci in 0..c {
                        let d = xr[ci] - mean[ci];
                        let du = gr[ci] * A::df(d * a[ci] + b[ci]);
                        s1[ci] += du;
                        s2[ci] += du * (d * rstd[ci]);
                    }
                }
            }
        }
        for ci in 0..c {
            out[ci] += s1[ci] as f64;
            out[c + ci] += s2[ci] as f64;
        }
    }
}

/// Gradient pass over a block: `dx = P·du + Q·(x − μ) + R`, with du read from
/// `du` (written by the reduction pass) or recomputed as `dy·act'(u)`.
#[inline(always)]
fn grad_input<A: Activation>(
    dy: &[f32],
    x: &[f32],
    du: Option<&[f32]>,
    dx: &mut [f32],
    co: BwdRow,
    (p, q, r): (&[f32], &[f32], &[f32]),
) {
    let c = co.mean.len();
    let (mean, a, b) = (co.mean, &co.a[..c], &co.b[..c]);
    let (p, q, r) = (&p[..c], &q[..c], &r[..c]);
    match du {
        Some(du) => {
            for ((o, xr), gr) in dx
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(du.chunks_exact(c))
            {
                let (o, xr, gr) = (&mut o[..c], &xr[..c], &gr[..c]);
                for ci in 0..c {
                    o[ci] = p[ci] * gr[ci] + q[ci] * (xr[ci] - mean[ci]) + r[ci];
                }
            }
        }
        None => {
            for ((o, xr), gr) in dx
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(dy.chunks_exact(c))
            {
                let (o, xr, gr) = (&mut o[..c], &xr[..c], &gr[..c]);
                for ci in 0..c {
                    let d = xr[ci] - mean[ci];
                    let du = gr[ci] * A::df(d * a[ci] + b[ci]);
                    o[ci] = p[ci] * du + q[ci] * d + r[ci];
                }
            }
        }
    }
}

pub fn norm_bwd(
    b: &CpuBackend,
    dy: &Tensor,
    x: &Tensor,
    stats: &Tensor,
    args: &NormArgs,
) -> Result<NormGrads> {
    let (g, inp) = validate("norm_bwd", x, args)?;
    let dys = view(dy, "norm_bwd: dy")?;
    ensure!(
        dy.shape() == x.shape(),
        "norm_bwd: dy has shape {} but x has {}",
        dy.shape(),
        x.shape()
    );
    let sts = view(stats, "norm_bwd: stats")?;
    ensure!(
        stats.shape().dims() == [g.n, g.groups, 2],
        "norm_bwd: stats must have shape {}×{}×2 ([N, groups, 2]), got {}",
        g.n,
        g.groups,
        stats.shape()
    );
    let co = Coefs::new(&g, sts, &inp);
    let c = g.c;
    let row = |n: usize| BwdRow {
        mean: Coefs::row(&co.mean, n, c),
        rstd: Coefs::row(&co.rstd, n, c),
        a: Coefs::row(&co.a, n, c),
        b: Coefs::row(&co.b, n, c),
    };

    // Pass 1: S1, S2 per task (and du into dresidual when there is a residual).
    let dres = match inp.residual {
        Some(_) => Some(b.out_uninit(x.shape())?),
        None => None,
    };
    let du_tasks: Vec<Option<&mut [f32]>> = match &dres {
        Some(t) => g.split(view_mut(t)).into_iter().map(Some).collect(),
        None => (0..g.tasks()).map(|_| None).collect(),
    };
    let mut partial = vec![0f64; g.tasks() * 2 * c];
    dispatch_act!(args.act, A => {
        partial
            .par_chunks_mut(2 * c)
            .zip(du_tasks.into_par_iter())
            .enumerate()
            .for_each(|(t, (out, du))| {
                let (n, r) = g.task(t);
                let res_du = inp.residual.map(|s| &s[r.clone()]).zip(du);
                with_simd(#[inline(always)] || grad_sums::<A>(&dys[r.clone()], &inp.x[r], res_du, row(n), out));
            })
    });
    // S1, S2 per (n, c), blocks combined in order.
    let mut s1 = vec![0f64; g.n * c];
    let mut s2 = vec![0f64; g.n * c];
    for n in 0..g.n {
        for j in 0..g.blocks {
            let part = &partial[(n * g.blocks + j) * 2 * c..][..2 * c];
            for ci in 0..c {
                s1[n * c + ci] += part[ci];
                s2[n * c + ci] += part[c + ci];
            }
        }
    }

    // Per (n, c): P, Q, R of the gradient pass.
    let mut p = vec![0f32; g.n * c];
    let mut q = vec![0f32; g.n * c];
    let mut r = vec![0f32; g.n * c];
    for n in 0..g.n {
        for gi in 0..g.groups {
            let chans = gi * g.cpg..(gi + 1) * g.cpg;
            let (mut m1, mut m2) = (0f64, 0f64);
            for ci in chans.clone() {
                let i = n * c + ci;
                m1 += co.k[i] as f64 * s1[i];
                m2 += co.k[i] as f64 * s2[i];
            }
            m1 /= g.group_size();
            m2 /= g.group_size();
            for ci in chans {
                let i = n * c + ci;
                let rs = co.rstd[i] as f64;
                p[i] = (rs * co.k[i] as f64) as f32;
                q[i] = (-rs * rs * m2) as f32;
                r[i] = (-rs * m1) as f32;
            }
        }
    }

    // Pass 2: dx.
    let dx = b.out_uninit(x.shape())?;
    let dx_tasks = g.split(view_mut(&dx));
    let du_all: Option<&[f32]> = match &dres {
        Some(t) => Some(view(t, "norm_bwd: dresidual")?),
        None => None,
    };
    dispatch_act!(args.act, A => {
        dx_tasks.into_par_iter().enumerate().for_each(|(t, dxc)| {
            let (n, rg) = g.task(t);
            let du = du_all.map(|d| &d[rg.clone()]);
            let pqr = (
                Coefs::row(&p, n, c),
                Coefs::row(&q, n, c),
                Coefs::row(&r, n, c),
            );
            with_simd(#[inline(always)] || grad_input::<A>(&dys[rg.clone()], &inp.x[rg], du, dxc, row(n), pqr));
        })
    });

    // Parameter and conditioning gradients from S1, S2 (f64, samples in order).
    let film_s1 = |i: usize| inp.film.map_or(1.0, |(s, _)| 1.0 + s[i] as f64);
    let per_channel = |sums: &[f64]| -> Result<Tensor> {
        let t = b.out_uninit(Shape::new(&[c]))?;
        let o = view_mut(&t);
        for (ci, o) in o.iter_mut().enumerate() {
            *o = (0..g.n)
                .map(|n| film_s1(n * c + ci) * sums[n * c + ci])
                .sum::<f64>() as f32;
        }
        Ok(t)
    };
    let dgamma = match inp.gamma {
        Some(_) => Some(per_channel(&s2)?),
        None => None,
    };
    let dbeta = match inp.beta {
        Some(_) => Some(per_channel(&s1)?),
        None => None,
    };
    let dfilm = match inp.film {
        None => None,
        Some(_) => {
            let ds = b.out_uninit(Shape::new(&[g.n, c]))?;
            let dh = b.out_uninit(Shape::new(&[g.n, c]))?;
            let (dsv, dhv) = (view_mut(&ds), view_mut(&dh));
            for i in 0..g.n * c {
                let ci = i % c;
                let gamma = inp.gamma.map_or(1.0, |v| v[ci] as f64);
                let beta = inp.beta.map_or(0.0, |v| v[ci] as f64);
                dsv[i] = (gamma * s2[i] + beta * s1[i]) as f32;
                dhv[i] = s1[i] as f32;
            }
            Some((ds, dh))
        }
    };
    Ok(NormGrads {
        dx,
        dgamma,
        dbeta,
        dfilm,
        dresidual: dres,
    })
}
