//! The reduce family on every backend (the CPU, the gpu backend with f32 and
//! with bf16 activations): `reduce_sum` to every broadcast shape and its
//! adjoint `expand`, each against an f64 reference computed from the values
//! the backend stores, with odd sizes, N = 1 and 2, and lengths that take
//! every GPU path (one thread per row, a warp per row with and without
//! 8-wide vectors, two stages); their gradients through the Graph by finite
//! differences.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects, Subject};
use voxdiff::backend::prelude::*;
use voxdiff::ops::Bcast;
use voxdiff::tensor::{DType, Shape};

/// The f64 reference of `reduce_sum(x, to)`.
fn sum_ref(x: &[f32], shape: Shape, to: Bcast) -> Vec<f64> {
    let (outer, mid, inner) = to.split(shape);
    let mut s = vec![0f64; outer * inner];
    for (i, &v) in x.iter().enumerate() {
        s[(i / (mid * inner)) * inner + i % inner] += v as f64;
    }
    s
}

/// Shapes for `to`: odd extents, N = 1 and 2, and (for Row) lengths on every
/// GPU path: ≤ 32 (a thread per row), 33..=4096 with and without a multiple
/// of 8 (a warp per row), longer rows with and without one (two stages).
fn shapes(to: Bcast) -> Vec<Shape> {
    let mut v = vec![
        Shape::ndhwc(1, 3, 5, 7, 3),
        Shape::ndhwc(2, 1, 9, 11, 5),
        Shape::ndhwc(2, 3, 4, 5, 8),
        Shape::ndhwc(1, 1, 9, 11, 264),
        Shape::new(&[2, 37, 17]),
    ];
    if to != Bcast::SampleChannel {
        v.extend([Shape::new(&[7, 1]), Shape::new(&[5]), Shape::new(&[3, 13])]);
    }
    if to == Bcast::Row {
        v.extend([
            Shape::new(&[5, 40]),
            Shape::new(&[3, 77]),
            Shape::new(&[2, 4096]),
            Shape::new(&[3, 4104]),
            Shape::new(&[2, 4099]),
        ]);
    }
    if to == Bcast::Scalar || to == Bcast::Channel {
        v.push(Shape::ndhwc(1, 8, 16, 33, 1));
    }
    v
}

/// f32 sums of stored inputs: every backend is held to 1e-5 (3e-5 for sums
/// of thousands of terms), whatever its activation dtype.
fn sum_slack(s: &Subject, terms: usize) -> f64 {
    let rtol = if terms > 1000 { 3e-5 } else { 1e-5 };
    rtol / s.rtol
}

#[test]
fn reduce_sum_matches_f64_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(1);
        for to in Bcast::ALL {
            for shape in shapes(to) {
                let (x, xs) = s.rand_act(&mut rng, shape, -1.0, 1.0);
                let got = s.dev().reduce_sum(&x, to).unwrap();
                assert_eq!(got.shape(), to.shape(shape).unwrap(), "{to:?} {shape}");
                assert_eq!(got.dtype(), DType::F32, "{to:?} {shape}");
                let (_, mid, _) = to.split(shape);
                s.check(
                    &format!("reduce_sum {shape} to {to:?}"),
                    &got,
                    &sum_ref(&xs, shape, to),
                    sum_slack(&s, mid),
                );
            }
        }
    }
}

#[test]
fn expand_matches_f64_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(2);
        for to in Bcast::ALL {
            for like in shapes(to) {
                let ys = rng.vec(to.shape(like).unwrap().numel(), -3.0, 3.0);
                let y = s.f32(&ys, to.shape(like).unwrap());
                let dtype = s.dev().act_dtype();
                let out = s.dev().expand(&y, like, dtype).unwrap();
                assert_eq!((out.shape(), out.dtype()), (like, dtype));
                let (_, mid, inner) = to.split(like);
                let want: Vec<f64> = (0..like.numel())
                    .map(|i| ys[(i / (mid * inner)) * inner + i % inner] as f64)
                    .collect();
                s.check(&format!("expand to {like} from {to:?}"), &out, &want, 1.0);
            }
        }
    }
}

/// An empty tensor sums to zeros and expands to nothing.
#[test]
fn empty_tensors_sum_to_zeros() {
    for s in subjects() {
        let x = s
            .dev()
            .zeros(Shape::new(&[3, 0]), s.dev().act_dtype())
            .unwrap();
        let r = s.dev().reduce_sum(&x, Bcast::Row).unwrap();
        assert_eq!(s.dev().download(&r).unwrap(), vec![0.0; 3], "{}", s.label);
        let e = s.dev().expand(&r, Shape::new(&[3, 0]), DType::F32).unwrap();
        assert_eq!(e.numel(), 0, "{}", s.label);
    }
}

#[test]
fn bad_shapes_are_errors() {
    for s in subjects() {
        let dev = s.dev();
        let flat = s.f32(&[1.0; 6], Shape::new(&[2, 3]));
        let e = dev.reduce_sum(&flat, Bcast::SampleChannel).unwrap_err();
        assert!(format!("{e:#}").contains("rank ≥ 3"), "{}: {e:#}", s.label);
        let like = Shape::ndhwc(2, 1, 2, 3, 4);
        let y = s.f32(&[1.0; 5], Shape::new(&[5]));
        let e = dev.expand(&y, like, DType::F32).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not broadcast"),
            "{}: {e:#}",
            s.label
        );
    }
    // expand takes an f32 y.
    let s = &subjects()[2];
    let y = s.act(&[1.0; 4], Shape::new(&[4])).0;
    let e = s
        .dev()
        .expand(&y, Shape::new(&[3, 4]), DType::BF16)
        .unwrap_err();
    assert!(format!("{e:#}").contains("f32"), "{e:#}");
}

/// The sums reduce in a fixed order: the same bits on every run, and on the
/// emulator whatever order a block's fibers run in.
#[test]
fn reduce_sum_is_deterministic() {
    use std::sync::Arc;
    use voxdiff::backend::gpu::emu::Emu;
    use voxdiff::backend::gpu::GpuBackend;
    let cases = [
        (Shape::ndhwc(2, 5, 16, 17, 16), Bcast::SampleChannel),
        (Shape::ndhwc(1, 8, 16, 33, 3), Bcast::Channel),
        (Shape::new(&[3, 4099]), Bcast::Row),
        (Shape::new(&[9, 77]), Bcast::Row),
        (Shape::ndhwc(1, 8, 16, 33, 1), Bcast::Scalar),
    ];
    let run = |dev: &dyn Backend| -> Vec<Vec<u32>> {
        let mut rng = Rng::new(3);
        cases
            .iter()
            .map(|&(shape, to)| {
                let x = dev
                    .upload(&rng.vec(shape.numel(), -1.0, 1.0), shape, dev.act_dtype())
                    .unwrap();
                let s = dev.download(&dev.reduce_sum(&x, to).unwrap()).unwrap();
                s.iter().map(|v| v.to_bits()).collect()
            })
            .collect()
    };
    let plain = GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(None)), DType::BF16);
    let shuffled = GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(Some(17))), DType::BF16);
    assert_eq!(run(&plain), run(&shuffled), "emulator, shuffled fibers");
    let cpu = voxdiff::backend::cpu::CpuBackend::new();
    assert_eq!(run(&cpu), run(&cpu), "cpu, two runs");
}

#[test]
fn reduce_sum_and_expand_gradients_match_finite_differences() {
    let mut rng = Rng::new(4);
    for to in Bcast::ALL {
        let shape = Shape::ndhwc(2, 1, 2, 3, 3);
        let x = rng.vec(shape.numel(), -1.0, 1.0);
        grad_check(
            &format!("reduce_sum to {to:?}"),
            &[(shape, x)],
            |g, v| g.reduce_sum(&v[0], to),
            40,
            1e-2,
            1e-2,
            1e-4,
        );
        let ys = to.shape(shape).unwrap();
        let y = rng.vec(ys.numel(), -1.0, 1.0);
        grad_check(
            &format!("expand from {to:?}"),
            &[(ys, y)],
            |g, v| g.expand(&v[0], shape, DType::F32),
            40,
            1e-2,
            1e-2,
            1e-4,
        );
    }
}

/// The f64 softmax of each row of `len`.
fn softmax_ref(x: &[f32], len: usize) -> Vec<f64> {
    x.chunks(len)
        .flat_map(|r| {
            let m = r.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

/// Row lengths from 2 to 4096 (every GPU path: a thread, a warp, a block per
/// row; with and without 8-wide vectors) as rows of rank 2 and 3, and the
/// NDHWC shapes of segmentation (softmax over channels).
fn softmax_shapes() -> Vec<Shape> {
    let mut v: Vec<Shape> = [2, 5, 16, 33, 256, 1000, 1003, 4096]
        .iter()
        .map(|&len| Shape::new(&[3, len]))
        .collect();
    v.extend([
        Shape::new(&[1, 7, 40]),
        Shape::new(&[2, 1, 1027]),
        Shape::ndhwc(1, 3, 5, 7, 3),
        Shape::ndhwc(2, 1, 9, 11, 17),
        Shape::new(&[1]),
    ]);
    v
}

#[test]
fn softmax_and_backward_match_f64_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(5);
        for shape in softmax_shapes() {
            let len = shape.c();
            let (x, xs) = s.rand_act(&mut rng, shape, -6.0, 6.0);
            let p = s.dev().softmax(&x).unwrap();
            assert_eq!((p.shape(), p.dtype()), (shape, x.dtype()));
            s.check(&format!("softmax {shape}"), &p, &softmax_ref(&xs, len), 1.0);
            // Backward from the stored p and dp.
            let ps = s.dev().download(&p).unwrap();
            let (dp, dps) = s.rand_act(&mut rng, shape, -2.0, 2.0);
            let dx = s.dev().softmax_bwd(&dp, &p).unwrap();
            let mut want = vec![0f64; shape.numel()];
            for ((w, pr), gr) in want
                .chunks_mut(len)
                .zip(ps.chunks(len))
                .zip(dps.chunks(len))
            {
                let dot: f64 = pr.iter().zip(gr).map(|(&a, &g)| a as f64 * g as f64).sum();
                for ((o, &a), &g) in w.iter_mut().zip(pr).zip(gr) {
                    *o = a as f64 * (g as f64 - dot);
                }
            }
            s.check(&format!("softmax_bwd {shape}"), &dx, &want, 1.0);
        }
    }
}

/// Large logits do not overflow, −∞ entries (masks) get probability 0, a
/// NaN makes its row NaN and leaves the others alone — on every path.
#[test]
fn softmax_is_stable_masked_and_nan_aware_on_every_backend() {
    for s in subjects() {
        for len in [3, 40, 1030] {
            let mut rng = Rng::new(6 + len as u64);
            let shape = Shape::new(&[3, len]);
            let mut x = rng.vec(shape.numel(), -3.0, 3.0);
            x[0] = 1000.0;
            x[1] = 990.0;
            x[len] = -5000.0;
            x[len + 2] = f32::NEG_INFINITY;
            let (xt, xs) = s.act(&x, shape);
            let p = s.dev().softmax(&xt).unwrap();
            s.check(
                &format!("softmax large and masked, rows of {len}"),
                &p,
                &softmax_ref(&xs, len),
                1.0,
            );
            let pv = s.dev().download(&p).unwrap();
            assert_eq!(pv[len + 2], 0.0, "{}: masked entry", s.label);
            x[2 * len + 1] = f32::NAN;
            let (xt, _) = s.act(&x, shape);
            let pv = s.dev().download(&s.dev().softmax(&xt).unwrap()).unwrap();
            assert!(
                pv[2 * len..].iter().all(|v| v.is_nan()),
                "{}: NaN row",
                s.label
            );
            assert!(
                pv[..2 * len].iter().all(|v| v.is_finite()),
                "{}: other rows",
                s.label
            );
        }
    }
}

/// Softmax (and its backward) give the same bits under a shuffled fiber order.
#[test]
fn softmax_is_deterministic_under_shuffled_fibers() {
    use std::sync::Arc;
    use voxdiff::backend::gpu::emu::Emu;
    use voxdiff::backend::gpu::GpuBackend;
    let run = |shuffle: Option<u64>| -> Vec<Vec<u32>> {
        let dev = GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(shuffle)), DType::F32);
        let mut rng = Rng::new(7);
        [5, 77, 1030]
            .iter()
            .flat_map(|&len| {
                let shape = Shape::new(&[9, len]);
                let x = dev
                    .upload(&rng.vec(shape.numel(), -4.0, 4.0), shape, DType::F32)
                    .unwrap();
                let dp = dev
                    .upload(&rng.vec(shape.numel(), -1.0, 1.0), shape, DType::F32)
                    .unwrap();
                let p = dev.softmax(&x).unwrap();
                let dx = dev.softmax_bwd(&dp, &p).unwrap();
                [p, dx].map(|t| {
                    dev.download(&t)
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                })
            })
            .collect()
    };
    assert_eq!(run(None), run(Some(23)));
}

#[test]
fn softmax_gradient_matches_finite_differences() {
    let mut rng = Rng::new(8);
    for shape in [
        Shape::new(&[3, 5]),
        Shape::new(&[2, 40]),
        Shape::ndhwc(1, 1, 2, 3, 4),
    ] {
        let x = rng.vec(shape.numel(), -2.0, 2.0);
        grad_check(
            &format!("softmax {shape}"),
            &[(shape, x)],
            |g, v| g.softmax(&v[0]),
            40,
            1e-2,
            1e-2,
            1e-5,
        );
    }
}
