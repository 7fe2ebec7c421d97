//! Batch norm (nn::batch_norm): train mode (batch statistics per channel
//! over N·D·H·W) by the fused norm on the one-sample view and by the
//! composition of primitives, and eval mode (running statistics), against
//! f64 on every backend; the running-statistics update (unbiased variance,
//! momentum); the running statistics are frozen state; the train-mode
//! gradients of both (through the batch mean and variance) against finite
//! differences.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use voxdiff::autograd::Graph;
use voxdiff::nn::batch_norm::{batch_norm_train, batch_norm_train_fused, BatchNorm};
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::tensor::Shape;

/// Per-channel (mean, biased variance) of an NDHWC buffer with c channels.
fn moments(x: &[f32], c: usize) -> Vec<(f64, f64)> {
    let m = (x.len() / c) as f64;
    (0..c)
        .map(|ch| {
            let mean = x.iter().skip(ch).step_by(c).map(|&v| v as f64).sum::<f64>() / m;
            let var = x
                .iter()
                .skip(ch)
                .step_by(c)
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            (mean, var)
        })
        .collect()
}

fn apply(x: &[f32], st: &[(f64, f64)], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let c = st.len();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let (m, var) = st[i % c];
            (v as f64 - m) / (var + eps).sqrt() * gamma[i % c] as f64 + beta[i % c] as f64
        })
        .collect()
}

#[test]
fn train_and_eval_modes_match_f64_on_every_backend() {
    let (c, eps) = (5, 1e-5);
    let shape = Shape::ndhwc(2, 3, 4, 5, c);
    for s in subjects() {
        let mut rng = Rng::new(81);
        let mut ps = ParamStore::new(1);
        let bn = BatchNorm::new(&mut ParamBuilder::new(&mut ps, s.dev()), c).unwrap();
        // Non-trivial affine and running statistics.
        let gamma = rng.vec(c, 0.5, 1.5);
        let beta = rng.vec(c, -0.5, 0.5);
        let rm = rng.vec(c, -0.3, 0.3);
        let rv = rng.vec(c, 0.5, 2.0);
        for (id, v) in [
            (bn.gamma, &gamma),
            (bn.beta, &beta),
            (bn.running_mean, &rm),
            (bn.running_var, &rv),
        ] {
            s.dev().write(ps.get(id), v).unwrap();
        }
        // An offset mean per channel, as activations have.
        let (x, xd) = s.rand_act(&mut rng, shape, 1.0, 3.0);

        let mut g = Graph::inference(s.dev());
        let xv = g.constant(x);
        let (y, stats) = bn.forward_train(&mut g, &ps, &xv).unwrap();
        let st = moments(&xd, c);
        s.check(
            "batch norm train",
            &y.t,
            &apply(&xd, &st, &gamma, &beta, eps),
            2.0,
        );
        let mean: Vec<f64> = st.iter().map(|p| p.0).collect();
        let var: Vec<f64> = st.iter().map(|p| p.1).collect();
        s.check("batch mean", &stats.mean, &mean, 1.0);
        s.check("batch variance", &stats.var, &var, 4.0);
        assert_eq!(stats.count, 2 * 3 * 4 * 5);

        // The composition agrees with the same reference.
        let (gv, bv) = (
            g.constant(ps.get(bn.gamma).clone()),
            g.constant(ps.get(bn.beta).clone()),
        );
        let (yc, sc) = batch_norm_train(&mut g, &xv, &gv, &bv, eps as f32).unwrap();
        s.check(
            "batch norm train (composed)",
            &yc.t,
            &apply(&xd, &st, &gamma, &beta, eps),
            2.0,
        );
        s.check("batch variance (composed)", &sc.var, &var, 4.0);

        let y = bn.forward_eval(&mut g, &ps, &xv).unwrap();
        let rst: Vec<(f64, f64)> = rm
            .iter()
            .zip(&rv)
            .map(|(&m, &v)| (m as f64, v as f64))
            .collect();
        s.check(
            "batch norm eval",
            &y.t,
            &apply(&xd, &rst, &gamma, &beta, eps),
            1.0,
        );

        bn.update_running(s.dev(), &mut ps, &stats).unwrap();
        let m = stats.count as f64;
        let want_m: Vec<f64> = rm
            .iter()
            .zip(&mean)
            .map(|(&r, b)| 0.9 * r as f64 + 0.1 * b)
            .collect();
        let want_v: Vec<f64> = rv
            .iter()
            .zip(&var)
            .map(|(&r, b)| 0.9 * r as f64 + 0.1 * b * m / (m - 1.0))
            .collect();
        s.check("running mean", ps.get(bn.running_mean), &want_m, 1.0);
        s.check("running variance", ps.get(bn.running_var), &want_v, 4.0);
    }
}

#[test]
fn the_running_statistics_are_frozen_state() {
    let dev = voxdiff::backend::cpu::CpuBackend::new();
    let mut ps = ParamStore::new(1);
    let bn = BatchNorm::new(&mut ParamBuilder::new(&mut ps, &dev).pp("bn"), 4).unwrap();
    let trainable: Vec<&str> = ps.trainable().map(|(_, e)| e.name.as_str()).collect();
    assert_eq!(trainable, ["bn.scale", "bn.offset"]);
    assert_eq!(ps.entries[bn.running_mean.0].name, "bn.running_mean");
    assert!(!ps.entries[bn.running_var.0].decay);
}

#[test]
fn the_train_mode_gradients_match_finite_differences() {
    let c = 3;
    let shape = Shape::ndhwc(2, 1, 2, 3, c);
    let mut rng = Rng::new(82);
    let inputs = [
        (shape, rng.vec(shape.numel(), -1.0, 2.0)),
        (Shape::new(&[c]), rng.vec(c, 0.5, 1.5)),
        (Shape::new(&[c]), rng.vec(c, -0.5, 0.5)),
    ];
    grad_check(
        "batch norm (train, composed)",
        &inputs,
        |g, v| Ok(batch_norm_train(g, &v[0], &v[1], &v[2], 1e-5)?.0),
        36,
        1e-3,
        5e-3,
        2e-4,
    );
    grad_check(
        "batch norm (train, fused)",
        &inputs,
        |g, v| Ok(batch_norm_train_fused(g, &v[0], &v[1], &v[2], 1e-5)?.0),
        36,
        1e-3,
        5e-3,
        2e-4,
    );
}
