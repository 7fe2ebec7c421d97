//! The first custom op, `diffusion::logits::ScaledToLogits`
//! (`ln(clamp((x + 1)/2, eps, 1))`) and its backward, on every backend
//! against the f64 formula; NaN and both clamp ends; the gradient through the
//! Graph against finite differences.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use voxdiff::diffusion::logits::{scaled_to_logits, ScaledToLogits, ScaledToLogitsGrad, PROB_EPS};
use voxdiff::ops::custom;
use voxdiff::tensor::{DType, Shape};

fn logit(x: f64, eps: f64) -> f64 {
    ((x + 1.0) * 0.5).clamp(eps, 1.0).ln()
}
fn logit_grad(d: f64, x: f64, eps: f64) -> f64 {
    let p = (x + 1.0) * 0.5;
    if p > eps && p < 1.0 {
        d / (x + 1.0)
    } else {
        0.0
    }
}

#[test]
fn forward_and_backward_match_the_formula_on_every_backend() {
    let eps = PROB_EPS;
    for s in subjects() {
        let mut rng = Rng::new(8);
        for shape in [
            Shape::new(&[9]),
            Shape::ndhwc(1, 3, 5, 7, 3),
            Shape::ndhwc(2, 1, 9, 11, 5),
        ] {
            let what = format!("scaled_to_logits {shape}");
            // Beyond both clamp ends: (x + 1)/2 < eps and > 1 both occur.
            let (x, xs) = s.rand_act(&mut rng, shape, -1.3, 1.3);
            let y = custom::run(s.dev(), &ScaledToLogits { eps }, &[&x]).unwrap();
            assert_eq!((y[0].shape(), y[0].dtype()), (shape, x.dtype()));
            let want: Vec<f64> = xs.iter().map(|&v| logit(v as f64, eps as f64)).collect();
            s.check(&what, &y[0], &want, 1.0);

            let (dy, dys) = s.rand_act(&mut rng, shape, -2.0, 2.0);
            let dx = custom::run(s.dev(), &ScaledToLogitsGrad { eps }, &[&dy, &x]).unwrap();
            let want: Vec<f64> = dys
                .iter()
                .zip(&xs)
                .map(|(&d, &v)| logit_grad(d as f64, v as f64, eps as f64))
                .collect();
            s.check(&format!("{what} backward"), &dx[0], &want, 1.0);
        }
        // NaN stays NaN through both; the clamp ends map to ln(eps) and 0.
        let (x, _) = s.act(&[f32::NAN, -1.0, 1.0, 3.0], Shape::new(&[4]));
        let y = s
            .dev()
            .download(&custom::run(s.dev(), &ScaledToLogits { eps }, &[&x]).unwrap()[0]);
        let y = y.unwrap();
        assert!(y[0].is_nan(), "{}: {y:?}", s.label);
        assert_eq!(y[2..], [0.0, 0.0], "{}", s.label);
        let lneps = match s.dev().act_dtype() {
            DType::F32 => eps.ln(),
            DType::BF16 => half::bf16::from_f32(eps.ln()).to_f32(),
        };
        assert_eq!(y[1], lneps, "{}", s.label);
        let (dy, _) = s.act(&[1.0; 4], Shape::new(&[4]));
        let dx = custom::run(s.dev(), &ScaledToLogitsGrad { eps }, &[&dy, &x]).unwrap();
        let dx = s.dev().download(&dx[0]).unwrap();
        assert!(dx[0].is_nan(), "{}: {dx:?}", s.label);
        assert_eq!(dx[1..], [0.0, 0.0, 0.0], "{}", s.label);
    }
}

#[test]
fn a_wrong_eps_or_mismatched_gradient_is_refused_on_every_backend() {
    for s in subjects() {
        let (x, _) = s.act(&[0.5; 6], Shape::new(&[6]));
        let (dy, _) = s.act(&[1.0; 5], Shape::new(&[5]));
        let e = custom::run(s.dev(), &ScaledToLogits { eps: 0.0 }, &[&x]).unwrap_err();
        assert!(
            e.to_string().contains("eps must be in (0, 1)"),
            "{}: {e}",
            s.label
        );
        let e =
            custom::run(s.dev(), &ScaledToLogitsGrad { eps: PROB_EPS }, &[&dy, &x]).unwrap_err();
        assert!(e.to_string().contains("differ"), "{}: {e}", s.label);
    }
}

#[test]
fn the_graph_gradient_matches_finite_differences() {
    let mut rng = Rng::new(9);
    // Inside the clamp range, away from its ends (the map is not smooth there).
    let x = rng.vec(40, -0.9, 0.9);
    grad_check(
        "scaled_to_logits",
        &[(Shape::new(&[40]), x)],
        |g, v| scaled_to_logits(g, &v[0]),
        40,
        1e-3,
        2e-3,
        1e-6,
    );
}
