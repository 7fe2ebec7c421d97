//! AdamW with global-norm clipping on the CPU backend vs a plain f64
//! re-implementation of the documented update, over three steps, with and
//! without the clip triggering; NaN propagation and argument errors.
mod common;

use common::*;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{AdamW, ParamSlot};
use voxdiff::tensor::{DType, Shape, Tensor};

/// One parameter's state in the f64 reference.
struct RefSlot {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    decay: bool,
}

/// The documented update in f64; returns the pre-clip global norm.
fn adamw_ref(slots: &mut [RefSlot], grads: &[Vec<f32>], hp: &AdamW, lr: f32, step: u64) -> f64 {
    let norm = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let scale = match hp.max_grad_norm {
        Some(mx) if norm >= mx as f64 => mx as f64 / norm,
        _ => 1.0,
    };
    let (b1, b2) = (hp.beta1 as f64, hp.beta2 as f64);
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    for (s, g) in slots.iter_mut().zip(grads) {
        let wd = if s.decay { hp.weight_decay as f64 } else { 0.0 };
        for i in 0..s.p.len() {
            let g = g[i] as f64 * scale;
            s.m[i] = b1 * s.m[i] + (1.0 - b1) * g;
            s.v[i] = b2 * s.v[i] + (1.0 - b2) * g * g;
            let upd = (s.m[i] / bc1) / ((s.v[i] / bc2).sqrt() + hp.eps as f64) + wd * s.p[i];
            s.p[i] -= lr as f64 * upd;
        }
    }
    norm
}

/// Three steps of the backend against the reference, slots of odd sizes,
/// decay on some of them.
fn run(hp: AdamW, grad_scale: f32, expect_clip: Option<bool>) {
    let b = cpu();
    let mut rng = Rng::new(11);
    let shapes = [
        Shape::new(&[3, 5]),
        Shape::new(&[17]),
        Shape::new(&[2, 3, 3, 4, 5]),
        Shape::new(&[40_000]),
    ];
    let decays = [true, false, true, true];
    let up = |v: &[f32], s: Shape| b.upload(v, s, DType::F32).unwrap();
    let mut refs: Vec<RefSlot> = Vec::new();
    let mut params: Vec<Tensor> = Vec::new();
    let mut ms: Vec<Tensor> = Vec::new();
    let mut vs: Vec<Tensor> = Vec::new();
    for (&s, &decay) in shapes.iter().zip(&decays) {
        let p = rng.vec(s.numel(), -1.0, 1.0);
        // Non-zero starting moments, as after earlier steps.
        let m = rng.vec(s.numel(), -0.01, 0.01);
        let v = rng.vec(s.numel(), 1e-6, 1e-4);
        refs.push(RefSlot {
            p: p.iter().map(|&x| x as f64).collect(),
            m: m.iter().map(|&x| x as f64).collect(),
            v: v.iter().map(|&x| x as f64).collect(),
            decay,
        });
        params.push(up(&p, s));
        ms.push(up(&m, s));
        vs.push(up(&v, s));
    }
    let lr = 3e-3;
    for step in 1..=3u64 {
        let grads: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s| rng.vec(s.numel(), -grad_scale, grad_scale))
            .collect();
        let gts: Vec<Tensor> = grads.iter().zip(&shapes).map(|(g, &s)| up(g, s)).collect();
        let slots: Vec<ParamSlot> = (0..shapes.len())
            .map(|i| ParamSlot {
                param: &params[i],
                grad: &gts[i],
                m: &ms[i],
                v: &vs[i],
                decay: decays[i],
            })
            .collect();
        let norm = b.adamw_step(&slots, &hp, lr, step).unwrap();
        let want_norm = adamw_ref(&mut refs, &grads, &hp, lr, step);
        let what = format!(
            "step {step} grad scale {grad_scale} clip {:?}",
            hp.max_grad_norm
        );
        assert_close(
            &format!("{what}: norm"),
            &b.download(&norm).unwrap(),
            &[want_norm],
            1e-6,
            0.0,
        );
        if let (Some(mx), Some(clip)) = (hp.max_grad_norm, expect_clip) {
            assert_eq!(
                want_norm >= mx as f64,
                clip,
                "{what}: the test meant clipping = {clip}"
            );
        }
        for (i, r) in refs.iter().enumerate() {
            let w = format!("{what}: slot {i}");
            assert_close(
                &format!("{w} param"),
                &b.download(&params[i]).unwrap(),
                &r.p,
                1e-6,
                1e-7,
            );
            // m and v are sums of f32 terms of size (1−β)·g: absolute tolerances follow g.
            let (gs, gs2) = (grad_scale as f64, (grad_scale as f64).powi(2));
            assert_close(
                &format!("{w} m"),
                &b.download(&ms[i]).unwrap(),
                &r.m,
                1e-5,
                2e-7 * gs,
            );
            assert_close(
                &format!("{w} v"),
                &b.download(&vs[i]).unwrap(),
                &r.v,
                1e-5,
                1e-9 * gs2,
            );
        }
    }
}

#[test]
fn matches_reference_without_clipping() {
    let hp = AdamW {
        max_grad_norm: Some(1e4),
        ..AdamW::default()
    };
    run(hp, 0.5, Some(false));
}

#[test]
fn matches_reference_with_clipping() {
    let hp = AdamW {
        max_grad_norm: Some(1.0),
        weight_decay: 0.05,
        ..AdamW::default()
    };
    run(hp, 0.5, Some(true));
}

#[test]
fn matches_reference_with_clipping_off() {
    let hp = AdamW {
        max_grad_norm: None,
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.01,
    };
    run(hp, 2.0, None);
}

#[test]
fn nan_gradient_poisons_the_update() {
    let b = cpu();
    let s = Shape::new(&[4]);
    let up = |v: &[f32]| b.upload(v, s, DType::F32).unwrap();
    let (p, m, v) = (up(&[1.0; 4]), up(&[0.0; 4]), up(&[0.0; 4]));
    let g = up(&[0.1, f32::NAN, 0.2, 0.3]);
    let slot = ParamSlot {
        param: &p,
        grad: &g,
        m: &m,
        v: &v,
        decay: true,
    };
    let norm = b.adamw_step(&[slot], &AdamW::default(), 1e-3, 1).unwrap();
    assert!(b.download(&norm).unwrap()[0].is_nan());
    // The global norm is NaN, so every clipped gradient (and parameter) is NaN.
    assert!(b.download(&p).unwrap().iter().all(|x| x.is_nan()));
}

#[test]
fn argument_errors() {
    let b = cpu();
    let up = |n: usize| {
        b.upload(&vec![0.5; n], Shape::new(&[n]), DType::F32)
            .unwrap()
    };
    let (p, g, m, v, g5) = (up(4), up(4), up(4), up(4), up(5));
    let hp = AdamW::default();
    let slot = |grad| ParamSlot {
        param: &p,
        grad,
        m: &m,
        v: &v,
        decay: false,
    };
    let e = b
        .adamw_step(&[slot(&g5)], &hp, 1e-3, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("adamw_step"), "{e}");
    assert!(b.adamw_step(&[slot(&g)], &hp, 1e-3, 0).is_err(), "step 0");
    let aliased = ParamSlot {
        param: &p,
        grad: &g,
        m: &m,
        v: &m,
        decay: false,
    };
    assert!(
        b.adamw_step(&[aliased], &hp, 1e-3, 1).is_err(),
        "m and v are one tensor"
    );
    assert!(
        b.adamw_step(&[slot(&g), slot(&g)], &hp, 1e-3, 1).is_err(),
        "a slot twice"
    );
    let bad_hp = AdamW {
        max_grad_norm: Some(0.0),
        ..hp
    };
    assert!(
        b.adamw_step(&[slot(&g)], &bad_hp, 1e-3, 1).is_err(),
        "max_grad_norm 0"
    );
    assert!(b.adamw_step(&[slot(&g)], &hp, 1e-3, 1).is_ok());
}
