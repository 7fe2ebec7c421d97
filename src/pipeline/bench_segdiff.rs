//! `voxdiff bench --suite segdiff`: SegDiff 2D at `size`² on the chosen
//! device — one training step (batch 1: forward, backward, AdamW), one
//! denoising pass of a `samples`-member ensemble (the denoiser on a batch of
//! `samples` and its clamped x̂₀: a reverse step but for the step's few
//! pointwise updates), and, with `--full-ensemble`, a whole segmentation:
//! G(I) on the batch, then all T = 100 DDPM steps.
//!
//! Counted FLOPs (2 per multiply-add) from [`SegDiffNet::macs`], the
//! network's multiply-adds walked from its layers as built (convolutions,
//! linear maps, attention's two batched products; norms and pointwise ops
//! uncounted):
//! - training step: `2·(3·(G + D) − no_data_grad)` — the forward, and per
//!   layer a data and a weight gradient of the forward's size, except the
//!   data gradients of the layers whose input is a constant;
//! - denoising pass: `2·samples·D`; full ensemble: `2·samples·(G + T·D)`.
//!
//! Bytes: the parameters, their gradients and the two moments read and
//! written for the step (as `bench --step`); the weights read once per
//! denoiser pass for sampling — floors, not estimates of the traffic.
//!
//! Then the attention core `softmax(q kᵀ/√d) v` alone at each attention
//! level of the network at `size`² (batch 1, its heads and head width):
//! the fused op ([`crate::nn::flash_attention`]) and the composition it
//! replaces, forward and forward + backward, both charged the composition's
//! products — 4·T²·d per head forward, 8·T²·d more backward.

use super::bench::{time_it, BenchResult};
use super::segdiff_config::{SegDiffConfig, SegDiffInfer};
use super::segdiff_model::{Batch2d, SegDiffModel};
use super::train_loop::{StepKey, Trainable};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::model::SegDiffNetConfig;
use crate::nn::self_attention::{softmax_attention, Core};
use crate::ops::{AdamW, Bcast};
use crate::tensor::Shape;
use crate::train::Optimizer;
use anyhow::{bail, Result};

/// The network of the bench: `cpu` (the default configuration's) or
/// `monuseg` (the published one).
pub fn net_config(name: &str) -> Result<SegDiffNetConfig> {
    Ok(match name {
        "cpu" => SegDiffNetConfig::cpu(),
        "monuseg" => SegDiffNetConfig::monuseg(),
        other => bail!("--segdiff-net: {other:?} is not cpu or monuseg"),
    })
}

/// The suite's cases (see the module docs).
pub fn run(
    dev: &dyn Backend,
    net: &str,
    size: usize,
    samples: usize,
    full_ensemble: bool,
    reps: usize,
) -> Result<Vec<BenchResult>> {
    let cfg = SegDiffConfig {
        model: net_config(net)?,
        ..SegDiffConfig::default()
    };
    let model = SegDiffModel::new(dev, &cfg)?;
    let macs = model.net.macs(size, size);
    let (g_macs, d_macs) = (macs.condition as f64, macs.denoise as f64);
    let params = model.ps.count() as f64;
    let c = cfg.model.image_channels;
    let image = dev.download(&dev.randn(
        Shape::ndhwc(1, 1, size, size, c),
        crate::tensor::DType::F32,
        1,
        0,
    )?)?;
    let mask: Vec<f32> = (0..size * size)
        .map(|i| ((i / size) * 2 < size) as u8 as f32)
        .collect();
    let batch = Batch2d {
        size,
        images: image.clone(),
        masks: mask,
    };
    let label = |what: &str| format!("SegDiff {net} {size}² {what}");
    let mut out = Vec::new();

    let mut opt = Optimizer::new(dev, &model.ps, AdamW::default())?;
    let mut step = 0;
    let (median_ms, min_ms) = time_it(dev, 1, reps, || {
        let mut g = Graph::train(dev);
        let l = model.loss(&mut g, &batch, StepKey { seed: 0, step })?;
        let grads = g.backward(&l.loss, model.ps.len())?;
        opt.update(dev, &model.ps, &grads, 1e-5)?;
        step += 1;
        Ok(())
    })?;
    out.push(BenchResult {
        name: label("training step, batch 1"),
        median_ms,
        min_ms,
        flops: 2.0 * (3.0 * (g_macs + d_macs) - macs.no_data_grad as f64),
        bytes: params * 4.0 * 6.0,
    });

    // One denoising pass of the ensemble: ε̂ on the batch of N and x̂₀
    // clamped — the work of a reverse step but for its few pointwise
    // updates. No warm-up: a pass is seconds to minutes on a CPU.
    let n = samples;
    let rep: Vec<f32> = (0..n).flat_map(|_| image.iter().copied()).collect();
    let mut g0 = Graph::inference(dev);
    let img = g0.constant(dev.upload(&rep, Shape::ndhwc(n, 1, size, size, c), dev.act_dtype())?);
    let cond = model.net.condition(&mut g0, &model.ps, &img)?;
    let x_shape = Shape::ndhwc(n, 1, size, size, 1);
    let x = g0.constant(dev.randn(x_shape, dev.act_dtype(), 2, 0)?);
    let t = (model.schedule.len() - 1) as f32;
    let (median_ms, min_ms) = time_it(dev, 0, reps, || {
        let mut g = Graph::inference(dev);
        model.predict_x0(&mut g, &x, &cond, t, true).map(drop)
    })?;
    out.push(BenchResult {
        name: label(&format!("denoising pass, {n} samples")),
        median_ms,
        min_ms,
        flops: 2.0 * n as f64 * d_macs,
        bytes: params * 4.0,
    });

    if full_ensemble {
        let infer = SegDiffInfer {
            samples: n,
            ..SegDiffInfer::default()
        };
        let steps = model.schedule.len() as f64;
        let (median_ms, min_ms) = time_it(dev, 0, reps, || {
            model.sample_ensemble(dev, &image, size, &infer).map(drop)
        })?;
        out.push(BenchResult {
            name: label(&format!("ensemble, {n} samples × {steps} DDPM steps")),
            median_ms,
            min_ms,
            flops: 2.0 * n as f64 * (g_macs + steps * d_macs),
            bytes: params * 4.0 * steps,
        });
    }
    out.extend(attention_cases(dev, &cfg.model, size, reps, &label)?);
    Ok(out)
}

/// The attention levels of `net` at `size`²: (tokens T, heads, head width d).
pub fn attention_levels(net: &SegDiffNetConfig, size: usize) -> Vec<(usize, usize, usize)> {
    net.attention_ds
        .iter()
        .filter(|ds| {
            ds.is_power_of_two() && (ds.trailing_zeros() as usize) < net.channel_mult.len()
        })
        .map(|&ds| {
            let side = size.div_ceil(ds);
            let ch = net.channels * net.channel_mult[ds.trailing_zeros() as usize];
            (side * side, net.heads, ch / net.heads)
        })
        .collect()
}

/// The attention core at each level (module docs): fused and composed,
/// forward and forward + backward.
fn attention_cases(
    dev: &dyn Backend,
    net: &SegDiffNetConfig,
    size: usize,
    reps: usize,
    label: &dyn Fn(&str) -> String,
) -> Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    for (t, heads, d) in attention_levels(net, size) {
        let shape = Shape::new(&[heads, t, d]);
        let qkv: Vec<_> = (0..3)
            .map(|i| dev.randn(shape, dev.act_dtype(), 10 + i, 0))
            .collect::<Result<_>>()?;
        let fwd = (4 * heads * t * t * d) as f64;
        let bytes = (4 * heads * t * d * dev.act_dtype().size()) as f64;
        for (core, name) in [(Core::Fused, "fused"), (Core::Composed, "composed")] {
            let (median_ms, min_ms) = time_it(dev, 1, reps, || {
                let mut g = Graph::inference(dev);
                let v: Vec<Var> = qkv.iter().map(|x| g.constant(x.clone())).collect();
                softmax_attention(&mut g, &v[0], &v[1], &v[2], core).map(drop)
            })?;
            out.push(BenchResult {
                name: label(&format!("attention core {name} fwd, {heads}×{t}×{d}")),
                median_ms,
                min_ms,
                flops: fwd,
                bytes,
            });
            let (median_ms, min_ms) = time_it(dev, 1, reps, || {
                let mut g = Graph::train(dev);
                let v: Vec<Var> = qkv.iter().enumerate().map(|(i, x)| g.param(i, x)).collect();
                let o = softmax_attention(&mut g, &v[0], &v[1], &v[2], core)?;
                let l = g.reduce_sum(&o, Bcast::Scalar)?;
                g.backward(&l, 3).map(drop)
            })?;
            out.push(BenchResult {
                name: label(&format!("attention core {name} fwd + bwd, {heads}×{t}×{d}")),
                median_ms,
                min_ms,
                flops: 3.0 * fwd,
                bytes: 2.0 * bytes,
            });
        }
    }
    Ok(out)
}
