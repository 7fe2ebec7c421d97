//! `voxdiff train probe`: train a probe head on frozen (or from-scratch)
//! backbone features of labelled CTs, vox2vec's protocol, through the one
//! training loop, into a run folder (config.toml with `system = "probe"`,
//! classes.json, log.jsonl with the `bce` and `dice` terms, checkpoint with
//! the backbone under `backbone.` and the head under `head.`). `voxdiff
//! segment` reads the probe run and, for the preparation of a new CT, its
//! pretraining run (and that run's BPR run when it computes coordinates).

use super::config::{RunArgs, RunConfig};
use super::pretrain_run::BACKBONE;
use super::probe_config::{FeatureSource, ProbeConfig};
use super::probe_data::{probe_class_map, training_cases, Preparation, ProbeBatch, ProbeSource};
use super::probe_features::ProbeModel;
use super::run as run_dir;
use super::seg_data::class_names;
use super::train_loop::{self, StepKey, StepLoss, TrainSummary, Trainable};
use crate::autograd::Graph;
use crate::backend::Backend;
use crate::nn::ParamStore;
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainProbeArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

impl Trainable for ProbeModel {
    type Batch = ProbeBatch;
    fn params(&self) -> &ParamStore {
        &self.ps
    }
    fn loss(&self, g: &mut Graph, b: &ProbeBatch, _key: StepKey) -> Result<StepLoss> {
        let (total, bce, dice) = ProbeModel::loss(self, g, b)?;
        let dev = g.dev;
        Ok(StepLoss {
            loss: total,
            log: vec![
                ("bce", dev.download(&bce.t)?[0].into()),
                ("dice", dev.download(&dice.t)?[0].into()),
            ],
        })
    }
}

/// The model of a probe configuration on its pretraining run `prep` for
/// `classes` classes (the pretrained backbone loaded for the `pretrained`
/// source; the `random` and `none` sources keep the seed's weights).
pub fn build_model(
    dev: &dyn Backend,
    cfg: &ProbeConfig,
    prep: &Preparation,
    classes: usize,
) -> Result<ProbeModel> {
    let f = &cfg.features;
    let pc = &prep.run.cfg;
    let model = ProbeModel::new(
        dev,
        pc.model.clone(),
        &pc.objective,
        cfg.head.kind,
        classes,
        f.source,
        f.timesteps.clone(),
        f.noise_seed,
        cfg.train.seed,
    )?;
    if f.source == FeatureSource::Pretrained {
        let prefix = format!("{BACKBONE}.");
        checkpoint::load_params_under(&prep.run.checkpoint, dev, &model.ps, &prefix, &prefix)
            .with_context(|| {
                format!(
                    "{}: the pretraining run's backbone does not load",
                    prep.dir.display()
                )
            })?;
    }
    Ok(model)
}

/// Refuse a patch the backbone cannot take: every extent a multiple of
/// 2^(num_scales − 1), so no pyramid level is cropped.
pub fn check_patch(key: &str, patch: [usize; 3], prep: &Preparation) -> Result<()> {
    let m = 1usize << (prep.run.cfg.model.num_scales.max(1) - 1);
    if patch.iter().any(|&p| p == 0 || p % m != 0) {
        bail!(
            "{key} = {patch:?}: every extent must be a positive multiple of 2^(num_scales − 1) = \
             {m} for the backbone of {}",
            prep.dir.display()
        );
    }
    Ok(())
}

/// Train as configured into `run` on `dev`.
pub fn train_run(
    dev: &dyn Backend,
    cfg: &ProbeConfig,
    run: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    let dir = cfg
        .data
        .pretrained_run
        .as_deref()
        .context("data.pretrained_run is required")?;
    let prep = Preparation::open(dev, dir, cfg.data.patch)?;
    check_patch("data.patch", cfg.data.patch, &prep)?;
    if let Some(p) = cfg.infer.patch {
        check_patch("infer.patch", p, &prep)?;
    }
    let map = probe_class_map(&cfg.data)?;
    let model = build_model(dev, cfg, &prep, map.names.len())?;
    let cases = training_cases(dev, &cfg.data, &map, &prep)?;
    run_dir::prepare(run, &cfg.to_toml()?, resume, progress)?;
    let names = class_names(&map);
    run_dir::write_classes(run, &names)?;
    if progress {
        eprintln!(
            "training a {:?} probe head ({:.3} M parameters; backbone {:.3} M of {}, {:?} \
             features, t = {:?}) on {} with {} case(s), patch {:?}",
            cfg.head.kind,
            model
                .ps
                .trainable()
                .map(|(_, e)| e.t.numel())
                .sum::<usize>() as f64
                / 1e6,
            model
                .ps
                .entries
                .iter()
                .filter(|e| e.name.starts_with(BACKBONE))
                .map(|e| e.t.numel())
                .sum::<usize>() as f64
                / 1e6,
            prep.dir.display(),
            cfg.features.source,
            cfg.features.timesteps,
            dev.name(),
            cases.len(),
            cfg.data.patch
        );
    }
    let mut source = ProbeSource::new(cases, &cfg.data, map.names.len(), cfg.train.seed)?;
    let summary = train_loop::train(dev, &model, &cfg.train, &mut source, run, resume, progress)?;
    run_dir::finish(run)?;
    Ok(summary)
}

pub fn run(args: &TrainProbeArgs) -> Result<()> {
    args.run.train(train_run)
}
