//! The channel attentions of nn::attention: ChannelLinearAttention and
//! DANet's CAM, composed from primitives and as the fused custom ops of
//! nn::channel_attention, against their formulas written out in f64 (CAM
//! with the literal `max − E` before the softmax) on every backend; the fused
//! backwards against the composition's autograd gradients on every backend;
//! γ = 0 makes each block (composed or fused) the identity; gradients of
//! both against finite differences.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use voxdiff::autograd::{Graph, Var};
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::nn::attention::{
    channel_attention, channel_attention_cam, channel_linear_attention, gated_residual,
    AttentionImpl, ChannelAttention, ChannelKind, LINEAR_ATTENTION_EPS,
};
use voxdiff::nn::channel_attention::{Cam, CamGrad, ChannelLinear, ChannelLinearGrad};
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::ops::custom::{self, CustomOp};
use voxdiff::ops::{Bcast, Binary};
use voxdiff::tensor::{DType, Shape, Tensor};

/// (B, spatial, C): small, odd N and C; more channels than a warp (two
/// rounds of lanes) and odd N; an N over several parts of the GPU sums with
/// C² + C entries over several groups.
const CASES: [(usize, [usize; 3], usize); 3] =
    [(2, [1, 3, 5], 7), (1, [3, 3, 5], 37), (2, [3, 5, 9], 20)];

/// `x[s, n, c]` of an `[B, N, C]` row-major buffer, as f64.
fn at(x: &[f32], n: usize, c: usize) -> impl Fn(usize, usize, usize) -> f64 + '_ {
    move |s, t, ch| x[(s * n + t) * c + ch] as f64
}

/// The reference's ChannelLinearAttention, transcribed in `[b, c, n]` terms:
/// Q = K = l2_norm(x) over c, V = x;
/// tailor[c] = 1 / (N + Σ_n K[n, c]·(Σ_c' Q[c', n] + ε)),
/// value_sum[n] = Σ_c V[c, n], matrix = V·K (`[c, m]`),
/// out[c, n] = (value_sum[n] + Σ_m matrix[c, m]·Q[m, n])·tailor[c].
fn channel_linear_ref(x: &[f32], b: usize, n: usize, c: usize, eps: f64) -> Vec<f64> {
    let x = at(x, n, c);
    let mut out = vec![0.0; b * n * c];
    for s in 0..b {
        let norm: Vec<f64> = (0..n)
            .map(|t| (0..c).map(|ch| x(s, t, ch).powi(2)).sum::<f64>().sqrt())
            .collect();
        let q = |ch: usize, t: usize| x(s, t, ch) / norm[t];
        let tailor: Vec<f64> = (0..c)
            .map(|ch| {
                let d: f64 = (0..n)
                    .map(|t| q(ch, t) * ((0..c).map(|m| q(m, t)).sum::<f64>() + eps))
                    .sum();
                1.0 / (n as f64 + d)
            })
            .collect();
        let matrix: Vec<f64> = (0..c * c)
            .map(|i| (0..n).map(|t| x(s, t, i / c) * q(i % c, t)).sum())
            .collect();
        for t in 0..n {
            let value_sum: f64 = (0..c).map(|ch| x(s, t, ch)).sum();
            for ch in 0..c {
                let m: f64 = (0..c).map(|m| matrix[ch * c + m] * q(m, t)).sum();
                out[(s * n + t) * c + ch] = (value_sum + m) * tailor[ch];
            }
        }
    }
    out
}

/// DANet's CAM: E = X Xᵀ over channels, A = softmax(max_row(E) − E),
/// out[c, n] = Σ_c' A[c, c'] x[c', n].
fn cam_ref(x: &[f32], b: usize, n: usize, c: usize) -> Vec<f64> {
    let x = at(x, n, c);
    let mut out = vec![0.0; b * n * c];
    for s in 0..b {
        for ch in 0..c {
            let e: Vec<f64> = (0..c)
                .map(|m| (0..n).map(|t| x(s, t, ch) * x(s, t, m)).sum())
                .collect();
            let max = e.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let en: Vec<f64> = e.iter().map(|v| max - v).collect();
            let top = en.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = en.iter().map(|v| (v - top).exp()).sum();
            for t in 0..n {
                out[(s * n + t) * c + ch] = (0..c)
                    .map(|m| (en[m] - top).exp() / z * x(s, t, m))
                    .sum::<f64>();
            }
        }
    }
    out
}

#[test]
fn both_channel_attentions_match_their_formulas_on_every_backend() {
    let eps = LINEAR_ATTENTION_EPS;
    for s in subjects() {
        let mut rng = Rng::new(71);
        for (b, sp, c) in [(2, [1, 3, 4], 5), (1, [2, 3, 3], 12)] {
            let shape = Shape::ndhwc(b, sp[0], sp[1], sp[2], c);
            let n = shape.voxels();
            // Small values keep CAM's softmax away from one-hot.
            let (x, xd) = s.rand_act(&mut rng, shape, -0.4, 0.4);
            let mut g = Graph::inference(s.dev());
            let xv = g.constant(x);
            let y = channel_linear_attention(&mut g, &xv, eps).unwrap();
            assert_eq!((y.shape(), y.t.dtype()), (shape, s.dev().act_dtype()));
            let want = channel_linear_ref(&xd, b, n, c, eps as f64);
            s.check(&format!("channel linear attention C {c}"), &y.t, &want, 4.0);
            let y = channel_attention_cam(&mut g, &xv).unwrap();
            let want = cam_ref(&xd, b, n, c);
            s.check(&format!("CAM C {c}"), &y.t, &want, 2.0);
        }
    }
}

#[test]
fn gamma_zero_makes_each_channel_block_the_identity_on_every_backend() {
    for s in subjects() {
        for kind in [ChannelKind::Linear, ChannelKind::Cam] {
            for how in [AttentionImpl::Fused, AttentionImpl::Composed] {
                let mut ps = ParamStore::new(5);
                let block =
                    ChannelAttention::new(&mut ParamBuilder::new(&mut ps, s.dev()), kind, how)
                        .unwrap();
                let mut rng = Rng::new(72);
                let (x, xd) = s.rand_act(&mut rng, Shape::ndhwc(1, 2, 2, 3, 8), -1.0, 1.0);
                let mut g = Graph::inference(s.dev());
                let xv = g.constant(x);
                let y = block.forward(&mut g, &ps, &xv).unwrap();
                assert_eq!(
                    s.dev().download(&y.t).unwrap(),
                    xd,
                    "{kind:?} {how:?} on {}",
                    s.label
                );
            }
        }
    }
}

#[test]
fn the_channel_attention_gradients_match_finite_differences() {
    let mut rng = Rng::new(73);
    let shape = Shape::ndhwc(2, 1, 2, 3, 5);
    let inputs = [
        (shape, rng.vec(shape.numel(), -0.8, 0.8)),
        (Shape::scalar(), vec![0.6]),
    ];
    grad_check(
        "channel linear attention block",
        &inputs,
        |g, v| {
            let out = channel_linear_attention(g, &v[0], LINEAR_ATTENTION_EPS)?;
            gated_residual(g, &v[0], &v[1], &out)
        },
        30,
        2e-3,
        5e-3,
        2e-4,
    );
    grad_check(
        "CAM block",
        &inputs,
        |g, v| {
            let out = channel_attention_cam(g, &v[0])?;
            gated_residual(g, &v[0], &v[1], &out)
        },
        30,
        2e-3,
        5e-3,
        2e-4,
    );
}

#[test]
fn the_fused_ops_match_the_formulas_on_every_backend() {
    let eps = LINEAR_ATTENTION_EPS;
    for s in subjects() {
        let mut rng = Rng::new(74);
        for (b, sp, c) in CASES {
            let shape = Shape::ndhwc(b, sp[0], sp[1], sp[2], c);
            let n = shape.voxels();
            let (x, xd) = s.rand_act(&mut rng, shape, -0.4, 0.4);
            let what = format!("B {b} N {n} C {c}");

            let outs = custom::run(s.dev(), &ChannelLinear { eps }, &[&x]).unwrap();
            assert_eq!((outs[0].shape(), outs[0].dtype()), (shape, x.dtype()));
            assert_eq!(outs[1].shape(), Shape::new(&[b, c * c + c]));
            let want = channel_linear_ref(&xd, b, n, c, eps as f64);
            s.check(
                &format!("fused channel linear {what}"),
                &outs[0],
                &want,
                2.0,
            );

            let outs = custom::run(s.dev(), &Cam, &[&x]).unwrap();
            assert_eq!((outs[0].shape(), outs[0].dtype()), (shape, x.dtype()));
            assert_eq!(outs[1].shape(), Shape::new(&[b, c * c]));
            let want = cam_ref(&xd, b, n, c);
            s.check(&format!("fused CAM {what}"), &outs[0], &want, 2.0);
            // A is a row-stochastic matrix per sample.
            let a = s.dev().download(&outs[1]).unwrap();
            for (i, row) in a.chunks(c).enumerate() {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-4, "{what} row {i} sums to {sum}");
            }
        }
    }
}

/// The gradient w.r.t. x of `L = Σ out ⊙ dy` through `kind` by `how` on
/// `dev`.
fn grads(
    dev: &dyn Backend,
    x: &Tensor,
    dy: &Tensor,
    kind: ChannelKind,
    how: AttentionImpl,
) -> Vec<f32> {
    let mut g = Graph::train(dev);
    let xv = g.param(0, x);
    let y = channel_attention(&mut g, &xv, kind, LINEAR_ATTENTION_EPS, how).unwrap();
    let dy = g.constant(dy.clone());
    let l = g.binary(Binary::Mul, &y, &dy).unwrap();
    let l = g.reduce_sum(&l, Bcast::Scalar).unwrap();
    let grads = g.backward(&l, 1).unwrap();
    dev.download(grads.by_param[0].as_ref().unwrap()).unwrap()
}

#[test]
fn the_fused_backwards_match_the_composition_on_every_backend() {
    let cpu = CpuBackend::new();
    for s in subjects() {
        let mut rng = Rng::new(75);
        for (b, sp, c) in CASES {
            let shape = Shape::ndhwc(b, sp[0], sp[1], sp[2], c);
            let (x, xd) = s.rand_act(&mut rng, shape, -0.4, 0.4);
            let (dy, dyd) = s.rand_act(&mut rng, shape, -1.0, 1.0);
            let (cx, cdy) = (
                cpu.upload(&xd, shape, DType::F32).unwrap(),
                cpu.upload(&dyd, shape, DType::F32).unwrap(),
            );
            for kind in [ChannelKind::Linear, ChannelKind::Cam] {
                // The reference: the composition's gradient on the CPU from
                // the values this backend stores.
                let want: Vec<f64> = grads(&cpu, &cx, &cdy, kind, AttentionImpl::Composed)
                    .into_iter()
                    .map(|v| v as f64)
                    .collect();
                let what = format!("{kind:?} backward B {b} C {c}");
                // The custom ops directly, then through the graph.
                let (fwd, bwd): (&dyn CustomOp, &dyn CustomOp) = match kind {
                    ChannelKind::Linear => (
                        &ChannelLinear {
                            eps: LINEAR_ATTENTION_EPS,
                        },
                        &ChannelLinearGrad {
                            eps: LINEAR_ATTENTION_EPS,
                        },
                    ),
                    ChannelKind::Cam => (&Cam, &CamGrad),
                };
                let outs = custom::run(s.dev(), fwd, &[&x]).unwrap();
                let dx = custom::run(s.dev(), bwd, &[&dy, &x, &outs[1]]).unwrap();
                assert_eq!((dx[0].shape(), dx[0].dtype()), (shape, x.dtype()));
                s.check(&format!("fused {what}"), &dx[0], &want, 4.0);
                let got = grads(s.dev(), &x, &dy, kind, AttentionImpl::Fused);
                let t = s.dev().upload(&got, shape, DType::F32).unwrap();
                s.check(&format!("fused (graph) {what}"), &t, &want, 4.0);
            }
        }
    }
}

#[test]
fn a_mismatched_input_is_refused() {
    for s in subjects() {
        let (x, _) = s.act(&[0.5; 30], Shape::ndhwc(1, 1, 2, 3, 5));
        let (y, _) = s.act(&[0.5; 24], Shape::ndhwc(1, 1, 2, 3, 4));
        let (flat, _) = s.act(&[0.5; 30], Shape::new(&[6, 5]));
        let e = custom::run(s.dev(), &Cam, &[&flat]).unwrap_err();
        assert!(e.to_string().contains("must be NDHWC"), "{}: {e}", s.label);
        let e = custom::run(s.dev(), &ChannelLinear { eps: f32::NAN }, &[&x]).unwrap_err();
        assert!(
            e.to_string().contains("eps must be finite"),
            "{}: {e}",
            s.label
        );
        let a = s.f32(&[0.0; 25], Shape::new(&[1, 25]));
        let e = custom::run(s.dev(), &CamGrad, &[&y, &x, &a]).unwrap_err();
        assert!(e.to_string().contains("dy ("), "{}: {e}", s.label);
        let e = custom::run(s.dev(), &ChannelLinearGrad { eps: 1e-6 }, &[&x, &x, &a]).unwrap_err();
        assert!(
            e.to_string().contains("must be f32 [1, 30]"),
            "{}: {e}",
            s.label
        );
    }
}

#[test]
fn the_fused_block_gradients_match_finite_differences() {
    let mut rng = Rng::new(76);
    let shape = Shape::ndhwc(2, 1, 3, 3, 7);
    let inputs = [
        (shape, rng.vec(shape.numel(), -0.8, 0.8)),
        (Shape::scalar(), vec![0.6]),
    ];
    for kind in [ChannelKind::Linear, ChannelKind::Cam] {
        grad_check(
            &format!("fused {kind:?} block"),
            &inputs,
            |g, v: &[Var]| {
                let out =
                    channel_attention(g, &v[0], kind, LINEAR_ATTENTION_EPS, AttentionImpl::Fused)?;
                gated_residual(g, &v[0], &v[1], &out)
            },
            30,
            2e-3,
            5e-3,
            2e-4,
        );
    }
}
