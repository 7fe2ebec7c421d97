//! The pointwise family on every backend (the CPU, the gpu backend with f32
//! and with bf16 activations): every unary map and its derivative against
//! f64 closed forms evaluated at the values each backend stores, at lengths
//! with and without a partial last vector; the autograd ops' gradients by
//! finite differences.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::{dunary_f64, unary_f64, unary_range, Rng};
use every_backend::{grad_check, subjects};
use voxdiff::ops::{Act, Unary};
use voxdiff::tensor::Shape;

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
