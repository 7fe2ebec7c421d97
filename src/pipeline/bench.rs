//! `voxdiff bench`: time the hot ops through the Backend trait on any device
//! and report time, achieved FLOP/s and bytes/s. Every figure printed was
//! measured in this run (median of the timed repetitions after a warm-up).

use super::seg_model::{volume_shape, ModelConfig, SegModel};
use crate::autograd::Graph;
use crate::backend::Backend;
use crate::diffusion::seg::{DiffusionConfig, Recycle};
use crate::ops::{Act, AdamW, ConvSpec, NormArgs};
use crate::tensor::{DType, Shape, Tensor};
use crate::train::Optimizer;
use anyhow::Result;
use std::time::Instant;

/// One measured case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub name: String,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Floating-point operations of one run (multiply-add = 2).
    pub flops: f64,
    /// The fewest bytes one run must move (inputs read once, outputs written once).
    pub bytes: f64,
}

impl BenchResult {
    pub fn gflops(&self) -> f64 {
        self.flops / (self.median_ms * 1e-3) / 1e9
    }
    pub fn gbytes(&self) -> f64 {
        self.bytes / (self.median_ms * 1e-3) / 1e9
    }
}

/// Time `f` `reps` times after `warmup` runs; the backend is synchronised
/// around each run so asynchronous devices are timed honestly.
pub fn time_it(
    b: &dyn Backend,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    b.synchronize()?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        b.synchronize()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok((ms[ms.len() / 2], ms[0]))
}

fn rand_tensor(b: &dyn Backend, shape: Shape, dtype: DType, seed: u64) -> Result<Tensor> {
    b.randn(shape, dtype, seed, 0)
}

/// The standard cases: a 3×3×3 32→32 convolution on 1×32×128×128×32
/// (forward; forward + data and weight gradients), instance norm
/// (32 groups) + GELU forward + backward on the same tensor, and softmax
/// over rows of 16, 256 and 4096 (forward; backward) on as many elements.
pub fn standard(
    b: &dyn Backend,
    dims: [usize; 3],
    channels: usize,
    reps: usize,
) -> Result<Vec<BenchResult>> {
    let act = b.act_dtype();
    let esz = act.size() as f64;
    let x_shape = Shape::ndhwc(1, dims[0], dims[1], dims[2], channels);
    let x = rand_tensor(b, x_shape, act, 1)?;
    let spec = ConvSpec::K3;
    let w = b.upload(
        &vec![0.01; spec.weight_shape(channels, channels).numel()],
        spec.weight_shape(channels, channels),
        DType::F32,
    )?;
    let dy = rand_tensor(b, x_shape, act, 2)?;
    let n = x_shape.numel() as f64;
    let wbytes = (spec.weight_shape(channels, channels).numel() * 4) as f64;
    let conv_flops = 2.0 * spec.macs(x_shape, channels) as f64;
    let mut out = Vec::new();

    let (med, min) = time_it(b, 1, reps, || b.conv3d(&x, &w, None, spec).map(drop))?;
    out.push(BenchResult {
        name: format!("conv3d k3 {channels}->{channels} fwd {}", x_shape),
        median_ms: med,
        min_ms: min,
        flops: conv_flops,
        bytes: 2.0 * n * esz + wbytes,
    });
    let (med, min) = time_it(b, 1, reps, || {
        b.conv3d(&x, &w, None, spec)?;
        b.conv3d_dgrad(&dy, &w, x_shape, spec)?;
        b.conv3d_wgrad(&x, &dy, spec, false)?;
        Ok(())
    })?;
    out.push(BenchResult {
        name: format!("conv3d k3 {channels}->{channels} fwd+bwd {}", x_shape),
        median_ms: med,
        min_ms: min,
        flops: 3.0 * conv_flops,
        // fwd: x→y; dgrad: dy→dx; wgrad: x, dy → dw.
        bytes: 6.0 * n * esz + 3.0 * wbytes,
    });

    let gamma = b.upload(&vec![1.0; channels], Shape::new(&[channels]), DType::F32)?;
    let beta = b.upload(&vec![0.0; channels], Shape::new(&[channels]), DType::F32)?;
    let args = NormArgs {
        groups: channels,
        eps: 1e-5,
        gamma: Some(&gamma),
        beta: Some(&beta),
        film: None,
        residual: None,
        act: Act::Gelu,
    };
    let (med, min) = time_it(b, 1, reps, || {
        let r = b.norm_fwd(&x, &args)?;
        b.norm_bwd(&dy, &x, &r.stats, &args)?;
        Ok(())
    })?;
    out.push(BenchResult {
        name: format!("instance norm + GELU fwd+bwd {}", x_shape),
        median_ms: med,
        min_ms: min,
        flops: 30.0 * n,
        // fwd: read x, write y; bwd: read x and dy, write dx.
        bytes: 5.0 * n * esz,
    });

    // Softmax over rows of `len`, as many elements as x (rounded down to
    // whole rows). FLOPs counted per element, an exp as one: forward 7 (max,
    // subtract, exp, add; subtract, exp, scale), backward 4 (multiply-add;
    // subtract, scale).
    for len in [16, 256, 4096] {
        let rows_shape = Shape::new(&[(x_shape.numel() / len).max(1), len]);
        let n = rows_shape.numel() as f64;
        let xr = rand_tensor(b, rows_shape, act, 3)?;
        let (med, min) = time_it(b, 1, reps, || b.softmax(&xr).map(drop))?;
        out.push(BenchResult {
            name: format!("softmax rows of {len} fwd {rows_shape}"),
            median_ms: med,
            min_ms: min,
            flops: 7.0 * n,
            bytes: 2.0 * n * esz,
        });
        let p = b.softmax(&xr)?;
        let dp = rand_tensor(b, rows_shape, act, 4)?;
        let (med, min) = time_it(b, 1, reps, || b.softmax_bwd(&dp, &p).map(drop))?;
        out.push(BenchResult {
            name: format!("softmax rows of {len} bwd {rows_shape}"),
            median_ms: med,
            min_ms: min,
            flops: 4.0 * n,
            // read dp and p, write dx.
            bytes: 3.0 * n * esz,
        });
    }
    Ok(out)
}

/// One ImgX-DiffSeg training step as `voxdiff train seg` runs it: the paper's
/// UNet (32/64/128/256, FiLM time input) with the default diffusion settings
/// (x₀ prediction, recycling), a `[1, dims]` patch with `classes` classes —
/// the loss recorded on a tape (recycling's forward without one), backward,
/// AdamW. Counted: the convolutions only (forwards, plus data and weight
/// gradients in the backward; the stem has no data gradient, its input being
/// a constant).
pub fn imgx_step(
    b: &dyn Backend,
    dims: [usize; 3],
    classes: usize,
    reps: usize,
) -> Result<BenchResult> {
    let diffusion = DiffusionConfig::default();
    let model = SegModel::new(b, &ModelConfig::default(), &diffusion, classes)?;
    let shape = volume_shape(dims, 1);
    let image = b.randn(shape, b.act_dtype(), 1, 0)?;
    // Labels in slabs along the last axis: every class present.
    let labels: Vec<f32> = (0..shape.numel())
        .map(|i| ((i % dims[2]) * classes / dims[2]) as f32)
        .collect();
    let labels = b.upload(&labels, shape, b.act_dtype())?;
    let mask = b.one_hot(&labels, classes, 1.0, 0.0)?;
    let mut opt = Optimizer::new(b, &model.ps, AdamW::default())?;
    let t = model.timesteps() / 2;
    let mut step = 0;
    let (median_ms, min_ms) = time_it(b, 1, reps, || {
        let mut g = Graph::train(b);
        let loss = model.loss(&mut g, &image, &mask, t, 0, step)?;
        let grads = g.backward(&loss, model.ps.len())?;
        opt.update(b, &model.ps, &grads, 1e-5)?;
        step += 1;
        Ok(())
    })?;
    let forward = model.net.conv_macs(dims) as f64;
    let net = &model.net.cfg;
    let stem = net
        .k3()
        .macs(volume_shape(dims, net.in_channels), net.channels[0]) as f64;
    let forwards = if diffusion.recycle == Recycle::Off {
        1.0
    } else {
        2.0
    };
    Ok(BenchResult {
        name: format!(
            "ImgX training step, UNet 32/64/128/256, {classes} classes, {}",
            volume_shape(dims, 1)
        ),
        median_ms,
        min_ms,
        flops: 2.0 * (forwards * forward + 2.0 * forward - stem),
        // Parameters, their gradients and two moments, read and written.
        bytes: (model.ps.count() * 4 * 6) as f64,
    })
}

/// Print results as a table.
pub fn print(results: &[BenchResult], device: &str) {
    println!("device: {device}");
    println!(
        "{:<58} {:>10} {:>10} {:>10} {:>9}",
        "case", "median ms", "min ms", "GFLOP/s", "GB/s"
    );
    for r in results {
        println!(
            "{:<58} {:>10.2} {:>10.2} {:>10.1} {:>9.1}",
            r.name,
            r.median_ms,
            r.min_ms,
            r.gflops(),
            r.gbytes()
        );
    }
}
