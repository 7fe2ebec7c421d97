//! `voxdiff train segdiff`: train SegDiff on a folder of images and a folder
//! of masks into a run folder (the format of `super::run`):
//!
//! ```text
//! <run>/config.toml             the resolved configuration (system = "segdiff", data
//!                               paths absolute, the normalisation written out)
//! <run>/split.json              the training and validation ids
//! <run>/log.jsonl, checkpoint.safetensors, progress.png, run.json
//! ```
//! The per-channel normalisation is computed on the training split when the
//! configuration does not give it, and written into `config.toml`, so that
//! `voxdiff segment` prepares images exactly as training did. `--resume`
//! continues a killed run from its checkpoint with its own configuration.

use super::config::{RunArgs, RunConfig};
use super::run as run_dir;
use super::segdiff_config::SegDiffConfig;
use super::segdiff_model::{SegDiffModel, Source2d};
use super::train_loop::{self, TrainSummary};
use crate::backend::Backend;
use crate::data::image2d::Dataset2d;
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;

/// The file of a run that lists its split.
pub const SPLIT: &str = "split.json";

#[derive(clap::Args, Debug, Clone)]
pub struct TrainSegDiffArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// Train as configured into `run` on `b`.
pub fn train_run(
    b: &dyn Backend,
    cfg: &SegDiffConfig,
    run: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    let ds = Dataset2d::open(&cfg.data)?;
    if progress {
        eprintln!("{}", ds.describe(&cfg.data.images));
        for s in ds.skipped.iter().take(5) {
            eprintln!("  skipped {}: {}", s.path.display(), s.reason);
        }
    }
    let mut cfg = cfg.clone();
    cfg.data.mean = Some(ds.norm.mean);
    cfg.data.std = Some(ds.norm.std);
    run_dir::prepare(run, &cfg.to_toml()?, resume, progress)?;
    if !resume {
        let ids = |idx: &[usize]| -> Vec<String> {
            idx.iter().map(|&i| ds.items[i].id.clone()).collect()
        };
        let split = serde_json::json!({ "train": ids(&ds.train), "validation": ids(&ds.val) });
        crate::fsutil::write_atomic(
            &run.join(SPLIT),
            serde_json::to_string_pretty(&split)?.as_bytes(),
        )?;
    }
    let model = SegDiffModel::new(b, &cfg)?;
    if progress {
        eprintln!(
            "training SegDiff ({:.2} M parameters, {:?} conditioning) on {} at {}², batch {}",
            model.ps.count() as f64 / 1e6,
            cfg.model.conditioning,
            b.name(),
            cfg.data.size,
            cfg.batch
        );
    }
    let mut source = Source2d {
        ds: Arc::new(ds),
        seed: cfg.train.seed,
        batch: cfg.batch,
        drawn: 0,
    };
    let summary = train_loop::train(b, &model, &cfg.train, &mut source, run, resume, progress)?;
    run_dir::finish(run)?;
    Ok(summary)
}

pub fn run(args: &TrainSegDiffArgs) -> Result<()> {
    args.run.train(train_run)
}
