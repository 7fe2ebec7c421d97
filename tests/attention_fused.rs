//! The fused softmax attention (`voxdiff::nn::flash_attention`): the op's
//! output and log-sum-exp against an f64 quadratic reference on every
//! backend (CPU, emulated GPU with f32 and bf16 activations — the bf16 case at
//! d ∈ {32, 64, 128} runs the tensor-core forward, the others the f32
//! kernels), with T not a multiple of any tile; its backward against the f64
//! gradients on every backend and bit-identical across runs; the multi-head
//! block `attend` (fused) against `attend_composed` on every backend, forward
//! and the gradients of every input and weight; finite-difference gradients
//! of the bare op and of the block; malformed inputs refused.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use std::sync::Arc;
use voxdiff::autograd::{Graph, Var};
use voxdiff::backend::prelude::*;
use voxdiff::nn::flash_attention::{FlashAttention, FlashAttentionGrad};
use voxdiff::nn::self_attention::{attend, attend_composed};
use voxdiff::ops::custom;
use voxdiff::ops::{Bcast, Binary, ConvSpec};
use voxdiff::tensor::{DType, Shape, Tensor};

/// (BH, T, d): odd T everywhere; T = 70 spans two tensor-core tiles and three
/// f32 tiles; d = 5 and 96 take the f32 kernels in bf16 too (96 the wide
/// tile), 32, 64 and 128 the tensor cores.
const CASES: [(usize, usize, usize); 5] = [
    (3, 37, 32),
    (2, 70, 64),
    (2, 21, 5),
    (1, 19, 96),
    (1, 45, 128),
];

/// The f64 attention of one case: (O, lse, P) with P `[BH, T, T]`.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bh: usize,
    t: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (d as f64).sqrt();
    let (mut o, mut lse, mut p) = (
        vec![0.0; bh * t * d],
        vec![0.0; bh * t],
        vec![0.0; bh * t * t],
    );
    for b in 0..bh {
        for i in 0..t {
            let row = b * t + i;
            let s: Vec<f64> = (0..t)
                .map(|j| {
                    (0..d)
                        .map(|c| q[row * d + c] as f64 * k[(b * t + j) * d + c] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            lse[row] = m + z.ln();
            for j in 0..t {
                let pj = (s[j] - m).exp() / z;
                p[row * t + j] = pj;
                for c in 0..d {
                    o[row * d + c] += pj * v[(b * t + j) * d + c] as f64;
                }
            }
        }
    }
    (o, lse, p)
}

/// The f64 gradients (dq, dk, dv) of `Σ O ⊙ dy`.
#[allow(clippy::too_many_arguments)]
fn reference_grads(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dy: &[f32],
    bh: usize,
    t: usize,
    d: usize,
) -> [Vec<f64>; 3] {
    let scale = 1.0 / (d as f64).sqrt();
    let (_, _, p) = reference(q, k, v, bh, t, d);
    let f = |x: &[f32], i: usize| x[i] as f64;
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; bh * t * d],
        vec![0.0; bh * t * d],
        vec![0.0; bh * t * d],
    );
    for b in 0..bh {
        for i in 0..t {
            let row = b * t + i;
            let dp: Vec<f64> = (0..t)
                .map(|j| {
                    (0..d)
                        .map(|c| f(dy, row * d + c) * f(v, (b * t + j) * d + c))
                        .sum()
                })
                .collect();
            let dd: f64 = (0..t).map(|j| p[row * t + j] * dp[j]).sum();
            for j in 0..t {
                let pj = p[row * t + j];
                let ds = pj * (dp[j] - dd);
                let col = b * t + j;
                for c in 0..d {
                    dv[col * d + c] += pj * f(dy, row * d + c);
                    dq[row * d + c] += ds * f(k, col * d + c) * scale;
                    dk[col * d + c] += ds * f(q, row * d + c) * scale;
                }
            }
        }
    }
    [dq, dk, dv]
}

/// q in [−2, 2) so the softmax is neither flat nor one-hot; k, v in [−1, 1).
fn operands(s: &every_backend::Subject, rng: &mut Rng, sh: Shape) -> [(Tensor, Vec<f32>); 3] {
    [
        s.rand_act(rng, sh, -2.0, 2.0),
        s.rand_act(rng, sh, -1.0, 1.0),
        s.rand_act(rng, sh, -1.0, 1.0),
    ]
}

#[test]
fn the_fused_op_matches_the_f64_reference_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(71);
        for (bh, t, d) in CASES {
            let sh = Shape::new(&[bh, t, d]);
            let [(q, qd), (k, kd), (v, vd)] = operands(&s, &mut rng, sh);
            let (want, want_lse, _) = reference(&qd, &kd, &vd, bh, t, d);
            let scale = 1.0 / (d as f32).sqrt();
            let outs = custom::run(s.dev(), &FlashAttention { scale }, &[&q, &k, &v]).unwrap();
            assert_eq!((outs[0].shape(), outs[0].dtype()), (sh, q.dtype()));
            assert_eq!(
                (outs[1].shape(), outs[1].dtype()),
                (Shape::new(&[bh, t]), DType::F32)
            );
            let what = format!("flash attention BH {bh} T {t} d {d}");
            // bf16: the output is rounded, and on tensor cores P as well.
            s.check(&format!("{what} O"), &outs[0], &want, 2.0);
            // lse is f32 on every backend; its scores come from the stored q, k.
            let got = s.dev().download(&outs[1]).unwrap();
            common::assert_close(
                &format!("{what} lse on {}", s.label),
                &got,
                &want_lse,
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn the_fused_backward_matches_the_f64_gradients_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(72);
        for (bh, t, d) in CASES {
            let sh = Shape::new(&[bh, t, d]);
            let [(q, qd), (k, kd), (v, vd)] = operands(&s, &mut rng, sh);
            let (dy, dyd) = s.rand_act(&mut rng, sh, -1.0, 1.0);
            let want = reference_grads(&qd, &kd, &vd, &dyd, bh, t, d);
            let scale = 1.0 / (d as f32).sqrt();
            let outs = custom::run(s.dev(), &FlashAttention { scale }, &[&q, &k, &v]).unwrap();
            let ins = [&dy, &q, &k, &v, &outs[0], &outs[1]];
            let grads = custom::run(s.dev(), &FlashAttentionGrad { scale }, &ins).unwrap();
            let what = format!("flash attention backward BH {bh} T {t} d {d}");
            for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                assert_eq!((grads[i].shape(), grads[i].dtype()), (sh, q.dtype()));
                // bf16: D = dO·O reads the rounded O, the gradients are rounded.
                s.check(&format!("{what} {name}"), &grads[i], &want[i], 4.0);
            }
            // No atomics: the same bits on a second run.
            let again = custom::run(s.dev(), &FlashAttentionGrad { scale }, &ins).unwrap();
            for (a, b) in grads.iter().zip(&again) {
                let (a, b) = (s.dev().download(a).unwrap(), s.dev().download(b).unwrap());
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{what}: two runs differ on {}",
                    s.label
                );
            }
        }
    }
}

/// Batch, spatial extents, channels, heads (head width 32): T = 1·3·7 = 21
/// tokens; two heads of 32 take the tensor-core forward in bf16.
const N: usize = 2;
const SPATIAL: [usize; 3] = [1, 3, 7];
const C: usize = 12;
const HEADS: usize = 2;
const HD: usize = 64;

fn block_inputs(seed: u64) -> Vec<(Shape, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    [
        Shape::ndhwc(N, SPATIAL[0], SPATIAL[1], SPATIAL[2], C),
        ConvSpec::K1.weight_shape(C, 3 * HD),
        Shape::new(&[3 * HD]),
        ConvSpec::K1.weight_shape(HD, C),
        Shape::new(&[C]),
    ]
    .iter()
    .enumerate()
    .map(|(i, &s)| {
        let r = if i == 1 || i == 3 { 0.5 } else { 1.0 };
        (s, rng.vec(s.numel(), -r, r))
    })
    .collect()
}

type AttendFn =
    fn(&mut Graph, &Var, &Var, Option<&Var>, &Var, Option<&Var>, usize) -> anyhow::Result<Var>;

/// The gradients of `Σ y ⊙ dy` w.r.t. x and the four weights, and y.
fn block_grads(
    dev: &dyn Backend,
    ts: &[Tensor],
    dy: &Tensor,
    f: AttendFn,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut g = Graph::train(dev);
    let v: Vec<Var> = ts.iter().enumerate().map(|(i, t)| g.param(i, t)).collect();
    let y = f(&mut g, &v[0], &v[1], Some(&v[2]), &v[3], Some(&v[4]), HEADS).unwrap();
    let yd = dev.download(&y.t).unwrap();
    let dyv = g.constant(dy.clone());
    let l = g.binary(Binary::Mul, &y, &dyv).unwrap();
    let l = g.reduce_sum(&l, Bcast::Scalar).unwrap();
    let grads = g.backward(&l, ts.len()).unwrap();
    let gs = grads
        .by_param
        .iter()
        .map(|t| dev.download(t.as_ref().unwrap()).unwrap())
        .collect();
    (yd, gs)
}

#[test]
fn the_fused_block_matches_the_composed_block_on_every_backend() {
    let data = block_inputs(73);
    for s in subjects() {
        let dev = s.dev();
        let (x, _) = s.act(&data[0].1, data[0].0);
        let mut ts = vec![x];
        ts.extend(data[1..].iter().map(|(sh, v)| s.f32(v, *sh)));
        let mut rng = Rng::new(74);
        let (dy, _) = s.rand_act(&mut rng, data[0].0, -1.0, 1.0);
        let (y_c, g_c) = block_grads(dev, &ts, &dy, attend_composed);
        let (y_f, g_f) = block_grads(dev, &ts, &dy, attend);
        let as64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        // bf16: the composition rounds the scores and probabilities, the fused
        // op only P (on tensor cores) — each within the bf16 tolerance of
        // the other.
        let slack = if dev.act_dtype() == DType::F32 {
            2.0
        } else {
            3.0
        };
        let yt = dev.upload(&y_f, data[0].0, DType::F32).unwrap();
        s.check("fused vs composed block y", &yt, &as64(&y_c), slack);
        for (i, name) in ["x", "w_qkv", "b_qkv", "w_o", "b_o"].iter().enumerate() {
            let t = dev.upload(&g_f[i], data[i].0, DType::F32).unwrap();
            s.check(
                &format!("fused vs composed block d{name}"),
                &t,
                &as64(&g_c[i]),
                4.0 * slack,
            );
        }
    }
}

#[test]
fn the_fused_gradients_match_finite_differences() {
    // The bare op: q, k, v of [2, 5, 3].
    let mut rng = Rng::new(75);
    let sh = Shape::new(&[2, 5, 3]);
    let inputs: Vec<(Shape, Vec<f32>)> = (0..3)
        .map(|_| (sh, rng.vec(sh.numel(), -1.5, 1.5)))
        .collect();
    let op = |g: &mut Graph, v: &[Var]| {
        g.custom(
            Arc::new(FlashAttention { scale: 0.7 }),
            &[&v[0], &v[1], &v[2]],
        )
    };
    grad_check("flash attention", &inputs, op, 30, 1e-2, 2e-3, 2e-4);
    // The multi-head block around it (2 heads of 3 channels).
    let mut rng = Rng::new(76);
    let (c, hd) = (5, 6);
    let inputs: Vec<(Shape, Vec<f32>)> = [
        Shape::ndhwc(2, 1, 2, 3, c),
        ConvSpec::K1.weight_shape(c, 3 * hd),
        Shape::new(&[3 * hd]),
        ConvSpec::K1.weight_shape(hd, c),
        Shape::new(&[c]),
    ]
    .iter()
    .enumerate()
    .map(|(i, &s)| {
        let r = if i == 1 || i == 3 { 0.6 } else { 1.0 };
        (s, rng.vec(s.numel(), -r, r))
    })
    .collect();
    let block =
        |g: &mut Graph, v: &[Var]| attend(g, &v[0], &v[1], Some(&v[2]), &v[3], Some(&v[4]), 2);
    grad_check(
        "fused multi-head attention",
        &inputs,
        block,
        40,
        1e-2,
        2e-3,
        2e-4,
    );
}

#[test]
fn malformed_inputs_are_refused_with_their_shapes() {
    for s in subjects() {
        let (q, _) = s.act(&[0.5; 24], Shape::new(&[2, 4, 3]));
        let (k, _) = s.act(&[0.5; 18], Shape::new(&[2, 3, 3]));
        let e = custom::run(s.dev(), &FlashAttention { scale: 1.0 }, &[&q, &k, &q]).unwrap_err();
        assert!(
            e.to_string().contains("must be one shape [BH, T, d]"),
            "{}: {e}",
            s.label
        );
        let e =
            custom::run(s.dev(), &FlashAttention { scale: f32::NAN }, &[&q, &q, &q]).unwrap_err();
        assert!(
            e.to_string().contains("scale must be finite"),
            "{}: {e}",
            s.label
        );
        let lse = s.f32(&[0.0; 4], Shape::new(&[2, 2]));
        let e = custom::run(
            s.dev(),
            &FlashAttentionGrad { scale: 1.0 },
            &[&q, &q, &q, &q, &q, &lse],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("lse must be f32 [2, 4]"),
            "{}: {e}",
            s.label
        );
    }
    // The GPU kernels take heads up to 128 channels wide.
    for s in subjects().into_iter().skip(1) {
        let (q, _) = s.act(&[0.1; 260], Shape::new(&[1, 2, 130]));
        let e = custom::run(s.dev(), &FlashAttention { scale: 1.0 }, &[&q, &q, &q]).unwrap_err();
        assert!(
            e.to_string().contains("exceeds the GPU kernels' 128"),
            "{}: {e}",
            s.label
        );
    }
}
