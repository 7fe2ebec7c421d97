//! The configuration of a segmentation run (`voxdiff train seg`), read from
//! TOML ([`super::config`]: paths, `--set` overrides, range checks). Every
//! field has a default — the paper's where the paper sets one.

use super::config::{self, Checks, RunConfig};
use super::seg_model::ModelConfig;
use super::train_loop::TrainConfig;
use crate::data::phantom::PhantomConfig;
use crate::data::sliding::Aggregation;
use crate::diffusion::seg::DiffusionConfig;
use crate::diffusion::Sampler;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the training cases come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in synthetic abdomen.
    Phantom,
    /// NIfTI files: `images` paired with `labels` by position.
    Files,
}

/// Data and preprocessing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub source: DataSource,
    /// Scans (`source = "files"`).
    pub images: Vec<PathBuf>,
    /// Label maps, one per scan, on the scan's grid.
    pub labels: Vec<PathBuf>,
    /// Class map JSON turning label ids into classes (docs/data.md); without
    /// it, label ids are used as classes 0..K−1 directly.
    pub class_map: Option<PathBuf>,
    /// Train on these classes of the map only, in this order (empty = all);
    /// the others become background.
    pub classes: Vec<String>,
    /// Phantom cases generated for training (`source = "phantom"`), seeds 0..n.
    pub phantom_cases: usize,
    pub phantom: PhantomConfig,
    /// Resample every case to this voxel size [sd, sh, sw] in mm (None: keep).
    pub spacing: Option<[f64; 3]>,
    /// HU window mapped to [0, 1] (ImgX: [−991, 362]).
    pub window: [f32; 2],
    /// Training patch [D, H, W]; 0 in an axis = the whole extent of the
    /// largest case along it.
    pub patch: [usize; 3],
    /// Probability that a patch is centred on a voxel of a random present class.
    pub fg_prob: f64,
    /// Random affine (rotation, scale, shift) and intensity augmentation
    /// (CT defaults, `Augment::ct_default`) on or off.
    pub augment: bool,
    /// Probability that a training patch is cut to a smaller simulated field
    /// of view (`Augment::fov_cut`): outside a random box it reads as outside
    /// the scan, as a crop padded to the patch does at inference.
    pub fov_prob: f64,
    /// Smallest fraction of the patch's extent, per axis, such a cut keeps.
    pub fov_keep: f64,
    /// Loader worker threads.
    pub workers: usize,
    /// Held-out scans scored during training (`train.validate_every`): the
    /// validation Dice of each class, in the log and on progress.png.
    pub validation_images: Vec<PathBuf>,
    /// Their label maps, one per scan.
    pub validation_labels: Vec<PathBuf>,
    /// Held-out phantom cases (`source = "phantom"`): seeds after the
    /// training ones.
    pub validation_phantom_cases: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: DataSource::Phantom,
            images: Vec::new(),
            labels: Vec::new(),
            class_map: None,
            classes: Vec::new(),
            phantom_cases: 8,
            phantom: PhantomConfig::default(),
            spacing: None,
            window: [-991.0, 362.0],
            patch: [0, 0, 0],
            fg_prob: 0.5,
            augment: false,
            fov_prob: 0.0,
            fov_keep: 0.25,
            workers: 1,
            validation_images: Vec::new(),
            validation_labels: Vec::new(),
            validation_phantom_cases: 0,
        }
    }
}

/// Inference settings used by `voxdiff segment` (overridable there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferConfig {
    pub sampler: Sampler,
    /// Sampling steps (None: all T).
    pub steps: Option<usize>,
    /// Samples fused by majority vote.
    pub samples: usize,
    /// Sliding-window patch [D, H, W]; None: the whole volume at once.
    pub patch: Option<[usize; 3]>,
    pub overlap: f64,
    pub aggregation: Aggregation,
    pub seed: u64,
}

impl Default for InferConfig {
    fn default() -> Self {
        InferConfig {
            sampler: Sampler::Ddpm,
            steps: None,
            samples: 1,
            patch: None,
            overlap: 0.25,
            aggregation: Aggregation::Gaussian { sigma_scale: 0.125 },
            seed: 0,
        }
    }
}

/// Everything a segmentation run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SegConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    pub infer: InferConfig,
}

/// The range check only a segmentation configuration needs.
impl Checks {
    /// A patch extent the network can take: `zero_ok` and 0 (the whole
    /// extent), or at least the network's downsampling factor.
    fn patch(&mut self, key: &str, p: [usize; 3], factor: usize, zero_ok: bool) {
        let ok = p.iter().all(|&v| (zero_ok && v == 0) || v >= factor);
        self.require(ok, || {
            format!(
                "{key} must be {}≥ {factor} along every axis (the network halves the extents \
                 {} times), got {p:?}",
                if zero_ok {
                    "0 (the whole extent) or "
                } else {
                    ""
                },
                factor.trailing_zeros()
            )
        });
    }
}

impl SegConfig {
    /// Read `path` (if any), apply `overrides`, validate ([`config::load`]).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<SegConfig> {
        config::load(path, overrides)
    }
}

impl RunConfig for SegConfig {
    const KIND: &'static str = "configuration";
    const PATH_KEYS: &'static [&'static str] = &[
        "images",
        "labels",
        "class_map",
        "validation_images",
        "validation_labels",
    ];

    fn data_paths_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let d = &mut self.data;
        let mut slots: Vec<(String, &mut PathBuf)> = Vec::new();
        for (i, p) in d.images.iter_mut().enumerate() {
            slots.push((format!("data.images[{i}]"), p));
        }
        for (i, p) in d.labels.iter_mut().enumerate() {
            slots.push((format!("data.labels[{i}]"), p));
        }
        for (i, p) in d.validation_images.iter_mut().enumerate() {
            slots.push((format!("data.validation_images[{i}]"), p));
        }
        for (i, p) in d.validation_labels.iter_mut().enumerate() {
            slots.push((format!("data.validation_labels[{i}]"), p));
        }
        if let Some(p) = d.class_map.as_mut() {
            slots.push(("data.class_map".to_string(), p));
        }
        slots
    }

    /// Check every setting against its range; the error lists each setting
    /// out of range with its key, the range and the value.
    fn validate(&self) -> Result<()> {
        let mut c = Checks::default();
        let d = &self.data;
        if d.source == DataSource::Files {
            c.require(!d.images.is_empty(), || {
                "data.images: no scans given (data.source = \"files\")".into()
            });
            c.require(d.images.len() == d.labels.len(), || {
                format!(
                    "data: {} images but {} label maps",
                    d.images.len(),
                    d.labels.len()
                )
            });
        } else {
            c.at_least("data.phantom_cases", d.phantom_cases as u64, 1);
        }
        c.require(
            d.validation_images.len() == d.validation_labels.len(),
            || {
                format!(
                    "data: {} validation images but {} validation label maps",
                    d.validation_images.len(),
                    d.validation_labels.len()
                )
            },
        );
        for a in 0..3 {
            c.at_least(
                &format!("data.phantom.dims[{a}]"),
                d.phantom.dims[a] as u64,
                1,
            );
            c.positive(&format!("data.phantom.spacing[{a}]"), d.phantom.spacing[a]);
        }
        c.non_negative("data.phantom.noise_hu", d.phantom.noise_hu as f64);
        if let Some(s) = d.spacing {
            for (a, &v) in s.iter().enumerate() {
                c.positive(&format!("data.spacing[{a}]"), v);
            }
        }
        c.require(
            d.window.iter().all(|v| v.is_finite()) && d.window[1] > d.window[0],
            || {
                format!(
                    "data.window must be two finite numbers, low < high, got {:?}",
                    d.window
                )
            },
        );
        c.fraction("data.fg_prob", d.fg_prob, true);
        c.fraction("data.fov_prob", d.fov_prob, true);
        c.require(d.fov_keep > 0.0 && d.fov_keep <= 1.0, || {
            format!("data.fov_keep must be in (0, 1], got {}", d.fov_keep)
        });
        c.at_least("data.workers", d.workers as u64, 1);

        let m = &self.model;
        c.require(!m.channels.is_empty(), || {
            "model.channels must list at least one level, got []".into()
        });
        c.require(m.channels.iter().all(|&v| v >= 1), || {
            format!("model.channels must all be ≥ 1, got {:?}", m.channels)
        });
        let factor = 1usize << m.channels.len().min(16);
        c.patch("data.patch", d.patch, factor, true);

        let f = &self.diffusion;
        c.at_least(
            "diffusion.num_timesteps_beta",
            f.num_timesteps_beta as u64,
            1,
        );
        c.require(
            (1..=f.num_timesteps_beta.max(1)).contains(&f.num_timesteps),
            || {
                format!(
                    "diffusion.num_timesteps must be in 1..={} (diffusion.num_timesteps_beta), got {}",
                    f.num_timesteps_beta, f.num_timesteps
                )
            },
        );
        for (key, v) in [
            ("diffusion.beta_start", f.beta_start),
            ("diffusion.beta_end", f.beta_end),
        ] {
            c.require(v > 0.0 && v < 1.0, || {
                format!("{key} must be in (0, 1), got {v}")
            });
        }
        c.non_negative("diffusion.mse_weight", f.mse_weight);
        c.non_negative("diffusion.ce_weight", f.ce_weight);
        c.non_negative("diffusion.dice_weight", f.dice_weight);
        c.require(f.ce_weight + f.dice_weight > 0.0, || {
            "diffusion.ce_weight and diffusion.dice_weight are both 0: the loss would be 0".into()
        });

        self.train.check(&mut c);

        let i = &self.infer;
        if let Some(s) = i.steps {
            c.require((1..=f.num_timesteps).contains(&s), || {
                format!(
                    "infer.steps must be in 1..={} (diffusion.num_timesteps), got {s}",
                    f.num_timesteps
                )
            });
        }
        c.at_least("infer.samples", i.samples as u64, 1);
        if let Some(p) = i.patch {
            c.patch("infer.patch", p, factor, false);
        }
        c.fraction("infer.overlap", i.overlap, false);
        if let Aggregation::Gaussian { sigma_scale } = i.aggregation {
            c.positive("infer.aggregation.Gaussian.sigma_scale", sigma_scale);
        }
        c.finish()
    }
}
