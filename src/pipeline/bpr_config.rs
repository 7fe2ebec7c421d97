//! The configuration of a body-part-regression run (`voxdiff train bpr`),
//! read from TOML like a segmentation run's ([`super::seg_config`]): every
//! field has a default, `--set section.field=value` overrides any of them,
//! data paths resolve against the config file's folder (or, from `--set`, the
//! working directory) and are stored absolute in the run's `config.toml`.

use super::config::{self, Checks, RunConfig};
use super::train_loop::TrainConfig;
use crate::model::bpr::{BprLossConfig, BprNetConfig};
use crate::train::LrSchedule;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Volumes, preprocessing and slice sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BprDataConfig {
    /// CT volumes (NIfTI files or DICOM series folders).
    pub images: Vec<PathBuf>,
    /// Slices never trained on, per image (a z-range kept for evaluation).
    pub held_out: Vec<HeldOut>,
    /// Optional prior on the body regions, one integer per image: an image
    /// with a higher number lies above (e.g. abdomen 0, head 1), and the
    /// region loss asks its slices to score above those of the lower one.
    /// Empty = no prior (the self-supervised losses alone).
    pub regions: Vec<i64>,
    /// In-plane voxel size the slices are resampled to, mm (paper: 3.5).
    pub spacing_mm: f64,
    /// Slices are centre cropped / padded to `size × size` (paper: 128).
    pub size: usize,
    /// HU window mapped to [−1, 1] (bpreg: [−1000, 1500]).
    pub window: [f32; 2],
    /// Equidistant slices drawn per volume and step (m).
    pub slices_per_volume: usize,
    /// The gap between consecutive drawn slices is drawn from this range, mm
    /// (shrunk for volumes too short to hold m slices that far apart).
    pub gap_mm: [f64; 2],
}

impl Default for BprDataConfig {
    fn default() -> Self {
        BprDataConfig {
            images: Vec::new(),
            held_out: Vec::new(),
            regions: Vec::new(),
            spacing_mm: 7.0,
            size: 64,
            window: [-1000.0, 1500.0],
            slices_per_volume: 4,
            gap_mm: [5.0, 100.0],
        }
    }
}

/// A range of slices of one training image that is never trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOut {
    /// Index into `data.images`.
    pub image: usize,
    /// `[start, end)` in the volume's RAS slice index (0 = the most inferior slice).
    pub slices: [usize; 2],
}

impl HeldOut {
    /// Check `held` (`data.held_out`) against `images` training images: each
    /// names an image that exists and a non-empty `[start, end)` range.
    pub fn check_all(c: &mut Checks, held: &[HeldOut], images: usize) {
        for (i, h) in held.iter().enumerate() {
            c.require(h.image < images, || {
                format!(
                    "data.held_out[{i}].image must be an index into data.images (0..{images}), got {}",
                    h.image
                )
            });
            c.require(h.slices[0] < h.slices[1], || {
                format!(
                    "data.held_out[{i}].slices must be [start, end) with start < end, got {:?}",
                    h.slices
                )
            });
        }
    }
}

/// Settings of `voxdiff bpr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BprInferConfig {
    /// σ of the Gaussian smoothing of the scores along z, mm (bpreg: 10).
    pub smoothing_mm: f64,
    /// Slices scored per forward pass.
    pub batch: usize,
}

impl Default for BprInferConfig {
    fn default() -> Self {
        BprInferConfig {
            smoothing_mm: 10.0,
            batch: 64,
        }
    }
}

/// Everything a BPR run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BprConfig {
    pub data: BprDataConfig,
    pub model: BprNetConfig,
    pub loss: BprLossConfig,
    pub train: TrainConfig,
    pub infer: BprInferConfig,
}

impl Default for BprConfig {
    fn default() -> Self {
        BprConfig {
            data: BprDataConfig::default(),
            model: BprNetConfig::default(),
            loss: BprLossConfig::default(),
            train: TrainConfig {
                steps: 2000,
                lr: LrSchedule {
                    init: 1e-5,
                    peak: 1e-3,
                    end: 1e-5,
                    warmup_steps: 100,
                    decay_steps: 2000,
                },
                checkpoint_every: 200,
                ..TrainConfig::default()
            },
            infer: BprInferConfig::default(),
        }
    }
}

impl BprConfig {
    /// Read `path` (if any), apply `overrides`, validate ([`config::load`]).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<BprConfig> {
        config::load(path, overrides)
    }
}

impl RunConfig for BprConfig {
    const KIND: &'static str = "BPR configuration";
    const PATH_KEYS: &'static [&'static str] = &["images"];

    fn data_paths_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        self.data
            .images
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (format!("data.images[{i}]"), p))
            .collect()
    }

    /// A folder among `data.images` stands for the NIfTI files in it,
    /// sorted by name (as in the pretraining configuration).
    fn expand_folders(&mut self) -> Result<()> {
        self.data.images = config::expand_nifti_folders("data.images", &self.data.images)?;
        Ok(())
    }

    /// Check every setting against its range; the error lists each one out
    /// of range with its key, the range and the value.
    fn validate(&self) -> Result<()> {
        let mut c = Checks::default();
        let d = &self.data;
        c.require(!d.images.is_empty(), || {
            "data.images: no CT volumes given".into()
        });
        HeldOut::check_all(&mut c, &d.held_out, d.images.len());
        c.require(
            d.regions.is_empty() || d.regions.len() == d.images.len(),
            || {
                format!(
                    "data.regions: {} numbers for {} images (give one per image, or none)",
                    d.regions.len(),
                    d.images.len()
                )
            },
        );
        c.positive("data.spacing_mm", d.spacing_mm);
        c.at_least("data.size", d.size as u64, 1);
        c.require(
            d.window.iter().all(|v| v.is_finite()) && d.window[1] > d.window[0],
            || {
                format!(
                    "data.window must be two finite numbers, low < high, got {:?}",
                    d.window
                )
            },
        );
        let min_m = if self.loss.distance_weight > 0.0 {
            3
        } else {
            2
        };
        c.at_least("data.slices_per_volume", d.slices_per_volume as u64, min_m);
        c.positive("data.gap_mm[0]", d.gap_mm[0]);
        c.require(d.gap_mm[1] >= d.gap_mm[0], || {
            format!(
                "data.gap_mm must be [low, high] with low ≤ high, got {:?}",
                d.gap_mm
            )
        });

        let m = &self.model;
        c.require(
            !m.blocks.is_empty() && m.blocks.iter().all(|b| !b.is_empty()),
            || {
                format!(
                    "model.blocks must list blocks of at least one width, got {:?}",
                    m.blocks
                )
            },
        );
        c.require(m.blocks.iter().flatten().all(|&w| w >= 1), || {
            format!("model.blocks widths must all be ≥ 1, got {:?}", m.blocks)
        });
        c.at_least("model.head", m.head as u64, 1);

        let l = &self.loss;
        for (key, v) in [
            ("loss.order_weight", l.order_weight),
            ("loss.distance_weight", l.distance_weight),
            ("loss.heuristic_weight", l.heuristic_weight),
            ("loss.region_weight", l.region_weight),
        ] {
            c.non_negative(key, v as f64);
        }
        c.require(
            l.order_weight + l.distance_weight + l.heuristic_weight > 0.0,
            || "loss: every weight is 0, the loss would be 0".into(),
        );
        c.positive("loss.smooth_l1_beta", l.smooth_l1_beta as f64);
        c.positive("loss.gap_unit_mm", l.gap_unit_mm as f64);
        c.positive("loss.heuristic_alpha", l.heuristic_alpha as f64);
        c.positive("loss.heuristic_beta", l.heuristic_beta as f64);

        self.train.check(&mut c);

        c.non_negative("infer.smoothing_mm", self.infer.smoothing_mm);
        c.at_least("infer.batch", self.infer.batch as u64, 1);
        c.finish()
    }
}
