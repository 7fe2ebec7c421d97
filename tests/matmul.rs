//! The matrix family on every backend (CPU, emulated GPU with f32 and bf16
//! operands): `bmm` with each pair of transpose flags against an f64 triple
//! loop, at batch 1, 2 and 3 and extents that are not tile multiples (1, 7, 33,
//! 70, …) next to multiples of 8 (the bf16 kernels' cp.async path); NaN
//! propagation; the contract's errors; and the gradient of `Graph::bmm` for
//! every flag pair by finite differences. Then the dense layer
//! (`Graph::linear` = bmm + bias broadcast) on f32 vectors: forward and all
//! three gradients against f64 on every backend, finite differences, errors.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use voxdiff::autograd::Graph;
use voxdiff::tensor::{DType, Shape, Tensor};

/// (batch, M, N, K); batch 0 means rank-2 operands (one matrix).
const CASES: [(usize, usize, usize, usize); 8] = [
    (1, 1, 1, 1),
    (3, 7, 33, 70),
    (1, 70, 7, 33),
    (3, 33, 70, 7),
    (0, 5, 9, 17),
    (2, 72, 80, 40),
    (1, 64, 16, 96),
    (1, 67, 95, 129),
];

const FLAGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// The stored shape of an operand: `rows × cols`, with a leading batch unless
/// `batch == 0`.
fn operand(batch: usize, rows: usize, cols: usize) -> Shape {
    if batch == 0 {
        Shape::new(&[rows, cols])
    } else {
        Shape::new(&[batch, rows, cols])
    }
}

/// `c[β][i][j] = Σ_p op(a)[i][p]·op(b)[p][j]` in f64 from the stored values.
#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f32],
    b: &[f32],
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
) -> Vec<f64> {
    let mut c = vec![0.0; batch.max(1) * m * n];
    for z in 0..batch.max(1) {
        let (a, b) = (&a[z * m * k..], &b[z * k * n..]);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += x as f64 * y as f64;
                }
                c[(z * m + i) * n + j] = s;
            }
        }
    }
    c
}

#[test]
fn bmm_matches_the_f64_reference_for_every_flag_pair() {
    for s in subjects() {
        let mut rng = Rng::new(11);
        for (batch, m, n, k) in CASES {
            for (ta, tb) in FLAGS {
                let a_sh = if ta {
                    operand(batch, k, m)
                } else {
                    operand(batch, m, k)
                };
                let b_sh = if tb {
                    operand(batch, n, k)
                } else {
                    operand(batch, k, n)
                };
                let (a, av) = s.rand_act(&mut rng, a_sh, -1.0, 1.0);
                let (b, bv) = s.rand_act(&mut rng, b_sh, -1.0, 1.0);
                let c = s.dev().bmm(&a, &b, ta, tb).unwrap();
                assert_eq!(c.shape(), operand(batch, m, n), "output shape");
                assert_eq!(c.dtype(), a.dtype(), "output dtype");
                let want = reference(&av, &bv, batch, m, n, k, ta, tb);
                let what = format!("bmm B={batch} M={m} N={n} K={k} ta={ta} tb={tb}");
                s.check(&what, &c, &want, 1.0);
            }
        }
    }
}

#[test]
fn bmm_of_f32_operands_on_a_bf16_backend_stays_f32() {
    // Parameters and per-sample vectors are f32 on every backend: their
    // products must not round to the activation dtype.
    let s = &subjects()[2];
    assert_eq!(s.dev().act_dtype(), DType::BF16);
    let mut rng = Rng::new(12);
    let (m, n, k) = (3, 17, 33);
    let av = rng.vec(m * k, -1.0, 1.0);
    let bv = rng.vec(k * n, -1.0, 1.0);
    let a = s.f32(&av, Shape::new(&[m, k]));
    let b = s.f32(&bv, Shape::new(&[k, n]));
    let c = s.dev().bmm(&a, &b, false, false).unwrap();
    assert_eq!(c.dtype(), DType::F32);
    let want = reference(&av, &bv, 0, m, n, k, false, false);
    common::assert_close(
        "f32 bmm on the bf16 backend",
        &s.dev().download(&c).unwrap(),
        &want,
        1e-5,
        1e-5,
    );
}

#[test]
fn nan_in_a_row_of_a_reaches_only_that_row_of_c() {
    for s in subjects() {
        for (ta, tb) in FLAGS {
            let (m, n, k) = (3, 5, 4);
            // a = [[1, NaN, 2, 3], [1, 0, 0, 1], [2, 1, 1, 2]] as op(a).
            let rows: [[f32; 4]; 3] = [
                [1.0, f32::NAN, 2.0, 3.0],
                [1.0, 0.5, 0.25, 1.0],
                [2.0, 1.0, 1.0, 2.0],
            ];
            let mut av = vec![0.0; m * k];
            for i in 0..m {
                for p in 0..k {
                    av[if ta { p * m + i } else { i * k + p }] = rows[i][p];
                }
            }
            let bv: Vec<f32> = (0..k * n).map(|i| 0.25 + (i % 7) as f32 * 0.125).collect();
            let a_sh = if ta {
                Shape::new(&[k, m])
            } else {
                Shape::new(&[m, k])
            };
            let b_sh = if tb {
                Shape::new(&[n, k])
            } else {
                Shape::new(&[k, n])
            };
            let (a, _) = s.act(&av, a_sh);
            let (b, _) = s.act(&bv, b_sh);
            let c = s
                .dev()
                .download(&s.dev().bmm(&a, &b, ta, tb).unwrap())
                .unwrap();
            let what = format!("{} ta={ta} tb={tb}", s.label);
            assert!(
                c[..n].iter().all(|v| v.is_nan()),
                "{what}: row 0 holds a NaN input: {c:?}"
            );
            assert!(
                c[n..].iter().all(|v| v.is_finite()),
                "{what}: rows 1, 2 are finite: {c:?}"
            );
        }
    }
}

#[test]
fn bmm_rejects_what_the_contract_forbids() {
    for s in subjects() {
        let dev = s.dev();
        let act = dev.act_dtype();
        let z = |dims: &[usize], dt: DType| dev.zeros(Shape::new(dims), dt).unwrap();
        let err = |a: &Tensor, b: &Tensor, ta: bool, tb: bool| {
            format!("{:#}", dev.bmm(a, b, ta, tb).unwrap_err())
        };
        let e = err(&z(&[2, 3, 4], act), &z(&[2, 5, 6], act), false, false);
        assert!(e.contains("disagree on K"), "{}: {e}", s.label);
        let e = err(&z(&[2, 3, 4], act), &z(&[3, 4, 6], act), false, false);
        assert!(
            e.contains("different numbers of matrices"),
            "{}: {e}",
            s.label
        );
        let e = err(&z(&[1, 2, 3, 4], act), &z(&[4, 6], act), false, false);
        assert!(e.contains("must be a matrix"), "{}: {e}", s.label);
        // K = 4 only with the right flag: a [4, 3] is [K, M] when ta.
        assert!(dev
            .bmm(&z(&[4, 3], act), &z(&[4, 6], act), true, false)
            .is_ok());
        let e = err(&z(&[4, 3], act), &z(&[4, 6], act), false, false);
        assert!(e.contains("disagree on K"), "{}: {e}", s.label);
        if act == DType::BF16 {
            let e = err(
                &z(&[2, 3], DType::BF16),
                &z(&[3, 4], DType::F32),
                false,
                false,
            );
            assert!(e.contains("one dtype"), "{}: {e}", s.label);
        }
    }
}

#[test]
fn bmm_gradients_match_finite_differences_for_every_flag_pair() {
    let mut rng = Rng::new(13);
    for (batch, m, n, k) in [(1, 7, 5, 3), (3, 4, 6, 5), (0, 3, 2, 7)] {
        for (ta, tb) in FLAGS {
            let a_sh = if ta {
                operand(batch, k, m)
            } else {
                operand(batch, m, k)
            };
            let b_sh = if tb {
                operand(batch, n, k)
            } else {
                operand(batch, k, n)
            };
            let inputs = [
                (a_sh, rng.vec(a_sh.numel(), -1.0, 1.0)),
                (b_sh, rng.vec(b_sh.numel(), -1.0, 1.0)),
            ];
            grad_check(
                &format!("bmm B={batch} M={m} N={n} K={k} ta={ta} tb={tb}"),
                &inputs,
                |g, v| g.bmm(&v[0], &v[1], ta, tb),
                40,
                1e-2,
                1e-3,
                1e-4,
            );
        }
    }
}

#[test]
fn bmm_gradient_of_a_rank_2_operand_next_to_a_batch_of_one() {
    // a [M, K] with b [1, K, N]: the output is rank 2 and each gradient takes
    // its operand's shape.
    let mut rng = Rng::new(14);
    let inputs = [
        (Shape::new(&[4, 3]), rng.vec(12, -1.0, 1.0)),
        (Shape::new(&[1, 3, 5]), rng.vec(15, -1.0, 1.0)),
    ];
    grad_check(
        "bmm rank 2 · rank 3",
        &inputs,
        |g, v| g.bmm(&v[0], &v[1], false, false),
        20,
        1e-2,
        1e-3,
        1e-4,
    );
}

/// `Σ_p x(i, p)·y(p, j)` in f64 and `Σ_p |x(i, p)·y(p, j)|` (the scale of its
/// rounding error), for an `rows × cols` result over `depth` terms.
fn product(
    (rows, cols, depth): (usize, usize, usize),
    x: impl Fn(usize, usize) -> f64,
    y: impl Fn(usize, usize) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut v, mut s) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
    for i in 0..rows {
        for j in 0..cols {
            for p in 0..depth {
                let t = x(i, p) * y(p, j);
                v[i * cols + j] += t;
                s[i * cols + j] += t.abs();
            }
        }
    }
    (v, s)
}

/// Every element of `got` within `1e-5·(|want| + scale)` of `want` (f32 math).
fn check_f32(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let lim = 1e-5 * (want[i].abs() + scale[i]) + 1e-12;
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= lim,
            "{what}: element {i}: got {}, want {} (|err| {err:.3e} > {lim:.3e})",
            got[i],
            want[i]
        );
    }
}

/// (M, K, N) of the dense-layer cases: batch 1 to 3 and 67, inputs and outputs
/// from 1 to 300, none a tile multiple.
const DENSE: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (1, 7, 5),
    (2, 33, 17),
    (3, 5, 64),
    (2, 17, 33),
    (1, 300, 5),
    (3, 33, 300),
    (2, 5, 17),
    (67, 129, 95),
];

#[test]
fn linear_forward_and_gradients_match_f64_on_every_backend() {
    // The dense layer keeps f32 per-sample vectors and parameters on every
    // backend. Loss = mse(y, t), so dy = 2(y − t)/numel from the y each backend
    // computed, and dx = dy·wᵀ, dw = xᵀ·dy, db = Σ_m dy.
    for s in subjects() {
        let mut rng = Rng::new(21);
        for (m, k, n) in DENSE {
            let what = format!("linear M={m} K={k} N={n} on {}", s.label);
            let x = rng.vec(m * k, -1.0, 1.0);
            let w = rng.vec(k * n, -0.5, 0.5);
            let b = rng.vec(n, -1.0, 1.0);
            let t = rng.vec(m * n, -1.0, 1.0);
            let (x64, w64) = (|i: usize| x[i] as f64, |i: usize| w[i] as f64);
            let (mut want, mut scale) =
                product((m, n, k), |i, p| x64(i * k + p), |p, j| w64(p * n + j));

            let dev = s.dev();
            let mut g = Graph::inference(dev);
            let (xv, wv) = (
                g.constant(s.f32(&x, Shape::new(&[m, k]))),
                g.constant(s.f32(&w, Shape::new(&[k, n]))),
            );
            let y = g.linear(&xv, &wv, None).unwrap();
            assert_eq!(
                (y.shape(), y.t.dtype()),
                (Shape::new(&[m, n]), DType::F32),
                "{what}"
            );
            check_f32(
                &format!("{what} no bias"),
                &dev.download(&y.t).unwrap(),
                &want,
                &scale,
            );

            for i in 0..m * n {
                want[i] += b[i % n] as f64;
                scale[i] += (b[i % n] as f64).abs();
            }
            let mut g = Graph::train(dev);
            let xv = g.param(0, &s.f32(&x, Shape::new(&[m, k])));
            let wv = g.param(1, &s.f32(&w, Shape::new(&[k, n])));
            let bv = g.param(2, &s.f32(&b, Shape::new(&[n])));
            let y = g.linear(&xv, &wv, Some(&bv)).unwrap();
            let yv = dev.download(&y.t).unwrap();
            check_f32(&format!("{what} forward"), &yv, &want, &scale);
            let tv = g.constant(s.f32(&t, Shape::new(&[m, n])));
            let loss = g.mse(&y, &tv).unwrap();
            let grads = g.backward(&loss, 3).unwrap();
            let got = |i: usize| dev.download(grads.by_param[i].as_ref().unwrap()).unwrap();

            let dy: Vec<f64> = (0..m * n)
                .map(|i| 2.0 * (yv[i] as f64 - t[i] as f64) / (m * n) as f64)
                .collect();
            let (want, scale) = product((m, k, n), |i, p| dy[i * n + p], |p, j| w64(j * n + p));
            check_f32(&format!("{what} dx"), &got(0), &want, &scale);
            let (want, scale) = product((k, n, m), |i, p| x64(p * k + i), |p, j| dy[p * n + j]);
            check_f32(&format!("{what} dw"), &got(1), &want, &scale);
            let (want, scale) = product((1, n, m), |_, _| 1.0, |p, j| dy[p * n + j]);
            check_f32(&format!("{what} db"), &got(2), &want, &scale);
        }
    }
}

#[test]
fn linear_gradients_match_finite_differences() {
    let mut rng = Rng::new(22);
    for (m, k, n) in [(1, 7, 5), (2, 5, 3), (3, 4, 6)] {
        let inputs = [
            (Shape::new(&[m, k]), rng.vec(m * k, -1.0, 1.0)),
            (Shape::new(&[k, n]), rng.vec(k * n, -1.0, 1.0)),
            (Shape::new(&[n]), rng.vec(n, -1.0, 1.0)),
        ];
        grad_check(
            &format!("linear M={m} K={k} N={n}"),
            &inputs,
            |g, v| g.linear(&v[0], &v[1], Some(&v[2])),
            40,
            1e-2,
            1e-3,
            1e-4,
        );
    }
}

#[test]
fn linear_rejects_mismatched_shapes() {
    for s in subjects() {
        let dev = s.dev();
        let mut g = Graph::inference(dev);
        let v = |dims: &[usize]| g.constant(dev.zeros(Shape::new(dims), DType::F32).unwrap());
        let (x, w, w_bad, b, b_bad, x3) = (
            v(&[2, 3]),
            v(&[3, 5]),
            v(&[4, 5]),
            v(&[5]),
            v(&[4]),
            v(&[2, 3, 1]),
        );
        let e = format!("{:#}", g.linear(&x, &w_bad, None).unwrap_err());
        assert!(e.contains("disagree on K"), "{}: {e}", s.label);
        let e = format!("{:#}", g.linear(&x, &w, Some(&b_bad)).unwrap_err());
        assert!(e.contains("bias must be [5]"), "{}: {e}", s.label);
        assert!(
            g.linear(&x3, &w, None).is_err(),
            "{}: x not a matrix",
            s.label
        );
        assert!(g.linear(&x, &w, Some(&b)).is_ok(), "{}", s.label);
    }
}
