//! Dense layers of the CPU backend: `y = x·w + b` vs an f64 triple loop, the
//! data and weight gradients vs finite differences, and shape errors.
mod common;

use common::*;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape};

/// (M, K, N): batch, inputs, outputs — odd sizes, and one large enough for
/// the GEMM to take its blocked, multi-threaded path.
const SIZES: [(usize, usize, usize); 5] =
    [(1, 1, 1), (1, 7, 5), (2, 33, 17), (3, 5, 64), (67, 129, 95)];

#[test]
fn forward_matches_reference() {
    let b = cpu();
    let mut rng = Rng::new(1);
    for (m, k, n) in SIZES {
        let x = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(k * n, -1.0, 1.0);
        let bias = rng.vec(n, -1.0, 1.0);
        let xt = b.upload(&x, Shape::new(&[m, k]), DType::F32).unwrap();
        let wt = b.upload(&w, Shape::new(&[k, n]), DType::F32).unwrap();
        let bt = b.upload(&bias, Shape::new(&[n]), DType::F32).unwrap();
        for with_bias in [false, true] {
            let y = b.linear(&xt, &wt, with_bias.then_some(&bt)).unwrap();
            assert_eq!(y.shape().dims(), [m, n]);
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut acc = if with_bias { bias[j] as f64 } else { 0.0 };
                    for p in 0..k {
                        acc += x[i * k + p] as f64 * w[p * n + j] as f64;
                    }
                    want[i * n + j] = acc;
                }
            }
            let what = format!("linear {m}×{k}·{k}×{n} bias {with_bias}");
            assert_close(&what, &b.download(&y).unwrap(), &want, 1e-5, 1e-5);
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(2);
    for (m, k, n) in SIZES {
        let (xs, ws) = (Shape::new(&[m, k]), Shape::new(&[k, n]));
        let x = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(k * n, -1.0, 1.0);
        let bias = rng.vec(n, -1.0, 1.0);
        let g = rng.vec(m * n, -1.0, 1.0);
        let up = |v: &[f32], s: Shape| b.upload(v, s, DType::F32).unwrap();
        let (xt, wt, gt) = (up(&x, xs), up(&w, ws), up(&g, Shape::new(&[m, n])));
        let f = |x: &[f32], w: &[f32], bias: &[f32]| {
            let y = b
                .linear(&up(x, xs), &up(w, ws), Some(&up(bias, Shape::new(&[n]))))
                .unwrap();
            dot(&g, &b.download(&y).unwrap())
        };
        let dx = b.linear_dgrad(&gt, &wt).unwrap();
        assert_eq!(dx.shape(), xs);
        let dx = b.download(&dx).unwrap();
        let (dw, db) = b.linear_wgrad(&xt, &gt, true).unwrap();
        assert_eq!(dw.shape(), ws);
        let (dw, db) = (b.download(&dw).unwrap(), b.download(&db.unwrap()).unwrap());
        let what = format!("{m}×{k}·{k}×{n}");
        fd_check(
            &format!("dx {what}"),
            &x,
            &dx,
            |p| f(p, &w, &bias),
            24,
            1e-2,
            1e-3,
            1e-3,
        );
        fd_check(
            &format!("dw {what}"),
            &w,
            &dw,
            |p| f(&x, p, &bias),
            24,
            1e-2,
            1e-3,
            1e-3,
        );
        fd_check(
            &format!("db {what}"),
            &bias,
            &db,
            |p| f(&x, &w, p),
            24,
            1e-2,
            1e-3,
            1e-3,
        );
        let (_, none) = b.linear_wgrad(&xt, &gt, false).unwrap();
        assert!(none.is_none(), "no bias gradient was asked for");
    }
}

#[test]
fn nan_propagates() {
    let b = cpu();
    let x = b
        .upload(&[1.0, f32::NAN, 2.0, 3.0], Shape::new(&[2, 2]), DType::F32)
        .unwrap();
    let w = b
        .upload(&[1.0, 0.0, 0.0, 1.0], Shape::new(&[2, 2]), DType::F32)
        .unwrap();
    let y = b.download(&b.linear(&x, &w, None).unwrap()).unwrap();
    assert!(
        y[0].is_nan() && y[1].is_nan(),
        "row 0 holds a NaN input: {y:?}"
    );
    assert!(y[2].is_finite() && y[3].is_finite(), "{y:?}");
}

#[test]
fn shape_errors() {
    let b = cpu();
    let mut rng = Rng::new(3);
    let t = |s: &[usize], rng: &mut Rng| rand_tensor(&b, rng, Shape::new(s), -1.0, 1.0);
    let x = t(&[2, 3], &mut rng);
    let w_bad = t(&[4, 5], &mut rng);
    let w = t(&[3, 5], &mut rng);
    let bias_bad = t(&[4], &mut rng);
    let e = b.linear(&x, &w_bad, None).unwrap_err().to_string();
    assert!(e.contains("linear"), "{e}");
    assert!(
        b.linear(&x, &w, Some(&bias_bad)).is_err(),
        "bias of the wrong length"
    );
    assert!(
        b.linear(&t(&[2, 3, 1], &mut rng), &w, None).is_err(),
        "x not a matrix"
    );
    let dy = t(&[2, 5], &mut rng);
    assert!(
        b.linear_dgrad(&dy, &t(&[3, 4], &mut rng)).is_err(),
        "dgrad: w of other outputs"
    );
    assert!(
        b.linear_wgrad(&t(&[3, 3], &mut rng), &dy, true).is_err(),
        "wgrad: batch sizes differ"
    );
    assert!(b.linear_dgrad(&dy, &w).is_ok());
}
