//! The tape end to end: UNet output shapes at odd sizes, and gradients of
//! whole losses (supervised and diffusion) against finite differences.

mod common;

use common::{cpu, Rng};
use voxdiff::autograd::Graph;
use voxdiff::backend::prelude::*;
use voxdiff::diffusion::seg::{DiffusionConfig, Recycle};
use voxdiff::model::{ImgxUnet, TimeConditioning, UnetConfig};
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::pipeline::seg_model::{ModelConfig, ModelKind, SegModel};
use voxdiff::tensor::{DType, Shape};

fn tiny(b: &dyn Backend, kind: ModelKind, tc: TimeConditioning, classes: usize) -> SegModel {
    tiny_with(b, kind, tc, classes, Recycle::Off)
}

fn tiny_with(
    b: &dyn Backend,
    kind: ModelKind,
    tc: TimeConditioning,
    classes: usize,
    recycle: Recycle,
) -> SegModel {
    let cfg = ModelConfig {
        kind,
        channels: vec![4, 8],
        time_conditioning: tc,
        init_seed: 3,
    };
    let diff = DiffusionConfig {
        recycle,
        ..DiffusionConfig::default()
    };
    SegModel::new(b, &cfg, &diff, classes).unwrap()
}

#[test]
fn output_shape_equals_input_shape_at_odd_sizes() {
    let b = cpu();
    let mut ps = ParamStore::new(0);
    // The paper's network (K = 16) at reduced width keeps the same topology.
    let mut cfg = UnetConfig::imgx(16, TimeConditioning::Film);
    cfg.channels = vec![4, 8, 8, 8];
    let net = ImgxUnet::new(&mut ParamBuilder::new(&mut ps, &b), cfg).unwrap();
    for dims in [[15, 16, 17], [29, 30, 31]] {
        let x = b
            .randn(
                Shape::ndhwc(1, dims[0], dims[1], dims[2], 17),
                DType::F32,
                1,
                0,
            )
            .unwrap();
        let mut g = Graph::inference(&b);
        let x = g.constant(x);
        let y = net.forward(&mut g, &ps, &x, Some(&[2.0])).unwrap();
        assert_eq!(y.shape(), Shape::ndhwc(1, dims[0], dims[1], dims[2], 16));
        assert!(b.download(&y.t).unwrap().iter().all(|v| v.is_finite()));
    }
}

/// Loss of `model` on fixed data as a function of parameter `p`'s values.
fn loss_with(
    b: &dyn Backend,
    model: &SegModel,
    p: usize,
    vals: &[f32],
    image: &voxdiff::tensor::Tensor,
    mask: &voxdiff::tensor::Tensor,
) -> f64 {
    let saved = b.download(model.ps.get(voxdiff::nn::ParamId(p))).unwrap();
    b.write(model.ps.get(voxdiff::nn::ParamId(p)), vals)
        .unwrap();
    let mut g = Graph::train(b);
    let l = model.loss(&mut g, image, mask, 2, 7, 0).unwrap();
    let v = b.download(&l.t).unwrap()[0] as f64;
    b.write(model.ps.get(voxdiff::nn::ParamId(p)), &saved)
        .unwrap();
    v
}

/// Gradients of the whole loss on a batch of `batch` random examples.
fn check_model_gradients(kind: ModelKind, tc: TimeConditioning, batch: usize, recycle: Recycle) {
    let b = cpu();
    let classes = 3;
    let model = tiny_with(&b, kind, tc, classes, recycle);
    let dims = [5, 6, 7];
    let mut rng = Rng::new(11);
    let n = batch * dims.iter().product::<usize>();
    let image = b
        .upload(
            &rng.vec(n, -1.0, 1.0),
            Shape::ndhwc(batch, 5, 6, 7, 1),
            DType::F32,
        )
        .unwrap();
    let labels: Vec<f32> = (0..n).map(|_| rng.below(classes) as f32).collect();
    let labels = b
        .upload(&labels, Shape::ndhwc(batch, 5, 6, 7, 1), DType::F32)
        .unwrap();
    let mask = b.one_hot(&labels, classes, 1.0, 0.0).unwrap();

    let mut g = Graph::train(&b);
    let loss = model.loss(&mut g, &image, &mask, 2, 7, 0).unwrap();
    let grads = g.backward(&loss, model.ps.len()).unwrap();
    let mut checked = 0;
    for (i, e) in model.ps.entries.iter().enumerate() {
        let Some(gt) = &grads.by_param[i] else {
            panic!("parameter {} received no gradient", e.name)
        };
        let analytic = b.download(gt).unwrap();
        let x = b.download(&e.t).unwrap();
        // Every parameter tensor is probed at a few coordinates.
        common::fd_check(
            &e.name,
            &x,
            &analytic,
            |v| loss_with(&b, &model, i, v, &image, &mask),
            3,
            1e-2,
            3e-2,
            2e-4,
        );
        checked += 1;
    }
    assert_eq!(checked, model.ps.len());
}

#[test]
fn supervised_unet_gradients_match_finite_differences() {
    check_model_gradients(ModelKind::Unet, TimeConditioning::None, 1, Recycle::Off);
}

#[test]
fn diffusion_unet_gradients_match_finite_differences() {
    check_model_gradients(
        ModelKind::Diffusion,
        TimeConditioning::Film,
        1,
        Recycle::Off,
    );
}

#[test]
fn diffusion_gradients_match_finite_differences_for_a_batch_of_two() {
    // Every example of the batch carries the step t. (With recycling the
    // re-noised prediction is a constant of the loss by design, so finite
    // differences, which move it too, would not match; the recycling pass on
    // a batch is checked by tests/diffusion_sampler.rs.)
    check_model_gradients(
        ModelKind::Diffusion,
        TimeConditioning::Film,
        2,
        Recycle::Off,
    );
}

#[test]
fn faithful_time_input_gets_exactly_zero_gradient() {
    // The reference adds the time vector before an instance norm, which
    // removes it: its projection's gradient must vanish (up to rounding).
    let b = cpu();
    let model = tiny(&b, ModelKind::Diffusion, TimeConditioning::Faithful, 3);
    let n = 5 * 6 * 7;
    let mut rng = Rng::new(5);
    let image = b
        .upload(
            &rng.vec(n, -1.0, 1.0),
            Shape::ndhwc(1, 5, 6, 7, 1),
            DType::F32,
        )
        .unwrap();
    let labels: Vec<f32> = (0..n).map(|_| rng.below(3) as f32).collect();
    let labels = b
        .upload(&labels, Shape::ndhwc(1, 5, 6, 7, 1), DType::F32)
        .unwrap();
    let mask = b.one_hot(&labels, 3, 1.0, 0.0).unwrap();
    let mut g = Graph::train(&b);
    let loss = model.loss(&mut g, &image, &mask, 1, 1, 0).unwrap();
    let grads = g.backward(&loss, model.ps.len()).unwrap();
    let mut seen = 0;
    for (i, e) in model.ps.entries.iter().enumerate() {
        if e.name.ends_with(".time.w") {
            let gw = b.download(grads.by_param[i].as_ref().unwrap()).unwrap();
            let max = gw.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(max < 1e-5, "{}: |grad| up to {max}", e.name);
            seen += 1;
        }
    }
    assert!(seen > 0);
}
