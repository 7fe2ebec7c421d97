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
use voxdiff::backend::Backend;
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
    let mut opt = Optimizer::new(b, &model.ps, voxdiff::backend::AdamW::default()).unwrap();
    opt.update(b, &model.ps, &grads, 1e-3).unwrap();
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
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn compare(kind: ModelKind, act: DType, tol: f64) {
    let cpu = step(&CpuBackend::new(), kind);
    let gpu = GpuBackend::with_act_dtype(gpu_support::device(), act);
    let got = step(&gpu, kind);
    assert!(
        ((got.loss - cpu.loss) / cpu.loss).abs() as f64 <= tol,
        "{kind:?} {act:?}: loss {} vs cpu {}",
        got.loss,
        cpu.loss
    );
    for (i, (g, c)) in got.grads.iter().zip(&cpu.grads).enumerate() {
        let e = rel_l2(g, c);
        assert!(
            e <= tol,
            "{kind:?} {act:?}: gradient of parameter {i}: relative error {e:.2e}"
        );
    }
    for (i, (p, c)) in got.params_after.iter().zip(&cpu.params_after).enumerate() {
        let e = rel_l2(p, c);
        assert!(
            e <= tol,
            "{kind:?} {act:?}: parameter {i} after AdamW: relative error {e:.2e}"
        );
    }
}

#[test]
fn diffusion_step_matches_the_cpu_in_f32() {
    compare(ModelKind::Diffusion, DType::F32, 1e-4);
}

#[test]
fn diffusion_step_matches_the_cpu_in_bf16() {
    compare(ModelKind::Diffusion, DType::BF16, 5e-2);
}

#[test]
fn supervised_step_matches_the_cpu_in_bf16() {
    compare(ModelKind::Unet, DType::BF16, 5e-2);
}
