//! The parameter builder and store: hierarchical names from prefixes,
//! duplicate names refused, frozen parameters kept out of the gradient and
//! the optimiser.

mod common;

use common::{cpu, Rng};
use voxdiff::autograd::Graph;
use voxdiff::backend::prelude::*;
use voxdiff::model::{ImgxUnet, TimeConditioning, UnetConfig};
use voxdiff::nn::{Init, ParamBuilder, ParamStore};
use voxdiff::ops::AdamW;
use voxdiff::tensor::{DType, Shape};
use voxdiff::train::Optimizer;

fn small_unet(ps: &mut ParamStore, dev: &dyn Backend) -> ImgxUnet {
    let mut cfg = UnetConfig::imgx(3, TimeConditioning::Film);
    cfg.channels = vec![4, 8];
    ImgxUnet::new(&mut ParamBuilder::new(ps, dev), cfg).unwrap()
}

#[test]
fn names_follow_the_prefixes_the_model_pushes() {
    let dev = cpu();
    let mut ps = ParamStore::new(0);
    small_unet(&mut ps, &dev);
    for name in [
        "stem.conv.w",
        "stem.norm.scale",
        "stem.block.conv1.w",
        "stem.block.time_scale.w",
        "down.0.conv.w",
        "down.1.block.norm2.offset",
        "up.0.deconv.b",
        "up.1.block.conv2.w",
        "head.w",
        "head.b",
    ] {
        assert!(ps.find(name).is_some(), "no parameter {name}");
    }
    assert!(ps
        .entries
        .iter()
        .all(|e| !e.name.starts_with('.') && !e.name.contains("..")));

    let mut pb = ParamBuilder::new(&mut ps, &dev);
    let mut level = pb.pp("extra");
    level.add("w", Shape::new(&[2]), Init::Ones).unwrap();
    let e = level.add("w", Shape::new(&[2]), Init::Ones).unwrap_err();
    assert!(e.to_string().contains("extra.w is defined twice"), "{e}");
}

#[test]
fn frozen_parameters_get_no_gradient_and_stay_fixed() {
    let dev = cpu();
    let mut ps = ParamStore::new(1);
    let net = small_unet(&mut ps, &dev);
    let frozen = ps.freeze("down.");
    assert!(frozen > 0);
    let before: Vec<Vec<f32>> = ps
        .entries
        .iter()
        .map(|e| dev.download(&e.t).unwrap())
        .collect();

    let mut rng = Rng::new(2);
    let sh = Shape::ndhwc(1, 4, 5, 6, 4);
    let x = dev
        .upload(&rng.vec(sh.numel(), -1.0, 1.0), sh, DType::F32)
        .unwrap();
    let target = dev
        .upload(
            &rng.vec(sh.numel() / 4 * 3, -1.0, 1.0),
            sh.with_c(3),
            DType::F32,
        )
        .unwrap();
    let mut g = Graph::train(&dev);
    let xv = g.constant(x);
    let y = net.forward(&mut g, &ps, &xv, Some(&[1.0])).unwrap();
    let tv = g.constant(target);
    let loss = g.mse(&y, &tv).unwrap();
    let grads = g.backward(&loss, ps.len()).unwrap();
    let mut with_grad = 0;
    for (i, e) in ps.entries.iter().enumerate() {
        if e.frozen {
            assert!(
                grads.by_param[i].is_none(),
                "{} is frozen but got a gradient",
                e.name
            );
        } else if grads.by_param[i].is_some() {
            with_grad += 1;
        }
    }
    // Every trainable convolution weight is on the path to the loss.
    let conv_weights = ps
        .entries
        .iter()
        .filter(|e| !e.frozen && e.name.ends_with("conv1.w"))
        .count();
    assert!(with_grad >= conv_weights && conv_weights > 0);
    let mut opt = Optimizer::new(&dev, &ps, AdamW::default()).unwrap();
    opt.update(&dev, &ps, &grads, 1e-2).unwrap();
    let mut moved = 0;
    for (e, b) in ps.entries.iter().zip(&before) {
        let a = dev.download(&e.t).unwrap();
        if e.frozen {
            assert_eq!(&a, b, "{} is frozen but changed", e.name);
        } else if &a != b {
            moved += 1;
        }
    }
    assert!(moved > 0, "no trainable parameter moved");
}
