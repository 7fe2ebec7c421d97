//! `voxdiff train pretrain`: DDPM pretraining of the FPN3d backbone on CT
//! patches conditioned on coordinate channels, into a run folder
//! ([`super::pretrain_run`]), through the one training loop
//! ([`super::train_loop`]).
//!
//! A step, for a batch of N patches x₀ with coordinates c:
//! ```text
//! t_n ~ U{0 … T−1} (diffusion) or t_n = restorative_t (restorative)
//! ε ~ N(0, I)                                  (Philox, keyed by (seed, step))
//! x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε            (per patch)
//! ε̂ = head(FPN3d(concat[x_t, c], t)[level 0])  (c clean, never noised)
//! loss = mean (ε̂ − ε)²
//! ```
//! Batch norm uses the batch's statistics and folds them into its running
//! statistics after every forward (momentum 0.1), so a checkpoint carries
//! the statistics eval-mode features use. The log records the t drawn.

use super::config::{RunArgs, RunConfig};
use super::pretrain_config::{ObjectiveKind, PretrainConfig};
use super::pretrain_data::{PatchBatch, PatchSource, PreparedVolumes, PREPARED_DIR};
use super::pretrain_run::PretrainNet;
use super::run as run_dir;
use super::train_loop::{self, StepKey, StepLoss, TrainSummary, Trainable};
use crate::autograd::Graph;
use crate::backend::Backend;
use crate::data::rng::Rng;
use crate::diffusion::gaussian::{stream_seed, Stream};
use crate::diffusion::schedule::{BetaSchedule, Schedule};
use crate::model::fpn3d_block::{NormMode, RunningUpdate};
use crate::nn::batch_norm::running_update;
use crate::nn::{ParamBuilder, ParamStore};
use crate::ops::Binary;
use crate::tensor::{DType, Shape};
use anyhow::Result;
use std::path::Path;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainPretrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// The pretraining network, its parameters and its objective.
pub struct PretrainModel {
    pub net: PretrainNet,
    pub ps: ParamStore,
    pub schedule: Schedule,
    pub cfg: PretrainConfig,
}

impl PretrainModel {
    /// The network of `cfg`, initialised from `cfg.train.seed`.
    pub fn new(dev: &dyn Backend, cfg: &PretrainConfig) -> Result<PretrainModel> {
        let mut ps = ParamStore::new(cfg.train.seed);
        let net = PretrainNet::new(&mut ParamBuilder::new(&mut ps, dev), &cfg.model)?;
        let o = &cfg.objective;
        let schedule = Schedule::new(
            BetaSchedule::Linear,
            o.timesteps,
            o.beta[0],
            o.beta[1],
            o.timesteps,
        )?;
        Ok(PretrainModel {
            net,
            ps,
            schedule,
            cfg: cfg.clone(),
        })
    }

    /// The time step of each of `n` patches under `key`.
    pub fn draw_t(&self, key: StepKey, n: usize) -> Vec<usize> {
        let o = &self.cfg.objective;
        match o.kind {
            ObjectiveKind::Restorative => vec![o.restorative_t; n],
            ObjectiveKind::Diffusion => {
                let mut rng = Rng::derive(key.seed, &[0x7E, key.step]);
                (0..n).map(|_| rng.below(o.timesteps)).collect()
            }
        }
    }

    /// Write each batch norm's new running statistics over its old ones
    /// (in place: the loop holds the parameter store).
    fn fold_running(&self, dev: &dyn Backend, ups: &[RunningUpdate]) -> Result<()> {
        for u in ups {
            let (mean_id, var_id) = (u.running_mean, u.running_var);
            let (m, v) = running_update(
                dev,
                self.ps.get(mean_id),
                self.ps.get(var_id),
                &u.stats,
                u.momentum,
            )?;
            dev.write(self.ps.get(mean_id), &dev.download(&m)?)?;
            dev.write(self.ps.get(var_id), &dev.download(&v)?)?;
        }
        Ok(())
    }
}

impl Trainable for PretrainModel {
    type Batch = PatchBatch;
    fn params(&self) -> &ParamStore {
        &self.ps
    }
    fn loss(&self, g: &mut Graph, b: &PatchBatch, key: StepKey) -> Result<StepLoss> {
        let dev = g.dev;
        let [d, h, w] = b.dhw;
        let act = dev.act_dtype();
        let shape = Shape::ndhwc(b.n, d, h, w, 1);
        let ts = self.draw_t(key, b.n);
        let (a, s): (Vec<f32>, Vec<f32>) = ts
            .iter()
            .map(|&t| {
                let (a, s) = self.schedule.q_coefs(t);
                (a as f32, s as f32)
            })
            .unzip();
        let x0 = g.constant(dev.upload(&b.x0, shape, act)?);
        let eps = g.constant(dev.randn(
            shape,
            act,
            stream_seed(key.seed, Stream::Train, key.step),
            0,
        )?);
        let a = g.constant(dev.upload(&a, Shape::new(&[b.n, 1]), DType::F32)?);
        let s = g.constant(dev.upload(&s, Shape::new(&[b.n, 1]), DType::F32)?);
        let ax = g.binary(Binary::Mul, &x0, &a)?;
        let se = g.binary(Binary::Mul, &eps, &s)?;
        let x_t = g.add(&ax, &se)?;
        let input = if b.k > 0 {
            let c = g.constant(dev.upload(&b.coords, shape.with_c(b.k), act)?);
            g.concat_c(&[&x_t, &c])?
        } else {
            x_t
        };
        let tf: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
        let time = self.cfg.model.time.then_some(tf.as_slice());
        let (pred, running) = self
            .net
            .forward(g, &self.ps, &input, time, NormMode::Train)?;
        self.fold_running(dev, &running)?;
        let loss = g.mse(&pred, &eps)?;
        Ok(StepLoss {
            loss,
            log: vec![("t", serde_json::json!(ts))],
        })
    }
}

/// Train as configured into `run` on `dev`.
pub fn train_run(
    dev: &dyn Backend,
    cfg: &PretrainConfig,
    run: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    run_dir::prepare(run, &cfg.to_toml()?, resume, progress)?;
    let volumes = PreparedVolumes::prepare(
        dev,
        &cfg.data,
        cfg.coord_channels(),
        &run.join(PREPARED_DIR),
        progress,
    )?;
    let model = PretrainModel::new(dev, cfg)?;
    if progress {
        let n = volumes.volumes.len();
        let shown: Vec<String> = volumes
            .volumes
            .iter()
            .take(4)
            .map(|v| {
                let [d, h, w] = v.dims;
                format!("{} ({w}×{h}×{d})", v.name)
            })
            .collect();
        let more = if n > shown.len() {
            format!(", … ({n} volumes)")
        } else {
            String::new()
        };
        let [px, py, pz] = cfg.data.patch;
        eprintln!(
            "pretraining FPN3d ({:.3} M parameters, k = {}, {:?} objective) on {} with \
             {} patch(es) of {px}×{py}×{pz} per step from {}{more}",
            model.ps.count() as f64 / 1e6,
            cfg.coord_channels(),
            cfg.objective.kind,
            dev.name(),
            cfg.data.patches_per_step,
            shown.join(", ")
        );
    }
    let mut source = PatchSource::new(volumes, &cfg.data, cfg.train.seed)?;
    let summary = train_loop::train(dev, &model, &cfg.train, &mut source, run, resume, progress)?;
    run_dir::finish(run)?;
    Ok(summary)
}

pub fn run(args: &TrainPretrainArgs) -> Result<()> {
    args.run.train(train_run)
}
