//! The loop nests of the norm passes over one block of NDHWC rows.
//!
//! Channels are processed in tiles of `W` lanes (`W` = the widest of 32, 16,
//! 8 dividing C, else 1), a compile-time width, so each tile's values,
//! coefficients and accumulators are fixed-size arrays LLVM keeps in vector
//! registers. Elementwise passes walk rows outer, tiles inner. Reducing passes
//! walk a sub-chunk of rows that stays in L1 once per tile (tiles outer, rows
//! inner), so every accumulator lives in a register across the rows, then
//! fold the sub-chunk's f32 lanes into the block's f64 totals.
use crate::backend::cpu::pointwise::{store_tile, stream_fence, Activation};

/// Rows per reducing sub-chunk: about 32 KiB of f32 (L1-resident).
pub(super) fn sub_rows(c: usize) -> usize {
    ((1 << 13) / c).max(1)
}

/// `dispatch_width!(c, W => body)`: evaluate `body` with the const `W` bound
/// to the widest tile (32, 16, 8 or 1 lanes) that divides `c`.
macro_rules! dispatch_width {
    ($c:expr, $W:ident => $body:expr) => {{
        let c: usize = $c;
        if c % 32 == 0 {
            const $W: usize = 32;
            $body
        } else if c % 16 == 0 {
            const $W: usize = 16;
            $body
        } else if c % 8 == 0 {
            const $W: usize = 8;
            $body
        } else {
            const $W: usize = 1;
            $body
        }
    }};
}
pub(super) use dispatch_width;

/// The W values at `s[off..off + W]`.
#[inline(always)]
fn load<const W: usize>(s: &[f32], off: usize) -> [f32; W] {
    let mut v = [0f32; W];
    v.copy_from_slice(&s[off..off + W]);
    v
}

/// Store a tile at `d[off..off + W]`, streaming (non-temporal) when `nt`.
#[inline(always)]
fn store<const W: usize>(d: &mut [f32], off: usize, v: [f32; W], nt: bool) {
    store_tile::<W>(&mut d[off..], &v, nt);
}

/// One sample's per-channel coefficients (each of length C): see the module
/// docs of `norm` for the math.
#[derive(Clone, Copy)]
pub(super) struct Coef<'a> {
    pub mean: &'a [f32],
    pub mean_lo: &'a [f32],
    pub rstd: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
}

/// Per-channel (mean, M2) of a block of rows into `out` = [mean[0..c], m2[0..c]]
/// (f64). Per sub-chunk and tile: sum → sub-chunk mean m, then Σ(x − m) and
/// Σ(x − m)² (corrected two-pass), merged into the totals with Chan's update.
#[inline(always)]
pub(super) fn block_moments<const W: usize>(x: &[f32], c: usize, out: &mut [f64]) {
    let (mean, m2) = out.split_at_mut(c);
    mean.fill(0.0);
    m2.fill(0.0);
    let mut count = 0f64;
    for sub in x.chunks(sub_rows(c) * c) {
        let rows = sub.len() / c;
        let nb = rows as f64;
        let total = count + nb;
        for t in (0..c).step_by(W) {
            let mut s = [0f32; W];
            for r in 0..rows {
                let v = load::<W>(sub, r * c + t);
                for j in 0..W {
                    s[j] += v[j];
                }
            }
            let inv = 1.0 / rows as f32;
            let mut m = [0f32; W];
            for j in 0..W {
                m[j] = s[j] * inv;
            }
            let (mut e, mut q) = ([0f32; W], [0f32; W]);
            for r in 0..rows {
                let v = load::<W>(sub, r * c + t);
                for j in 0..W {
                    let d = v[j] - m[j];
                    e[j] += d;
                    q[j] += d * d;
                }
            }
            for j in 0..W {
                let eb = e[j] as f64;
                let mb = m[j] as f64 + eb / nb;
                let m2b = q[j] as f64 - eb * eb / nb;
                let delta = mb - mean[t + j];
                mean[t + j] += delta * nb / total;
                m2[t + j] += m2b + delta * delta * count * nb / total;
            }
        }
        count = total;
    }
}

/// `y = act(((x − mean) − mean_lo)·a + b (+ res))`, rows outer, tiles inner;
/// y written with streaming stores when `nt`.
#[inline(always)]
pub(super) fn normalize<A: Activation, const W: usize>(
    x: &[f32],
    res: Option<&[f32]>,
    y: &mut [f32],
    co: Coef,
    nt: bool,
) {
    let c = co.mean.len();
    for (row, (yr, xr)) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)).enumerate() {
        for t in (0..c).step_by(W) {
            let v = load::<W>(xr, t);
            let r = match res {
                Some(res) => load::<W>(res, row * c + t),
                None => [0.0; W],
            };
            let (m, lo) = (load::<W>(co.mean, t), load::<W>(co.mean_lo, t));
            let (a, b) = (load::<W>(co.a, t), load::<W>(co.b, t));
            let mut out = [0f32; W];
            for j in 0..W {
                out[j] = A::f(((v[j] - m[j]) - lo[j]) * a[j] + b[j] + r[j]);
            }
            store(yr, t, out, nt);
        }
    }
    stream_fence(nt);
}

/// The tile coefficients of the backward's du: (mean, rstd, a, b).
type DuCoef<const W: usize> = ([f32; W], [f32; W], [f32; W], [f32; W]);

#[inline(always)]
fn du_coef<const W: usize>(co: &Coef, t: usize) -> DuCoef<W> {
    (
        load(co.mean, t),
        load(co.rstd, t),
        load(co.a, t),
        load(co.b, t),
    )
}

/// `du = g·act'((v − mean)·a + b + r)`, accumulating `S1 += du`, `S2 += du·x̂`.
#[inline(always)]
fn du_step<A: Activation, const W: usize>(
    g: [f32; W],
    v: [f32; W],
    r: [f32; W],
    (m, rs, a, b): DuCoef<W>,
    s1: &mut [f32; W],
    s2: &mut [f32; W],
) -> [f32; W] {
    let mut du = [0f32; W];
    for j in 0..W {
        let d = v[j] - m[j];
        du[j] = g[j] * A::df(d * a[j] + b[j] + r[j]);
        s1[j] += du[j];
        s2[j] += du[j] * (d * rs[j]);
    }
    du
}

/// Reduction pass of the backward over a block: `out` = [S1[0..c], S2[0..c]]
/// (f64), `S1 = Σ du`, `S2 = Σ du·x̂`, `du = dy·act'(u)`, recomputing
/// `u = (x − mean)·a + b (+ res)`. When `du_out` is given, du is stored there
/// (streamed when `nt`) for the gradient pass.
#[inline(always)]
pub(super) fn grad_sums<A: Activation, const W: usize>(
    dy: &[f32],
    x: &[f32],
    res: Option<&[f32]>,
    mut du_out: Option<&mut [f32]>,
    co: Coef,
    out: &mut [f64],
    nt: bool,
) {
    let c = co.mean.len();
    out.fill(0.0);
    let sub = sub_rows(c) * c;
    for (si, (dys, xs)) in dy.chunks(sub).zip(x.chunks(sub)).enumerate() {
        let span = si * sub..si * sub + xs.len();
        let res = res.map(|r| &r[span.clone()]);
        let mut dus = du_out.as_deref_mut().map(|d| &mut d[span]);
        for t in (0..c).step_by(W) {
            let k = du_coef::<W>(&co, t);
            let (mut s1, mut s2) = ([0f32; W], [0f32; W]);
            for off in (t..xs.len()).step_by(c) {
                let r = match res {
                    Some(res) => load::<W>(res, off),
                    None => [0.0; W],
                };
                let du = du_step::<A, W>(load(dys, off), load(xs, off), r, k, &mut s1, &mut s2);
                if let Some(d) = dus.as_deref_mut() {
                    store(d, off, du, nt);
                }
            }
            for j in 0..W {
                out[t + j] += s1[j] as f64;
                out[c + t + j] += s2[j] as f64;
            }
        }
    }
    stream_fence(nt);
}

/// The per-channel factors of the gradient pass, each of length C.
pub(super) type Pqr<'a> = (&'a [f32], &'a [f32], &'a [f32]);

/// Where the gradient pass finds du.
#[derive(Clone, Copy)]
pub(super) enum DuSource<'a> {
    /// Recompute `du = dy·act'(u)` from dy (cheap activations, no residual).
    Recompute(&'a [f32]),
    /// Read du from this buffer (the `dresidual` output).
    Read(&'a [f32]),
    /// The dx buffer holds du (stored by the reduction pass): overwrite it.
    InPlace,
}

/// Gradient pass of the backward over a block: `dx = P·du + Q·(x − mean) + R`.
/// Rows outer, tiles inner; dx streamed when `nt` (except in place, where the
/// lines were just read and a plain store costs no extra read).
#[inline(always)]
pub(super) fn grad_input<A: Activation, const W: usize>(
    x: &[f32],
    src: DuSource,
    dx: &mut [f32],
    co: Coef,
    (p, q, r): Pqr,
    nt: bool,
) {
    let c = co.mean.len();
    let nt = nt && !matches!(src, DuSource::InPlace);
    for (row, (o, xr)) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).enumerate() {
        for t in (0..c).step_by(W) {
            let v = load::<W>(xr, t);
            let k = du_coef::<W>(&co, t);
            let du = match src {
                DuSource::Recompute(dy) => {
                    let g = load::<W>(dy, row * c + t);
                    let (mut s1, mut s2) = ([0f32; W], [0f32; W]); // sums unused here
                    du_step::<A, W>(g, v, [0.0; W], k, &mut s1, &mut s2)
                }
                DuSource::Read(du) => load::<W>(du, row * c + t),
                DuSource::InPlace => load::<W>(o, t),
            };
            let (pv, qv, rv) = (load::<W>(p, t), load::<W>(q, t), load::<W>(r, t));
            let mut d = [0f32; W];
            for j in 0..W {
                d[j] = pv[j] * du[j] + qv[j] * (v[j] - k.0[j]) + rv[j];
            }
            store(o, t, d, nt);
        }
    }
    stream_fence(nt);
}
