//! The loss family (softmax, argmax, one-hot, cross-entropy, soft Dice, MSE,
//! scaled_to_logits, lincomb of loss scalars; forward and backward) on the device under
//! test (Emu, or a GPU with VOXDIFF_TEST_DEVICE=cuda) against the CPU backend.
//!
//! Inputs are random at odd extents and class counts 2, 3, 5, 17 (and 1, 33,
//! 300 where the kernel tiles channels), with f32 and bf16 activations; the
//! CPU reference gets the values as stored on the device (bf16-rounded). Every
//! output element is compared; Emu poisons allocations with NaN, which the
//! comparison rejects, so an element a kernel never writes fails. Tolerances:
//! f32 activations 1e-5 and bf16 activations 1e-2 relative, where a result
//! that is a difference of larger terms is compared relative to the size of
//! those terms; losses and Dice sums are f32 and always held to 1e-5.

mod common;
mod gpu_support;
mod loss_support;

use common::{cpu, Rng};
use loss_support::*;
use std::sync::Arc;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::{GpuBackend, PENDING_LABEL_CHECKS};
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

// --------------------------------------------------------------- row ops

#[test]
fn softmax_and_backward_match_the_cpu() {
    let c_b = cpu();
    let mut rng = Rng::new(1);
    for dtype in DTYPES {
        let g = gpu(dtype);
        for c in [1, 2, 3, 5, 17, 33] {
            for shape in shapes(c) {
                check_softmax(&g, &c_b, &mut rng, shape, dtype);
            }
        }
    }
}

fn check_argmax(g: &GpuBackend, c_b: &CpuBackend, rng: &mut Rng, shape: Shape, dtype: DType) {
    let (x, xs) = put(g, &rng.vec(shape.numel(), -3.0, 3.0), shape, dtype);
    let y = g.argmax_c(&x).unwrap();
    assert_eq!((y.shape(), y.dtype()), (shape.with_c(1), dtype));
    let got = g.download(&y).unwrap();
    let want = c_b
        .download(&c_b.argmax_c(&on_cpu(c_b, &xs, shape)).unwrap())
        .unwrap();
    assert_eq!(got, want, "argmax {shape} {}", dtype.name());
}

#[test]
fn argmax_matches_the_cpu_first_maximum_wins_and_nan_propagates() {
    let c_b = cpu();
    let mut rng = Rng::new(2);
    for dtype in DTYPES {
        let g = gpu(dtype);
        for c in CLASSES {
            for shape in shapes(c) {
                check_argmax(&g, &c_b, &mut rng, shape, dtype);
            }
        }
        // Ties go to the first maximum; a NaN anywhere in a row gives NaN.
        let rows = [
            [1.0, 3.0, 3.0],
            [5.0, 5.0, 5.0],
            [-1.0, -2.0, -1.0],
            [0.0, f32::NAN, 9.0],
            [f32::NAN, 1.0, 2.0],
        ];
        let shape = Shape::ndhwc(1, 1, 1, rows.len(), 3);
        let x = g.upload(rows.as_flattened(), shape, dtype).unwrap();
        let got = g.download(&g.argmax_c(&x).unwrap()).unwrap();
        assert_eq!(&got[..3], &[1.0, 0.0, 0.0], "{}", dtype.name());
        assert!(
            got[3].is_nan() && got[4].is_nan(),
            "{}: {got:?}",
            dtype.name()
        );
    }
}

#[test]
fn one_hot_matches_the_cpu_for_every_label_and_output_dtype() {
    let c_b = cpu();
    let mut rng = Rng::new(3);
    for out in DTYPES {
        let g = gpu(out);
        for label_dtype in DTYPES {
            for c in CLASSES {
                for shape in shapes(1) {
                    let ids = labels(&mut rng, shape.numel(), &(0..c).collect::<Vec<_>>());
                    let (l, _) = put(&g, &ids, shape, label_dtype);
                    let (on, off) = (0.75, -0.25);
                    let y = g.one_hot(&l, c, on, off).unwrap();
                    assert_eq!((y.shape(), y.dtype()), (shape.with_c(c), out));
                    let want = c_b
                        .download(&c_b.one_hot(&on_cpu(&c_b, &ids, shape), c, on, off).unwrap())
                        .unwrap();
                    assert_eq!(
                        g.download(&y).unwrap(),
                        want,
                        "one_hot {shape} c={c} labels {} out {}",
                        label_dtype.name(),
                        out.name()
                    );
                }
            }
        }
    }
}

#[test]
fn one_hot_rejects_ids_outside_the_classes() {
    let shape = Shape::ndhwc(1, 3, 5, 7, 1);
    for dtype in DTYPES {
        let g = gpu(dtype);
        for (bad, at) in [(5.0, 17), (-1.0, 0), (2.5, 104), (f32::NAN, 50), (7.0, 3)] {
            let mut ids = vec![1.0; shape.numel()];
            ids[at] = bad;
            if bad == 7.0 {
                ids[80] = 9.0; // the first offending voxel is reported
            }
            let l = g.upload(&ids, shape, dtype).unwrap();
            // The launch does not wait: the bad id is reported by the next
            // synchronising call (here the download of the result).
            let y = g.one_hot(&l, 5, 1.0, 0.0).unwrap();
            let err = format!("{:#}", g.download(&y).unwrap_err());
            assert!(
                err.contains(&format!("label {bad} at voxel {at} ")) && err.contains("0..5"),
                "{}: {err}",
                dtype.name()
            );
            // The device stays usable and a good call succeeds afterwards.
            ids[at] = 4.0;
            ids[80] = 4.0;
            let l = g.upload(&ids, shape, dtype).unwrap();
            let y = g.one_hot(&l, 5, 1.0, 0.0).unwrap();
            g.download(&y).unwrap();
        }
        // Without a download, synchronize reports it; and pending checks are
        // read after PENDING_LABEL_CHECKS calls at the latest.
        let mut ids = vec![1.0; shape.numel()];
        ids[9] = 6.0;
        let bad = g.upload(&ids, shape, dtype).unwrap();
        g.one_hot(&bad, 5, 1.0, 0.0).unwrap();
        let err = format!("{:#}", g.synchronize().unwrap_err());
        assert!(err.contains("label 6 at voxel 9 "), "{err}");
        g.synchronize().unwrap();
        let good = g.upload(&vec![1.0; shape.numel()], shape, dtype).unwrap();
        g.one_hot(&bad, 5, 1.0, 0.0).unwrap();
        let mut reported = None;
        for call in 1..PENDING_LABEL_CHECKS {
            if let Err(e) = g.one_hot(&good, 5, 1.0, 0.0) {
                reported = Some((call, format!("{e:#}")));
                break;
            }
        }
        let (call, err) = reported.expect("the pending check was never read");
        assert_eq!(call, PENDING_LABEL_CHECKS - 1);
        assert!(err.contains("label 6 at voxel 9 "), "{err}");
        let l = g
            .upload(&[0.0; 6], Shape::ndhwc(1, 1, 2, 3, 1), dtype)
            .unwrap();
        assert!(g.one_hot(&l, 0, 1.0, 0.0).is_err(), "zero classes");
        let l2 = g
            .upload(&[0.0; 6], Shape::ndhwc(1, 1, 1, 3, 2), dtype)
            .unwrap();
        assert!(g.one_hot(&l2, 3, 1.0, 0.0).is_err(), "two-channel labels");
    }
}

// --------------------------------------------------------- cross-entropy

#[test]
fn cross_entropy_and_backward_match_the_cpu() {
    let c_b = cpu();
    let mut rng = Rng::new(4);
    for dtype in DTYPES {
        let g = gpu(dtype);
        for c in CLASSES {
            for shape in shapes(c) {
                for soft in [false, true] {
                    check_ce(&g, &c_b, &mut rng, shape, dtype, soft);
                }
            }
        }
    }
}

// ------------------------------------------------------------ soft Dice

#[test]
fn dice_matches_the_cpu_with_absent_classes() {
    let c_b = cpu();
    let mut rng = Rng::new(5);
    for dtype in DTYPES {
        let g = gpu(dtype);
        for c in CLASSES {
            let all: Vec<usize> = (0..c).collect();
            // Sample 0: every class; sample 1: background and every other class.
            let some: Vec<usize> = (0..c).step_by(2).collect();
            for shape in shapes(c) {
                check_dice(
                    &g,
                    &c_b,
                    &mut rng,
                    shape,
                    dtype,
                    &[all.clone(), some.clone()],
                );
                // A foreground class absent from sample 0 only.
                check_dice(&g, &c_b, &mut rng, shape, dtype, &[vec![0], all.clone()]);
            }
        }
        // Many voxels per sample (several stage-1 blocks), 33 and 300 classes
        // (channel tiles of 256).
        check_dice(
            &g,
            &c_b,
            &mut rng,
            Shape::ndhwc(2, 9, 11, 13, 5),
            dtype,
            &[vec![0, 1, 3], vec![0, 4]],
        );
        let c33: Vec<usize> = (0..33).collect();
        check_dice(
            &g,
            &c_b,
            &mut rng,
            Shape::ndhwc(1, 3, 5, 7, 33),
            dtype,
            &[c33],
        );
        let c300: Vec<usize> = (0..300).step_by(7).collect();
        check_dice(
            &g,
            &c_b,
            &mut rng,
            Shape::ndhwc(2, 1, 3, 5, 300),
            dtype,
            &[c300.clone(), c300],
        );
    }
}

#[test]
fn dice_without_any_foreground_is_zero_with_zero_gradient() {
    let c_b = cpu();
    let mut rng = Rng::new(6);
    for dtype in DTYPES {
        let g = gpu(dtype);
        for c in CLASSES {
            check_dice(
                &g,
                &c_b,
                &mut rng,
                Shape::ndhwc(2, 1, 9, 11, c),
                dtype,
                &[vec![0], vec![0]],
            );
        }
    }
}

// ------------------------------------------------------------------ MSE

#[test]
fn mse_and_backward_match_the_cpu() {
    let c_b = cpu();
    let mut rng = Rng::new(7);
    for dtype in DTYPES {
        let g = gpu(dtype);
        for shape in [
            Shape::new(&[1]),
            Shape::new(&[7]),
            Shape::new(&[70_001]),
            Shape::ndhwc(1, 3, 5, 7, 3),
            Shape::ndhwc(2, 1, 9, 11, 17),
        ] {
            check_mse(&g, &c_b, &mut rng, shape, dtype);
        }
    }
}

// -------------------------------------------------------------- scalars

/// Losses are weighted on the device by `lincomb` of `[1]` scalars.
#[test]
fn lincomb_of_scalars_matches_f64_and_the_cpu() {
    let g = gpu(DType::BF16);
    let c_b = cpu();
    let mut rng = Rng::new(9);
    for terms in 1..=4 {
        let vals = rng.vec(terms, -3.0, 3.0);
        let coefs = rng.vec(terms, -2.0, 2.0);
        let ts: Vec<Tensor> = vals
            .iter()
            .map(|&v| g.upload(&[v], Shape::scalar(), DType::F32).unwrap())
            .collect();
        let args: Vec<(f32, &Tensor)> = coefs.iter().copied().zip(&ts).collect();
        let got = scalar(&g, &g.lincomb(&args).unwrap());
        let want: f64 = vals
            .iter()
            .zip(&coefs)
            .map(|(&v, &c)| v as f64 * c as f64)
            .sum();
        let mag: f64 = vals
            .iter()
            .zip(&coefs)
            .map(|(&v, &c)| (v * c).abs() as f64)
            .sum();
        assert!(
            (got as f64 - want).abs() <= 1e-6 * mag,
            "{terms} terms: got {got}, want {want}"
        );
        let cts: Vec<Tensor> = vals
            .iter()
            .map(|&v| on_cpu(&c_b, &[v], Shape::scalar()))
            .collect();
        let cargs: Vec<(f32, &Tensor)> = coefs.iter().copied().zip(&cts).collect();
        let want_cpu = scalar(&c_b, &c_b.lincomb(&cargs).unwrap());
        assert!(
            (got - want_cpu).abs() as f64 <= 1e-6 * mag,
            "{terms} terms vs cpu"
        );
    }
    assert!(g.lincomb(&[]).is_err(), "no terms");
    let one = g.upload(&[1.0], Shape::scalar(), DType::F32).unwrap();
    let v = g.upload(&[1.0, 2.0], Shape::new(&[2]), DType::F32).unwrap();
    assert!(
        g.lincomb(&[(1.0, &one), (1.0, &v)]).is_err(),
        "not a scalar"
    );
}

// ------------------------------------------------------------ arguments

#[test]
fn bad_arguments_are_errors_naming_the_argument() {
    let g = gpu(DType::F32);
    let a = g.zeros(Shape::ndhwc(1, 2, 3, 4, 3), DType::F32).unwrap();
    let b = g.zeros(Shape::ndhwc(1, 2, 3, 4, 5), DType::F32).unwrap();
    let h = g.zeros(Shape::ndhwc(1, 2, 3, 4, 3), DType::BF16).unwrap();
    let dl = g.upload(&[1.0], Shape::scalar(), DType::F32).unwrap();
    let dl2 = g.zeros(Shape::new(&[2]), DType::F32).unwrap();
    let msg = |r: anyhow::Result<Tensor>| format!("{:#}", r.expect_err("an error"));
    assert!(msg(g.cross_entropy(&a, &b)).contains("target has shape"));
    assert!(msg(g.cross_entropy(&a, &h)).contains("one dtype"));
    let empty = g.zeros(Shape::new(&[6, 0]), DType::F32).unwrap();
    assert!(msg(g.softmax(&empty)).contains("empty last dim"));
    assert!(msg(g.cross_entropy_bwd(&a, &a, &dl2)).contains("dloss"));
    assert!(msg(g.mse_bwd(&a, &a, &dl2)).contains("dloss"));
    assert!(msg(g.mse(&a, &b)).contains("shape"));
    assert!(msg(g.softmax_bwd(&a, &b)).contains("shape"));
    let sums = g.zeros(Shape::new(&[1, 5, 3]), DType::F32).unwrap();
    assert!(msg(g.dice_loss_bwd(&a, &a, &sums, &dl)).contains("sums"));
    assert!(g.dice_loss(&a, &b).is_err());
}

// ---------------------------------------------------- shuffled fibers

/// The reductions (block sums through shared memory and barriers) and the row
/// kernels give bit-identical results when a block's fibers resume in shuffled
/// orders, and still match the CPU.
#[test]
fn shuffled_fiber_order_gives_identical_results() {
    let c_b = cpu();
    let shape = Shape::ndhwc(2, 3, 5, 7, 5);
    let run = |g: &GpuBackend| -> Vec<Vec<f32>> {
        let mut rng = Rng::new(10);
        let x = g
            .upload(&rng.vec(shape.numel(), -3.0, 3.0), shape, g.act_dtype())
            .unwrap();
        let ids = labels(&mut rng, shape.numel() / 5, &[0, 1, 3]);
        let l = g.upload(&ids, shape.with_c(1), DType::F32).unwrap();
        let t = g.one_hot(&l, 5, 1.0, 0.0).unwrap();
        let p = g.softmax(&x).unwrap();
        let dl = g.upload(&[0.8], Shape::scalar(), DType::F32).unwrap();
        let (dice, sums) = g.dice_loss(&p, &t).unwrap();
        let outs = [
            p.clone(),
            g.argmax_c(&x).unwrap(),
            t.clone(),
            g.cross_entropy(&x, &t).unwrap(),
            g.cross_entropy_bwd(&x, &t, &dl).unwrap(),
            dice,
            sums.clone(),
            g.dice_loss_bwd(&p, &t, &sums, &dl).unwrap(),
            g.mse(&x, &p).unwrap(),
            g.mse_bwd(&x, &p, &dl).unwrap(),
            g.softmax_bwd(&x, &p).unwrap(),
        ];
        outs.iter().map(|o| g.download(o).unwrap()).collect()
    };
    for dtype in DTYPES {
        let plain = run(&GpuBackend::with_act_dtype(
            Arc::new(Emu::with_shuffle(None)),
            dtype,
        ));
        for seed in [1u64, 0xC0FFEE, 977] {
            let shuffled =
                GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(Some(seed))), dtype);
            assert_eq!(run(&shuffled), plain, "seed {seed} {}", dtype.name());
        }
        // And the shuffled run is still right.
        let g = GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(Some(5))), dtype);
        let mut rng = Rng::new(11);
        check_dice(
            &g,
            &c_b,
            &mut rng,
            shape,
            dtype,
            &[vec![0, 2], vec![0, 1, 4]],
        );
        check_ce(&g, &c_b, &mut rng, shape, dtype, false);
        check_mse(&g, &c_b, &mut rng, shape, dtype);
        check_softmax(&g, &c_b, &mut rng, shape, dtype);
    }
}
