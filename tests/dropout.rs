//! Dropout (`voxdiff::nn::dropout`, composed from Philox noise and pointwise
//! ops) on every backend (the CPU, the gpu backend with f32 and with bf16
//! activations): every element is 0 or x/(1 − p), the kept fraction is
//! 1 − p within sampling error, the mask is a function of the seed and the
//! same on every backend; its gradient by finite differences; and in SegDiff's
//! residual blocks it acts in training only.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::Backend;
use voxdiff::model::segdiff::unet::DropKey;
use voxdiff::nn::dropout::dropout;
use voxdiff::pipeline::segdiff_config::SegDiffConfig;
use voxdiff::pipeline::segdiff_model::SegDiffModel;
use voxdiff::tensor::{DType, Shape};

/// Which elements of `y` are kept (non-zero); `x` has no zeros.
fn kept(y: &[f32]) -> Vec<bool> {
    y.iter().map(|&v| v != 0.0).collect()
}

#[test]
fn dropout_keeps_one_minus_p_and_scales_on_every_backend() {
    let shape = Shape::ndhwc(2, 1, 40, 40, 3); // 9600 elements
    let mut cpu_masks = Vec::new();
    for (k, s) in subjects().into_iter().enumerate() {
        let mut rng = Rng::new(4);
        // Values away from 0, so a kept element is never 0.
        let (x, xv) = s.act(
            &rng.vec(shape.numel(), 0.5, 2.0)
                .iter()
                .enumerate()
                .map(|(i, v)| if i % 2 == 0 { *v } else { -*v })
                .collect::<Vec<_>>(),
            shape,
        );
        for (pi, p) in [0.1f32, 0.3, 0.5].into_iter().enumerate() {
            let mut g = Graph::inference(s.dev());
            let xvar = g.constant(x.clone());
            let y = dropout(&mut g, &xvar, p, 77).unwrap();
            assert_eq!(y.t.dtype(), x.dtype(), "dropout keeps x's dtype");
            let yv = s.dev().download(&y.t).unwrap();
            let m = kept(&yv);
            // The kept fraction within 5 standard deviations of 1 − p.
            let n = m.len() as f64;
            let frac = m.iter().filter(|&&k| k).count() as f64 / n;
            let sd = ((p as f64) * (1.0 - p as f64) / n).sqrt();
            assert!(
                (frac - (1.0 - p as f64)).abs() < 5.0 * sd,
                "p = {p} on {}: kept {frac}",
                s.label
            );
            // Kept elements are x/(1 − p), dropped ones exactly 0.
            let want: Vec<f64> = xv
                .iter()
                .zip(&m)
                .map(|(&v, &k)| if k { v as f64 / (1.0 - p as f64) } else { 0.0 })
                .collect();
            s.check(&format!("dropout p = {p}"), &y.t, &want, 1.0);
            // The same seed, the same mask on every backend.
            if k == 0 {
                cpu_masks.push(m);
            } else {
                assert!(
                    cpu_masks[pi] == m,
                    "p = {p}: {} drops other elements than the CPU",
                    s.label
                );
            }
            // Another seed, another mask; p = 0 is the identity.
            let other = dropout(&mut g, &xvar, p, 78).unwrap();
            assert_ne!(kept(&s.dev().download(&other.t).unwrap()), cpu_masks[pi]);
            let same = dropout(&mut g, &xvar, 0.0, 78).unwrap();
            assert_eq!(s.dev().download(&same.t).unwrap(), xv);
        }
    }
}

#[test]
fn dropout_refuses_a_probability_outside_0_1() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let mut g = Graph::inference(dev);
    let x = g.constant(dev.upload(&[1.0; 4], Shape::new(&[4]), DType::F32).unwrap());
    for p in [1.0f32, 1.5, -0.1] {
        let e = dropout(&mut g, &x, p, 0).unwrap_err();
        assert!(format!("{e:#}").contains("[0, 1)"), "{e:#}");
    }
}

#[test]
fn dropout_gradient_matches_finite_differences() {
    let mut rng = Rng::new(9);
    let shape = Shape::ndhwc(2, 1, 5, 6, 4);
    grad_check(
        "dropout p = 0.3",
        &[(shape, rng.vec(shape.numel(), -1.0, 1.0))],
        |g, v| dropout(g, &v[0], 0.3, 12),
        60,
        1e-2,
        1e-2,
        1e-4,
    );
}

/// A SegDiff network small enough for a test, with dropout `p` and every
/// zero-initialised parameter (each block's last convolution, the output)
/// replaced by random values, so dropout reaches the output.
fn perturbed_model(dev: &dyn Backend, p: f32) -> SegDiffModel {
    let o: Vec<String> = [
        "model.channels=8",
        "model.norm_groups=4",
        "model.channel_mult=[1,2]",
        "model.heads=2",
        "model.attention_ds=[2]",
        "model.rrdb_features=8",
        "model.rrdb_growth=4",
        &format!("model.dropout={p}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = SegDiffConfig::load(None, &o).unwrap();
    let mut model = SegDiffModel::new(dev, &cfg).unwrap();
    let mut rng = Rng::new(21);
    for e in &mut model.ps.entries {
        let v = dev.download(&e.t).unwrap();
        if v.iter().all(|&x| x == 0.0) {
            e.t = dev
                .upload(&rng.vec(v.len(), -0.3, 0.3), e.t.shape(), DType::F32)
                .unwrap();
        }
    }
    model
}

#[test]
fn segdiff_dropout_acts_in_training_only() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let with = perturbed_model(dev, 0.5);
    let without = perturbed_model(dev, 0.0);
    let eps = |model: &SegDiffModel, drop: &mut DropKey| -> Vec<f32> {
        let mut g = Graph::inference(dev);
        let img = g.constant(
            dev.upload(
                &Rng::new(6).vec(2 * 100 * 3, -1.0, 1.0),
                Shape::ndhwc(2, 1, 10, 10, 3),
                DType::F32,
            )
            .unwrap(),
        );
        let cond = model.net.condition(&mut g, &model.ps, &img).unwrap();
        let x = g.constant(
            dev.randn(Shape::ndhwc(2, 1, 10, 10, 1), DType::F32, 3, 0)
                .unwrap(),
        );
        let y = model
            .net
            .forward_with(&mut g, &model.ps, &x, &cond, &[3.0, 40.0], drop)
            .unwrap();
        dev.download(&y.t).unwrap()
    };
    // Inference: identical to the network without dropout.
    let inf = eps(&with, &mut DropKey::none());
    assert_eq!(inf, eps(&without, &mut DropKey::none()));
    assert!(inf.iter().any(|&v| v != 0.0));
    // Training: a function of the key, different from inference; dropout 0
    // ignores the key.
    let a = eps(&with, &mut DropKey::train(1));
    assert_eq!(a, eps(&with, &mut DropKey::train(1)));
    assert_ne!(a, inf);
    assert_ne!(a, eps(&with, &mut DropKey::train(2)));
    assert_eq!(eps(&without, &mut DropKey::train(1)), inf);
}
