//! Unary maps (their math is in `unary.rs`), binary ops with a broadcast
//! operand, linear combinations.
//!
//! Also home of the two pieces every fused CPU kernel shares:
//! - [`Activation`]: each [`crate::ops::Act`] as a zero-sized type with its value and
//!   derivative, so kernels are monomorphised per activation (no per-element
//!   `match`) — see [`dispatch_act!`];
//! - [`with_simd`]: runs a loop nest compiled for AVX-512 (or AVX2) when the
//!   CPU has it, so LLVM vectorises the inner channel loops 16 (8) lanes wide.
//!   The code only uses IEEE add/mul/div (no FMA contraction), so every path
//!   gives bit-identical results.
//!
//! Elementwise ops run in parallel over chunks of [`CHUNK`] elements.
use super::unary::{dispatch_unary, UnaryMap};
use super::{view, view_mut, CpuBackend};
use crate::ops::pointwise::{check_binary, check_lincomb, check_unary, check_unary_bwd};
use crate::ops::{Bcast, Binary, PointwiseOps, Unary};
use crate::tensor::Tensor;
use anyhow::Result;
use rayon::prelude::*;

/// Elements per parallel task of the elementwise ops (128 KiB of f32).
pub(super) const CHUNK: usize = 1 << 15;

// ------------------------------------------------------------ SIMD dispatch

/// Run `f` inside a function compiled with AVX-512 (or AVX2 + FMA) enabled
/// when the CPU supports it, so the loops inlined into it are vectorised with
/// the wide registers; otherwise run it as is. Kernels called from `f` are
/// `#[inline(always)]` so they are compiled in that context.
#[inline(always)]
pub(super) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("fma")
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the features were detected just above.
            return unsafe { wide(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the features were detected just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

// ------------------------------------------------------- streaming stores

/// Outputs at least this large (16 MiB, far beyond the per-core L2) are
/// written with non-temporal stores: a normal store to a line not in cache
/// first reads the line (read-for-ownership), so streaming saves one read of
/// the output per pass — measured ≈ 2× on a plain scale of 64 MiB here.
pub(super) const STREAM_MIN_BYTES: usize = 16 << 20;

/// Whether an op writing an output of `elems` f32 should stream its stores.
pub(super) fn should_stream(elems: usize) -> bool {
    elems * 4 >= STREAM_MIN_BYTES
}

/// `d[..W] = v`, with 16-byte non-temporal stores when `stream` (and `d` is
/// 16-byte aligned and W a multiple of 4; otherwise plain stores). After
/// streaming, call [`stream_fence`] before the task ends.
#[inline(always)]
pub(super) fn store_tile<const W: usize>(d: &mut [f32], v: &[f32; W], stream: bool) {
    let d = &mut d[..W];
    #[cfg(target_arch = "x86_64")]
    if stream && W.is_multiple_of(4) && (d.as_ptr() as usize).is_multiple_of(16) {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        for j in (0..W).step_by(4) {
            // SAFETY: d[j..j + 4] is in bounds (W % 4 == 0) and 16-byte
            // aligned (d is, and j is a multiple of 4); SSE is baseline x86_64.
            unsafe { _mm_stream_ps(d.as_mut_ptr().add(j), _mm_loadu_ps(v.as_ptr().add(j))) }
        }
        return;
    }
    d.copy_from_slice(v);
}

/// Order this thread's streaming stores before anything that follows (the
/// end of a parallel task), as non-temporal stores are weakly ordered.
#[inline(always)]
pub(super) fn stream_fence(stream: bool) {
    #[cfg(target_arch = "x86_64")]
    if stream {
        // SAFETY: SSE is baseline on x86_64.
        unsafe { std::arch::x86_64::_mm_sfence() }
    }
    let _ = stream;
}

// -------------------------------------------------------------- activations

/// `e^x` in f32 without a library call, so it vectorises: `x = k·ln2 + r`
/// with `k = round(x·log2 e)` (Cody–Waite split of ln 2), `e^r` by its Taylor
/// polynomial to degree 7 (|r| ≤ ln2/2, truncation < 1e-8 relative), times
/// `2^k` built in the exponent bits. Relative error ≈ 2 ulp.
/// The input is clamped to [-87, 88] so `2^k` stays a normal number: results
/// saturate at ≈ 1.6e-38 and ≈ 1.65e38 instead of reaching 0 or ∞. NaN in,
/// NaN out.
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    // f32::clamp passes NaN through.
    exp_in_range(x.clamp(-87.0, 88.0))
}

/// [`exp_f32`] without the clamp: valid for x in [-87.3, 88.7] (k = round(x·log2 e)
/// in [-126, 127]).
#[inline(always)]
fn exp_in_range(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2^23: adding it rounds x·log2 e to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // few mantissa bits: k·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let ki = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits((ki.wrapping_add(127) as u32) << 23);
    p * scale
}

/// An activation as a type: its value and its derivative, both f32.
pub(super) trait Activation {
    fn f(x: f32) -> f32;
    /// `act'(x)`; NaN for NaN input (so `dy · act'(x)` propagates it).
    fn df(x: f32) -> f32;
}

pub(super) struct IdentityAct;
pub(super) struct ReluAct;
pub(super) struct SiluAct;
pub(super) struct GeluAct;

impl Activation for IdentityAct {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn df(_x: f32) -> f32 {
        1.0
    }
}

impl Activation for ReluAct {
    /// `max(x, 0)`, written so NaN passes through.
    #[inline(always)]
    fn f(x: f32) -> f32 {
        if x < 0.0 {
            0.0
        } else {
            x
        }
    }
    /// 1 for x > 0, 0 for x ≤ 0 (the subgradient at 0 is 0), NaN for NaN.
    #[inline(always)]
    fn df(x: f32) -> f32 {
        if x > 0.0 {
            1.0
        } else if x <= 0.0 {
            0.0
        } else {
            x
        }
    }
}

impl Activation for SiluAct {
    /// `x·σ(x)`, σ(x) = 1 / (1 + e^-x).
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x / (1.0 + exp_f32(-x))
    }
    /// `σ(x)·(1 + x·(1 − σ(x)))` with `1 − σ = e^-x·σ` (no cancellation).
    #[inline(always)]
    fn df(x: f32) -> f32 {
        let e = exp_f32(-x);
        let s = 1.0 / (1.0 + e);
        s * (1.0 + x * (e * s))
    }
}

/// √(2/π)
const GELU_A: f32 = 0.797_884_6;
const GELU_B: f32 = 0.044_715;

impl Activation for GeluAct {
    /// Tanh form `0.5·x·(1 + tanh(y))`, `y = √(2/π)(x + 0.044715x³)`, computed
    /// as `x·σ(2y)` (the same function: 1 + tanh y = 2σ(2y)), which has no
    /// cancellation for negative x. `σ` is evaluated at x clamped to ±10, where
    /// it is already 1 in f32 (or e^-87, below any f32 product that matters),
    /// which also keeps `−2y` within ±87.4, the range of [`exp_in_range`].
    #[inline(always)]
    fn f(x: f32) -> f32 {
        let xc = clamp10(x);
        let y = GELU_A * (xc + GELU_B * xc * xc * xc);
        x / (1.0 + exp_in_range(-2.0 * y))
    }
    /// `s + x·s·(1 − s)·2y'`, s = σ(2y), `1 − s = e·s` with e = e^{-2y},
    /// y' = √(2/π)(1 + 3·0.044715x²).
    #[inline(always)]
    fn df(x: f32) -> f32 {
        let xc = clamp10(x);
        let x2 = xc * xc;
        let y = GELU_A * (xc + GELU_B * x2 * xc);
        let dy = GELU_A * (1.0 + 3.0 * GELU_B * x2);
        let e = exp_in_range(-2.0 * y);
        let s = 1.0 / (1.0 + e);
        s + xc * s * (e * s) * (2.0 * dy)
    }
}

/// Clamp to [-10, 10]; NaN passes through.
#[inline(always)]
fn clamp10(x: f32) -> f32 {
    x.clamp(-10.0, 10.0)
}

/// `dispatch_act!(act, A => body)`: evaluate `body` with the type alias `A`
/// bound to the [`Activation`] type of the runtime value `act`.
macro_rules! dispatch_act {
    ($act:expr, $A:ident => $body:expr) => {
        match $act {
            $crate::ops::Act::Identity => {
                type $A = $crate::backend::cpu::pointwise::IdentityAct;
                $body
            }
            $crate::ops::Act::Relu => {
                type $A = $crate::backend::cpu::pointwise::ReluAct;
                $body
            }
            $crate::ops::Act::Silu => {
                type $A = $crate::backend::cpu::pointwise::SiluAct;
                $body
            }
            $crate::ops::Act::Gelu => {
                type $A = $crate::backend::cpu::pointwise::GeluAct;
                $body
            }
        }
    };
}
pub(super) use dispatch_act;

// ---------------------------------------------------------------------- ops

/// An elementwise function of K inputs, as a type: the hot loops call it
/// without closures, so it is compiled inside the SIMD-enabled caller.
trait ElemMap<const K: usize>: Sync {
    fn apply(&self, v: [f32; K]) -> f32;
}

/// `f(x)`.
struct UnaryValue<U>(U);
/// `dy · f'(x)` of (dy, x).
struct UnaryGrad<U>(U);
/// `Σ_i coef_i · x_i`, summed left to right.
struct LinComb<const K: usize>([f32; K]);

impl<U: UnaryMap> ElemMap<1> for UnaryValue<U> {
    #[inline(always)]
    fn apply(&self, v: [f32; 1]) -> f32 {
        self.0.f(v[0])
    }
}
impl<U: UnaryMap> ElemMap<2> for UnaryGrad<U> {
    #[inline(always)]
    fn apply(&self, v: [f32; 2]) -> f32 {
        v[0] * self.0.df(v[1])
    }
}
impl<const K: usize> ElemMap<K> for LinComb<K> {
    #[inline(always)]
    fn apply(&self, v: [f32; K]) -> f32 {
        let mut acc = self.0[0] * v[0];
        for (&c, &x) in self.0.iter().zip(&v).skip(1) {
            acc += c * x;
        }
        acc
    }
}

/// Lanes per tile of [`map_chunk`].
const LANES: usize = 16;

/// `out[e] = m(ins[0][e], …)` over one chunk, [`LANES`] at a time, streaming
/// the stores when `nt`.
#[inline(always)]
fn map_chunk<const K: usize, M: ElemMap<K>>(m: &M, ins: [&[f32]; K], out: &mut [f32], nt: bool) {
    let full = out.len() / LANES * LANES;
    for off in (0..full).step_by(LANES) {
        let mut v = [[0f32; LANES]; K];
        for i in 0..K {
            v[i].copy_from_slice(&ins[i][off..off + LANES]);
        }
        let mut o = [0f32; LANES];
        for j in 0..LANES {
            let mut lanes = [0f32; K];
            for i in 0..K {
                lanes[i] = v[i][j];
            }
            o[j] = m.apply(lanes);
        }
        store_tile::<LANES>(&mut out[off..], &o, nt);
    }
    for e in full..out.len() {
        let mut lanes = [0f32; K];
        for i in 0..K {
            lanes[i] = ins[i][e];
        }
        out[e] = m.apply(lanes);
    }
    stream_fence(nt);
}

/// Run `m` elementwise over inputs of `out.len()` elements, in parallel
/// chunks of [`CHUNK`] (each 64-byte aligned, so streaming stores apply to
/// large outputs).
fn map_elementwise<const K: usize, M: ElemMap<K>>(m: M, ins: [&[f32]; K], out: &mut [f32]) {
    let nt = should_stream(out.len());
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, oc)| {
        let lo = ci * CHUNK;
        let mut part: [&[f32]; K] = [&[]; K];
        for i in 0..K {
            part[i] = &ins[i][lo..lo + oc.len()];
        }
        with_simd(
            #[inline(always)]
            || map_chunk(&m, part, oc, nt),
        )
    });
}

/// A binary op as a type (monomorphised loops, no per-element `match`).
trait BinaryOp: Sync {
    fn f(a: f32, b: f32) -> f32;
}
struct AddOp;
struct SubOp;
struct MulOp;
struct DivOp;
impl BinaryOp for AddOp {
    #[inline(always)]
    fn f(a: f32, b: f32) -> f32 {
        a + b
    }
}
impl BinaryOp for SubOp {
    #[inline(always)]
    fn f(a: f32, b: f32) -> f32 {
        a - b
    }
}
impl BinaryOp for MulOp {
    #[inline(always)]
    fn f(a: f32, b: f32) -> f32 {
        a * b
    }
}
impl BinaryOp for DivOp {
    #[inline(always)]
    fn f(a: f32, b: f32) -> f32 {
        a / b
    }
}

/// `dispatch_binary!(op, B => body)`: evaluate `body` with the type alias `B`
/// bound to the [`BinaryOp`] type of the runtime [`Binary`] `op`.
macro_rules! dispatch_binary {
    ($op:expr, $B:ident => $body:expr) => {
        match $op {
            Binary::Add => {
                type $B = AddOp;
                $body
            }
            Binary::Sub => {
                type $B = SubOp;
                $body
            }
            Binary::Mul => {
                type $B = MulOp;
                $body
            }
            Binary::Div => {
                type $B = DivOp;
                $body
            }
        }
    };
}

impl PointwiseOps for CpuBackend {
    /// `y = f(x)` elementwise, any shape.
    fn unary(&self, x: &Tensor, op: Unary) -> Result<Tensor> {
        let xs = view(x, "unary: x")?;
        check_unary(op)?;
        let y = self.out_uninit(x.shape())?;
        dispatch_unary!(op, m => map_elementwise(UnaryValue(m), [xs], view_mut(&y)));
        Ok(y)
    }

    /// `dx = dy · f'(x)` elementwise, any shape.
    fn unary_bwd(&self, dy: &Tensor, x: &Tensor, op: Unary) -> Result<Tensor> {
        let dys = view(dy, "unary_bwd: dy")?;
        let xs = view(x, "unary_bwd: x")?;
        check_unary_bwd(dy, x, op)?;
        let dx = self.out_uninit(x.shape())?;
        dispatch_unary!(op, m => map_elementwise(UnaryGrad(m), [dys, xs], view_mut(&dx)));
        Ok(dx)
    }

    /// `y = Σ_i coef_i · x_i` for 1 to 4 terms of one shape, summed left to right
    /// in f32 (`((c0·x0 + c1·x1) + c2·x2) + c3·x3`).
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        let shape = check_lincomb(terms)?;
        let xs = terms
            .iter()
            .enumerate()
            .map(|(i, (_, t))| view(t, &format!("lincomb: term {i}")))
            .collect::<Result<Vec<&[f32]>>>()?;
        let c: Vec<f32> = terms.iter().map(|t| t.0).collect();
        let y = self.out_uninit(shape)?;
        let out = view_mut(&y);
        match xs.len() {
            1 => map_elementwise(LinComb([c[0]]), [xs[0]], out),
            2 => map_elementwise(LinComb([c[0], c[1]]), [xs[0], xs[1]], out),
            3 => map_elementwise(LinComb([c[0], c[1], c[2]]), [xs[0], xs[1], xs[2]], out),
            _ => map_elementwise(
                LinComb([c[0], c[1], c[2], c[3]]),
                [xs[0], xs[1], xs[2], xs[3]],
                out,
            ),
        }
        Ok(y)
    }

    /// `out = x ∘ y`, y broadcast over x seen as `[outer, mid, inner]`
    /// ([`Bcast::split`]): parallel over runs of about [`CHUNK`] elements
    /// (whole outer blocks when they are shorter), the op dispatched once.
    fn binary(&self, op: Binary, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let xs = view(x, "binary: x")?;
        let ys = view(y, "binary: y")?;
        let b = check_binary(x, y)?;
        let out = self.out_uninit(x.shape())?;
        let os = view_mut(&out);
        dispatch_binary!(op, B => {
            if b == Bcast::Full {
                map_elementwise(BinaryFull::<B>(Default::default()), [xs, ys], os)
            } else {
                broadcast_binary::<B>(xs, ys, b.split(x.shape()), os)
            }
        });
        Ok(out)
    }
}

/// `x ∘ y` of two equally shaped inputs.
struct BinaryFull<B>(std::marker::PhantomData<B>);
impl<B: BinaryOp> ElemMap<2> for BinaryFull<B> {
    #[inline(always)]
    fn apply(&self, v: [f32; 2]) -> f32 {
        B::f(v[0], v[1])
    }
}

/// `out[o, m, i] = x[o, m, i] ∘ y[o, i]`. Outer blocks shorter than
/// [`CHUNK`] are grouped into tasks of about CHUNK elements; longer ones are
/// cut into runs of whole rows of `inner`.
fn broadcast_binary<B: BinaryOp>(
    xs: &[f32],
    ys: &[f32],
    (_, mid, inner): (usize, usize, usize),
    out: &mut [f32],
) {
    let per = mid * inner;
    if out.is_empty() {
        return;
    }
    if per <= CHUNK {
        let k = CHUNK / per;
        out.par_chunks_mut(k * per)
            .zip(xs.par_chunks(k * per))
            .zip(ys.par_chunks(k * inner))
            .for_each(|((oc, xc), yc)| {
                with_simd(
                    #[inline(always)]
                    || {
                        for ((oo, xo), yo) in oc
                            .chunks_exact_mut(per)
                            .zip(xc.chunks_exact(per))
                            .zip(yc.chunks_exact(inner))
                        {
                            binary_rows::<B>(oo, xo, yo);
                        }
                    },
                )
            });
    } else {
        let run = (CHUNK / inner).max(1) * inner;
        out.par_chunks_mut(per)
            .zip(xs.par_chunks(per))
            .zip(ys.par_chunks(inner))
            .for_each(|((oo, xo), yo)| {
                oo.par_chunks_mut(run)
                    .zip(xo.par_chunks(run))
                    .for_each(|(oc, xc)| {
                        with_simd(
                            #[inline(always)]
                            || binary_rows::<B>(oc, xc, yo),
                        )
                    })
            });
    }
}

/// `o[r, i] = x[r, i] ∘ y[i]` over whole rows of `y.len()`.
#[inline(always)]
fn binary_rows<B: BinaryOp>(o: &mut [f32], x: &[f32], y: &[f32]) {
    if let [v] = *y {
        for (o, &a) in o.iter_mut().zip(x) {
            *o = B::f(a, v);
        }
    } else {
        for (orow, xrow) in o.chunks_exact_mut(y.len()).zip(x.chunks_exact(y.len())) {
            for ((o, &a), &v) in orow.iter_mut().zip(xrow).zip(y) {
                *o = B::f(a, v);
            }
        }
    }
}
