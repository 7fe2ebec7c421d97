//! The configuration of a segmentation run (`voxdiff train seg`), read from
//! TOML. Every field has a default — the paper's where the paper sets one —
//! and every field can be overridden from the command line with
//! `--set section.field=value` (the value is TOML: `--set train.steps=200`,
//! `--set data.spacing=[5.0,5.0,5.0]`, `--set model.kind="unet"`).

use super::seg_model::ModelConfig;
use super::train_loop::TrainConfig;
use crate::data::phantom::PhantomConfig;
use crate::data::sliding::Aggregation;
use crate::diffusion::seg::DiffusionConfig;
use crate::diffusion::Sampler;
use anyhow::{bail, ensure, Context, Result};
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
    /// Random affine / flip / intensity augmentation (CT defaults) on or off.
    pub augment: bool,
    /// Loader worker threads.
    pub workers: usize,
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
            workers: 1,
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

/// Apply one `path.to.field=value` override to a TOML document.
fn apply_override(doc: &mut toml::Table, spec: &str) -> Result<()> {
    let (path, value) = spec
        .split_once('=')
        .with_context(|| format!("--set {spec}: expected section.field=value"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    ensure!(
        keys.iter().all(|k| !k.is_empty()),
        "--set {spec}: empty key in {path:?}"
    );
    // The value is TOML; a bare word that is not valid TOML is taken as a string.
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {}", value.trim()))
    {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(value.trim().to_string()),
    };
    let mut table = doc;
    for k in &keys[..keys.len() - 1] {
        let entry = table
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {spec}: {k} is not a section"),
        };
    }
    table.insert(keys[keys.len() - 1].to_string(), parsed);
    Ok(())
}

impl SegConfig {
    /// Read `path` (if any), apply `overrides`, validate. Relative data paths
    /// are resolved against the config file's folder.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<SegConfig> {
        let mut doc: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read config", p.display()))?;
                toml::from_str(&text).with_context(|| format!("{}: invalid TOML", p.display()))?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        let mut cfg: SegConfig =
            toml::Value::Table(doc)
                .try_into()
                .with_context(|| match path {
                    Some(p) => {
                        format!("{}: bad configuration (after --set overrides)", p.display())
                    }
                    None => "bad configuration (from --set overrides)".to_string(),
                })?;
        if let Some(base) = path.and_then(|p| p.parent()) {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            cfg.data.images.iter_mut().for_each(fix);
            cfg.data.labels.iter_mut().for_each(fix);
            if let Some(m) = cfg.data.class_map.as_mut() {
                fix(m);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        if d.source == DataSource::Files {
            ensure!(!d.images.is_empty(), "data.images: no scans given");
            ensure!(
                d.images.len() == d.labels.len(),
                "data: {} images but {} label maps",
                d.images.len(),
                d.labels.len()
            );
        } else {
            ensure!(d.phantom_cases >= 1, "data.phantom_cases must be ≥ 1");
        }
        ensure!(
            d.window[1] > d.window[0],
            "data.window: high end must exceed low end"
        );
        ensure!(
            (0.0..=1.0).contains(&d.fg_prob),
            "data.fg_prob must be in [0, 1]"
        );
        if let Some(s) = d.spacing {
            ensure!(
                s.iter().all(|&v| v.is_finite() && v > 0.0),
                "data.spacing must be positive"
            );
        }
        ensure!(!self.model.channels.is_empty(), "model.channels is empty");
        ensure!(self.train.steps >= 1, "train.steps must be ≥ 1");
        ensure!(self.infer.samples >= 1, "infer.samples must be ≥ 1");
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}
