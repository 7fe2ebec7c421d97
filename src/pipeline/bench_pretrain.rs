//! `voxdiff bench --suite pretrain`: the pretraining backbone's own ops at
//! the paper's sizes — position linear attention (the fused custom op and
//! the composition of primitives, forward and forward + backward through the
//! Graph) and batch norm (train forward + backward fused — the norm
//! family's instance norm on the one-sample view — and composed; eval
//! forward).
//!
//! Counted figures (per run, e bytes per activation, T tokens, C_k = C/8):
//! - linear attention forward: `Dims::flops_fwd` (≈ 4·C_k·C per token), the
//!   fewest bytes q, k, v read and out written once, `(2C_k + 2C)·e` per
//!   token;
//! - its backward: ≈ 8·C_k·C + 10·(C + C_k) FLOPs per token (the fused
//!   passes), bytes dy, q, k, v read and dq, dk, dv written once,
//!   `(4C_k + 3C)·e` per token. The composed variant is charged the same
//!   counts (it does the same arithmetic in more passes), so its GFLOP/s
//!   and GB/s compare directly with the fused one's;
//! - batch norm train forward + backward: 17 FLOPs per element (forward 7:
//!   sum, centre, square, sum, divide, scale, shift; backward ≈ 10), the
//!   fewest bytes 5n·e (x → y; x, dy → dx); eval 4 FLOPs and 2n·e.
//!
//! Both directions run through a recording Graph with `L = Σ out ⊙ dy` (one
//! multiply and one sum added to each variant alike).
//!
//! The pretraining step ([`pretrain_step`]): one optimiser step of
//! `voxdiff train pretrain` (q_sample, FPN3d forward with the ε head, MSE,
//! backward, AdamW) on one patch of the paper's size with the paper's
//! backbone (base 16, 6 scales, batch norm, time, k = 1), timed with the
//! attention blocks (position linear attention, fused, and
//! ChannelLinearAttention) and without them; the difference is the share of
//! the step the attention takes, in wall time and in the process's CPU
//! time (the step's cost when other work shares the cores). FLOPs: the
//! convolutions' ([`crate::model::fpn3d::Fpn3d::conv_macs`] + the head):
//! 2 per multiply-add forward, twice that backward (data and weight gradients),
//! less the first convolution's data gradient (the input needs none).

use super::bench::{time_it, BenchResult};
use super::pretrain_config::PretrainConfig;
use super::pretrain_data::PatchBatch;
use super::pretrain_train::PretrainModel;
use super::train_loop::{StepKey, Trainable};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::model::fpn3d::FpnConfig;
use crate::nn::attention::{linear_attention, AttentionImpl, LINEAR_ATTENTION_EPS};
use crate::nn::batch_norm::{batch_norm_eval, batch_norm_train, batch_norm_train_fused};
use crate::nn::linear_attention::Dims;
use crate::ops::ConvSpec;
use crate::ops::{Bcast, Binary};
use crate::tensor::{DType, Shape, Tensor};
use crate::train::Optimizer;
use anyhow::{bail, Context, Result};
use std::time::Instant;

/// The paper's sizes: channels and (D, H, W) at level 0 and level 4 of
/// FPN3d on a 128×128×32 patch.
pub const PAPER_SIZES: &str = "16x32x128x128,256x2x8x8";

/// Parse `CxDxHxW[,CxDxHxW…]`.
pub fn parse_sizes(s: &str) -> Result<Vec<(usize, [usize; 3])>> {
    s.split(',')
        .map(|one| {
            let v: Vec<usize> = one
                .trim()
                .split('x')
                .map(|p| p.parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("--sizes: {one:?} is not CxDxHxW"))?;
            match v[..] {
                [c, d, h, w] if c >= 8 && d * h * w > 0 => Ok((c, [d, h, w])),
                _ => bail!("--sizes: {one:?} must be CxDxHxW with C ≥ 8 and no zero extent"),
            }
        })
        .collect()
}

fn randn(b: &dyn Backend, shape: Shape, dtype: DType, seed: u64) -> Result<Tensor> {
    b.randn(shape, dtype, seed, 0)
}

/// `Σ out ⊙ dy` and its backward over `n` tracked inputs.
fn backward(g: &mut Graph, out: &Var, dy: &Tensor, n: usize) -> Result<()> {
    let dy = g.constant(dy.clone());
    let l = g.binary(Binary::Mul, out, &dy)?;
    let l = g.reduce_sum(&l, Bcast::Scalar)?;
    g.backward(&l, n)?;
    Ok(())
}

/// The suite at each `(C, [D, H, W])`, batch 1.
pub fn run(
    b: &dyn Backend,
    sizes: &[(usize, [usize; 3])],
    reps: usize,
) -> Result<Vec<BenchResult>> {
    let act = b.act_dtype();
    let e = act.size();
    let mut out = Vec::new();
    for &(c, [dd, hh, ww]) in sizes {
        let ck = (c / 8).max(1);
        let vs = Shape::ndhwc(1, dd, hh, ww, c);
        let qs = vs.with_c(ck);
        let d = Dims {
            b: 1,
            n: vs.voxels(),
            ck,
            c,
        };
        let (q, k, v) = (
            randn(b, qs, act, 1)?,
            randn(b, qs, act, 2)?,
            randn(b, vs, act, 3)?,
        );
        let dy = randn(b, vs, act, 4)?;
        let t = (d.b * d.n) as f64;
        let bwd_flops = t * (8 * ck * c + 10 * (c + ck)) as f64;
        let bwd_bytes = t * ((4 * ck + 3 * c) * e) as f64;
        for (how, name) in [
            (AttentionImpl::Fused, "fused"),
            (AttentionImpl::Composed, "composed"),
        ] {
            let (med, min) = time_it(b, 1, reps, || {
                let mut g = Graph::inference(b);
                let (q, k, v) = (
                    g.constant(q.clone()),
                    g.constant(k.clone()),
                    g.constant(v.clone()),
                );
                linear_attention(&mut g, &q, &k, &v, LINEAR_ATTENTION_EPS, how).map(drop)
            })?;
            out.push(BenchResult {
                name: format!("linear attention {name} fwd C {c} {vs}"),
                median_ms: med,
                min_ms: min,
                flops: d.flops_fwd() as f64,
                bytes: d.bytes_fwd(e) as f64,
            });
            let (med, min) = time_it(b, 1, reps, || {
                let mut g = Graph::train(b);
                let (qv, kv, vv) = (g.param(0, &q), g.param(1, &k), g.param(2, &v));
                let o = linear_attention(&mut g, &qv, &kv, &vv, LINEAR_ATTENTION_EPS, how)?;
                backward(&mut g, &o, &dy, 3)
            })?;
            out.push(BenchResult {
                name: format!("linear attention {name} fwd+bwd C {c} {vs}"),
                median_ms: med,
                min_ms: min,
                flops: d.flops_fwd() as f64 + bwd_flops,
                bytes: d.bytes_fwd(e) as f64 + bwd_bytes,
            });
        }

        let x = randn(b, vs, act, 5)?;
        let n = vs.numel() as f64;
        let gamma = b.upload(&vec![1.0; c], Shape::new(&[c]), DType::F32)?;
        let beta = b.upload(&vec![0.0; c], Shape::new(&[c]), DType::F32)?;
        for (fused, name) in [(true, "fused"), (false, "composed")] {
            let (med, min) = time_it(b, 1, reps, || {
                let mut g = Graph::train(b);
                let (xv, gv, bv) = (g.param(0, &x), g.param(1, &gamma), g.param(2, &beta));
                let (y, _) = if fused {
                    batch_norm_train_fused(&mut g, &xv, &gv, &bv, 1e-5)?
                } else {
                    batch_norm_train(&mut g, &xv, &gv, &bv, 1e-5)?
                };
                backward(&mut g, &y, &dy, 3)
            })?;
            out.push(BenchResult {
                name: format!("batch norm {name} train fwd+bwd C {c} {vs}"),
                median_ms: med,
                min_ms: min,
                flops: 17.0 * n,
                bytes: 5.0 * n * e as f64,
            });
        }
        let (med, min) = time_it(b, 1, reps, || {
            let mut g = Graph::inference(b);
            let (xv, gv, bv) = (
                g.constant(x.clone()),
                g.constant(gamma.clone()),
                g.constant(beta.clone()),
            );
            // Running statistics: mean 0 (beta's zeros), variance 1 (gamma's ones).
            batch_norm_eval(&mut g, &xv, &gv, &bv, &beta, &gamma, 1e-5).map(drop)
        })?;
        out.push(BenchResult {
            name: format!("batch norm eval fwd C {c} {vs}"),
            median_ms: med,
            min_ms: min,
            flops: 4.0 * n,
            bytes: 2.0 * n * e as f64,
        });
    }
    Ok(out)
}

/// The counted FLOPs of one training step of `model` on a `[1, dhw]` patch
/// (see the module doc).
pub fn step_flops(model: &PretrainModel, dhw: [usize; 3]) -> f64 {
    let cfg = &model.cfg.model;
    let at = |c: usize| Shape::ndhwc(1, dhw[0], dhw[1], dhw[2], c);
    let fwd = model.net.backbone.conv_macs(dhw) + ConvSpec::K1.macs(at(cfg.base_channels), 1);
    let first = ConvSpec::K3.macs(at(cfg.in_channels), cfg.base_channels);
    2.0 * (3 * fwd - first) as f64
}

/// CPU time this process has used so far (every thread), seconds.
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The median and the least of `ms`.
fn median_min(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[ms.len() / 2], ms[0])
}

/// One training step (forward, backward, AdamW) of the paper's backbone
/// with k = 1 on a `[1, dhw]` patch, with the attention blocks and without:
/// per variant a row of wall time and a row of the process's CPU time (all
/// threads) per step. On a machine other work shares, the CPU time of a
/// one-thread run (`voxdiff --threads 1`) is the step's cost; the wall time
/// is what the run waited.
pub fn pretrain_step(b: &dyn Backend, dhw: [usize; 3], reps: usize) -> Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    for attention in [true, false] {
        let mut model_cfg = FpnConfig::pretrain(1);
        if !attention {
            model_cfg.position_attention = None;
            model_cfg.channel_attention = None;
        }
        let cfg = PretrainConfig {
            model: model_cfg,
            ..PretrainConfig::default()
        };
        let model = PretrainModel::new(b, &cfg)?;
        let vox = dhw.iter().product::<usize>();
        // A smooth image and a coordinate ramp along z, as real patches are.
        let x0: Vec<f32> = (0..vox).map(|i| (i % 97) as f32 / 97.0).collect();
        let coords: Vec<f32> = (0..vox)
            .map(|i| (i / (dhw[1] * dhw[2])) as f32 / dhw[0] as f32)
            .collect();
        let batch = PatchBatch {
            x0,
            coords,
            n: 1,
            dhw,
            k: 1,
        };
        let mut opt = Optimizer::new(b, model.params(), cfg.train.adamw)?;
        let mut step = |i: u64| -> Result<()> {
            let mut g = Graph::train(b);
            let l = model.loss(&mut g, &batch, StepKey { seed: 0, step: i })?;
            let grads = g.backward(&l.loss, model.params().len())?;
            opt.update(b, model.params(), &grads, 1e-4)?;
            b.synchronize()
        };
        // One warm-up step, then the timed ones.
        step(0)?;
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for i in 1..=reps.max(1) as u64 {
            let (t, c) = (Instant::now(), process_cpu_seconds());
            step(i)?;
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            cpu.push((process_cpu_seconds() - c) * 1e3);
        }
        let name = format!(
            "pretraining step, FPN3d 16×6, k 1, {} attention, {}",
            if attention { "with" } else { "without" },
            Shape::ndhwc(1, dhw[0], dhw[1], dhw[2], 2)
        );
        for (clock, ms) in [("wall", wall), ("CPU time", cpu)] {
            let (median_ms, min_ms) = median_min(ms);
            out.push(BenchResult {
                name: format!("{name}, {clock}"),
                median_ms,
                min_ms,
                flops: step_flops(&model, dhw),
                // Parameters, their gradients and two moments, read and written.
                bytes: (model.params().count() * 4 * 6) as f64,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_sizes(PAPER_SIZES).unwrap(),
            [(16, [32, 128, 128]), (256, [2, 8, 8])]
        );
        let e = parse_sizes("16x32x128").unwrap_err().to_string();
        assert!(e.contains("\"16x32x128\" must be CxDxHxW"), "{e}");
        let e = parse_sizes("16x32xa28x1").unwrap_err().to_string();
        assert!(e.contains("is not CxDxHxW"), "{e}");
    }
}
