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
//! - backward: (1) reduction — read x, dy (+ residual) and, when a residual
//!   is given, write `dresidual = du`; (2) gradient — read x and dy (or the
//!   stored du), write dx. Minimum traffic 5 tensors without a residual. For
//!   SiLU and GELU, whose derivative costs more than a pass over memory here,
//!   pass 1 also stores du into the dx buffer and pass 2 overwrites it in
//!   place (6 tensors, one derivative per element instead of two).
//! - outputs of ≥ 16 MiB are written with non-temporal stores (no
//!   read-for-ownership of lines about to be overwritten).
//!
//! The pre-activation `u` is recomputed from x and the stats, never stored.
//!
//! # Statistics
//! Each task walks its block in sub-chunks of ≈ 32 KiB (they stay in L1):
//! per channel a sum → sub-chunk mean m, then a second sweep over the cached
//! sub-chunk for `Σ(x − m)` and `Σ(x − m)²` (the corrected two-pass formula),
//! merged into per-channel f64 (count, mean, M2) with Chan's update.
//! Blocks and channels of a group are then combined exactly in f64:
//! `μ = Σ cnt·mean / M`, `M2 = Σ (M2_i + cnt_i·(mean_i − μ)²)`. No sum of
//! squares is ever formed, so there is no catastrophic cancellation.
//!
//! The forward normalises with μ in f64 (as the f32 pair mean + mean_lo), so
//! y is accurate even when |μ| ≫ σ. The stats tensor holds μ rounded to f32
//! (the contract), so the backward's x̂ carries a relative error of about
//! |μ|·2⁻²⁴/σ: negligible for activations (|μ|/σ ≲ 10³), 1e-2 at |μ|/σ ≈ 10⁵.
mod tiles;

use super::pointwise::{dispatch_act, should_stream, with_simd};
use super::{view, view_mut, CpuBackend};
use crate::ops::NormOps;
use crate::ops::{Act, NormArgs, NormGrads, NormOut};
use crate::tensor::{Shape, Tensor};
use anyhow::Result;
use rayon::prelude::*;
use std::ops::Range;

/// Elements per parallel task (256 KiB of f32: fits the per-core L2).
const BLOCK_ELEMS: usize = 1 << 16;

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

/// The family contract ([`NormArgs::check`]), then this backend's own rule
/// (every tensor f32 in host memory); the views of the inputs.
fn validate<'a>(op: &str, x: &'a Tensor, args: &NormArgs<'a>) -> Result<(Geom, Inputs<'a>)> {
    args.check(op, x)?;
    let input = |t: Option<&'a Tensor>, name: &str| -> Result<Option<&'a [f32]>> {
        t.map(|t| view(t, &format!("{op}: {name}"))).transpose()
    };
    let film = match args.film {
        None => None,
        Some((s, h)) => Some((
            view(s, &format!("{op}: film scale"))?,
            view(h, &format!("{op}: film shift"))?,
        )),
    };
    Ok((
        Geom::new(x.shape(), args.groups),
        Inputs {
            x: view(x, &format!("{op}: x"))?,
            gamma: input(args.gamma, "gamma")?,
            beta: input(args.beta, "beta")?,
            film,
            residual: input(args.residual, "residual")?,
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
    fn row(v: &[f32], n: usize, c: usize) -> &[f32] {
        &v[n * c..(n + 1) * c]
    }
    /// The coefficients of sample n, as the tile kernels take them.
    fn sample(&self, n: usize, c: usize) -> tiles::Coef<'_> {
        tiles::Coef {
            mean: Self::row(&self.mean, n, c),
            mean_lo: Self::row(&self.mean_lo, n, c),
            rstd: Self::row(&self.rstd, n, c),
            a: Self::row(&self.a, n, c),
            b: Self::row(&self.b, n, c),
        }
    }
}

// ---------------------------------------------------------------- forward

/// Statistics pass: `[N, G, 2]` (μ, r) in f64.
fn statistics(g: &Geom, x: &[f32], eps: f32) -> Vec<f64> {
    let c = g.c;
    let mut partial = vec![0f64; g.tasks() * 2 * c];
    partial
        .par_chunks_mut(2 * c)
        .enumerate()
        .for_each(|(t, out)| {
            let (_, r) = g.task(t);
            tiles::dispatch_width!(c, W => with_simd(
                #[inline(always)]
                || tiles::block_moments::<W>(&x[r], c, out),
            ));
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

impl NormOps for CpuBackend {
    fn norm_fwd(&self, x: &Tensor, args: &NormArgs) -> Result<NormOut> {
        let (g, inp) = validate("norm_fwd", x, args)?;
        let stats = statistics(&g, inp.x, args.eps);
        let co = Coefs::new(&g, &stats, &inp);
        let y = self.out_uninit(x.shape())?;
        let nt = should_stream(y.numel());
        let tasks = g.split(view_mut(&y));
        dispatch_act!(args.act, A => {
            tasks.into_par_iter().enumerate().for_each(|(t, yc)| {
                let (n, r) = g.task(t);
                let res = inp.residual.map(|s| &s[r.clone()]);
                let coef = co.sample(n, g.c);
                tiles::dispatch_width!(g.c, W => with_simd(
                    #[inline(always)]
                    || tiles::normalize::<A, W>(&inp.x[r], res, yc, coef, nt),
                ));
            })
        });
        let st = self.out_uninit(Shape::new(&[g.n, g.groups, 2]))?;
        for (o, &v) in view_mut(&st).iter_mut().zip(&stats) {
            *o = v as f32;
        }
        Ok(NormOut { y, stats: st })
    }

    fn norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        stats: &Tensor,
        args: &NormArgs,
    ) -> Result<NormGrads> {
        args.check_bwd(dy, x, stats)?;
        let (g, inp) = validate("norm_bwd", x, args)?;
        let dys = view(dy, "norm_bwd: dy")?;
        let sts = view(stats, "norm_bwd: stats")?;
        let co = Coefs::new(&g, sts, &inp);
        let c = g.c;
        let nt = should_stream(x.numel());

        // Pass 1: S1, S2 per task; du is stored when there is a residual (it is
        // dresidual) or when act' is costly (into dx, overwritten in pass 2).
        let dres = match inp.residual {
            Some(_) => Some(self.out_uninit(x.shape())?),
            None => None,
        };
        let dx = self.out_uninit(x.shape())?;
        let du_in_dx = dres.is_none() && matches!(args.act, Act::Silu | Act::Gelu);
        let du_tasks: Vec<Option<&mut [f32]>> = match (&dres, du_in_dx) {
            (Some(t), _) => g.split(view_mut(t)).into_iter().map(Some).collect(),
            (None, true) => g.split(view_mut(&dx)).into_iter().map(Some).collect(),
            (None, false) => (0..g.tasks()).map(|_| None).collect(),
        };
        let mut partial = vec![0f64; g.tasks() * 2 * c];
        dispatch_act!(args.act, A => {
            partial
                .par_chunks_mut(2 * c)
                .zip(du_tasks.into_par_iter())
                .enumerate()
                .for_each(|(t, (out, du))| {
                    let (n, r) = g.task(t);
                    let res = inp.residual.map(|s| &s[r.clone()]);
                    let coef = co.sample(n, c);
                    tiles::dispatch_width!(c, W => with_simd(
                        #[inline(always)]
                        || tiles::grad_sums::<A, W>(&dys[r.clone()], &inp.x[r], res, du, coef, out, nt),
                    ));
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
        let dx_tasks = g.split(view_mut(&dx));
        let du_all: Option<&[f32]> = match &dres {
            Some(t) => Some(view(t, "norm_bwd: dresidual")?),
            None => None,
        };
        dispatch_act!(args.act, A => {
            dx_tasks.into_par_iter().enumerate().for_each(|(t, dxc)| {
                let (n, rg) = g.task(t);
                let src = match du_all {
                    Some(d) => tiles::DuSource::Read(&d[rg.clone()]),
                    None if du_in_dx => tiles::DuSource::InPlace,
                    None => tiles::DuSource::Recompute(&dys[rg.clone()]),
                };
                let pqr = (
                    Coefs::row(&p, n, c),
                    Coefs::row(&q, n, c),
                    Coefs::row(&r, n, c),
                );
                let coef = co.sample(n, c);
                tiles::dispatch_width!(c, W => with_simd(
                    #[inline(always)]
                    || tiles::grad_input::<A, W>(&inp.x[rg], src, dxc, coef, pqr, nt),
                ));
            })
        });

        // Parameter and conditioning gradients from S1, S2 (f64, samples in order).
        let film_s1 = |i: usize| inp.film.map_or(1.0, |(s, _)| 1.0 + s[i] as f64);
        let per_channel = |sums: &[f64]| -> Result<Tensor> {
            let t = self.out_uninit(Shape::new(&[c]))?;
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
                let ds = self.out_uninit(Shape::new(&[g.n, c]))?;
                let dh = self.out_uninit(Shape::new(&[g.n, c]))?;
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
}

// --------------------------------------------------------------- backward
