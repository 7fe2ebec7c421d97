//! Helpers of the loss-family tests (tests/gpu_loss.rs): the backends, random
//! segmentation data, comparisons relative to the size of the terms, and one
//! check per op that runs it on the device and on the CPU backend and compares
//! every element.
#![allow(dead_code)]

use crate::common::Rng;
use crate::gpu_support::device;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

pub const CLASSES: [usize; 4] = [2, 3, 5, 17];
pub const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

pub fn gpu(dtype: DType) -> GpuBackend {
    GpuBackend::with_act_dtype(device(), dtype)
}

/// Relative tolerance of results stored in `dtype`.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::BF16 => 1e-2,
    }
}

/// Odd NDHWC shapes with `c` channels: N = 1 and 2, several blocks of rows.
pub fn shapes(c: usize) -> [Shape; 3] {
    [
        Shape::ndhwc(1, 3, 5, 7, c),
        Shape::ndhwc(2, 1, 9, 11, c),
        Shape::ndhwc(2, 5, 7, 9, c),
    ]
}

/// `data` on the device in `dtype`, and the values as stored there.
pub fn put(g: &GpuBackend, data: &[f32], shape: Shape, dtype: DType) -> (Tensor, Vec<f32>) {
    let t = g.upload(data, shape, dtype).unwrap();
    let stored = g.download(&t).unwrap();
    (t, stored)
}

pub fn on_cpu(c: &CpuBackend, data: &[f32], shape: Shape) -> Tensor {
    c.upload(data, shape, DType::F32).unwrap()
}

/// |got − want| ≤ rtol·(|want| + scale[i]) for every element; NaN never passes.
pub fn assert_near(what: &str, got: &[f32], want: &[f32], scale: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(scale.len(), want.len(), "{what}: scale length");
    for i in 0..got.len() {
        assert!(got[i].is_finite(), "{what}: element {i} is {}", got[i]);
        let err = (got[i] as f64 - want[i] as f64).abs();
        let lim = rtol * (want[i].abs() as f64 + scale[i]);
        assert!(
            err <= lim,
            "{what}: element {i}: got {}, want {} (|err| {err:.3e} > {lim:.3e})",
            got[i],
            want[i]
        );
    }
}

pub fn rel(what: &str, got: &[f32], want: &[f32], rtol: f64) {
    assert_near(what, got, want, &vec![0.0; want.len()], rtol);
}

pub fn scalar(b: &dyn Backend, t: &Tensor) -> f32 {
    assert_eq!(t.shape(), Shape::scalar(), "a [1] scalar");
    assert_eq!(t.dtype(), DType::F32);
    b.download(t).unwrap()[0]
}

/// Random class ids drawn from `allowed`.
pub fn labels(rng: &mut Rng, rows: usize, allowed: &[usize]) -> Vec<f32> {
    (0..rows)
        .map(|_| allowed[rng.below(allowed.len())] as f32)
        .collect()
}

/// Random soft targets: positive rows summing to 1.
pub fn soft_targets(rng: &mut Rng, rows: usize, c: usize) -> Vec<f32> {
    let mut t = rng.vec(rows * c, 0.05, 1.0);
    for r in t.chunks_mut(c) {
        let s: f32 = r.iter().sum();
        r.iter_mut().for_each(|v| *v /= s);
    }
    t
}

pub fn one_hot_host(ids: &[f32], c: usize) -> Vec<f32> {
    let mut t = vec![0.0; ids.len() * c];
    for (r, &l) in ids.iter().enumerate() {
        t[r * c + l as usize] = 1.0;
    }
    t
}

pub fn check_softmax(g: &GpuBackend, c_b: &CpuBackend, rng: &mut Rng, shape: Shape, dtype: DType) {
    let c = shape.c();
    let what = format!("softmax {shape} {}", dtype.name());
    let (x, xs) = put(g, &rng.vec(shape.numel(), -6.0, 6.0), shape, dtype);
    let p = g.softmax(&x).unwrap();
    assert_eq!((p.shape(), p.dtype()), (shape, dtype), "{what}");
    let got = g.download(&p).unwrap();
    let want = c_b
        .download(&c_b.softmax(&on_cpu(c_b, &xs, shape)).unwrap())
        .unwrap();
    rel(&what, &got, &want, tol(dtype));

    let (dp, dps) = put(g, &rng.vec(shape.numel(), -2.0, 2.0), shape, dtype);
    let dx = g.download(&g.softmax_bwd(&dp, &p).unwrap()).unwrap();
    let want = c_b
        .download(
            &c_b.softmax_bwd(&on_cpu(c_b, &dps, shape), &on_cpu(c_b, &got, shape))
                .unwrap(),
        )
        .unwrap();
    // dx = p·(dp − Σ dp·p): relative to p·(|dp| + Σ|dp·p|).
    let mut scale = vec![0.0; got.len()];
    for (r, sr) in scale.chunks_mut(c).enumerate() {
        let row = r * c..(r + 1) * c;
        let dot: f64 = row.clone().map(|i| (got[i] * dps[i]).abs() as f64).sum();
        for (k, i) in row.enumerate() {
            sr[k] = got[i] as f64 * (dps[i].abs() as f64 + dot);
        }
    }
    assert_near(&format!("{what} backward"), &dx, &want, &scale, tol(dtype));
}

pub fn check_ce(
    g: &GpuBackend,
    c_b: &CpuBackend,
    rng: &mut Rng,
    shape: Shape,
    dtype: DType,
    soft: bool,
) {
    let c = shape.c();
    let rows = shape.numel() / c;
    let what = format!(
        "cross_entropy {shape} {} {}",
        dtype.name(),
        if soft { "soft" } else { "one-hot" }
    );
    let t_host = if soft {
        soft_targets(rng, rows, c)
    } else {
        one_hot_host(&labels(rng, rows, &(0..c).collect::<Vec<_>>()), c)
    };
    let (x, xs) = put(g, &rng.vec(shape.numel(), -5.0, 5.0), shape, dtype);
    let (t, ts) = put(g, &t_host, shape, dtype);
    let (xc, tc) = (on_cpu(c_b, &xs, shape), on_cpu(c_b, &ts, shape));
    let got = scalar(g, &g.cross_entropy(&x, &t).unwrap());
    let want = scalar(c_b, &c_b.cross_entropy(&xc, &tc).unwrap());
    rel(&what, &[got], &[want], 1e-5);

    let dl = rng.uniform(0.5, 2.0);
    let dloss = g.upload(&[dl], Shape::scalar(), DType::F32).unwrap();
    let dx = g
        .download(&g.cross_entropy_bwd(&x, &t, &dloss).unwrap())
        .unwrap();
    let dloss_c = on_cpu(c_b, &[dl], Shape::scalar());
    let want = c_b
        .download(&c_b.cross_entropy_bwd(&xc, &tc, &dloss_c).unwrap())
        .unwrap();
    // k·(p − t): relative to k·(p + t), p ≤ 1.
    let k = dl as f64 / rows as f64;
    let scale: Vec<f64> = ts.iter().map(|&tv| k * (1.0 + tv as f64)).collect();
    assert_near(&format!("{what} backward"), &dx, &want, &scale, tol(dtype));
}

/// Dice on the device and the CPU: probabilities from random logits, a
/// one-hot target whose sample n uses the classes `present[n]` only.
pub fn check_dice(
    g: &GpuBackend,
    c_b: &CpuBackend,
    rng: &mut Rng,
    shape: Shape,
    dtype: DType,
    present: &[Vec<usize>],
) {
    let (n, c, v) = (shape.n(), shape.c(), shape.voxels());
    let what = format!("dice {shape} {} present {present:?}", dtype.name());
    let mut t_host = Vec::with_capacity(shape.numel());
    for s in present.iter().take(n) {
        t_host.extend(one_hot_host(&labels(rng, v, s), c));
    }
    let logits = rng.vec(shape.numel(), -3.0, 3.0);
    let p_host = c_b
        .download(&c_b.softmax(&on_cpu(c_b, &logits, shape)).unwrap())
        .unwrap();
    let (p, ps) = put(g, &p_host, shape, dtype);
    let (t, ts) = put(g, &t_host, shape, dtype);
    let (pc, tc) = (on_cpu(c_b, &ps, shape), on_cpu(c_b, &ts, shape));

    let (loss, sums) = g.dice_loss(&p, &t).unwrap();
    let (loss_c, sums_c) = c_b.dice_loss(&pc, &tc).unwrap();
    assert_eq!(sums.shape(), Shape::new(&[n, c, 3]), "{what}");
    assert_eq!(sums.dtype(), DType::F32, "{what}");
    let got_sums = g.download(&sums).unwrap();
    let want_sums = c_b.download(&sums_c).unwrap();
    rel(&format!("{what} sums"), &got_sums, &want_sums, 1e-5);
    let (got, want) = (scalar(g, &loss), scalar(c_b, &loss_c));
    rel(&format!("{what} loss"), &[got], &[want], 1e-5);
    let any = (0..n).any(|i| present[i].iter().any(|&k| k >= 1));
    if !any {
        assert_eq!(got, 0.0, "{what}: no foreground class present");
    }

    let dl = rng.uniform(0.5, 2.0);
    let dloss = g.upload(&[dl], Shape::scalar(), DType::F32).unwrap();
    let dp = g
        .download(&g.dice_loss_bwd(&p, &t, &sums, &dloss).unwrap())
        .unwrap();
    let want = c_b
        .download(
            &c_b.dice_loss_bwd(&pc, &tc, &sums_c, &on_cpu(c_b, &[dl], Shape::scalar()))
                .unwrap(),
        )
        .unwrap();
    rel(&format!("{what} backward"), &dp, &want, tol(dtype));
    if !any {
        assert!(dp.iter().all(|&x| x == 0.0), "{what}: zero gradient");
    }
}

pub fn check_mse(g: &GpuBackend, c_b: &CpuBackend, rng: &mut Rng, shape: Shape, dtype: DType) {
    let what = format!("mse {shape} {}", dtype.name());
    let n = shape.numel();
    let (a, av) = put(g, &rng.vec(n, -2.0, 2.0), shape, dtype);
    let (b, bv) = put(g, &rng.vec(n, -2.0, 2.0), shape, dtype);
    let (ac, bc) = (on_cpu(c_b, &av, shape), on_cpu(c_b, &bv, shape));
    let got = scalar(g, &g.mse(&a, &b).unwrap());
    let want = scalar(c_b, &c_b.mse(&ac, &bc).unwrap());
    rel(&what, &[got], &[want], 1e-5);

    let dl = rng.uniform(0.5, 2.0);
    let dloss = g.upload(&[dl], Shape::scalar(), DType::F32).unwrap();
    let da = g.mse_bwd(&a, &b, &dloss).unwrap();
    assert_eq!((da.shape(), da.dtype()), (shape, dtype));
    let da = g.download(&da).unwrap();
    let want = c_b
        .download(
            &c_b.mse_bwd(&ac, &bc, &on_cpu(c_b, &[dl], Shape::scalar()))
                .unwrap(),
        )
        .unwrap();
    let k = 2.0 * dl as f64 / n as f64;
    let scale: Vec<f64> = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| k * (x.abs() + y.abs()) as f64)
        .collect();
    assert_near(&format!("{what} backward"), &da, &want, &scale, tol(dtype));
}
