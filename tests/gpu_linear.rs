//! The dense-layer kernels (forward with and without bias, data gradient,
//! weight gradient with the bias gradient) on the device under test against
//! the CPU backend and f64 references, at sizes that are not tile multiples
//! (M = 1, 2, 3; K, N in 1, 5, 17, 33, 300). Outputs are poisoned by the device
//! allocator. Tolerance: |got − want| ≤ 1e-5·(|want| + Σ|terms|).

mod common;
mod gpu_support;

use common::Rng;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

/// Values and Σ|terms| of `c[i, j] = Σ_k a(i, k)·b(k, j)`.
fn matmul(
    rows: usize,
    cols: usize,
    depth: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; rows * cols];
    let mut s = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            for k in 0..depth {
                let t = a(i, k) as f64 * b(k, j) as f64;
                v[i * cols + j] += t;
                s[i * cols + j] += t.abs();
            }
        }
    }
    (v, s)
}

fn check(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        assert!(got[i].is_finite(), "{what}: element {i} is {}", got[i]);
        let err = (got[i] as f64 - want[i]).abs();
        let lim = 1e-5 * (want[i].abs() + scale[i]) + 1e-30;
        assert!(
            err <= lim,
            "{what}: element {i}: got {}, want {} (|err| {err:.3e} > {lim:.3e})",
            got[i],
            want[i]
        );
    }
}

#[test]
fn linear_forward_and_gradients_match_the_cpu_and_f64() {
    let gpu = gpu_support::backend();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(3);
    for &(m, k, n) in &[
        (1, 1, 1),
        (2, 17, 33),
        (1, 300, 5),
        (3, 33, 300),
        (2, 5, 17),
    ] {
        let what = format!("linear M={m} K={k} N={n}");
        let x = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(k * n, -0.5, 0.5);
        let b = rng.vec(n, -1.0, 1.0);
        let dy = rng.vec(m * n, -1.0, 1.0);
        let up = |be: &dyn Backend, v: &[f32], s: &[usize]| {
            be.upload(v, Shape::new(s), DType::F32).unwrap()
        };
        let (xt, wt, bt, dyt) = (
            up(&gpu, &x, &[m, k]),
            up(&gpu, &w, &[k, n]),
            up(&gpu, &b, &[n]),
            up(&gpu, &dy, &[m, n]),
        );
        let (cx, cw, cb, cdy) = (
            up(&cpu, &x, &[m, k]),
            up(&cpu, &w, &[k, n]),
            up(&cpu, &b, &[n]),
            up(&cpu, &dy, &[m, n]),
        );
        // Against the f64 values and against the CPU backend's.
        let both = |op: &str, got: &Tensor, cpu_out: &Tensor, want: &[f64], scale: &[f64]| {
            assert_eq!(got.shape(), cpu_out.shape(), "{what} {op}: shape");
            let got = gpu.download(got).unwrap();
            check(&format!("{what} {op} vs f64"), &got, want, scale);
            let by_cpu: Vec<f64> = cpu
                .download(cpu_out)
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            check(&format!("{what} {op} vs cpu"), &got, &by_cpu, scale);
        };

        let (mut want, mut scale) = matmul(m, n, k, |i, p| x[i * k + p], |p, j| w[p * n + j]);
        let y = gpu.linear(&xt, &wt, None).unwrap();
        assert_eq!(y.shape(), Shape::new(&[m, n]));
        both(
            "forward",
            &y,
            &cpu.linear(&cx, &cw, None).unwrap(),
            &want,
            &scale,
        );
        for i in 0..m * n {
            want[i] += b[i % n] as f64;
            scale[i] += (b[i % n] as f64).abs();
        }
        let y = gpu.linear(&xt, &wt, Some(&bt)).unwrap();
        both(
            "forward + bias",
            &y,
            &cpu.linear(&cx, &cw, Some(&cb)).unwrap(),
            &want,
            &scale,
        );

        let (want, scale) = matmul(m, k, n, |i, p| dy[i * n + p], |p, j| w[j * n + p]);
        let dx = gpu.linear_dgrad(&dyt, &wt).unwrap();
        both(
            "dgrad",
            &dx,
            &cpu.linear_dgrad(&cdy, &cw).unwrap(),
            &want,
            &scale,
        );

        let (want, scale) = matmul(k, n, m, |i, p| x[p * k + i], |p, j| dy[p * n + j]);
        let (dw, db) = gpu.linear_wgrad(&xt, &dyt, true).unwrap();
        let (cdw, cdb) = cpu.linear_wgrad(&cx, &cdy, true).unwrap();
        both("wgrad", &dw, &cdw, &want, &scale);
        let (want, scale) = matmul(1, n, m, |_, _| 1.0, |p, j| dy[p * n + j]);
        let (db, cdb) = (db.expect("bias gradient"), cdb.expect("CPU bias gradient"));
        both("bias grad", &db, &cdb, &want, &scale);
        let (_, none) = gpu.linear_wgrad(&xt, &dyt, false).unwrap();
        assert!(none.is_none(), "{what}: no bias gradient asked for");
    }
}

#[test]
fn linear_rejects_bad_arguments() {
    let gpu = gpu_support::backend();
    let x = gpu.zeros(Shape::new(&[2, 5]), DType::F32).unwrap();
    let w = gpu.zeros(Shape::new(&[4, 3]), DType::F32).unwrap();
    let err = gpu.linear(&x, &w, None).unwrap_err();
    assert!(format!("{err:#}").contains("disagree on K"), "{err:#}");
    let xb = gpu.zeros(Shape::new(&[2, 4]), DType::BF16).unwrap();
    let err = gpu.linear(&xb, &w, None).unwrap_err();
    assert!(format!("{err:#}").contains("f32 matrix"), "{err:#}");
}
