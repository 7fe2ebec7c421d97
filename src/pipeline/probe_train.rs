//! `voxdiff train probe`: train a probe head on frozen (or from-scratch)
//! backbone features of labelled CTs, vox2vec's protocol, through the one
//! training loop, into a run folder (config.toml with `system = "probe"`,
//! classes.json, log.jsonl with the `bce` and `dice` terms, checkpoint with
//! the backbone under `backbone.` and the head under `head.`, so `voxdiff
//! segment` needs the probe run alone — plus the pretraining run's BPR run
//! when coordinates must be computed for a new CT).

use super::config::{RunArgs, RunConfig};
use super::probe_config::{FeatureSource, ProbeConfig};
use super::probe_data::{
    probe_class_map, read_coords, training_cases, Preprocess, ProbeBatch, ProbeSource,
};
use super::probe_features::{ProbeModel, BACKBONE};
use super::run as run_dir;
use super::seg_data::class_names;
use super::train_loop::{self, StepKey, StepLoss, TrainSummary, Trainable};
use crate::autograd::Graph;
use crate::backend::{self, Backend};
use crate::data::Volume;
use crate::model::FpnConfig;
use crate::nn::ParamStore;
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainProbeArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// What a probe takes from a pretraining run.
pub struct Pretrained {
    pub dir: PathBuf,
    pub model: FpnConfig,
    pub pre: Preprocess,
}

/// Open the pretraining run in `dir`, refusing a folder that is not one
/// (no run, another command's run, no checkpoint), naming it.
pub fn open_pretrained(dir: &Path) -> Result<Pretrained> {
    let cfg_path = dir.join(run_dir::CONFIG);
    let text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!(
            "{}: not a pretraining run ({} cannot be read)",
            dir.display(),
            cfg_path.display()
        )
    })?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", cfg_path.display()))?;
    let model: FpnConfig = doc
        .get("model")
        .cloned()
        .context("no [model] table")
        .and_then(|m| m.try_into().context("its [model] is not an FPN backbone"))
        .with_context(|| {
            format!(
                "{}: not a pretraining run of `voxdiff train pretrain` ({})",
                dir.display(),
                cfg_path.display()
            )
        })?;
    let data = doc.get("data").and_then(|d| d.as_table());
    let get = |k: &str| data.and_then(|d| d.get(k)).cloned();
    let spacing = match get("spacing") {
        Some(v) => v
            .try_into()
            .with_context(|| format!("{}: data.spacing is not [sd, sh, sw]", cfg_path.display()))?,
        None => Preprocess::VOX2VEC.spacing,
    };
    let window = match get("window") {
        Some(v) => v
            .try_into()
            .with_context(|| format!("{}: data.window is not [lo, hi]", cfg_path.display()))?,
        None => Preprocess::VOX2VEC.window,
    };
    let ckpt = dir.join(run_dir::CHECKPOINT);
    if !ckpt.exists() {
        bail!(
            "{}: the pretraining run has no checkpoint ({} missing)",
            dir.display(),
            ckpt.display()
        );
    }
    Ok(Pretrained {
        dir: dir.to_path_buf(),
        model,
        pre: Preprocess { spacing, window },
    })
}

/// The backbone and preprocessing of a probe configuration: the pretraining
/// run's when there is one (a different `data.spacing` / `data.window`
/// refused), else `features.backbone` and the configured (or vox2vec's)
/// preprocessing.
pub fn resolve_backbone(cfg: &ProbeConfig) -> Result<(FpnConfig, Preprocess, Option<Pretrained>)> {
    let d = &cfg.data;
    match &d.pretrained_run {
        Some(dir) => {
            let p = open_pretrained(dir)?;
            if let Some(s) = d.spacing.filter(|s| *s != p.pre.spacing) {
                bail!(
                    "data.spacing = {s:?}, but the pretraining run {} was trained at {:?}",
                    dir.display(),
                    p.pre.spacing
                );
            }
            if let Some(w) = d.window.filter(|w| *w != p.pre.window) {
                bail!(
                    "data.window = {w:?}, but the pretraining run {} was trained with {:?}",
                    dir.display(),
                    p.pre.window
                );
            }
            Ok((p.model.clone(), p.pre, Some(p)))
        }
        None => Ok((
            cfg.features.backbone.clone(),
            Preprocess {
                spacing: d.spacing.unwrap_or(Preprocess::VOX2VEC.spacing),
                window: d.window.unwrap_or(Preprocess::VOX2VEC.window),
            },
            None,
        )),
    }
}

/// The coordinate channels of training image `i` (k = `k`).
fn coords_of(cfg: &ProbeConfig, k: usize, i: usize, ct: &Volume) -> Result<Vec<Volume>> {
    let d = &cfg.data;
    match d.coords.get(i) {
        Some(p) => read_coords(p, ct, &d.images[i], k),
        None if k == 0 => Ok(Vec::new()),
        None => bail!(
            "{}: the backbone takes k = {k} coordinate channel(s): give one coordinate NIfTI per \
             image in data.coords",
            d.images[i].display()
        ),
    }
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

/// The model of a probe configuration (pretrained weights loaded).
pub fn build_model(
    dev: &dyn Backend,
    cfg: &ProbeConfig,
    backbone: FpnConfig,
    pretrained: Option<&Pretrained>,
    classes: usize,
) -> Result<ProbeModel> {
    let f = &cfg.features;
    let model = ProbeModel::new(
        dev,
        backbone,
        cfg.head.kind,
        classes,
        f.source,
        f.timesteps.clone(),
        f.noise_seed,
        cfg.train.seed,
    )?;
    if f.source == FeatureSource::Pretrained {
        let p = pretrained.context("features.source = \"pretrained\" needs data.pretrained_run")?;
        let ckpt = p.dir.join(run_dir::CHECKPOINT);
        checkpoint::load_params_under(&ckpt, dev, &model.ps, BACKBONE, BACKBONE).with_context(
            || {
                format!(
                    "{}: the pretraining run's backbone does not load",
                    p.dir.display()
                )
            },
        )?;
    }
    Ok(model)
}

/// Train as configured into `run` on `dev`.
pub fn train_run(
    dev: &dyn Backend,
    cfg: &ProbeConfig,
    run: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    let (backbone, pre, pretrained) = resolve_backbone(cfg)?;
    let k = backbone.in_channels.saturating_sub(1);
    if !cfg.data.coords.is_empty() && k == 0 {
        bail!("data.coords: coordinate files given, but the backbone takes none (in_channels = 1)");
    }
    // The run folder records what was used: the backbone and the
    // preprocessing, so `segment` needs no other run.
    let mut cfg = cfg.clone();
    cfg.features.backbone = backbone.clone();
    cfg.data.spacing = Some(pre.spacing);
    cfg.data.window = Some(pre.window);
    let cfg = &cfg;
    let map = probe_class_map(&cfg.data)?;
    let cases = training_cases(&cfg.data, &map, &pre, |i, ct| coords_of(cfg, k, i, ct))?;
    run_dir::prepare(run, &cfg.to_toml()?, resume, progress)?;
    let names = class_names(&map);
    run_dir::write_classes(run, &names)?;
    let model = build_model(dev, cfg, backbone, pretrained.as_ref(), map.names.len())?;
    if progress {
        eprintln!(
            "training a {:?} probe head ({:.3} M parameters; backbone {:.3} M, {:?} features, t = \
             {:?}) on {} with {} case(s), patch {:?}",
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
    let cfg: ProbeConfig = args.run.config(&[])?;
    let dev = backend::select(&args.run.device)?;
    let s = train_run(
        dev.as_ref(),
        &cfg,
        &args.run.run,
        args.run.resume,
        !args.run.quiet,
    )?;
    args.run.print_summary(&s);
    Ok(())
}
