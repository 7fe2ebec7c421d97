//! The probe's losses, composed from primitives (autograd/loss.rs):
//! BCE-with-logits and vox2vec's squared-sum soft Dice against f64 on every
//! backend, with their gradients against finite differences and a target of
//! the wrong shape refused.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use voxdiff::autograd::Graph;
use voxdiff::ops::Unary;
use voxdiff::tensor::{DType, Shape};

fn bce(z: &[f32], y: &[f32]) -> f64 {
    z.iter()
        .zip(y)
        .map(|(&z, &y)| {
            let (z, y) = (z as f64, y as f64);
            let p = 1.0 / (1.0 + (-z).exp());
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / z.len() as f64
}

fn dice_sq(p: &[f32], y: &[f32], n: usize, c: usize) -> f64 {
    let v = p.len() / (n * c);
    let mut total = 0.0;
    for s in 0..n {
        for ch in 0..c {
            let (mut py, mut pp, mut yy) = (0.0, 0.0, 0.0);
            for t in 0..v {
                let i = (s * v + t) * c + ch;
                let (a, b) = (p[i] as f64, y[i] as f64);
                py += a * b;
                pp += a * a;
                yy += b * b;
            }
            total += 1.0 - 2.0 * py / (pp + yy);
        }
    }
    total / (n * c) as f64
}

#[test]
fn both_losses_match_f64_on_every_backend() {
    let shape = Shape::ndhwc(2, 2, 3, 5, 3);
    for s in subjects() {
        let mut rng = Rng::new(91);
        let (z, zd) = s.rand_act(&mut rng, shape, -6.0, 6.0);
        let labels: Vec<f32> = (0..shape.numel()).map(|_| (rng.below(2)) as f32).collect();
        let (y, yd) = s.act(&labels, shape);
        let mut g = Graph::inference(s.dev());
        let zv = g.constant(z);
        let l = g.bce_with_logits(&zv, &y).unwrap();
        assert_eq!((l.shape(), l.t.dtype()), (Shape::scalar(), DType::F32));
        s.check("bce_with_logits", &l.t, &[bce(&zd, &yd)], 1.0);

        let p = g.unary(&zv, Unary::Sigmoid).unwrap();
        let pd = s.dev().download(&p.t).unwrap();
        let l = g.dice_loss_squared(&p, &y).unwrap();
        s.check("dice_loss_squared", &l.t, &[dice_sq(&pd, &yd, 2, 3)], 1.0);

        let (bad, _) = s.act(&labels[..30], Shape::ndhwc(1, 1, 2, 5, 3));
        let e = g.dice_loss_squared(&p, &bad).unwrap_err();
        assert!(e.to_string().contains("differs from the prediction"), "{e}");
    }
}

#[test]
fn their_gradients_match_finite_differences() {
    let shape = Shape::ndhwc(1, 2, 2, 3, 2);
    let mut rng = Rng::new(92);
    let z = rng.vec(shape.numel(), -3.0, 3.0);
    let y: Vec<f32> = (0..shape.numel()).map(|_| rng.below(2) as f32).collect();
    let dev = voxdiff::backend::cpu::CpuBackend::new();
    use voxdiff::backend::prelude::*;
    let target = dev.upload(&y, shape, DType::F32).unwrap();
    let t2 = target.clone();
    grad_check(
        "bce_with_logits",
        &[(shape, z.clone())],
        move |g, v| g.bce_with_logits(&v[0], &target),
        24,
        2e-2,
        5e-3,
        2e-5,
    );
    grad_check(
        "dice_loss_squared of sigmoid",
        &[(shape, z)],
        move |g, v| {
            let p = g.unary(&v[0], Unary::Sigmoid)?;
            g.dice_loss_squared(&p, &t2)
        },
        24,
        2e-2,
        5e-3,
        2e-5,
    );
}
