//! Turning a run's data configuration into training examples and its scans
//! into network inputs: read (or generate), reorient to RAS, resample, remap
//! labels to training classes, window intensities, cut patches on worker
//! threads. The same preprocessing serves training and `voxdiff segment`.

use super::seg_config::{DataConfig, DataSource};
use super::train_loop::BatchSource;
use crate::data::augment::Augment;
use crate::data::intensity::Window;
use crate::data::loader::{Loader, LoaderConfig, PreparedCase};
use crate::data::orient::{to_canonical, Reorientation};
use crate::data::patch::PatchSampler;
use crate::data::resample::{resample_to_spacing, Interp};
use crate::data::{phantom, read_nifti, read_scan, ClassMap, Volume};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The training classes of a run: index 0 is background.
pub fn class_names(map: &ClassMap) -> Vec<String> {
    let mut names = vec!["background".to_string()];
    names.extend(map.names.iter().cloned());
    names
}

/// The class map a run trains with, restricted to `cfg.classes` (in that order).
pub fn class_map(cfg: &DataConfig) -> Result<ClassMap> {
    let full = match cfg.source {
        DataSource::Phantom => ClassMap {
            names: phantom::CLASS_NAMES[1..]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            source_ids: (1..phantom::NUM_CLASSES as i64).map(|i| vec![i]).collect(),
            strict: true,
            path: None,
        },
        DataSource::Files => match &cfg.class_map {
            Some(p) => ClassMap::read(p)?,
            None => anyhow::bail!(
                "data.class_map is required for file data (it names the classes and maps label ids to them)"
            ),
        },
    };
    if cfg.classes.is_empty() {
        return Ok(full);
    }
    let mut names = Vec::new();
    let mut ids = Vec::new();
    for c in &cfg.classes {
        let i = full.names.iter().position(|n| n == c).with_context(|| {
            format!(
                "data.classes: {c:?} is not a class of the map (known: {})",
                full.names.join(", ")
            )
        })?;
        names.push(full.names[i].clone());
        ids.push(full.source_ids[i].clone());
    }
    Ok(ClassMap {
        names,
        source_ids: ids,
        // Classes left out of the subset become background.
        strict: false,
        path: full.path,
    })
}

/// A scan prepared for the network, with what is needed to map a prediction
/// back onto the scan's own grid.
pub struct PreparedScan {
    /// Canonical (RAS), resampled, windowed to [0, 1].
    pub image: Volume,
    /// The scan as read.
    pub original: Volume,
    /// The canonical scan before resampling (the grid predictions return to).
    pub canonical_grid: Volume,
    pub reorientation: Reorientation,
}

/// Reorient to RAS and resample (linear for images, nearest for labels).
fn to_training_grid(
    vol: &Volume,
    spacing: Option<[f64; 3]>,
    interp: Interp,
) -> Result<(Volume, Volume, Reorientation)> {
    let (canon, reo) = to_canonical(vol);
    let res = match spacing {
        Some(s) => resample_to_spacing(&canon, s, interp)?,
        None => canon.clone(),
    };
    Ok((res, canon, reo))
}

/// What to do with NaN or infinite voxels in a scan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NonFinite {
    /// Refuse the scan (naming the file and how many voxels).
    Refuse,
    /// Set them to this value (in the scan's units, e.g. HU).
    Replace(f32),
}

/// Read a scan (a NIfTI file or a DICOM series folder) and apply `policy`
/// to its non-finite voxels, before anything is computed from it. `hint` is
/// appended to the refusal (what the user can do).
pub fn read_finite_scan(path: &Path, policy: NonFinite, hint: &str) -> Result<Volume> {
    let mut v = read_scan(path)?;
    let (count, first) = v.nonfinite();
    if count > 0 {
        match policy {
            NonFinite::Refuse => {
                let nan = v.data.iter().filter(|x| x.is_nan()).count();
                let [d, h, w] = first.unwrap_or_default();
                anyhow::bail!(
                    "{}: {count} of {} voxels are not finite ({nan} NaN, {} infinite; the first at \
                     voxel (d,h,w)=({d}, {h}, {w})){hint}",
                    path.display(),
                    v.numel(),
                    count - nan
                );
            }
            NonFinite::Replace(x) => {
                for y in v.data.iter_mut().filter(|y| !y.is_finite()) {
                    *y = x;
                }
                eprintln!(
                    "{}: {count} voxels that were not finite set to {x}",
                    path.display()
                );
            }
        }
    }
    Ok(v)
}

/// Prepare a scan (a NIfTI file or a DICOM series folder) the way the run's
/// training data was.
pub fn prepare_scan(cfg: &DataConfig, path: &Path, policy: NonFinite) -> Result<PreparedScan> {
    let hint =
        ": fix the scan, or pass --replace-nonfinite <value> to set them (e.g. -1000, air in CT)";
    let original = read_finite_scan(path, policy, hint)?;
    prepare_volume(cfg, original)
}

/// Refuse a prepared scan that a network halving the extents `levels`
/// times cannot see: fewer voxels than 2^levels along some axis (a 2D slice
/// or a 1D profile, or a slab thinner than the network's coarsest voxel).
pub fn check_extent(scan: &PreparedScan, levels: usize, path: &Path) -> Result<()> {
    let min = 1usize << levels;
    let dims = scan.image.dims;
    let sp = scan.image.spacing;
    let orig = scan.original.dims;
    if dims.iter().all(|&n| n >= min) {
        return Ok(());
    }
    let mm = |a: usize| min as f64 * sp[a];
    anyhow::bail!(
        "{}: {}×{}×{} voxels (D×H×W; {}×{}×{} on the model's {:.3}×{:.3}×{:.3} mm grid) — the model \
         needs at least {min} voxels along every axis of its grid ({:.0}×{:.0}×{:.0} mm: its {levels} \
         levels each halve the extents){}",
        path.display(),
        orig[0],
        orig[1],
        orig[2],
        dims[0],
        dims[1],
        dims[2],
        sp[0],
        sp[1],
        sp[2],
        mm(0),
        mm(1),
        mm(2),
        if orig.contains(&1) {
            "; a 2D slice or 1D profile cannot be segmented by this 3D model"
        } else {
            ""
        }
    )
}

/// Prepare an in-memory scan the way the run's training data was.
pub fn prepare_volume(cfg: &DataConfig, original: Volume) -> Result<PreparedScan> {
    let (mut image, canonical_grid, reorientation) =
        to_training_grid(&original, cfg.spacing, Interp::Linear)?;
    Window::new(cfg.window[0], cfg.window[1]).apply(&mut image.data);
    Ok(PreparedScan {
        image,
        original,
        canonical_grid,
        reorientation,
    })
}

/// Prepare one training case (image + label map).
fn prepare_case(
    cfg: &DataConfig,
    map: &ClassMap,
    id: String,
    image: Volume,
    label: Volume,
) -> Result<PreparedCase> {
    image
        .check_same_grid(&label, 1e-3)
        .with_context(|| format!("case {id}: the label map must lie on the scan's grid"))?;
    let label = map.remap(&label)?;
    let scan = prepare_volume(cfg, image)?;
    let (lab, _, _) = to_training_grid(&label, cfg.spacing, Interp::Nearest)?;
    PreparedCase::new(id, scan.image, Some(lab), 0.0)
}

/// Read or generate and preprocess every training case.
pub fn training_cases(cfg: &DataConfig, map: &ClassMap) -> Result<Vec<PreparedCase>> {
    let cases = match cfg.source {
        DataSource::Phantom => phantom_cases(cfg, map, 0..cfg.phantom_cases as u64)?,
        DataSource::Files => file_cases(cfg, map, &cfg.images, &cfg.labels)?,
    };
    for c in &cases {
        let present = c.classes.as_ref().map_or(0, |ci| ci.classes.len());
        ensure!(
            present > 0,
            "case {}: no voxel of any training class after preprocessing",
            c.id
        );
    }
    Ok(cases)
}

/// Read or generate and preprocess the held-out cases scored during
/// training: `data.validation_images`, or phantom seeds after the training
/// ones.
pub fn validation_cases(cfg: &DataConfig, map: &ClassMap) -> Result<Vec<PreparedCase>> {
    let mut cases = file_cases(cfg, map, &cfg.validation_images, &cfg.validation_labels)?;
    if cfg.source == DataSource::Phantom {
        let first = cfg.phantom_cases as u64;
        let seeds = first..first + cfg.validation_phantom_cases as u64;
        cases.extend(phantom_cases(cfg, map, seeds)?);
    }
    Ok(cases)
}

/// Phantom cases of `seeds`, preprocessed.
fn phantom_cases(
    cfg: &DataConfig,
    map: &ClassMap,
    seeds: std::ops::Range<u64>,
) -> Result<Vec<PreparedCase>> {
    seeds
        .map(|seed| {
            let (img, lab) = phantom::generate(&cfg.phantom, seed);
            prepare_case(cfg, map, format!("phantom{seed}"), img, lab)
        })
        .collect()
}

/// Scans `images` with their label maps `labels`, read and preprocessed.
fn file_cases(
    cfg: &DataConfig,
    map: &ClassMap,
    images: &[PathBuf],
    labels: &[PathBuf],
) -> Result<Vec<PreparedCase>> {
    images
        .iter()
        .zip(labels)
        .map(|(ip, lp)| {
            let img = read_finite_scan(ip, NonFinite::Refuse, ": fix the scan")?;
            let lab = read_nifti(lp)?;
            let id = crate::pipeline::evaluate::case_name(ip);
            prepare_case(cfg, map, id, img, lab)
        })
        .collect()
}

/// The patch size for `cases`: `cfg.patch` with 0 axes replaced by the
/// largest extent along them.
pub fn patch_size(cfg: &DataConfig, cases: &[PreparedCase]) -> [usize; 3] {
    let mut p = cfg.patch;
    for a in 0..3 {
        if p[a] == 0 {
            p[a] = cases.iter().map(|c| c.image.dims[a]).max().unwrap_or(1);
        }
    }
    p
}

/// Training examples from the prefetching loader.
pub struct LoaderSource {
    cases: Arc<Vec<PreparedCase>>,
    cfg: LoaderConfig,
    loader: Loader,
    position: u64,
}

impl LoaderSource {
    pub fn new(data: &DataConfig, cases: Vec<PreparedCase>, seed: u64) -> Result<LoaderSource> {
        let size = patch_size(data, &cases);
        let cfg = LoaderConfig {
            sampler: PatchSampler {
                size,
                fg_prob: data.fg_prob,
            },
            augment: Augment {
                fov_prob: data.fov_prob,
                fov_keep: data.fov_keep,
                ..if data.augment {
                    Augment::ct_default()
                } else {
                    Augment::none()
                }
            },
            seed,
            workers: data.workers.max(1),
            prefetch: 2,
        };
        let cases = Arc::new(cases);
        let loader = Loader::new(cases.clone(), cfg.clone())?;
        Ok(LoaderSource {
            cases,
            cfg,
            loader,
            position: 0,
        })
    }
    pub fn patch(&self) -> [usize; 3] {
        self.cfg.sampler.size
    }
}

/// One training example: an image patch (already normalised) and its label ids.
pub struct Example {
    /// Spatial extents [D, H, W].
    pub dims: [usize; 3],
    pub image: Vec<f32>,
    /// Class ids (0 … K−1) as floats.
    pub labels: Vec<f32>,
}

impl BatchSource for LoaderSource {
    type Batch = Example;
    fn next_batch(&mut self) -> Result<Example> {
        let s = self.loader.next_sample()?;
        self.position += 1;
        Ok(Example {
            dims: s.size,
            image: s.image,
            labels: s.label.context("training case without a label map")?,
        })
    }
    fn position(&self) -> u64 {
        self.position
    }
    fn seek(&mut self, n: u64) -> Result<()> {
        self.loader = Loader::starting_at(self.cases.clone(), self.cfg.clone(), n)?;
        self.position = n;
        Ok(())
    }
}
