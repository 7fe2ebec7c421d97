//! Weights packed as bf16 for the conv kernels are kept until the weight
//! changes (src/backend/gpu/conv/operands.rs): a second convolution with the
//! same weight and layout packs nothing, a write to another tensor keeps the
//! packing, and a write to the weight, a fill of it or an AdamW step makes
//! the next convolution use the new values (bitwise those of a backend that
//! never packed the old ones).

mod common;

use common::Rng;
use std::sync::Arc;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::plan::{PlanDevice, PlanEvent};
use voxdiff::backend::gpu::registry::Kernel;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::optim::{AdamW, ParamSlot};
use voxdiff::ops::ConvSpec;
use voxdiff::tensor::{DType, Shape, Tensor};

const X: [usize; 5] = [1, 4, 6, 6, 8];
const W: [usize; 5] = [3, 3, 3, 8, 16];

fn bits(b: &dyn Backend, t: &Tensor) -> Vec<u32> {
    b.download(t).unwrap().iter().map(|v| v.to_bits()).collect()
}

/// conv3d of `x` and `w` on a fresh bf16 Emu backend (nothing packed before).
fn fresh_conv(x: &[f32], w: &[f32]) -> Vec<u32> {
    let b = GpuBackend::with_act_dtype(Arc::new(Emu::new()), DType::BF16);
    let xt = b.upload(x, Shape::new(&X), DType::BF16).unwrap();
    let wt = b.upload(w, Shape::new(&W), DType::F32).unwrap();
    let y = b.conv3d(&xt, &wt, None, ConvSpec::K3).unwrap();
    bits(&b, &y)
}

#[test]
fn a_changed_weight_is_packed_again() {
    let mut rng = Rng::new(5);
    let x = rng.vec(X.iter().product(), -1.0, 1.0);
    let w1 = rng.vec(W.iter().product(), -0.2, 0.2);
    let w2 = rng.vec(W.iter().product(), -0.2, 0.2);
    let b = GpuBackend::with_act_dtype(Arc::new(Emu::new()), DType::BF16);
    let xt = b.upload(&x, Shape::new(&X), DType::BF16).unwrap();
    let wt = b.upload(&w1, Shape::new(&W), DType::F32).unwrap();
    let conv = || bits(&b, &b.conv3d(&xt, &wt, None, ConvSpec::K3).unwrap());

    let y1 = conv();
    assert_eq!(y1, fresh_conv(&x, &w1));
    b.write(&wt, &w2).unwrap();
    let y2 = conv();
    assert_ne!(y1, y2);
    assert_eq!(y2, fresh_conv(&x, &w2), "after write");

    b.fill(&wt, 0.0).unwrap();
    assert_eq!(conv(), fresh_conv(&x, &vec![0.0; w1.len()]), "after fill");

    // An AdamW step with gradient 1 moves every weight by -lr (the first
    // step's update is m̂ / √v̂ = 1).
    b.write(&wt, &w1).unwrap();
    assert_eq!(conv(), y1);
    let grad = b
        .upload(&vec![1.0; w1.len()], Shape::new(&W), DType::F32)
        .unwrap();
    let m = b.zeros(Shape::new(&W), DType::F32).unwrap();
    let v = b.zeros(Shape::new(&W), DType::F32).unwrap();
    let slot = ParamSlot {
        param: &wt,
        grad: &grad,
        m: &m,
        v: &v,
        decay: false,
    };
    let hp = AdamW {
        max_grad_norm: None,
        ..AdamW::default()
    };
    b.adamw_step(&[slot], &hp, 0.01, 1).unwrap();
    let updated = b.download(&wt).unwrap();
    assert!(updated
        .iter()
        .zip(&w1)
        .all(|(u, w)| (u - (w - 0.01)).abs() < 1e-4));
    assert_eq!(conv(), fresh_conv(&x, &updated), "after adamw_step");
}

fn pack_launches(dev: &PlanDevice) -> usize {
    dev.recording()
        .events
        .iter()
        .filter(|e| matches!(e, PlanEvent::Launch(l) if l.kernel == Kernel::Conv3dPackWeights))
        .count()
}

#[test]
fn a_weight_is_packed_once_per_layout_until_it_changes() {
    let dev = Arc::new(PlanDevice::new());
    let b = GpuBackend::with_act_dtype(dev.clone(), DType::BF16);
    let x = b.zeros(Shape::new(&X), DType::BF16).unwrap();
    let w = b.zeros(Shape::new(&W), DType::F32).unwrap();
    let other = b.zeros(Shape::new(&W), DType::F32).unwrap();
    let y = b.conv3d(&x, &w, None, ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 1);
    b.fill(&other, 1.0).unwrap();
    b.conv3d(&x, &w, None, ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 1, "same weight, same layout");
    // The data gradient reads the weight transposed: a layout of its own,
    // packed once too.
    b.conv3d_dgrad(&y, &w, x.shape(), ConvSpec::K3).unwrap();
    b.conv3d_dgrad(&y, &w, x.shape(), ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 2);
    b.fill(&w, 1.0).unwrap();
    b.conv3d(&x, &w, None, ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 3, "the weight changed");
}

const W2: [usize; 5] = [3, 3, 3, 16, 12];

/// y = conv(x, w), y2 = conv(y, w2), then the data gradients through w2 and
/// w, on `b`; every result's bits.
fn two_layers(b: &GpuBackend, x: &Tensor, w: &Tensor, w2: &Tensor) -> Vec<Vec<u32>> {
    let y = b.conv3d(x, w, None, ConvSpec::K3).unwrap();
    let y2 = b.conv3d(&y, w2, None, ConvSpec::K3).unwrap();
    let dy = b.conv3d_dgrad(&y2, w2, y.shape(), ConvSpec::K3).unwrap();
    let dx = b.conv3d_dgrad(&dy, w, x.shape(), ConvSpec::K3).unwrap();
    [y, y2, dy, dx].iter().map(|t| bits(b, t)).collect()
}

#[test]
fn one_launch_packs_a_layout_of_every_trained_weight() {
    let dev = Arc::new(PlanDevice::new());
    let b = GpuBackend::with_act_dtype(dev.clone(), DType::BF16);
    let x = b.zeros(Shape::new(&X), DType::BF16).unwrap();
    let w = b.zeros(Shape::new(&W), DType::F32).unwrap();
    let w2 = b.zeros(Shape::new(&W2), DType::F32).unwrap();
    let bias = b.zeros(Shape::new(&[16]), DType::F32).unwrap();
    let other = b.zeros(Shape::new(&W), DType::F32).unwrap();
    // A bias is no conv weight: passed over.
    b.train_weights(&[&w, &bias, &w2]);
    let y = b.conv3d(&x, &w, None, ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 1);
    let y2 = b.conv3d(&y, &w2, None, ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 1, "w2's forward layout came with w's");
    let dy = b.conv3d_dgrad(&y2, &w2, y.shape(), ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 2, "the transposed layouts: one launch");
    b.conv3d_dgrad(&dy, &w, x.shape(), ConvSpec::K3).unwrap();
    assert_eq!(
        pack_launches(&dev),
        2,
        "w's transposed layout came with w2's"
    );
    // A weight nobody trains is packed on its own, once.
    b.conv3d(&x, &other, None, ConvSpec::K3).unwrap();
    b.conv3d(&x, &other, None, ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 3);
    // A new step (the weights may have changed): each layout again, one launch each.
    b.begin_step().unwrap();
    b.conv3d_dgrad(&y2, &w2, y.shape(), ConvSpec::K3).unwrap();
    b.conv3d(&x, &w, None, ConvSpec::K3).unwrap();
    b.conv3d_dgrad(&dy, &w, x.shape(), ConvSpec::K3).unwrap();
    b.conv3d(&y, &w2, None, ConvSpec::K3).unwrap();
    assert_eq!(pack_launches(&dev), 5);
    // The backend does not keep a trained weight alive.
    let gone = Arc::downgrade(w2.buffer());
    drop((w2, y2));
    b.begin_step().unwrap();
    b.conv3d(&x, &w, None, ConvSpec::K3).unwrap();
    assert!(gone.upgrade().is_none());
    assert_eq!(pack_launches(&dev), 6);
}

#[test]
fn packing_together_gives_the_bits_of_packing_alone() {
    let mut rng = Rng::new(9);
    let x = rng.vec(X.iter().product(), -1.0, 1.0);
    let w = rng.vec(W.iter().product(), -0.2, 0.2);
    let w2 = rng.vec(W2.iter().product(), -0.2, 0.2);
    let run = |together: bool| {
        let b = GpuBackend::with_act_dtype(Arc::new(Emu::new()), DType::BF16);
        let xt = b.upload(&x, Shape::new(&X), DType::BF16).unwrap();
        let wt = b.upload(&w, Shape::new(&W), DType::F32).unwrap();
        let w2t = b.upload(&w2, Shape::new(&W2), DType::F32).unwrap();
        if together {
            b.train_weights(&[&w2t, &wt]);
        }
        two_layers(&b, &xt, &wt, &w2t)
    };
    let alone = run(false);
    assert!(alone.iter().flatten().all(|&v| !f32::from_bits(v).is_nan()));
    assert_eq!(run(true), alone);
}
