//! The pointwise family on every backend (the CPU, the gpu backend with f32
//! and with bf16 activations): every unary map and its derivative against
//! f64 closed forms, and every binary op with every broadcast against f64,
//! evaluated at the values each backend stores, at lengths with and without
//! a partial last vector; the autograd ops' gradients (the binary ones a
//! composition of binary ops and reduce_sum) by finite differences.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::{dunary_f64, unary_f64, unary_range, Rng};
use every_backend::{grad_check, subjects};
use voxdiff::ops::{bcast_of, Act, Bcast, Binary, Unary};
use voxdiff::tensor::{DType, Shape};

/// Lengths with and without a partial last chunk of 8, N = 1 and 2.
fn shapes() -> Vec<Shape> {
    vec![
        Shape::new(&[1]),
        Shape::new(&[7]),
        Shape::new(&[3, 9]),
        Shape::ndhwc(1, 3, 5, 7, 3),
        Shape::ndhwc(2, 1, 9, 11, 8),
    ]
}

#[test]
fn unary_and_derivative_match_f64_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(1);
        for shape in shapes() {
            for op in Unary::ALL {
                let (lo, hi) = unary_range(op, -8.0, 8.0);
                let (x, xs) = s.rand_act(&mut rng, shape, lo, hi);
                let (dy, dys) = s.rand_act(&mut rng, shape, -1.0, 1.0);
                let y = s.dev().unary(&x, op).unwrap();
                assert_eq!((y.shape(), y.dtype()), (shape, x.dtype()));
                let want: Vec<f64> = xs.iter().map(|&v| unary_f64(op, v as f64)).collect();
                s.check(&format!("{op:?} {shape}"), &y, &want, 1.0);
                let dx = s.dev().unary_bwd(&dy, &x, op).unwrap();
                let want: Vec<f64> = xs
                    .iter()
                    .zip(&dys)
                    .map(|(&v, &g)| g as f64 * dunary_f64(op, v as f64))
                    .collect();
                s.check(&format!("{op:?} backward {shape}"), &dx, &want, 1.0);
            }
        }
    }
}

#[test]
fn bad_unary_arguments_are_errors() {
    for s in subjects() {
        let dev = s.dev();
        let (x, _) = s.act(&[1.0; 6], Shape::new(&[6]));
        let (y, _) = s.act(&[1.0; 5], Shape::new(&[5]));
        for op in [
            Unary::LeakyRelu(f32::NAN),
            Unary::SmoothL1(-1.0),
            Unary::SmoothL1(f32::INFINITY),
        ] {
            assert!(dev.unary(&x, op).is_err(), "{}: {op:?}", s.label);
            assert!(dev.unary_bwd(&x, &x, op).is_err(), "{}: {op:?}", s.label);
        }
        let e = dev.unary_bwd(&y, &x, Unary::Exp).unwrap_err();
        assert!(format!("{e:#}").contains("unary_bwd"), "{}: {e:#}", s.label);
    }
}

#[test]
fn the_norm_activations_are_unary_maps() {
    assert_eq!(Act::Identity.unary(), None);
    assert_eq!(Act::Relu.unary(), Some(Unary::Relu));
    assert_eq!(Act::Silu.unary(), Some(Unary::Silu));
    assert_eq!(Act::Gelu.unary(), Some(Unary::Gelu));
}

#[test]
fn unary_gradients_match_finite_differences() {
    let mut rng = Rng::new(2);
    let shape = Shape::new(&[3, 7]);
    for op in Unary::ALL {
        let (lo, hi) = unary_range(op, -3.0, 3.0);
        // Away from the kinks at 0 and smooth L1's seams at ±0.5.
        let x: Vec<f32> = rng
            .vec(shape.numel(), lo, hi)
            .into_iter()
            .map(|v| {
                if [0.0f32, -0.5, 0.5].iter().any(|k| (v - k).abs() < 0.05) {
                    v + 0.1
                } else {
                    v
                }
            })
            .collect();
        grad_check(
            &format!("unary {op:?}"),
            &[(shape, x)],
            |g, v| g.unary(&v[0], op),
            21,
            1e-3,
            1e-2,
            1e-5,
        );
    }
}

fn binary_f64(op: Binary, a: f64, b: f64) -> f64 {
    match op {
        Binary::Add => a + b,
        Binary::Sub => a - b,
        Binary::Mul => a * b,
        Binary::Div => a / b,
    }
}

/// x shapes for a broadcast: odd sizes, N = 1 and 2, C on and off the
/// vector width, ranks 1 to 5 where the broadcast allows them.
fn binary_shapes(to: Bcast) -> Vec<Shape> {
    let mut v = vec![
        Shape::ndhwc(1, 3, 5, 7, 3),
        Shape::ndhwc(2, 1, 9, 11, 8),
        Shape::new(&[2, 5, 17]),
    ];
    if to != Bcast::SampleChannel {
        v.extend([Shape::new(&[9]), Shape::new(&[3, 13])]);
    }
    v
}

/// y values of magnitude 0.5..2 with random signs (Div stays well defined).
fn away_from_zero(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n, 0.5, 2.0)
        .into_iter()
        .map(|v| if rng.uniform(0.0, 1.0) < 0.5 { -v } else { v })
        .collect()
}

#[test]
fn binary_matches_f64_for_every_broadcast_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(3);
        for to in Bcast::ALL {
            for shape in binary_shapes(to) {
                let ys = to.shape(shape).unwrap();
                let (x, xv) = s.rand_act(&mut rng, shape, -3.0, 3.0);
                let yv = away_from_zero(&mut rng, ys.numel());
                // A y of x's shape has x's dtype, a broadcast one is f32
                // (x = [9] by Channel is such a y: bcast_of says Full).
                let (y, yv) = if bcast_of(shape, ys).unwrap() == Bcast::Full {
                    s.act(&yv, ys)
                } else {
                    (s.f32(&yv, ys), yv)
                };
                let (_, mid, inner) = to.split(shape);
                for op in Binary::ALL {
                    let out = s.dev().binary(op, &x, &y).unwrap();
                    assert_eq!((out.shape(), out.dtype()), (shape, x.dtype()));
                    let want: Vec<f64> = (0..shape.numel())
                        .map(|i| {
                            let yi = (i / (mid * inner)) * inner + i % inner;
                            binary_f64(op, xv[i] as f64, yv[yi] as f64)
                        })
                        .collect();
                    s.check(&format!("{op:?} {shape} by {to:?}"), &out, &want, 1.0);
                }
            }
        }
    }
}

#[test]
fn bad_binary_operands_are_errors() {
    for s in subjects() {
        let dev = s.dev();
        let shape = Shape::ndhwc(2, 1, 2, 3, 4);
        let (x, _) = s.rand_act(&mut Rng::new(4), shape, -1.0, 1.0);
        // Not a broadcast shape of x.
        for bad in [Shape::new(&[4, 2]), Shape::new(&[2, 3]), Shape::new(&[5])] {
            let y = s.f32(&vec![1.0; bad.numel()], bad);
            let e = dev.binary(Binary::Add, &x, &y).unwrap_err();
            assert!(format!("{e:#}").contains("binary: y"), "{}: {e:#}", s.label);
        }
        // A broadcast y in the activation dtype where that is not f32.
        if dev.act_dtype() != DType::F32 {
            let (y, _) = s.act(&[1.0; 4], Shape::new(&[4]));
            let e = dev.binary(Binary::Mul, &x, &y).unwrap_err();
            assert!(
                format!("{e:#}").contains("must be f32"),
                "{}: {e:#}",
                s.label
            );
        }
    }
    // A full y in another dtype than x.
    let s = &subjects()[2];
    let shape = Shape::new(&[6]);
    let (x, _) = s.act(&[1.0; 6], shape);
    let y = s.f32(&[1.0; 6], shape);
    assert!(s.dev().binary(Binary::Sub, &x, &y).is_err());
}

/// The backward of every op and broadcast (a composition of binary ops and
/// reduce_sum) against finite differences, with both operands tracked.
#[test]
fn binary_gradients_match_finite_differences() {
    let mut rng = Rng::new(5);
    let shape = Shape::ndhwc(2, 1, 2, 3, 3);
    for to in Bcast::ALL {
        let ys = to.shape(shape).unwrap();
        for op in Binary::ALL {
            let x = rng.vec(shape.numel(), -2.0, 2.0);
            let y = away_from_zero(&mut rng, ys.numel());
            grad_check(
                &format!("{op:?} by {to:?}"),
                &[(shape, x), (ys, y)],
                |g, v| g.binary(op, &v[0], &v[1]),
                40,
                1e-3,
                1e-2,
                1e-5,
            );
        }
    }
}
