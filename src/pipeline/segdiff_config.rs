//! The configuration of a SegDiff run (`voxdiff train segdiff --config
//! FILE`), TOML with every table optional and unknown keys refused:
//!
//! ```toml
//! system = "segdiff"   # marks the run folder as a 2D SegDiff run
//! objective = "diffusion"  # or "supervised": the same network, mask logits in one pass
//! batch = 4            # images per optimiser step
//! [data]               # image/mask folders, model size, split, augmentation (docs/data.md)
//! [model]              # the network (src/model/segdiff): conditioning, channels, …
//! [diffusion]          # timesteps (T; linear β scaled by 1000/T)
//! [train]              # steps, learning rate, AdamW, seed, logging (docs/training.md)
//! [infer]              # samples, sampler, steps, seed used by `voxdiff segment`
//! ```
//! Relative data paths in a file resolve against the file's folder, those
//! given with `--set` against the working directory; both are stored
//! absolute in the run's `config.toml` (see `super::run`).

use super::config::{self, Checks, RunConfig};
use super::segdiff_fusion::Fusion;
use super::train_loop::TrainConfig;
use crate::data::image2d::Data2dConfig;
use crate::diffusion::{BetaSchedule, Sampler, Schedule};
use crate::model::SegDiffNetConfig;
use crate::train::LrSchedule;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The value of `system` in a SegDiff run's configuration.
pub const SYSTEM: &str = "segdiff";

/// The forward process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegDiffDiffusion {
    /// T. β is linear from 1000/T·1e-4 to 1000/T·0.02 (improved diffusion's
    /// "linear" schedule, which keeps ᾱ_T near 0 for any T).
    pub timesteps: usize,
}

impl Default for SegDiffDiffusion {
    fn default() -> Self {
        SegDiffDiffusion { timesteps: 100 }
    }
}

impl SegDiffDiffusion {
    pub fn schedule(&self) -> Result<Schedule> {
        let t = self.timesteps;
        ensure!(t >= 2, "diffusion.timesteps must be ≥ 2, got {t}");
        let scale = 1000.0 / t as f64;
        Schedule::new(BetaSchedule::Linear, t, scale * 1e-4, scale * 0.02, t)
    }
}

/// How `voxdiff segment` samples (each a command-line flag too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegDiffInfer {
    /// Ensemble members, sampled as one batch.
    pub samples: usize,
    pub sampler: Sampler,
    /// Sampling steps (≤ T; None: all T).
    pub steps: Option<usize>,
    pub seed: u64,
    /// Clamp each step's x̂₀ to the masks' range before the reverse step
    /// (improved diffusion's `clip_denoised`). The reference's medical
    /// scripts turn it off for networks trained 10⁵ iterations; a network
    /// trained minutes needs it (docs/segdiff.md, "Why the first run did
    /// not learn").
    pub clip_denoised: bool,
    /// How the ensemble becomes one mask (`super::segdiff_fusion`).
    pub fusion: Fusion,
}

impl Default for SegDiffInfer {
    fn default() -> Self {
        SegDiffInfer {
            samples: 9,
            sampler: Sampler::Ddpm,
            steps: None,
            seed: 0,
            clip_denoised: true,
            fusion: Fusion::Mean,
        }
    }
}

/// What the network is trained to output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// SegDiff: ε of a noisy mask x_t given the image and t (diffusion).
    Diffusion,
    /// The supervised 2D baseline: the same network with x_t = 0 and t = 0,
    /// the image through its conditioning (the RRDB encoder, or input
    /// channels with `conditioning = "concat"`), its output the foreground
    /// logit; trained with cross-entropy + soft Dice, segmenting in one pass.
    Supervised,
}

/// Everything a SegDiff run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegDiffConfig {
    pub system: String,
    pub objective: Objective,
    pub batch: usize,
    pub data: Data2dConfig,
    pub model: SegDiffNetConfig,
    pub diffusion: SegDiffDiffusion,
    pub train: TrainConfig,
    pub infer: SegDiffInfer,
}

impl Default for SegDiffConfig {
    fn default() -> Self {
        SegDiffConfig {
            system: SYSTEM.to_string(),
            objective: Objective::Diffusion,
            batch: 4,
            data: Data2dConfig {
                size: 64,
                ..Data2dConfig::default()
            },
            model: SegDiffNetConfig::cpu(),
            diffusion: SegDiffDiffusion::default(),
            train: TrainConfig {
                steps: 2000,
                lr: LrSchedule {
                    init: 1e-5,
                    peak: 2e-4,
                    end: 2e-5,
                    warmup_steps: 50,
                    decay_steps: 2000,
                },
                log_every: 10,
                checkpoint_every: 250,
                ..TrainConfig::default()
            },
            infer: SegDiffInfer::default(),
        }
    }
}

impl SegDiffConfig {
    /// Read `path` (if any), apply `overrides`, validate ([`config::load`]).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<SegDiffConfig> {
        config::load(path, overrides)
    }
}

impl RunConfig for SegDiffConfig {
    const KIND: &'static str = "SegDiff configuration";
    const PATH_KEYS: &'static [&'static str] = &["images", "masks"];

    fn validate(&self) -> Result<()> {
        ensure!(
            self.system == SYSTEM,
            "system = {:?}: a SegDiff configuration has system = \"{SYSTEM}\"",
            self.system
        );
        ensure!(self.batch >= 1, "batch must be ≥ 1");
        let mut c = Checks::default();
        self.train.check(&mut c);
        c.finish()?;
        ensure!(self.data.size >= 1, "data.size must be ≥ 1");
        self.model.validate()?;
        self.diffusion.schedule()?;
        ensure!(self.infer.samples >= 1, "infer.samples must be ≥ 1");
        if let Some(s) = self.infer.steps {
            ensure!(
                s >= 1 && s <= self.diffusion.timesteps,
                "infer.steps = {s} must be in 1..={}",
                self.diffusion.timesteps
            );
        }
        Ok(())
    }

    fn data_paths_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        vec![
            ("data.images".to_string(), &mut self.data.images),
            ("data.masks".to_string(), &mut self.data.masks),
        ]
    }
}

/// Whether the run folder `run` holds a SegDiff run (its `config.toml` says
/// `system = "segdiff"`); false for other runs and for folders without a
/// readable configuration.
pub fn is_segdiff_run(run: &Path) -> bool {
    std::fs::read_to_string(run.join(super::run::CONFIG))
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|d| {
            d.get("system")
                .and_then(|s| s.as_str())
                .map(|s| s == SYSTEM)
        })
        .unwrap_or(false)
}
