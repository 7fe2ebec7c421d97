//! Fused AdamW with global-norm clipping on the device under test (Emu, or a
//! GPU with VOXDIFF_TEST_DEVICE=cuda) against the CPU backend: a list of
//! odd-sized parameter tensors (some crossing the 2048-element tile, some with
//! and some without weight decay) updated for three steps, with the clip
//! triggering, not triggering, and disabled. Parameters, both moments and the
//! returned pre-clip norm are compared after every step (f32, 1e-5 relative).

mod common;
mod gpu_support;

use common::{cpu, Rng};
use gpu_support::device;
use std::sync::Arc;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{AdamW, ParamSlot};
use voxdiff::tensor::{DType, Shape, Tensor};

/// Parameter, gradient and both moments of one slot on one backend.
struct Slot {
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

fn slots(b: &dyn Backend, shapes: &[Shape], init: &[(Vec<f32>, Vec<f32>, Vec<f32>)]) -> Vec<Slot> {
    shapes
        .iter()
        .zip(init)
        .enumerate()
        .map(|(i, (&s, (p, m, v)))| Slot {
            p: b.upload(p, s, DType::F32).unwrap(),
            g: b.zeros(s, DType::F32).unwrap(),
            m: b.upload(m, s, DType::F32).unwrap(),
            v: b.upload(v, s, DType::F32).unwrap(),
            decay: i % 3 != 1,
        })
        .collect()
}

fn views(s: &[Slot]) -> Vec<ParamSlot<'_>> {
    s.iter()
        .map(|s| ParamSlot {
            param: &s.p,
            grad: &s.g,
            m: &s.m,
            v: &s.v,
            decay: s.decay,
        })
        .collect()
}

/// |got − want| ≤ rtol·(|want| + scale[i]): `scale` is the size of the terms
/// whose difference the value is (a moment or parameter update may cancel).
fn close(what: &str, got: &[f32], want: &[f32], scale: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        let err = (g as f64 - w as f64).abs();
        let lim = rtol * (w.abs() as f64 + scale[i]);
        assert!(
            err <= lim,
            "{what}: element {i}: got {g}, want {w} (|err| {err:.3e} > {lim:.3e})"
        );
    }
}

/// Three steps on the device and the CPU from the same state and gradients.
/// `grad_scale` sets the gradient magnitude, and so whether `max_grad_norm` clips.
fn check_adamw(
    g: &GpuBackend,
    shapes: &[Shape],
    hp: AdamW,
    grad_scale: f32,
    seed: u64,
) -> Vec<f32> {
    let c = cpu();
    let mut rng = Rng::new(seed);
    let init: Vec<_> = shapes
        .iter()
        .map(|s| {
            let n = s.numel();
            (
                rng.vec(n, -1.0, 1.0),
                rng.vec(n, -0.1, 0.1),
                rng.vec(n, 0.0, 0.01),
            )
        })
        .collect();
    let (gs, cs) = (slots(g, shapes, &init), slots(&c, shapes, &init));
    let mut norms = Vec::new();
    for step in 1..=3u64 {
        for (a, b) in gs.iter().zip(&cs) {
            let grad = rng.vec(a.g.numel(), -grad_scale, grad_scale);
            g.write(&a.g, &grad).unwrap();
            c.write(&b.g, &grad).unwrap();
        }
        let lr = 1e-2 / step as f32;
        let before: Vec<[Vec<f32>; 4]> = cs
            .iter()
            .map(|b| [&b.p, &b.g, &b.m, &b.v].map(|t| c.download(t).unwrap()))
            .collect();
        let got = g
            .download(&g.adamw_step(&views(&gs), &hp, lr, step).unwrap())
            .unwrap();
        let want = c
            .download(&c.adamw_step(&views(&cs), &hp, lr, step).unwrap())
            .unwrap();
        let what = format!(
            "step {step} max_norm {:?} grad scale {grad_scale}",
            hp.max_grad_norm
        );
        close(&format!("{what} norm"), &got, &want, &[0.0], 1e-5);
        norms.push(got[0]);
        let clip = match hp.max_grad_norm {
            Some(mx) if want[0] >= mx => (mx / want[0]) as f64,
            _ => 1.0,
        };
        let (b1, b2) = (hp.beta1 as f64, hp.beta2 as f64);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for (i, ((a, b), [p0, g0, m0, v0])) in gs.iter().zip(&cs).zip(&before).enumerate() {
            let wd = if b.decay { hp.weight_decay as f64 } else { 0.0 };
            let (pw, mw, vw) = (
                c.download(&b.p).unwrap(),
                c.download(&b.m).unwrap(),
                c.download(&b.v).unwrap(),
            );
            // The terms each result is the sum of, in magnitude.
            let n = pw.len();
            let mut sm = vec![0.0; n];
            let mut sp = vec![0.0; n];
            for k in 0..n {
                let gc = (g0[k] as f64 * clip).abs();
                sm[k] = b1 * (m0[k] as f64).abs() + (1.0 - b1) * gc;
                let v_new = b2 * v0[k] as f64 + (1.0 - b2) * gc * gc;
                let step_size = sm[k] / bc1 / ((v_new / bc2).sqrt() + hp.eps as f64);
                sp[k] = (p0[k] as f64).abs() + lr as f64 * (step_size + wd * (p0[k] as f64).abs());
            }
            let sv = vec![0.0; n];
            for (name, x, w, s) in [
                ("param", &a.p, &pw, &sp),
                ("m", &a.m, &mw, &sm),
                ("v", &a.v, &vw, &sv),
            ] {
                close(
                    &format!("{what} slot {i} {name}"),
                    &g.download(x).unwrap(),
                    w,
                    s,
                    1e-5,
                );
            }
        }
    }
    norms
}

/// Odd sizes: single elements, a tile boundary (2048) crossed, a 3D weight.
fn odd_shapes() -> Vec<Shape> {
    vec![
        Shape::new(&[3]),
        Shape::new(&[5, 7]),
        Shape::new(&[1]),
        Shape::new(&[2049]),
        Shape::new(&[3, 3, 3, 5, 17]),
        Shape::new(&[33]),
        Shape::new(&[4099]),
        Shape::new(&[0]),
        Shape::new(&[17, 9]),
    ]
}

#[test]
fn adamw_matches_the_cpu_when_clipping_triggers() {
    let g = GpuBackend::new(device());
    let hp = AdamW {
        max_grad_norm: Some(0.5),
        ..AdamW::default()
    };
    let norms = check_adamw(&g, &odd_shapes(), hp, 1.0, 1);
    assert!(
        norms.iter().all(|&n| n > 0.5),
        "the clip triggers: {norms:?}"
    );
}

#[test]
fn adamw_matches_the_cpu_when_clipping_does_not_trigger() {
    let g = GpuBackend::new(device());
    let hp = AdamW {
        max_grad_norm: Some(1.0),
        weight_decay: 0.05,
        ..AdamW::default()
    };
    let norms = check_adamw(&g, &odd_shapes(), hp, 1e-3, 2);
    assert!(norms.iter().all(|&n| n < 1.0), "no clipping: {norms:?}");
    let hp = AdamW {
        max_grad_norm: None,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        ..AdamW::default()
    };
    check_adamw(&g, &odd_shapes(), hp, 3.0, 3);
}

/// More tiles than the sum-of-squares grid (1024 blocks): each block walks
/// several tiles, from many tiny slots.
#[test]
fn adamw_with_more_tiles_than_blocks_matches_the_cpu() {
    let g = GpuBackend::new(device());
    let mut shapes: Vec<Shape> = (0..1100).map(|i| Shape::new(&[1 + i % 4])).collect();
    shapes.push(Shape::new(&[2500]));
    check_adamw(&g, &shapes, AdamW::default(), 0.1, 4);
}

#[test]
fn adamw_is_identical_in_shuffled_fiber_order() {
    let hp = AdamW::default();
    let plain = GpuBackend::new(Arc::new(Emu::with_shuffle(None)));
    let want = check_adamw(&plain, &odd_shapes(), hp, 1.0, 5);
    for seed in [3u64, 0xBADC0DE] {
        let shuffled = GpuBackend::new(Arc::new(Emu::with_shuffle(Some(seed))));
        assert_eq!(
            check_adamw(&shuffled, &odd_shapes(), hp, 1.0, 5),
            want,
            "seed {seed}"
        );
    }
}

#[test]
fn adamw_rejects_bad_slots_and_hyper_parameters() {
    let g = GpuBackend::new(device());
    let s = Shape::new(&[4]);
    let t = || g.zeros(s, DType::F32).unwrap();
    let (p, gr, m, v) = (t(), t(), t(), t());
    let slot = |p, g, m, v| ParamSlot {
        param: p,
        grad: g,
        m,
        v,
        decay: true,
    };
    let hp = AdamW::default();
    let err = |r: anyhow::Result<Tensor>| format!("{:#}", r.expect_err("an error"));
    assert!(err(g.adamw_step(&[slot(&p, &gr, &m, &v)], &hp, 1e-3, 0)).contains("step"));
    assert!(err(g.adamw_step(&[slot(&p, &gr, &m, &m)], &hp, 1e-3, 1)).contains("distinct"));
    let (p2, g2, m2) = (t(), t(), t());
    let msg = err(g.adamw_step(
        &[slot(&p, &gr, &m, &v), slot(&p2, &g2, &m2, &v)],
        &hp,
        1e-3,
        1,
    ));
    assert!(msg.contains("slots 0 and 1"), "{msg}");
    let short = g.zeros(Shape::new(&[3]), DType::F32).unwrap();
    assert!(err(g.adamw_step(&[slot(&p, &short, &m, &v)], &hp, 1e-3, 1)).contains("slot 0 grad"));
    let half = g.zeros(s, DType::BF16).unwrap();
    assert!(err(g.adamw_step(&[slot(&p, &gr, &half, &v)], &hp, 1e-3, 1)).contains("f32"));
    let bad = AdamW {
        max_grad_norm: Some(0.0),
        ..hp
    };
    assert!(err(g.adamw_step(&[slot(&p, &gr, &m, &v)], &bad, 1e-3, 1)).contains("max_grad_norm"));
    // No slots: norm 0, nothing to do.
    assert_eq!(
        g.download(&g.adamw_step(&[], &hp, 1e-3, 1).unwrap())
            .unwrap(),
        [0.0]
    );
}
