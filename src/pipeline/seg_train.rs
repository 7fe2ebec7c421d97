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
use super::seg_config::SegConfig;
use super::seg_data::{class_map, class_names, patch_size, training_cases, LoaderSource};
use super::seg_model::{ModelKind, SegModel};
use super::train_loop::{self, TrainSummary};
use crate::backend::{self, Backend};
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
    let summary = train_loop::train(b, &model, &cfg.train, &mut source, run, resume, progress)?;
    run_dir::finish(run)?;
    Ok(summary)
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
