//! A whole ImgX UNet training step — recycling forward without a tape, the
//! recorded forward, CE + Dice, backward, AdamW — on the emulated GPU
//! (or a real one with VOXDIFF_TEST_DEVICE=cuda) against the CPU backend:
//! the same loss, gradients and updated parameters within the tolerance of
//! the GPU's activation dtype.

mod common;
mod gpu_support;

use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::diffusion::seg::DiffusionConfig;
use voxdiff::model::TimeConditioning;
use voxdiff::pipeline::seg_model::{ModelConfig, ModelKind, SegModel};
use voxdiff::tensor::{DType, Shape};
use voxdiff::train::Optimizer;

struct StepResult {
    loss: f32,
    grads: Vec<Vec<f32>>,
    params_after: Vec<Vec<f32>>,
}

fn step(b: &dyn Backend, kind: ModelKind) -> StepResult {
    let classes = 3;
    let cfg = ModelConfig {
        kind,
        channels: vec![8, 16],
        time_conditioning: TimeConditioning::Film,
        init_seed: 5,
    };
    let model = SegModel::new(b, &cfg, &DiffusionConfig::default(), classes).unwrap();
    let dims = [5, 6, 7];
    let n: usize = dims.iter().product();
    let mut rng = common::Rng::new(21);
    let image: Vec<f32> = rng.vec(n, 0.0, 1.0);
    let labels: Vec<f32> = (0..n).map(|i| ((i / 7 + i % 3) % classes) as f32).collect();
    let sh = Shape::ndhwc(1, dims[0], dims[1], dims[2], 1);
    let image = b.upload(&image, sh, b.act_dtype()).unwrap();
    let labels = b.upload(&labels, sh, DType::F32).unwrap();
    let mask = b.one_hot(&labels, classes, 1.0, 0.0).unwrap();
    let mut g = Graph::train(b);
    let loss = model.loss(&mut g, &image, &mask, 1, 9, 0).unwrap();
    let grads = g.backward(&loss, model.ps.len()).unwrap();
    let mut opt = Optimizer::new(b, &model.ps, voxdiff::ops::AdamW::default()).unwrap();
    opt.update(b, &model.ps, &grads, LR).unwrap();
    StepResult {
        loss: b.download(&loss.t).unwrap()[0],
        grads: grads
            .by_param
            .iter()
            .map(|g| {
                b.download(g.as_ref().expect("every parameter has a gradient"))
                    .unwrap()
            })
            .collect(),
        params_after: model
            .ps
            .entries
            .iter()
            .map(|e| b.download(&e.t).unwrap())
            .collect(),
    }
}

/// ‖a − b‖ / ‖b‖ (b the CPU reference); NaN anywhere fails.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert!(a.iter().all(|v| v.is_finite()), "non-finite GPU value");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    (num / sq(b).max(1e-30)).sqrt()
}

fn sq(v: &[f32]) -> f64 {
    v.iter().map(|y| (*y as f64).powi(2)).sum()
}

const LR: f32 = 1e-3;

/// f32 activations: every gradient and updated parameter tensor within `tol`
/// relative L2 of the CPU's.
fn compare_f32(kind: ModelKind, tol: f64) {
    let cpu = step(&CpuBackend::new(), kind);
    let got = step(
        &GpuBackend::with_act_dtype(gpu_support::device(), DType::F32),
        kind,
    );
    assert!(
        ((got.loss - cpu.loss) / cpu.loss).abs() as f64 <= tol,
        "loss {} vs cpu {}",
        got.loss,
        cpu.loss
    );
    for (i, (g, c)) in got.grads.iter().zip(&cpu.grads).enumerate() {
        let e = rel_l2(g, c);
        assert!(
            e <= tol,
            "{kind:?}: gradient of parameter {i}: relative error {e:.2e}"
        );
    }
    for (i, (p, c)) in got.params_after.iter().zip(&cpu.params_after).enumerate() {
        let e = rel_l2(p, c);
        assert!(
            e <= tol,
            "{kind:?}: parameter {i} after AdamW: relative error {e:.2e}"
        );
    }
}

/// bf16 activations round every stored activation to 8 bits of mantissa, so
/// gradients that are small differences of large terms (a norm's offset, say)
/// move by more than their own size. The checks therefore scale with what
/// bf16 can deliver:
/// - the loss to 1e-2 relative;
/// - the whole gradient (all parameters as one vector) to `tol` relative L2;
/// - each tensor's error to `tol` of the larger of its own norm and its
///   share of the whole gradient's norm (‖g‖ · sqrt(numel / total));
/// - after the first AdamW step (≈ p − lr·sign(g)), every parameter within
///   2·lr of the CPU's (a sign flip of a near-zero gradient element) and at
///   most 5 % of the elements differing by more than lr/100.
fn compare_bf16(kind: ModelKind, tol: f64) {
    let cpu = step(&CpuBackend::new(), kind);
    let got = step(
        &GpuBackend::with_act_dtype(gpu_support::device(), DType::BF16),
        kind,
    );
    assert!(
        ((got.loss - cpu.loss) / cpu.loss).abs() <= 1e-2,
        "loss {} vs cpu {}",
        got.loss,
        cpu.loss
    );
    let all_g: Vec<f32> = got.grads.concat();
    let all_c: Vec<f32> = cpu.grads.concat();
    let e = rel_l2(&all_g, &all_c);
    assert!(e <= tol, "{kind:?}: whole gradient: relative error {e:.2e}");
    let total = all_c.len() as f64;
    let norm = sq(&all_c).sqrt();
    for (i, (g, c)) in got.grads.iter().zip(&cpu.grads).enumerate() {
        let err = rel_l2(g, c) * sq(c).sqrt();
        let scale = sq(c).sqrt().max(norm * (c.len() as f64 / total).sqrt());
        assert!(
            err <= tol * scale,
            "{kind:?}: gradient of parameter {i}: error {err:.2e} vs scale {scale:.2e}"
        );
    }
    let (mut far, mut n) = (0usize, 0usize);
    for (i, (p, c)) in got.params_after.iter().zip(&cpu.params_after).enumerate() {
        for (a, b) in p.iter().zip(c) {
            let d = (a - b).abs();
            assert!(
                d <= 2.0 * LR * 1.001 + 1e-6,
                "{kind:?}: parameter {i} after AdamW differs by {d}"
            );
            far += (d > LR / 100.0) as usize;
            n += 1;
        }
    }
    assert!(
        far as f64 <= 0.05 * n as f64,
        "{kind:?}: {far} of {n} parameters moved differently"
    );
}

#[test]
fn diffusion_step_matches_the_cpu_in_f32() {
    compare_f32(ModelKind::Diffusion, 1e-4);
}

#[test]
fn supervised_step_matches_the_cpu_in_f32() {
    compare_f32(ModelKind::Unet, 1e-4);
}

#[test]
fn diffusion_step_matches_the_cpu_in_bf16() {
    compare_bf16(ModelKind::Diffusion, 5e-2);
}

#[test]
fn supervised_step_matches_the_cpu_in_bf16() {
    compare_bf16(ModelKind::Unet, 5e-2);
}
