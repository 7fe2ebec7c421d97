//! The configuration of a diffusion pretraining run (`voxdiff train
//! pretrain`), read from TOML like every run configuration
//! ([`super::config`]): every field has a default, `--set
//! section.field=value` overrides any of them, data paths resolve against
//! the config file's folder and are stored absolute in the run's
//! `config.toml`.
//!
//! Axis order: `data.spacing_mm` and `data.patch` are written **x, y, z**
//! (the paper's "1 × 1 × 2 mm" and "128 × 128 × 32"); in the RAS grid the
//! volumes are prepared on, x is the width W, y the height H and z the
//! depth D (the slice axis), so a patch `[px, py, pz]` is the tensor
//! `[1, pz, py, px, C]` (NDHWC).

use super::bpr_config::HeldOut;
use super::config::{self, Checks, RunConfig};
use super::train_loop::TrainConfig;
use crate::model::fpn3d::FpnConfig;
use crate::train::LrSchedule;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// CT volumes, their coordinate channels, preprocessing and patch sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainData {
    /// CT volumes (NIfTI files or DICOM series folders), in Hounsfield
    /// units; a folder of NIfTI files stands for all of them, sorted by name
    /// (`data.held_out` counts in that expanded list).
    pub images: Vec<PathBuf>,
    /// Coordinates from a body-part-regression run (`voxdiff train bpr`):
    /// each CT's slice scores, smoothed, as one channel (k = 1). Exclusive
    /// with `coords`.
    pub bpr_run: Option<PathBuf>,
    /// One precomputed k-channel coordinate NIfTI per image, on its image's
    /// exact grid (shape and affine); a folder stands for its NIfTI files,
    /// sorted by name, matched to the images in order. Exclusive with `bpr_run`. Neither
    /// given: no coordinates (k = 0, the unconditioned baseline).
    pub coords: Vec<PathBuf>,
    /// Optional linear map of the coordinate values, `[a, b]` → `[0, 1]`
    /// (not clipped), e.g. a BPR run's score range. Absent: values as given.
    pub coord_window: Option<[f32; 2]>,
    /// Voxel size the volumes are resampled to, mm, **x, y, z** (paper:
    /// [1, 1, 2]).
    pub spacing_mm: [f64; 3],
    /// HU window mapped linearly to [0, 1], clipped (paper: [−1350, 1000]).
    pub window: [f32; 2],
    /// Patch extents in voxels, **x, y, z** (paper: [128, 128, 32]).
    pub patch: [usize; 3],
    /// Patches per optimiser step (the batch).
    pub patches_per_step: usize,
    /// Slices never trained on, per image: `[start, end)` in the RAS slice
    /// index of the image as read (0 = the most inferior slice), as in
    /// `voxdiff train bpr`. A patch never covers a held-out slice.
    pub held_out: Vec<HeldOut>,
}

impl Default for PretrainData {
    fn default() -> Self {
        PretrainData {
            images: Vec::new(),
            bpr_run: None,
            coords: Vec::new(),
            coord_window: None,
            spacing_mm: [3.0, 3.0, 4.0],
            window: [-1350.0, 1000.0],
            patch: [32, 32, 16],
            patches_per_step: 2,
            held_out: Vec::new(),
        }
    }
}

impl PretrainData {
    /// Where the coordinate channels come from.
    pub fn coord_source(&self) -> CoordSource<'_> {
        match (&self.bpr_run, self.coords.is_empty()) {
            (Some(run), _) => CoordSource::Bpr(run),
            (None, false) => CoordSource::Files(&self.coords),
            (None, true) => CoordSource::None,
        }
    }

    /// The number of coordinate channels when the config alone fixes it
    /// (BPR: 1, none: 0); `None` for coordinate files (read from the files).
    pub fn known_k(&self) -> Option<usize> {
        match self.coord_source() {
            CoordSource::Bpr(_) => Some(1),
            CoordSource::Files(_) => None,
            CoordSource::None => Some(0),
        }
    }

    /// The patch as tensor extents `[D, H, W]` (= `[z, y, x]`).
    pub fn patch_dhw(&self) -> [usize; 3] {
        [self.patch[2], self.patch[1], self.patch[0]]
    }

    /// The spacing as volume order `[sd, sh, sw]` (= `[z, y, x]`).
    pub fn spacing_dhw(&self) -> [f64; 3] {
        [self.spacing_mm[2], self.spacing_mm[1], self.spacing_mm[0]]
    }
}

/// The coordinate source of [`PretrainData`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordSource<'a> {
    Bpr(&'a Path),
    Files(&'a [PathBuf]),
    None,
}

/// Which pretraining objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    /// DDPM: t uniform in 0…T−1, predict ε, MSE.
    Diffusion,
    /// The same network and loss at one fixed time step
    /// (`objective.restorative_t`): plain denoising, the paper's
    /// "restorative" baseline.
    Restorative,
}

/// The training objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objective {
    pub kind: ObjectiveKind,
    /// T, the diffusion steps (paper: 1000).
    pub timesteps: usize,
    /// Linear β from `beta[0]` to `beta[1]` (paper: 1e-4 … 0.02).
    pub beta: [f64; 2],
    /// The one time step of the restorative objective (0 ≤ t < T).
    pub restorative_t: usize,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            kind: ObjectiveKind::Diffusion,
            timesteps: 1000,
            beta: [1e-4, 0.02],
            restorative_t: 100,
        }
    }
}

/// Everything a pretraining run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    pub data: PretrainData,
    /// The backbone; `in_channels` = 1 + k.
    pub model: FpnConfig,
    pub objective: Objective,
    pub train: TrainConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            data: PretrainData::default(),
            model: FpnConfig {
                base_channels: 8,
                num_scales: 4,
                // No coordinate source by default: k = 0.
                ..FpnConfig::pretrain(0)
            },
            objective: Objective::default(),
            train: TrainConfig {
                steps: 2000,
                lr: LrSchedule {
                    init: 1e-5,
                    peak: 3e-4,
                    end: 1e-5,
                    warmup_steps: 100,
                    decay_steps: 2000,
                },
                checkpoint_every: 100,
                ..TrainConfig::default()
            },
        }
    }
}

impl PretrainConfig {
    /// Read `path` (if any), apply `overrides`, validate ([`config::load`]).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<PretrainConfig> {
        config::load(path, overrides)
    }

    /// k, the coordinate channels the model takes (`model.in_channels − 1`).
    pub fn coord_channels(&self) -> usize {
        self.model.in_channels.saturating_sub(1)
    }
}

impl RunConfig for PretrainConfig {
    const KIND: &'static str = "pretraining configuration";
    const PATH_KEYS: &'static [&'static str] = &["images", "bpr_run", "coords"];

    fn data_paths_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let d = &mut self.data;
        let mut out: Vec<(String, &mut PathBuf)> = d
            .images
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (format!("data.images[{i}]"), p))
            .collect();
        if let Some(r) = d.bpr_run.as_mut() {
            out.push(("data.bpr_run".into(), r));
        }
        out.extend(
            d.coords
                .iter_mut()
                .enumerate()
                .map(|(i, p)| (format!("data.coords[{i}]"), p)),
        );
        out
    }

    /// A folder among `data.images` (or `data.coords`) stands for the NIfTI
    /// files in it, sorted by name: a thousand CTs are one line. The run's
    /// `config.toml` lists the files, so a resumed run reads the same ones.
    fn expand_folders(&mut self) -> Result<()> {
        self.data.images = config::expand_nifti_folders("data.images", &self.data.images)?;
        self.data.coords = config::expand_nifti_folders("data.coords", &self.data.coords)?;
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
        c.require(d.bpr_run.is_none() || d.coords.is_empty(), || {
            "data.bpr_run and data.coords: give one coordinate source, not both".into()
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
        if let Some(k) = d.known_k() {
            c.require(self.model.in_channels == 1 + k, || {
                let why = if k == 0 {
                    "no coordinate source (neither data.bpr_run nor data.coords)".to_string()
                } else {
                    "data.bpr_run gives one coordinate channel".to_string()
                };
                format!(
                    "model.in_channels must be 1 + k = {} ({why}), got {}",
                    1 + k,
                    self.model.in_channels
                )
            });
        }
        if let Some(w) = d.coord_window {
            c.require(w.iter().all(|v| v.is_finite()) && w[1] != w[0], || {
                format!("data.coord_window must be two finite, different numbers, got {w:?}")
            });
        }
        for (a, s) in ["x", "y", "z"].iter().zip(d.spacing_mm) {
            c.positive(&format!("data.spacing_mm ({a})"), s);
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
        // Every level halves the extents; the deepest must keep ≥ 1 voxel,
        // and the patch should divide evenly so no level is cropped.
        let levels = self.model.num_scales.max(1) as u32 - 1;
        for (a, p) in ["x", "y", "z"].iter().zip(d.patch) {
            c.require(p >= 1 && p % (1 << levels) == 0, || {
                format!(
                    "data.patch ({a}) must be a positive multiple of 2^(model.num_scales − 1) = {}, \
                     got {p}",
                    1 << levels
                )
            });
        }
        c.at_least("data.patches_per_step", d.patches_per_step as u64, 1);
        HeldOut::check_all(&mut c, &d.held_out, d.images.len());

        let m = &self.model;
        c.at_least("model.in_channels", m.in_channels as u64, 1);
        c.at_least("model.base_channels", m.base_channels as u64, 1);
        c.require((1..=12).contains(&m.num_scales), || {
            format!("model.num_scales must be in 1..=12, got {}", m.num_scales)
        });
        c.at_least("model.blocks", m.blocks as u64, 1);
        c.require(
            m.time || self.objective.kind == ObjectiveKind::Restorative,
            || {
                "model.time must be true for the diffusion objective (the network must know t)"
                    .into()
            },
        );
        if m.norm == crate::model::fpn3d_block::NormKind::Group {
            c.require(
                m.groups >= 1 && m.base_channels.is_multiple_of(m.groups.max(1)),
                || {
                    format!(
                        "model.groups must divide model.base_channels ({}), got {}",
                        m.base_channels, m.groups
                    )
                },
            );
        }

        let o = &self.objective;
        c.at_least("objective.timesteps", o.timesteps as u64, 1);
        c.require(
            o.beta[0] > 0.0 && o.beta[0] <= o.beta[1] && o.beta[1] < 1.0,
            || {
                format!(
                    "objective.beta must be [start, end] with 0 < start ≤ end < 1, got {:?}",
                    o.beta
                )
            },
        );
        c.require(o.restorative_t < o.timesteps.max(1), || {
            format!(
                "objective.restorative_t must be in 0..objective.timesteps ({}), got {}",
                o.timesteps, o.restorative_t
            )
        });

        self.train.check(&mut c);
        c.finish()
    }
}
