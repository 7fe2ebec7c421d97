//! Pointwise ops of the CPU backend: unary maps and their gradients, linear
//! combinations, the per-(sample, channel) broadcast add and its backward,
//! the sum to [N, C]. Forward vs plain f64
//! references, backward vs finite differences, NaN propagation, errors.
mod common;

use common::*;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{Bcast, Binary, Unary};
use voxdiff::tensor::{DType, Shape};

fn shapes() -> Vec<Shape> {
    vec![
        Shape::ndhwc(1, 3, 5, 7, 1),
        Shape::ndhwc(2, 3, 5, 7, 3),
        Shape::ndhwc(1, 2, 3, 4, 17),
        Shape::ndhwc(2, 1, 3, 5, 33),
        Shape::ndhwc(1, 9, 40, 50, 5), // several parallel chunks
    ]
}

#[test]
fn unary_maps_match_reference() {
    let b = cpu();
    let mut rng = Rng::new(1);
    for sh in shapes() {
        for op in Unary::ALL {
            let (lo, hi) = unary_range(op, -6.0, 6.0);
            let mut x = rng.vec(sh.numel(), lo, hi);
            if !matches!(op, Unary::Exp | Unary::Log | Unary::Sqrt) {
                // The tails, where exp saturates.
                x[0] = -30.0;
                x[1] = 30.0;
                x[2] = -90.0;
                x[3] = 100.0;
            }
            let xt = b.upload(&x, sh, DType::F32).unwrap();
            let y = b.download(&b.unary(&xt, op).unwrap()).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| unary_f64(op, v as f64)).collect();
            assert_close(&format!("{op:?} {sh}"), &y, &want, 2e-6, 1e-7);
        }
    }
}

#[test]
fn unary_gradients_match_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(2);
    let sh = Shape::ndhwc(2, 3, 5, 7, 3);
    for op in Unary::ALL {
        let (lo, hi) = unary_range(op, -4.0, 4.0);
        let mut x = rng.vec(sh.numel(), lo, hi);
        // Keep probes away from kinks (0) and from smooth L1's seams (±β).
        let seams: &[f32] = match op {
            Unary::Relu | Unary::LeakyRelu(_) | Unary::Abs => &[0.0],
            Unary::SmoothL1(beta) => &[0.0, -beta, beta],
            _ => &[],
        };
        for v in x.iter_mut() {
            for &k in seams {
                if (*v - k).abs() < 0.05 {
                    *v += 0.1;
                }
            }
        }
        let g = rng.vec(sh.numel(), -1.0, 1.0);
        let xt = b.upload(&x, sh, DType::F32).unwrap();
        let gt = b.upload(&g, sh, DType::F32).unwrap();
        let dx = b.download(&b.unary_bwd(&gt, &xt, op).unwrap()).unwrap();
        let loss = |xp: &[f32]| {
            let t = b.upload(xp, sh, DType::F32).unwrap();
            dot(&g, &b.download(&b.unary(&t, op).unwrap()).unwrap())
        };
        fd_check(
            &format!("unary_bwd {op:?}"),
            &x,
            &dx,
            loss,
            64,
            1e-2,
            1e-2,
            1e-3,
        );
        // and against the f64 derivative, everywhere
        let want: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(&v, &gv)| gv as f64 * dunary_f64(op, v as f64))
            .collect();
        assert_close(&format!("unary_bwd {op:?} vs f64"), &dx, &want, 1e-5, 1e-6);
    }
}

/// The derivative where the map has none, as PyTorch defines it.
#[test]
fn unary_gradients_at_kinks_follow_torch() {
    let b = cpu();
    let sh = Shape::new(&[3]);
    let x = b.upload(&[0.0, 0.5, -0.5], sh, DType::F32).unwrap();
    let g = b.upload(&[1.0, 1.0, 1.0], sh, DType::F32).unwrap();
    let d = |op| b.download(&b.unary_bwd(&g, &x, op).unwrap()).unwrap();
    assert_eq!(d(Unary::Relu), [0.0, 1.0, 0.0]);
    assert_eq!(d(Unary::LeakyRelu(0.1)), [0.1, 1.0, 0.1]);
    assert_eq!(d(Unary::Abs), [0.0, 1.0, -1.0]);
    // smooth L1 with β = 0.5: x/β inside, sign(x) at and beyond ±β.
    assert_eq!(d(Unary::SmoothL1(0.5)), [0.0, 1.0, -1.0]);
    assert_eq!(d(Unary::SmoothL1(1.0)), [0.0, 0.5, -0.5]);
    // β = 0 is |x|.
    let y = b
        .download(&b.unary(&x, Unary::SmoothL1(0.0)).unwrap())
        .unwrap();
    assert_eq!(y, [0.0, 0.5, 0.5]);
    assert_eq!(d(Unary::Sqrt)[0], f32::INFINITY);
}

#[test]
fn unary_maps_propagate_nan() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 1, 1, 2, 2);
    let g = b
        .upload(&[1.0, f32::NAN, 1.0, 1.0], sh, DType::F32)
        .unwrap();
    for op in Unary::ALL {
        // ln and √ are finite on positives only.
        let neg = if matches!(op, Unary::Log | Unary::Sqrt) {
            0.5
        } else {
            -1.0
        };
        let x = b
            .upload(&[f32::NAN, 1.0, neg, f32::NAN], sh, DType::F32)
            .unwrap();
        let y = b.download(&b.unary(&x, op).unwrap()).unwrap();
        assert!(y[0].is_nan() && y[3].is_nan(), "{op:?}: {y:?}");
        assert!(y[1].is_finite() && y[2].is_finite(), "{op:?}: {y:?}");
        let dx = b.download(&b.unary_bwd(&g, &x, op).unwrap()).unwrap();
        // NaN from dy (element 1) and from x.
        assert!(dx[1].is_nan(), "{op:?}: {dx:?}");
        assert!(dx[0].is_nan() && dx[3].is_nan(), "{op:?}: {dx:?}");
    }
}

#[test]
fn lincomb_matches_reference_for_one_to_four_terms() {
    let b = cpu();
    let mut rng = Rng::new(3);
    for sh in shapes() {
        let xs: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(sh.numel(), -2.0, 2.0)).collect();
        let ts: Vec<_> = xs
            .iter()
            .map(|v| b.upload(v, sh, DType::F32).unwrap())
            .collect();
        let coef = [0.7f32, -1.3, 2.1, 0.35];
        for k in 1..=4 {
            let terms: Vec<(f32, &_)> = (0..k).map(|i| (coef[i], &ts[i])).collect();
            let y = b.lincomb(&terms).unwrap();
            assert_eq!(y.shape(), sh);
            let want: Vec<f64> = (0..sh.numel())
                .map(|e| (0..k).map(|i| coef[i] as f64 * xs[i][e] as f64).sum())
                .collect();
            assert_close(
                &format!("lincomb {k} terms {sh}"),
                &b.download(&y).unwrap(),
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

/// Outputs of 16 MiB and more take the streaming-store path; an odd element
/// count leaves a tail for the scalar loop.
#[test]
fn large_elementwise_ops_match_reference() {
    let b = cpu();
    let mut rng = Rng::new(8);
    let sh = Shape::new(&[(16 << 20) / 4 + 37]);
    let x = rng.vec(sh.numel(), -4.0, 4.0);
    let z = rng.vec(sh.numel(), -1.0, 1.0);
    let (xt, zt) = (
        b.upload(&x, sh, DType::F32).unwrap(),
        b.upload(&z, sh, DType::F32).unwrap(),
    );
    for op in [Unary::Relu, Unary::Gelu] {
        let y = b.download(&b.unary(&xt, op).unwrap()).unwrap();
        let want: Vec<f64> = x.iter().map(|&v| unary_f64(op, v as f64)).collect();
        assert_close(&format!("large unary {op:?}"), &y, &want, 2e-6, 1e-7);
        let dx = b.download(&b.unary_bwd(&zt, &xt, op).unwrap()).unwrap();
        let want: Vec<f64> = x
            .iter()
            .zip(&z)
            .map(|(&v, &g)| g as f64 * dunary_f64(op, v as f64))
            .collect();
        assert_close(&format!("large unary_bwd {op:?}"), &dx, &want, 1e-4, 1e-5);
    }
    let y = b
        .download(&b.lincomb(&[(0.5, &xt), (-2.0, &zt), (1.5, &xt)]).unwrap())
        .unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&z)
        .map(|(&a, &c)| 0.5 * a as f64 - 2.0 * c as f64 + 1.5 * a as f64)
        .collect();
    assert_close("large lincomb", &y, &want, 1e-6, 1e-6);
}

#[test]
fn lincomb_errors() {
    let b = cpu();
    let mut rng = Rng::new(4);
    let a = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 2, 2, 2, 3), -1.0, 1.0);
    let c = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 2, 2, 2, 4), -1.0, 1.0);
    assert!(b.lincomb(&[]).is_err(), "no terms");
    assert!(
        b.lincomb(&[(1.0, &a), (1.0, &c)]).is_err(),
        "mismatched shapes"
    );
    let five = [(1.0, &a), (1.0, &a), (1.0, &a), (1.0, &a), (1.0, &a)];
    let e = b.lincomb(&five).unwrap_err().to_string();
    assert!(e.contains("lincomb"), "{e}");
}

#[test]
fn add_of_sample_channel_vector_and_reduce_sum_match_reference() {
    let b = cpu();
    let mut rng = Rng::new(5);
    for sh in shapes() {
        let (n, v, c) = (sh.n(), sh.voxels(), sh.c());
        let x = rng.vec(sh.numel(), -2.0, 2.0);
        let vv = rng.vec(n * c, -1.0, 1.0);
        let xt = b.upload(&x, sh, DType::F32).unwrap();
        let vt = b.upload(&vv, Shape::new(&[n, c]), DType::F32).unwrap();
        let y = b
            .download(&b.binary(Binary::Add, &xt, &vt).unwrap())
            .unwrap();
        let want: Vec<f64> = (0..sh.numel())
            .map(|i| x[i] as f64 + vv[(i / (v * c)) * c + i % c] as f64)
            .collect();
        assert_close(&format!("add [N, C] {sh}"), &y, &want, 1e-6, 1e-7);

        let s = b.reduce_sum(&xt, Bcast::SampleChannel).unwrap();
        assert_eq!(s.shape().dims(), [n, c]);
        let mut want = vec![0f64; n * c];
        for (i, &xv) in x.iter().enumerate() {
            want[(i / (v * c)) * c + i % c] += xv as f64;
        }
        assert_close(
            &format!("reduce_sum to [N, C] {sh}"),
            &b.download(&s).unwrap(),
            &want,
            1e-5,
            1e-4,
        );
    }
}

/// reduce_sum to SampleChannel is the backward of the [N, C] add with respect to v.
#[test]
fn reduce_sum_to_sample_channel_is_the_gradient_of_the_sample_channel_add() {
    let b = cpu();
    let mut rng = Rng::new(6);
    let sh = Shape::ndhwc(2, 3, 5, 7, 5);
    let (n, c) = (sh.n(), sh.c());
    let x = rand_tensor(&b, &mut rng, sh, -1.0, 1.0);
    let g = rng.vec(sh.numel(), -1.0, 1.0);
    let vv = rng.vec(n * c, -1.0, 1.0);
    let gt = b.upload(&g, sh, DType::F32).unwrap();
    let dv = b
        .download(&b.reduce_sum(&gt, Bcast::SampleChannel).unwrap())
        .unwrap();
    let loss = |vp: &[f32]| {
        let vt = b.upload(vp, Shape::new(&[n, c]), DType::F32).unwrap();
        dot(
            &g,
            &b.download(&b.binary(Binary::Add, &x, &vt).unwrap())
                .unwrap(),
        )
    };
    fd_check("add [N, C] dv", &vv, &dv, loss, 20, 1e-2, 1e-3, 1e-3);
}

#[test]
fn pointwise_nan_propagates_through_sums() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 2, 2, 2, 3);
    let mut x = vec![0.5f32; sh.numel()];
    x[4] = f32::NAN; // channel 1
    let xt = b.upload(&x, sh, DType::F32).unwrap();
    let s = b
        .download(&b.reduce_sum(&xt, Bcast::SampleChannel).unwrap())
        .unwrap();
    assert!(!s[0].is_nan() && s[1].is_nan() && !s[2].is_nan(), "{s:?}");
    let y = b.download(&b.lincomb(&[(0.0, &xt)]).unwrap()).unwrap();
    assert!(y[4].is_nan(), "0·NaN must stay NaN");
}

#[test]
fn broadcast_errors() {
    let b = cpu();
    let mut rng = Rng::new(7);
    let x = rand_tensor(&b, &mut rng, Shape::ndhwc(2, 2, 3, 4, 5), -1.0, 1.0);
    let v_bad_c = rand_tensor(&b, &mut rng, Shape::new(&[2, 4]), -1.0, 1.0);
    let v_bad_n = rand_tensor(&b, &mut rng, Shape::new(&[1, 5]), -1.0, 1.0);
    assert!(
        b.binary(Binary::Add, &x, &v_bad_c).is_err(),
        "wrong channel count"
    );
    assert!(
        b.binary(Binary::Add, &x, &v_bad_n).is_err(),
        "wrong sample count"
    );
    let flat = rand_tensor(&b, &mut rng, Shape::new(&[10, 5]), -1.0, 1.0);
    assert!(
        b.reduce_sum(&flat, Bcast::SampleChannel).is_err(),
        "reduce_sum of a matrix to [N, C]"
    );
    let y = rand_tensor(&b, &mut rng, Shape::ndhwc(2, 2, 3, 4, 6), -1.0, 1.0);
    let e = b.unary_bwd(&y, &x, Unary::Silu).unwrap_err().to_string();
    assert!(e.contains("unary_bwd"), "{e}");
}
