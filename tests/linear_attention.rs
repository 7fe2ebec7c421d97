//! The position linear attention (nn::attention, nn::linear_attention): the
//! composition of primitives and the fused custom op against the quadratic
//! form in f64 on every backend; the fused backward against the composition's
//! autograd gradients on every backend; γ = 0 makes the block the identity;
//! finite-difference gradients of the fused block (convolutions, attention,
//! gate) and of the composition.

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
    gated_residual, linear_attention, linear_attention_composed, AttentionImpl,
    PositionLinearAttention, LINEAR_ATTENTION_EPS,
};
use voxdiff::nn::linear_attention::{LinearAttention, LinearAttentionGrad};
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::ops::custom;
use voxdiff::ops::{Bcast, Binary, ConvSpec};
use voxdiff::tensor::{DType, Shape, Tensor};

/// (B, spatial, C_k, C): a small case, and one with more channels than a
/// warp, two parts of tokens and two groups of stats entries on the GPU.
const CASES: [(usize, [usize; 3], usize, usize); 2] =
    [(2, [1, 3, 5], 3, 5), (1, [2, 4, 9], 34, 40)];

/// `Σ_j (1 + q̂_n·k̂_j) v_j / (Σ_j (1 + q̂_n·k̂_j) + ε Σ_i q̂_ni)` in f64 —
/// the quadratic form, with the ε term of the linear form's denominator.
fn quadratic(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    n: usize,
    ck: usize,
    c: usize,
    eps: f64,
) -> Vec<f64> {
    let unit = |x: &[f32]| -> Vec<f64> {
        let r = x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        x.iter().map(|&a| a as f64 / r).collect()
    };
    let mut out = vec![0.0; b * n * c];
    for s in 0..b {
        let kh: Vec<Vec<f64>> = (0..n).map(|j| unit(&k[(s * n + j) * ck..][..ck])).collect();
        for i in 0..n {
            let qh = unit(&q[(s * n + i) * ck..][..ck]);
            let mut den = eps * qh.iter().sum::<f64>();
            let mut num = vec![0.0; c];
            for (j, kj) in kh.iter().enumerate() {
                let w = 1.0 + qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>();
                den += w;
                for (o, &x) in num.iter_mut().zip(&v[(s * n + j) * c..][..c]) {
                    *o += w * x as f64;
                }
            }
            for (cc, x) in num.iter().enumerate() {
                out[(s * n + i) * c + cc] = x / den;
            }
        }
    }
    out
}

fn shapes(b: usize, sp: [usize; 3], ck: usize, c: usize) -> (Shape, Shape) {
    (
        Shape::ndhwc(b, sp[0], sp[1], sp[2], ck),
        Shape::ndhwc(b, sp[0], sp[1], sp[2], c),
    )
}

#[test]
fn composed_and_fused_match_the_quadratic_form_on_every_backend() {
    let eps = LINEAR_ATTENTION_EPS;
    for s in subjects() {
        let mut rng = Rng::new(61);
        for (b, sp, ck, c) in CASES {
            let (qs, vs) = shapes(b, sp, ck, c);
            let n = vs.voxels();
            let (q, qd) = s.rand_act(&mut rng, qs, -1.0, 1.0);
            let (k, kd) = s.rand_act(&mut rng, qs, -1.0, 1.0);
            let (v, vd) = s.rand_act(&mut rng, vs, -1.0, 1.0);
            let want = quadratic(&qd, &kd, &vd, b, n, ck, c, eps as f64);
            let what = format!("linear attention B {b} N {n} C_k {ck} C {c}");

            let outs = custom::run(s.dev(), &LinearAttention { eps }, &[&q, &k, &v]).unwrap();
            assert_eq!((outs[0].shape(), outs[0].dtype()), (vs, v.dtype()));
            assert_eq!(outs[1].shape(), Shape::new(&[b, ck * c + ck + c]));
            s.check(&format!("fused {what}"), &outs[0], &want, 2.0);

            let mut g = Graph::inference(s.dev());
            let (qv, kv, vv) = (g.constant(q), g.constant(k), g.constant(v));
            let y = linear_attention_composed(&mut g, &qv, &kv, &vv, eps).unwrap();
            assert_eq!((y.shape(), y.t.dtype()), (vs, s.dev().act_dtype()));
            // bf16 rounds q̂, k̂, Σk̂vᵀ and the numerator on the way.
            s.check(&format!("composed {what}"), &y.t, &want, 4.0);
        }
    }
}

/// The gradients of `L = Σ out ⊙ dy` w.r.t. (q, k, v) through the
/// composition on `dev`.
fn composed_grads(dev: &dyn Backend, t: [&Tensor; 4], eps: f32) -> Vec<Vec<f32>> {
    let mut g = Graph::train(dev);
    let vars: Vec<Var> = (0..3).map(|i| g.param(i, t[i])).collect();
    let y = linear_attention_composed(&mut g, &vars[0], &vars[1], &vars[2], eps).unwrap();
    let dy = g.constant(t[3].clone());
    let l = g.binary(Binary::Mul, &y, &dy).unwrap();
    let l = g.reduce_sum(&l, Bcast::Scalar).unwrap();
    let grads = g.backward(&l, 3).unwrap();
    grads
        .by_param
        .iter()
        .map(|t| dev.download(t.as_ref().unwrap()).unwrap())
        .collect()
}

#[test]
fn the_fused_backward_matches_the_composition_on_every_backend() {
    let eps = LINEAR_ATTENTION_EPS;
    let cpu = CpuBackend::new();
    for s in subjects() {
        let mut rng = Rng::new(62);
        for (b, sp, ck, c) in CASES {
            let (qs, vs) = shapes(b, sp, ck, c);
            let (q, qd) = s.rand_act(&mut rng, qs, -1.0, 1.0);
            let (k, kd) = s.rand_act(&mut rng, qs, -1.0, 1.0);
            let (v, vd) = s.rand_act(&mut rng, vs, -1.0, 1.0);
            let (dy, dyd) = s.rand_act(&mut rng, vs, -1.0, 1.0);
            // The reference: the composition's gradients on the CPU from the
            // values this backend stores.
            let up = |d: &[f32], sh| cpu.upload(d, sh, DType::F32).unwrap();
            let (cq, ck_, cv, cdy) = (up(&qd, qs), up(&kd, qs), up(&vd, vs), up(&dyd, vs));
            let want: Vec<Vec<f64>> = composed_grads(&cpu, [&cq, &ck_, &cv, &cdy], eps)
                .into_iter()
                .map(|g| g.into_iter().map(|x| x as f64).collect())
                .collect();
            let what = format!("linear attention backward C_k {ck} C {c}");

            let outs = custom::run(s.dev(), &LinearAttention { eps }, &[&q, &k, &v]).unwrap();
            let grads = custom::run(
                s.dev(),
                &LinearAttentionGrad { eps },
                &[&dy, &q, &k, &v, &outs[1]],
            )
            .unwrap();
            for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                s.check(&format!("fused {what} {name}"), &grads[i], &want[i], 4.0);
            }
            if s.dev().act_dtype() == DType::F32 {
                // The composition on this backend agrees too (in bf16 its
                // intermediates round too coarsely for this tolerance).
                let got = composed_grads(s.dev(), [&q, &k, &v, &dy], eps);
                for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                    let t = s
                        .dev()
                        .upload(&got[i], grads[i].shape(), DType::F32)
                        .unwrap();
                    s.check(&format!("composed {what} {name}"), &t, &want[i], 4.0);
                }
            }
        }
    }
}

#[test]
fn gamma_zero_makes_the_block_the_identity_on_every_backend() {
    for s in subjects() {
        for how in [AttentionImpl::Fused, AttentionImpl::Composed] {
            let mut ps = ParamStore::new(3);
            let block =
                PositionLinearAttention::new(&mut ParamBuilder::new(&mut ps, s.dev()), 16, how)
                    .unwrap();
            assert_eq!(ps.get(block.gamma).shape(), Shape::scalar());
            let mut rng = Rng::new(63);
            let (x, xd) = s.rand_act(&mut rng, Shape::ndhwc(2, 2, 3, 4, 16), -2.0, 2.0);
            let mut g = Graph::inference(s.dev());
            let xv = g.constant(x);
            let y = block.forward(&mut g, &ps, &xv).unwrap();
            let y = s.dev().download(&y.t).unwrap();
            assert_eq!(y, xd, "{how:?} on {}", s.label);
        }
    }
}

#[test]
fn a_mismatched_input_is_refused_with_its_shapes() {
    for s in subjects() {
        let (q, _) = s.act(&[0.5; 12], Shape::ndhwc(1, 1, 2, 3, 2));
        let (v, _) = s.act(&[0.5; 30], Shape::ndhwc(1, 1, 2, 3, 5));
        let (w, _) = s.act(&[0.5; 25], Shape::ndhwc(1, 1, 1, 5, 5));
        let e = custom::run(s.dev(), &LinearAttention { eps: 1e-6 }, &[&q, &q, &w]).unwrap_err();
        assert!(
            e.to_string().contains("must share [B, D, H, W]"),
            "{}: {e}",
            s.label
        );
        let e =
            custom::run(s.dev(), &LinearAttention { eps: f32::NAN }, &[&q, &q, &v]).unwrap_err();
        assert!(
            e.to_string().contains("eps must be finite"),
            "{}: {e}",
            s.label
        );
        let stats = s.f32(&[0.0; 3], Shape::new(&[1, 3]));
        let e = custom::run(
            s.dev(),
            &LinearAttentionGrad { eps: 1e-6 },
            &[&v, &q, &q, &v, &stats],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("stats must be f32 [1, 17]"),
            "{}: {e}",
            s.label
        );
    }
}

/// The whole block (q, k, v convolutions, attention by `how`, gate) on
/// inputs x, w_q, b_q, w_k, b_k, w_v, b_v, γ.
fn block(how: AttentionImpl) -> impl Fn(&mut Graph, &[Var]) -> anyhow::Result<Var> {
    move |g, v| {
        let q = g.conv3d(&v[0], &v[1], Some(&v[2]), ConvSpec::K1)?;
        let k = g.conv3d(&v[0], &v[3], Some(&v[4]), ConvSpec::K1)?;
        let val = g.conv3d(&v[0], &v[5], Some(&v[6]), ConvSpec::K1)?;
        let out = linear_attention(g, &q, &k, &val, LINEAR_ATTENTION_EPS, how)?;
        gated_residual(g, &v[0], &v[7], &out)
    }
}

#[test]
fn the_block_gradients_match_finite_differences() {
    let (c, ck) = (6, 2);
    let mut rng = Rng::new(64);
    let mut inputs = vec![(Shape::ndhwc(2, 1, 3, 4, c), rng.vec(2 * 12 * c, -1.0, 1.0))];
    for cout in [ck, ck, c] {
        let w = ConvSpec::K1.weight_shape(c, cout);
        inputs.push((w, rng.vec(w.numel(), -0.8, 0.8)));
        inputs.push((Shape::new(&[cout]), rng.vec(cout, -0.5, 0.5)));
    }
    inputs.push((Shape::scalar(), vec![0.7]));
    for how in [AttentionImpl::Fused, AttentionImpl::Composed] {
        grad_check(
            &format!("linear attention block ({how:?})"),
            &inputs,
            block(how),
            24,
            2e-3,
            5e-3,
            2e-4,
        );
    }
}
