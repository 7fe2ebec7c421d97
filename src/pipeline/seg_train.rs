//! `voxdiff train seg`: train a diffusion segmentation model (or the
//! supervised baseline) into a run folder:
//!
//! ```text
//! <run>/config.toml             the resolved configuration (all defaults written out,
//!                               data paths absolute)
//! <run>/run.json                where the run folder was created (see super::run)
//! <run>/classes.json            training class names by id (MSD "labels" form)
//! <run>/log.jsonl               one JSON record per logged step
//! <run>/checkpoint.safetensors  parameters, AdamW moments, step, data position
//! <run>/progress.png            loss, learning rate and time per step
//! ```
//! `--resume` continues a killed run from its checkpoint with its own config,
//! from any working directory (see [`super::run`] for how its data is found).
//! Temp files a killed run left in the folder are removed when a run starts.

use super::config::{RunArgs, RunConfig};
use super::plan_step;
use super::run as run_dir;
use super::seg_config::InferConfig;
use super::seg_config::SegConfig;
use super::seg_data::{
    class_map, class_names, patch_size, training_cases, validation_cases, Example, LoaderSource,
};
use super::seg_model::{ModelKind, SegModel};
use super::segment::predict_scores;
use super::train_loop::{self, StepKey, StepLoss, TrainSummary, Trainable};
use crate::autograd::Graph;
use crate::backend::{self, Backend};
use crate::data::loader::PreparedCase;
use crate::data::sliding::argmax_channels;
use crate::metrics::{label_metrics, MetricOptions};
use crate::nn::ParamStore;
use anyhow::{Context, Result};
use std::path::Path;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainSegArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Shortcut for --set model.kind=…: diffusion or unet (the supervised baseline).
    #[arg(long, value_enum)]
    pub model: Option<ModelArg>,
    /// Print the static plan of one training step as configured (launches,
    /// memory, modelled time on --gpu) and exit; the run folder is not created.
    #[arg(long)]
    pub plan: bool,
    /// The GPU the plan's time is modelled on.
    #[arg(long, default_value = "h100")]
    pub gpu: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ModelArg {
    Diffusion,
    Unet,
}

/// Train as configured into `run` on `b`; returns the summary.
pub fn train_run(
    b: &dyn Backend,
    cfg: &SegConfig,
    run: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    let map = class_map(&cfg.data)?;
    let names = class_names(&map);
    run_dir::prepare(run, &cfg.to_toml()?, resume, progress)?;
    if !resume {
        run_dir::write_classes(run, &names)?;
    }
    let cases = training_cases(&cfg.data, &map)?;
    // Planned before the loader starts cutting patches.
    let shape = step_shape(cfg, names.len(), patch_size(&cfg.data, &cases));
    plan_step::check_train_memory(b, &shape, cfg.data.workers.max(1))?;
    let mut source = LoaderSource::new(&cfg.data, cases, cfg.train.seed)?;
    let model = SegModel::new(b, &cfg.model, &cfg.diffusion, names.len())?;
    if progress {
        eprintln!(
            "training {} ({:.2} M parameters, {} classes) on {} with patches {:?}",
            match cfg.model.kind {
                ModelKind::Diffusion => "diffusion segmentation",
                ModelKind::Unet => "supervised UNet",
            },
            model.ps.count() as f64 / 1e6,
            names.len(),
            b.name(),
            source.patch()
        );
    }
    let validated = Validated {
        model: &model,
        cases: validation_cases(&cfg.data, &map)?,
        infer: &cfg.infer,
        classes: &names,
    };
    let summary = train_loop::train(
        b,
        &validated,
        &cfg.train,
        &mut source,
        run,
        resume,
        progress,
    )?;
    run_dir::finish(run)?;
    Ok(summary)
}

/// The model with its held-out cases: validation segments each case as
/// `voxdiff segment` does (the configured sampler, windows and aggregation,
/// on the training grid) and scores the Dice of every foreground class,
/// averaged over the cases where the class is in the truth or the prediction.
struct Validated<'a> {
    model: &'a SegModel,
    cases: Vec<PreparedCase>,
    infer: &'a InferConfig,
    classes: &'a [String],
}

impl Trainable for Validated<'_> {
    type Batch = Example;
    fn params(&self) -> &ParamStore {
        &self.model.ps
    }
    fn loss(&self, g: &mut Graph, ex: &Example, key: StepKey) -> Result<StepLoss> {
        Trainable::loss(self.model, g, ex, key)
    }
    fn validate(&self, dev: &dyn Backend) -> Result<Vec<(String, f64)>> {
        let k = self.classes.len();
        // Per foreground class: the sum of Dice over the cases that score it, and their count.
        let mut sums = vec![(0.0f64, 0usize); k - 1];
        for case in &self.cases {
            let truth = case
                .label
                .as_ref()
                .with_context(|| format!("validation case {}: no label map", case.id))?;
            let (scores, _) = predict_scores(dev, self.model, self.infer, &case.image, false)
                .with_context(|| format!("validating on {}", case.id))?;
            let pred = argmax_channels(&scores, k);
            let ids: Vec<u32> = (1..k as u32).collect();
            let im = &case.image;
            let opt = MetricOptions::default();
            let scored = label_metrics(&truth.data, &pred, im.dims, im.spacing, &ids, &opt);
            for (c, m) in scored.iter().enumerate() {
                // NaN: the class is in neither the truth nor the prediction.
                if m.dice.is_finite() {
                    sums[c].0 += m.dice;
                    sums[c].1 += 1;
                }
            }
        }
        Ok(sums
            .iter()
            .zip(&self.classes[1..])
            .filter(|((_, n), _)| *n > 0)
            .map(|((sum, n), name)| (format!("Dice {name}"), sum / *n as f64))
            .collect())
    }
}

/// The shape of one training step of `cfg`.
fn step_shape(cfg: &SegConfig, classes: usize, patch: [usize; 3]) -> plan_step::TrainStepShape {
    plan_step::TrainStepShape {
        model: cfg.model.clone(),
        diffusion: cfg.diffusion.clone(),
        classes,
        patch,
        adamw: cfg.train.adamw,
    }
}

/// `--plan`: the plan of one configured step at the backend's dtype, printed.
fn plan_only(b: &dyn Backend, cfg: &SegConfig, gpu: &str) -> Result<()> {
    let gpu = crate::plan::cost::gpu_by_name(gpu)
        .with_context(|| format!("--gpu {gpu}: unknown GPU (known: h100)"))?;
    let map = class_map(&cfg.data)?;
    let names = class_names(&map);
    let cases = training_cases(&cfg.data, &map)?;
    let shape = step_shape(cfg, names.len(), patch_size(&cfg.data, &cases));
    let act = plan_step::plan_dtype(b);
    let (dev, pb) = plan_step::plan_backend(act);
    let plan = plan_step::record_train_step(&dev, &pb, &shape)?;
    plan_step::print_plan(
        &format!(
            "plan of one training step as configured: {} classes, patch {:?}, {} activations (as {} runs it)",
            shape.classes,
            shape.patch,
            act.name(),
            b.name()
        ),
        &plan,
        &gpu,
    );
    Ok(())
}

pub fn run(args: &TrainSegArgs) -> Result<()> {
    let model = args.model.map(|m| {
        format!(
            "model.kind=\"{}\"",
            match m {
                ModelArg::Diffusion => "diffusion",
                ModelArg::Unet => "unet",
            }
        )
    });
    let cfg: SegConfig = args.run.config(model.as_slice())?;
    let b = backend::select(&args.run.device)?;
    if args.plan {
        return plan_only(b.as_ref(), &cfg, &args.gpu);
    }
    let s = train_run(
        b.as_ref(),
        &cfg,
        &args.run.run,
        args.run.resume,
        !args.run.quiet,
    )?;
    args.run.print_summary(&s);
    Ok(())
}
