//! Segmentation ops and losses of the CPU backend: softmax (of the reduce
//! family, here over channels as the losses use it), argmax, one-hot,
//! cross-entropy, foreground soft Dice, MSE, weighted sums of losses. Forward vs
//! f64 references written from the doc-comment math, backward vs finite
//! differences, NaN propagation, errors.
mod common;

use common::*;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

fn up(b: &dyn Backend, v: &[f32], s: Shape) -> Tensor {
    b.upload(v, s, DType::F32).unwrap()
}

fn scalar(b: &dyn Backend, t: &Tensor) -> f32 {
    assert_eq!(t.shape().dims(), [1], "a loss is a [1] scalar");
    b.download(t).unwrap()[0]
}

fn softmax_ref(x: &[f32], c: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|r| {
            let m = r.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

/// Random soft targets: each row a probability distribution.
fn soft_targets(rng: &mut Rng, rows: usize, c: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|_| {
            let r = rng.vec(c, 0.05, 1.0);
            let s: f32 = r.iter().sum();
            r.into_iter().map(move |v| v / s)
        })
        .collect()
}

const SHAPES: [(usize, usize, usize, usize, usize); 4] = [
    (1, 3, 5, 7, 1),
    (2, 3, 5, 7, 3),
    (1, 2, 3, 4, 17),
    (2, 1, 3, 5, 33),
];

fn shape(s: (usize, usize, usize, usize, usize)) -> Shape {
    Shape::ndhwc(s.0, s.1, s.2, s.3, s.4)
}

#[test]
fn softmax_matches_reference_and_fd() {
    let b = cpu();
    let mut rng = Rng::new(1);
    for s in SHAPES {
        let sh = shape(s);
        let x = rng.vec(sh.numel(), -5.0, 5.0);
        let p = b.softmax(&up(&b, &x, sh)).unwrap();
        assert_eq!(p.shape(), sh);
        let pv = b.download(&p).unwrap();
        assert_close(
            &format!("softmax {sh}"),
            &pv,
            &softmax_ref(&x, sh.c()),
            1e-6,
            1e-7,
        );

        let g = rng.vec(sh.numel(), -1.0, 1.0);
        let dx = b
            .download(&b.softmax_bwd(&up(&b, &g, sh), &p).unwrap())
            .unwrap();
        let loss = |xp: &[f32]| {
            dot(
                &g,
                &b.download(&b.softmax(&up(&b, xp, sh)).unwrap()).unwrap(),
            )
        };
        fd_check(
            &format!("softmax dx {sh}"),
            &x,
            &dx,
            loss,
            30,
            1e-2,
            1e-3,
            1e-4,
        );
    }
}

#[test]
fn softmax_is_stable_for_large_logits() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 1, 1, 2, 3);
    let x = [1000.0f32, 999.0, -1000.0, -5000.0, -5001.0, -5000.0];
    let p = b.download(&b.softmax(&up(&b, &x, sh)).unwrap()).unwrap();
    assert_close("softmax large", &p, &softmax_ref(&x, 3), 1e-6, 1e-30);
}

#[test]
fn argmax_and_one_hot_match_reference() {
    let b = cpu();
    let mut rng = Rng::new(2);
    for s in SHAPES {
        let sh = shape(s);
        let c = sh.c();
        // Few distinct values: ties, where the first maximum must win.
        let x: Vec<f32> = (0..sh.numel()).map(|_| rng.below(4) as f32).collect();
        let y = b.argmax_c(&up(&b, &x, sh)).unwrap();
        assert_eq!(y.shape(), sh.with_c(1));
        let want: Vec<f64> = x
            .chunks(c)
            .map(|r| {
                let mut best = 0;
                for i in 1..c {
                    if r[i] > r[best] {
                        best = i;
                    }
                }
                best as f64
            })
            .collect();
        let yv = b.download(&y).unwrap();
        assert_close(&format!("argmax_c {sh}"), &yv, &want, 0.0, 0.0);

        let oh = b.one_hot(&y, c, 0.75, -0.25).unwrap();
        assert_eq!(oh.shape(), sh);
        let want: Vec<f64> = yv
            .iter()
            .flat_map(|&l| (0..c).map(move |k| if k == l as usize { 0.75 } else { -0.25 }))
            .collect();
        assert_close(
            &format!("one_hot {sh}"),
            &b.download(&oh).unwrap(),
            &want,
            0.0,
            0.0,
        );
    }
}

#[test]
fn one_hot_rejects_bad_class_ids() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 1, 1, 3, 1);
    for bad in [3.0f32, -1.0, 1.5, f32::NAN, f32::INFINITY] {
        let l = up(&b, &[0.0, bad, 2.0], sh);
        let e = b.one_hot(&l, 3, 1.0, 0.0).unwrap_err().to_string();
        assert!(e.contains("one_hot"), "{bad}: {e}");
    }
    let l = up(&b, &[0.0, 1.0, 2.0], sh);
    assert!(b.one_hot(&l, 0, 1.0, 0.0).is_err(), "zero classes");
    let two = up(&b, &[0.0; 6], Shape::ndhwc(1, 1, 1, 3, 2));
    assert!(
        b.one_hot(&two, 3, 1.0, 0.0).is_err(),
        "labels with two channels"
    );
}

fn ce_ref(x: &[f32], t: &[f32], c: usize) -> f64 {
    let rows = x.len() / c;
    let mut total = 0f64;
    for (xr, tr) in x.chunks(c).zip(t.chunks(c)) {
        let m = xr.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + xr.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        for (&xv, &tv) in xr.iter().zip(tr) {
            total -= tv as f64 * (xv as f64 - lse);
        }
    }
    total / rows as f64
}

#[test]
fn cross_entropy_matches_reference_and_fd() {
    let b = cpu();
    let mut rng = Rng::new(3);
    for s in SHAPES {
        let sh = shape(s);
        let c = sh.c();
        let rows = sh.numel() / c;
        let x = rng.vec(sh.numel(), -4.0, 4.0);
        for soft in [false, true] {
            let t = if soft {
                soft_targets(&mut rng, rows, c)
            } else {
                let labels: Vec<f32> = (0..rows).map(|_| rng.below(c) as f32).collect();
                b.download(
                    &b.one_hot(&up(&b, &labels, sh.with_c(1)), c, 1.0, 0.0)
                        .unwrap(),
                )
                .unwrap()
            };
            let tt = up(&b, &t, sh);
            let l = scalar(&b, &b.cross_entropy(&up(&b, &x, sh), &tt).unwrap());
            let what = format!("cross_entropy {sh} soft {soft}");
            assert_close(&what, &[l], &[ce_ref(&x, &t, c)], 1e-6, 1e-7);

            let dl = 1.7f32;
            let dlt = up(&b, &[dl], Shape::scalar());
            let dx = b.cross_entropy_bwd(&up(&b, &x, sh), &tt, &dlt).unwrap();
            assert_eq!(dx.shape(), sh);
            let dx = b.download(&dx).unwrap();
            let loss = |xp: &[f32]| {
                dl as f64 * scalar(&b, &b.cross_entropy(&up(&b, xp, sh), &tt).unwrap()) as f64
            };
            // The loss is a mean over rows: scale tolerances to the gradient size.
            let atol = 1e-3 * dl as f64 / rows as f64 + 1e-6;
            fd_check(
                &format!("{what} dlogits"),
                &x,
                &dx,
                loss,
                30,
                1e-2,
                2e-2,
                atol,
            );
        }
    }
}

#[test]
fn cross_entropy_is_stable_for_large_logits() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 1, 1, 2, 3);
    let x = [1000.0f32, 990.0, -1000.0, -3000.0, -3001.0, -2990.0];
    let t = [0.0f32, 1.0, 0.0, 1.0, 0.0, 0.0];
    let l = scalar(
        &b,
        &b.cross_entropy(&up(&b, &x, sh), &up(&b, &t, sh)).unwrap(),
    );
    assert_close("ce large", &[l], &[ce_ref(&x, &t, 3)], 1e-6, 0.0);
}

/// (loss, sums [N, C, 3]) of the foreground soft Dice, in f64.
fn dice_ref(p: &[f32], t: &[f32], n: usize, c: usize) -> (f64, Vec<f64>) {
    let per = p.len() / n;
    let mut sums = vec![0f64; n * c * 3];
    for i in 0..p.len() {
        let (ni, ci) = (i / per, i % c);
        sums[(ni * c + ci) * 3] += p[i] as f64 * t[i] as f64;
        sums[(ni * c + ci) * 3 + 1] += p[i] as f64;
        sums[(ni * c + ci) * 3 + 2] += t[i] as f64;
    }
    let (mut total, mut count) = (0f64, 0);
    for ni in 0..n {
        for ci in 1..c {
            let s = &sums[(ni * c + ci) * 3..][..3];
            if s[2] > 0.0 {
                total += 1.0 - 2.0 * s[0] / (s[1] + s[2]);
                count += 1;
            }
        }
    }
    (
        if count == 0 {
            0.0
        } else {
            total / count as f64
        },
        sums,
    )
}

#[test]
fn dice_matches_reference_and_fd() {
    let b = cpu();
    let mut rng = Rng::new(4);
    for s in [(2, 3, 5, 7, 4), (1, 2, 3, 4, 5), (2, 1, 3, 5, 2)] {
        let sh = shape(s);
        let (n, c) = (sh.n(), sh.c());
        let rows = sh.numel() / c;
        // Labels drawn from a subset of classes so some foreground classes are
        // absent (skipped) in some samples.
        let labels: Vec<f32> = (0..rows)
            .map(|r| {
                let sample = r / (rows / n);
                let k = rng.below(c.saturating_sub(sample).max(1));
                k as f32
            })
            .collect();
        let t = b
            .download(
                &b.one_hot(&up(&b, &labels, sh.with_c(1)), c, 1.0, 0.0)
                    .unwrap(),
            )
            .unwrap();
        let tt = up(&b, &t, sh);
        let p = rng.vec(sh.numel(), 0.02, 0.98);
        let (loss, sums) = b.dice_loss(&up(&b, &p, sh), &tt).unwrap();
        assert_eq!(sums.shape().dims(), [n, c, 3]);
        let (want, want_sums) = dice_ref(&p, &t, n, c);
        let what = format!("dice {sh}");
        assert_close(
            &format!("{what} sums"),
            &b.download(&sums).unwrap(),
            &want_sums,
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{what} loss"),
            &[scalar(&b, &loss)],
            &[want],
            1e-5,
            1e-6,
        );

        let dl = 0.8f32;
        let dlt = up(&b, &[dl], Shape::scalar());
        let dp = b
            .download(&b.dice_loss_bwd(&up(&b, &p, sh), &tt, &sums, &dlt).unwrap())
            .unwrap();
        let f = |pp: &[f32]| {
            dl as f64 * scalar(&b, &b.dice_loss(&up(&b, pp, sh), &tt).unwrap().0) as f64
        };
        fd_check(&format!("{what} dp"), &p, &dp, f, 40, 1e-2, 2e-2, 2e-4);
        // Background and absent classes receive no gradient.
        for (i, &g) in dp.iter().enumerate() {
            let (ni, ci) = (i / (sh.numel() / n), i % c);
            if ci == 0 || want_sums[(ni * c + ci) * 3 + 2] == 0.0 {
                assert_eq!(g, 0.0, "{what}: dp[{i}] of a skipped class");
            }
        }
    }
}

#[test]
fn dice_without_foreground_is_zero() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 1, 2, 2, 3);
    let mut t = vec![0f32; sh.numel()];
    for r in 0..4 {
        t[r * 3] = 1.0; // background everywhere
    }
    let tt = up(&b, &t, sh);
    let p = up(&b, &[0.3; 12], sh);
    let (l, sums) = b.dice_loss(&p, &tt).unwrap();
    assert_eq!(scalar(&b, &l), 0.0);
    let dp = b
        .dice_loss_bwd(&p, &tt, &sums, &up(&b, &[1.0], Shape::scalar()))
        .unwrap();
    assert!(b.download(&dp).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn mse_matches_reference_and_fd() {
    let b = cpu();
    let mut rng = Rng::new(5);
    for s in SHAPES {
        let sh = shape(s);
        let a = rng.vec(sh.numel(), -2.0, 2.0);
        let c = rng.vec(sh.numel(), -2.0, 2.0);
        let (at, ct) = (up(&b, &a, sh), up(&b, &c, sh));
        let l = scalar(&b, &b.mse(&at, &ct).unwrap());
        let want = a
            .iter()
            .zip(&c)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert_close(&format!("mse {sh}"), &[l], &[want], 1e-6, 0.0);
        let dl = -1.3f32;
        let da = b
            .download(
                &b.mse_bwd(&at, &ct, &up(&b, &[dl], Shape::scalar()))
                    .unwrap(),
            )
            .unwrap();
        let f = |p: &[f32]| dl as f64 * scalar(&b, &b.mse(&up(&b, p, sh), &ct).unwrap()) as f64;
        let atol = 1e-3 / a.len() as f64 + 1e-6;
        fd_check(&format!("mse da {sh}"), &a, &da, f, 30, 1e-2, 2e-2, atol);
        // w.r.t. b it is the negation
        let db: Vec<f32> = da.iter().map(|v| -v).collect();
        let f = |p: &[f32]| dl as f64 * scalar(&b, &b.mse(&at, &up(&b, p, sh)).unwrap()) as f64;
        fd_check(&format!("mse db {sh}"), &c, &db, f, 30, 1e-2, 2e-2, atol);
    }
}

/// Losses are weighted on the device by `lincomb` of `[1]` scalars.
#[test]
fn lincomb_of_scalars_matches_reference() {
    let b = cpu();
    let s = |v: f32| up(&b, &[v], Shape::scalar());
    let (x, y, z) = (s(1.5), s(-2.25), s(0.125));
    let r = scalar(&b, &b.lincomb(&[(1.0, &x), (0.1, &y), (-4.0, &z)]).unwrap());
    assert_close("lincomb of scalars", &[r], &[1.5 - 0.225 - 0.5], 1e-6, 0.0);
    assert!(b.lincomb(&[]).is_err());
    let not_scalar = up(&b, &[1.0, 2.0], Shape::new(&[2]));
    assert!(b.lincomb(&[(1.0, &x), (1.0, &not_scalar)]).is_err());
}

#[test]
fn losses_propagate_nan() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 1, 1, 2, 3);
    let x = up(&b, &[0.1, f32::NAN, 0.3, 0.2, 0.1, 0.7], sh);
    let t = up(&b, &[0.0, 1.0, 0.0, 0.0, 0.0, 1.0], sh);
    let p = b.download(&b.softmax(&x).unwrap()).unwrap();
    assert!(
        p[..3].iter().all(|v| v.is_nan()) && p[3..].iter().all(|v| v.is_finite()),
        "{p:?}"
    );
    let a = b.download(&b.argmax_c(&x).unwrap()).unwrap();
    assert!(a[0].is_nan() && a[1] == 2.0, "{a:?}");
    assert!(scalar(&b, &b.cross_entropy(&x, &t).unwrap()).is_nan());
    let one = up(&b, &[1.0], Shape::scalar());
    let d = b
        .download(&b.cross_entropy_bwd(&x, &t, &one).unwrap())
        .unwrap();
    assert!(d[..3].iter().all(|v| v.is_nan()), "{d:?}");
    assert!(scalar(&b, &b.dice_loss(&x, &t).unwrap().0).is_nan());
    assert!(scalar(&b, &b.mse(&x, &t).unwrap()).is_nan());
    let nan = up(&b, &[f32::NAN], Shape::scalar());
    assert!(scalar(&b, &b.lincomb(&[(0.0, &nan)]).unwrap()).is_nan());
}

#[test]
fn loss_errors() {
    let b = cpu();
    let mut rng = Rng::new(6);
    let sh = Shape::ndhwc(1, 2, 3, 4, 3);
    let x = rand_tensor(&b, &mut rng, sh, -1.0, 1.0);
    let t4 = rand_tensor(&b, &mut rng, sh.with_c(4), 0.0, 1.0);
    let e = b.cross_entropy(&x, &t4).unwrap_err().to_string();
    assert!(e.contains("cross_entropy"), "{e}");
    assert!(b.dice_loss(&x, &t4).is_err(), "dice: channel counts differ");
    assert!(b.mse(&x, &t4).is_err(), "mse: shapes differ");
    assert!(
        b.softmax_bwd(&t4, &x).is_err(),
        "softmax_bwd: shapes differ"
    );
    let two = rand_tensor(&b, &mut rng, Shape::new(&[2]), 0.0, 1.0);
    assert!(
        b.cross_entropy_bwd(&x, &x, &two).is_err(),
        "dloss not a scalar"
    );
    assert!(b.mse_bwd(&x, &x, &two).is_err(), "dloss not a scalar");
    let (_, sums) = b.dice_loss(&x, &x).unwrap();
    let one = rand_tensor(&b, &mut rng, Shape::scalar(), 0.0, 1.0);
    let bad_sums = rand_tensor(&b, &mut rng, Shape::new(&[1, 4, 3]), 0.0, 1.0);
    assert!(
        b.dice_loss_bwd(&x, &x, &bad_sums, &one).is_err(),
        "sums of another shape"
    );
    assert!(
        b.dice_loss_bwd(&x, &x, &sums, &two).is_err(),
        "dloss not a scalar"
    );
    let empty = b.zeros(Shape::new(&[6, 0]), DType::F32).unwrap();
    assert!(b.softmax(&empty).is_err(), "softmax over an empty last dim");
}
