//! The layout kernels (kernels/layout.cu) on the device under test against the
//! CPU backend: concat/slice on and off the 8-channel vector path, crop and
//! pad boxes at odd offsets, upsampling and its backward, max pooling in ceil
//! mode with windows clipped at the edge and ties (the first maximal voxel in
//! scan order takes the gradient), f32 and bf16, N = 1 and 2. Outputs are
//! poisoned by the emulator and every element is compared; copies and maxima
//! must be exact.

mod common;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use gpu_vs_cpu::Pair;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// Channel counts off (1, 3, 5, 17, 33) and on (8, 24) the vector path.
const CHANNELS: [usize; 7] = [1, 3, 5, 17, 33, 8, 24];

/// Bit-exact comparison (data movement and maxima compute nothing).
fn exact(p: &Pair, what: &str, g: &Tensor, c: &Tensor) {
    assert_eq!(g.shape(), c.shape(), "{what}: shape");
    assert_eq!(g.dtype(), p.dtype, "{what}: dtype");
    let gv = p.gpu.download(g).unwrap();
    let cv = p.cpu.download(c).unwrap();
    for (i, (a, b)) in gv.iter().zip(&cv).enumerate() {
        assert!(
            a.is_finite() && a == b,
            "{what}: element {i}: got {a}, want {b}"
        );
    }
}

#[test]
fn concat_and_slice_match_cpu() {
    for dtype in DTYPES {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(1);
        for (n, sp) in [(1, [3, 5, 7]), (2, [1, 9, 11])] {
            // Mixed parts (scalar copies) and all-multiple-of-8 parts (vector copies).
            for parts in [vec![1, 3, 5], vec![17, 33], vec![8, 24, 16], vec![8, 3, 8]] {
                let ts: Vec<_> = parts
                    .iter()
                    .map(|&c| p.act(&mut rng, Shape::ndhwc(n, sp[0], sp[1], sp[2], c), -2.0, 2.0))
                    .collect();
                let g: Vec<&Tensor> = ts.iter().map(|t| &t.0).collect();
                let c: Vec<&Tensor> = ts.iter().map(|t| &t.1).collect();
                let what = format!("{} concat {parts:?} n={n} {sp:?}", dtype.name());
                let (yg, yc) = (p.gpu.concat_c(&g).unwrap(), p.cpu.concat_c(&c).unwrap());
                exact(&p, &what, &yg, &yc);
                let total: usize = parts.iter().sum();
                for (start, len) in [(0, 1), (1, total - 2), (total - 1, 1), (0, total), (8, 8)] {
                    if start + len > total || len == 0 {
                        continue;
                    }
                    let what = format!("{} slice [{start}, +{len}) of {total}", dtype.name());
                    let sg = p.gpu.slice_c(&yg, start, len).unwrap();
                    let sc = p.cpu.slice_c(&yc, start, len).unwrap();
                    exact(&p, &what, &sg, &sc);
                }
            }
        }
    }
}

#[test]
fn crop_and_pad_match_cpu() {
    for dtype in DTYPES {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(2);
        for c in CHANNELS {
            for (n, sp) in [(1, [3, 5, 7]), (2, [1, 9, 11])] {
                let (xg, xc) = p.act(&mut rng, Shape::ndhwc(n, sp[0], sp[1], sp[2], c), -2.0, 2.0);
                // A box touching the far corner, one strictly inside, and the whole volume.
                let boxes = [
                    ([sp[0] - 1, 1, 2], [1, sp[1] - 1, sp[2] - 2]),
                    ([0, 2, 3], [sp[0], 2, 3]),
                    ([0, 0, 0], sp),
                ];
                for (origin, size) in boxes {
                    let what = format!(
                        "{} c={c} n={n} {sp:?} box {origin:?}+{size:?}",
                        dtype.name()
                    );
                    let yg = p.gpu.crop(&xg, origin, size).unwrap();
                    let yc = p.cpu.crop(&xc, origin, size).unwrap();
                    exact(&p, &format!("{what}: crop"), &yg, &yc);
                    // pad puts the crop back into zeros of the full extents.
                    let pg = p.gpu.pad(&yg, origin, sp).unwrap();
                    let pc = p.cpu.pad(&yc, origin, sp).unwrap();
                    exact(&p, &format!("{what}: pad"), &pg, &pc);
                }
                let what = format!(
                    "{} c={c} n={n} {sp:?}: pad into a larger volume",
                    dtype.name()
                );
                let full = [sp[0] + 2, sp[1] + 3, sp[2] + 1];
                let (pg, pc) = (
                    p.gpu.pad(&xg, [1, 2, 0], full).unwrap(),
                    p.cpu.pad(&xc, [1, 2, 0], full).unwrap(),
                );
                exact(&p, &what, &pg, &pc);
            }
        }
    }
}

#[test]
fn upsample_and_its_backward_match_cpu() {
    for dtype in DTYPES {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(3);
        for c in CHANNELS {
            for (n, sp) in [(1, [3, 5, 7]), (2, [1, 4, 3])] {
                for factor in [[2, 2, 2], [1, 2, 3], [3, 1, 1]] {
                    let what = format!("{} c={c} n={n} {sp:?} factor {factor:?}", dtype.name());
                    let (xg, xc) =
                        p.act(&mut rng, Shape::ndhwc(n, sp[0], sp[1], sp[2], c), -2.0, 2.0);
                    let (yg, yc) = (
                        p.gpu.upsample(&xg, factor).unwrap(),
                        p.cpu.upsample(&xc, factor).unwrap(),
                    );
                    exact(&p, &format!("{what}: upsample"), &yg, &yc);
                    let (dyg, dyc) = p.act(&mut rng, yg.shape(), -1.0, 1.0);
                    let dxg = p.gpu.upsample_bwd(&dyg, factor).unwrap();
                    let dxc = p.cpu.upsample_bwd(&dyc, factor).unwrap();
                    // Sums of up to 8 terms of magnitude ≤ 1.
                    p.check(&format!("{what}: upsample_bwd"), &dxg, &dxc, p.rtol());
                }
            }
        }
    }
}

/// Max pooling in ceil mode over extents that are not multiples of the
/// window (clipped windows), with values drawn from a few levels so windows
/// hold ties: the gradient must go to the first maximal voxel in scan order.
#[test]
fn maxpool_and_its_backward_match_cpu_with_clipped_windows_and_ties() {
    for dtype in DTYPES {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(4);
        for c in CHANNELS {
            for (n, sp) in [(1, [3, 5, 7]), (2, [1, 9, 11])] {
                for window in [[2, 2, 2], [1, 2, 2], [3, 2, 4]] {
                    let what = format!("{} c={c} n={n} {sp:?} window {window:?}", dtype.name());
                    let shape = Shape::ndhwc(n, sp[0], sp[1], sp[2], c);
                    // Four levels: most windows of 4 or more voxels hold ties.
                    let x: Vec<f32> = (0..shape.numel())
                        .map(|_| (rng.below(4) as f32) * 0.5 - 0.75)
                        .collect();
                    let (xg, xc) = p.act_from(&x, shape);
                    let (yg, yc) = (
                        p.gpu.maxpool(&xg, window).unwrap(),
                        p.cpu.maxpool(&xc, window).unwrap(),
                    );
                    let out: Vec<usize> = (0..3).map(|i| sp[i].div_ceil(window[i])).collect();
                    assert_eq!(
                        yg.shape().spatial(),
                        [out[0], out[1], out[2]],
                        "{what}: ceil mode"
                    );
                    exact(&p, &format!("{what}: maxpool"), &yg, &yc);
                    let (dyg, dyc) = p.act(&mut rng, yg.shape(), 0.5, 1.5);
                    let dxg = p.gpu.maxpool_bwd(&dyg, &xg, window).unwrap();
                    let dxc = p.cpu.maxpool_bwd(&dyc, &xc, window).unwrap();
                    exact(&p, &format!("{what}: maxpool_bwd"), &dxg, &dxc);
                    // Exactly one voxel per window and channel carries a gradient.
                    let nonzero = p
                        .gpu
                        .download(&dxg)
                        .unwrap()
                        .iter()
                        .filter(|&&v| v != 0.0)
                        .count();
                    assert_eq!(nonzero, yg.numel(), "{what}: one gradient per window");
                }
            }
        }
    }
}

#[test]
fn rejects_bad_arguments() {
    let p = Pair::new(DType::BF16);
    let b = &p.gpu;
    let x = b.zeros(Shape::ndhwc(1, 3, 4, 5, 2), DType::BF16).unwrap();
    let other = b.zeros(Shape::ndhwc(1, 3, 4, 4, 2), DType::BF16).unwrap();
    let f32x = b.zeros(Shape::ndhwc(1, 3, 4, 5, 2), DType::F32).unwrap();
    let msg = |r: anyhow::Result<Tensor>| format!("{:#}", r.expect_err("an error"));
    assert!(msg(b.concat_c(&[&x, &other])).contains("tensor 1"));
    assert!(msg(b.concat_c(&[&x, &f32x])).contains("dtype"));
    assert!(msg(b.slice_c(&x, 1, 2)).contains("outside"));
    assert!(msg(b.crop(&x, [1, 0, 0], [3, 1, 1])).contains("crop"));
    assert!(msg(b.pad(&x, [0, 1, 0], [3, 4, 5])).contains("pad"));
    assert!(msg(b.upsample_bwd(&x, [2, 1, 1])).contains("multiples"));
    assert!(msg(b.maxpool(&x, [0, 1, 1])).contains("window"));
    let dy = b.zeros(Shape::ndhwc(1, 2, 2, 2, 2), DType::BF16).unwrap();
    assert!(msg(b.maxpool_bwd(&dy, &x, [2, 2, 2])).contains("pooled shape"));
}
