//! `voxdiff train bpr`: train a body-part-regression network
//! ([`crate::model::bpr`]) without labels into a run folder
//! ([`super::run`]: config.toml, run.json, log.jsonl, checkpoint.safetensors,
//! progress.png), through the one training loop ([`super::train_loop`]).
//! `--resume` continues a killed run from its checkpoint with its own
//! configuration. The log records each step's order, distance and
//! heuristic terms next to the total.

use super::bpr_config::BprConfig;
use super::bpr_data::{training_stacks, SliceBatch, SliceSource};
use super::config::{RunArgs, RunConfig};
use super::run as run_dir;
use super::train_loop::{self, StepKey, StepLoss, TrainSummary, Trainable};
use crate::autograd::Graph;
use crate::backend::Backend;
use crate::model::bpr::{bpr_loss, BprLossConfig, BprNet};
use crate::nn::{ParamBuilder, ParamStore};
use crate::tensor::Shape;
use anyhow::Result;
use std::path::Path;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainBprArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// A BPR network with its parameters and losses.
pub struct BprModel {
    pub net: BprNet,
    pub ps: ParamStore,
    pub loss: BprLossConfig,
}

impl BprModel {
    /// The network of `cfg`, initialised from `cfg.train.seed`.
    pub fn new(dev: &dyn Backend, cfg: &BprConfig) -> Result<BprModel> {
        let mut ps = ParamStore::new(cfg.train.seed);
        let net = BprNet::new(&mut ParamBuilder::new(&mut ps, dev), cfg.model.clone())?;
        Ok(BprModel {
            net,
            ps,
            loss: cfg.loss.clone(),
        })
    }
}

impl Trainable for BprModel {
    type Batch = SliceBatch;
    fn params(&self) -> &ParamStore {
        &self.ps
    }
    fn loss(&self, g: &mut Graph, b: &SliceBatch, _key: StepKey) -> Result<StepLoss> {
        let dev = g.dev;
        let n = b.gaps_mm.len() * b.m;
        let x = dev.upload(
            &b.slices,
            Shape::ndhwc(n, 1, b.size, b.size, 1),
            dev.act_dtype(),
        )?;
        let x = g.constant(x);
        let scores = self.net.forward(g, &self.ps, &x)?;
        let l = bpr_loss(g, &scores, b.m, &b.gaps_mm, &b.regions, &self.loss)?;
        let mut log = Vec::new();
        for (name, term) in [
            ("order", &l.order),
            ("distance", &l.distance),
            ("heuristic", &l.heuristic),
            ("region", &l.region),
        ] {
            if let Some(v) = term {
                log.push((name, dev.download(&v.t)?[0].into()));
            }
        }
        Ok(StepLoss { loss: l.total, log })
    }
}

/// Train as configured into `run` on `dev`.
pub fn train_run(
    dev: &dyn Backend,
    cfg: &BprConfig,
    run: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    let stacks = training_stacks(&cfg.data)?;
    run_dir::prepare(run, &cfg.to_toml()?, resume, progress)?;
    let model = BprModel::new(dev, cfg)?;
    if progress {
        let slices: Vec<String> = stacks
            .iter()
            .map(|s| format!("{} ({} slices)", s.name, s.slices))
            .collect();
        eprintln!(
            "training body-part regression ({:.3} M parameters) on {} with {}×{} slices from {}",
            model.ps.count() as f64 / 1e6,
            dev.name(),
            cfg.data.size,
            cfg.data.size,
            slices.join(", ")
        );
    }
    let mut source = SliceSource::new(stacks, &cfg.data, cfg.train.seed)?;
    let summary = train_loop::train(dev, &model, &cfg.train, &mut source, run, resume, progress)?;
    run_dir::finish(run)?;
    Ok(summary)
}

pub fn run(args: &TrainBprArgs) -> Result<()> {
    args.run.train(train_run)
}
