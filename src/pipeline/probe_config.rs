//! The configuration of a frozen-feature probe run (`voxdiff train probe`),
//! read from TOML like every run's ([`super::config`]): every field has a
//! default, `--set section.field=value` overrides any of them, data paths
//! resolve against the config file's folder and are stored absolute in the
//! run's `config.toml`. The paper's value stands beside each key in
//! configs/probe.toml and docs/pretraining.md.
//!
//! The backbone, the preprocessing (spacing, window, coordinate source) and
//! the time-step schedule are not settings of the probe: they are the
//! pretraining run's (`data.pretrained_run`), for every feature source, so
//! pretrained, random and from-scratch probes of one run differ in the
//! weights alone.
//!
//! Axis order as in the pretraining configuration: `data.patch` and
//! `infer.patch` are written **x, y, z** (the paper's 128 × 128 × 32).

use super::bpr_config::HeldOut;
use super::config::{self, Checks, RunConfig};
use super::train_loop::TrainConfig;
use crate::data::sliding::Aggregation;
use crate::model::HeadKind;
use crate::ops::AdamW;
use crate::train::LrSchedule;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Labelled CTs, their coordinates, preprocessing and patch sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeDataConfig {
    /// CT volumes (NIfTI files or DICOM series folders), in HU.
    pub images: Vec<PathBuf>,
    /// Label maps, one per CT, on the CT's grid.
    pub labels: Vec<PathBuf>,
    /// Class map JSON turning label ids into classes (docs/data.md).
    pub class_map: Option<PathBuf>,
    /// Probe these classes of the map, in this order (empty = all).
    pub classes: Vec<String>,
    /// k-channel coordinate NIfTIs, one per CT on the CT's grid (the
    /// backbone's extra input channels). Empty: the pretraining run's
    /// coordinate source computes them (its BPR run), or k = 0.
    pub coords: Vec<PathBuf>,
    /// The pretraining run (`voxdiff train pretrain`): its backbone (the
    /// features of `features.source = "pretrained"`, the architecture of
    /// every source) and its preparation of a CT. Required.
    pub pretrained_run: Option<PathBuf>,
    /// Training patch in voxels, **x, y, z** (vox2vec: 128 × 128 × 32).
    pub patch: [usize; 3],
    /// Patches of the one volume drawn per step (the batch).
    pub patches_per_step: usize,
    /// Probability that a patch is forced to hold a voxel of the class drawn
    /// for the step (vox2vec: 0.5).
    pub class_prob: f64,
    /// RAS slice ranges `[start, end)` of the CTs, in the file's own slice
    /// index, that no training patch touches (kept for evaluation).
    pub held_out: Vec<HeldOut>,
}

impl Default for ProbeDataConfig {
    fn default() -> Self {
        ProbeDataConfig {
            images: Vec::new(),
            labels: Vec::new(),
            class_map: None,
            classes: Vec::new(),
            coords: Vec::new(),
            pretrained_run: None,
            patch: [32, 32, 16],
            patches_per_step: 2,
            class_prob: 0.5,
            held_out: Vec::new(),
        }
    }
}

impl ProbeDataConfig {
    /// The patch as tensor extents `[D, H, W]` (= `[z, y, x]`).
    pub fn patch_dhw(&self) -> [usize; 3] {
        [self.patch[2], self.patch[1], self.patch[0]]
    }
}

/// Where the features come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureSource {
    /// The frozen backbone of `data.pretrained_run`.
    Pretrained,
    /// The same backbone with random weights (from `train.seed`), frozen.
    Random,
    /// From scratch: the same backbone, randomly initialised (`train.seed`),
    /// trained with the head on the clean patch (vox2vec's from-scratch
    /// baseline).
    None,
}

/// How the frozen features are made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    pub source: FeatureSource,
    /// Diffusion time steps the clean patch is noised to (one pyramid each,
    /// concatenated per level).
    pub timesteps: Vec<usize>,
    /// Seed of the fixed noise of each patch.
    pub noise_seed: u64,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        FeaturesConfig {
            source: FeatureSource::Pretrained,
            timesteps: vec![10, 30, 60],
            noise_seed: 0,
        }
    }
}

/// The head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    pub kind: HeadKind,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            kind: HeadKind::Nonlinear,
        }
    }
}

/// Settings of `voxdiff segment` on a probe run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeInferConfig {
    /// Sliding-window patch in voxels, **x, y, z**; `None`: the training
    /// patch (vox2vec: 128 × 128 × 32).
    pub patch: Option<[usize; 3]>,
    /// Fraction shared by neighbouring windows (vox2vec: 0.5).
    pub overlap: f64,
    /// `Mean` of overlapping logits (the paper) or `CentreStitch` (vox2vec's code).
    pub aggregation: Aggregation,
    /// A voxel is background unless its largest class probability reaches this.
    pub threshold: f64,
    /// Zero everything outside the body (air < −500 HU flooded from the border).
    pub body_mask: bool,
}

impl Default for ProbeInferConfig {
    fn default() -> Self {
        ProbeInferConfig {
            patch: None,
            overlap: 0.5,
            aggregation: Aggregation::Mean,
            threshold: 0.5,
            body_mask: true,
        }
    }
}

/// The value of `system` in a probe run's configuration.
pub const SYSTEM: &str = "probe";

/// Everything a probe run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Marks the run folder as a probe run (`"probe"`).
    pub system: String,
    pub data: ProbeDataConfig,
    pub features: FeaturesConfig,
    pub head: HeadConfig,
    pub train: TrainConfig,
    pub infer: ProbeInferConfig,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        // vox2vec: Adam, lr 3e-4, constant.
        let lr = 3e-4;
        ProbeConfig {
            system: SYSTEM.to_string(),
            data: ProbeDataConfig::default(),
            features: FeaturesConfig::default(),
            head: HeadConfig::default(),
            train: TrainConfig {
                steps: 300,
                lr: LrSchedule {
                    init: lr,
                    peak: lr,
                    end: lr,
                    warmup_steps: 0,
                    decay_steps: 300,
                },
                adamw: AdamW {
                    weight_decay: 0.0,
                    ..AdamW::default()
                },
                log_every: 10,
                checkpoint_every: 50,
                ..TrainConfig::default()
            },
            infer: ProbeInferConfig::default(),
        }
    }
}

impl ProbeConfig {
    /// Read `path` (if any), apply `overrides`, validate ([`config::load`]).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<ProbeConfig> {
        config::load(path, overrides)
    }
}

impl RunConfig for ProbeConfig {
    const KIND: &'static str = "probe configuration";
    const PATH_KEYS: &'static [&'static str] =
        &["images", "labels", "class_map", "coords", "pretrained_run"];

    fn data_paths_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let d = &mut self.data;
        let mut slots: Vec<(String, &mut PathBuf)> = Vec::new();
        for (key, list) in [
            ("images", &mut d.images),
            ("labels", &mut d.labels),
            ("coords", &mut d.coords),
        ] {
            for (i, p) in list.iter_mut().enumerate() {
                slots.push((format!("data.{key}[{i}]"), p));
            }
        }
        if let Some(p) = d.class_map.as_mut() {
            slots.push(("data.class_map".into(), p));
        }
        if let Some(p) = d.pretrained_run.as_mut() {
            slots.push(("data.pretrained_run".into(), p));
        }
        slots
    }

    fn validate(&self) -> Result<()> {
        let mut c = Checks::default();
        c.require(self.system == SYSTEM, || {
            format!(
                "system = {:?}: a probe configuration has system = \"{SYSTEM}\"",
                self.system
            )
        });
        let d = &self.data;
        c.require(!d.images.is_empty(), || "data.images: no CTs given".into());
        c.require(d.images.len() == d.labels.len(), || {
            format!(
                "data: {} images but {} label maps",
                d.images.len(),
                d.labels.len()
            )
        });
        c.require(
            d.coords.is_empty() || d.coords.len() == d.images.len(),
            || {
                format!(
                    "data.coords: {} coordinate files for {} images (give one per image, or none)",
                    d.coords.len(),
                    d.images.len()
                )
            },
        );
        c.require(d.class_map.is_some(), || {
            "data.class_map is required (it names the classes and maps label ids to them)".into()
        });
        c.require(d.pretrained_run.is_some(), || {
            "data.pretrained_run is required: the pretraining run gives the backbone and the \
             preparation of the CTs (for every features.source)"
                .into()
        });
        for (a, &v) in d.patch.iter().enumerate() {
            c.at_least(&format!("data.patch[{a}]"), v as u64, 1);
        }
        c.at_least("data.patches_per_step", d.patches_per_step as u64, 1);
        c.fraction("data.class_prob", d.class_prob, true);
        HeldOut::check_all(&mut c, &d.held_out, d.images.len());

        let f = &self.features;
        c.require(
            f.source == FeatureSource::None || !f.timesteps.is_empty(),
            || "features.timesteps: at least one time step".into(),
        );

        self.train.check(&mut c);

        let i = &self.infer;
        if let Some(p) = i.patch {
            for (a, &v) in p.iter().enumerate() {
                c.at_least(&format!("infer.patch[{a}]"), v as u64, 1);
            }
        }
        c.fraction("infer.overlap", i.overlap, false);
        c.fraction("infer.threshold", i.threshold, true);
        if let Aggregation::Gaussian { sigma_scale } = i.aggregation {
            c.positive("infer.aggregation.Gaussian.sigma_scale", sigma_scale);
        }
        c.finish()
    }
}

/// Whether `run` holds a probe run (its `config.toml` has `system =
/// "probe"`).
pub fn is_probe_run(run: &Path) -> bool {
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
