//! The probe's data: every CT — labelled training case or new input to
//! segment — is prepared by the pretraining run's one mechanism
//! ([`prepare_ct`]: RAS, resampled to its `data.spacing_mm`, windowed with
//! its `data.window`, its k coordinate channels on the same grid, padded to
//! one patch); [`Preparation`] holds what that needs. On top of it: the
//! label maps on the same grid, the body mask, and vox2vec's patch sampling
//! — one volume per step, several patches of it, each forced with
//! probability `class_prob` to hold a voxel of one class drawn for the
//! step.
//!
//! The body mask is vox2vec's: voxels below −500 HU connected (in 3D) to the
//! in-plane border of the scan are air outside the body; everything else is
//! body. It is computed on the prepared (windowed) image with the window's
//! image of −500 HU, so the window must contain −500 HU.
//!
//! Held-out slice ranges (in the file's RAS slice index) are marked by
//! [`PretrainVolume::mark_held_out`] (every prepared slice that reads one of
//! them through the interpolation), and no training patch touches them.

use super::pretrain_config::{CoordSource, PretrainData};
use super::pretrain_data::{copy_patch, prepare_ct, BprCoords, Coords, PretrainVolume};
use super::pretrain_run::{load_pretrained, PretrainedRun};
use super::probe_config::ProbeDataConfig;
use super::seg_config::{DataConfig, DataSource};
use super::seg_data::class_map;
use super::train_loop::BatchSource;
use crate::backend::Backend;
use crate::data::intensity::Window;
use crate::data::orient::to_canonical;
use crate::data::resample::{resample_to_spacing, Interp};
use crate::data::rng::Rng;
use crate::data::{read_nifti, ClassMap};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// HU below which a voxel is air (vox2vec's `BODY_THRESHOLD_HU`).
pub const BODY_THRESHOLD_HU: f32 = -500.0;

/// Grid tolerance between a label map and its CT, mm.
const GRID_TOL_MM: f64 = 1e-3;

/// The pretraining run a probe builds on, and how it prepares a CT.
pub struct Preparation {
    /// The run's folder.
    pub dir: PathBuf,
    pub run: PretrainedRun,
    /// The run's `data` with the probe's patch (the padding target).
    pub data: PretrainData,
    /// The run's BPR run, loaded, when its coordinates come from one.
    bpr: Option<BprCoords>,
}

impl Preparation {
    /// Open the pretraining run in `dir` ([`load_pretrained`]: refuses a
    /// folder that is not one) for patches of `patch` (x, y, z).
    pub fn open(dev: &dyn Backend, dir: &Path, patch: [usize; 3]) -> Result<Preparation> {
        let run = load_pretrained(dir)?;
        let mut data = run.cfg.data.clone();
        data.patch = patch;
        let bpr = match data.coord_source() {
            CoordSource::Bpr(b) => Some(BprCoords::load(dev, b).with_context(|| {
                format!(
                    "{}: its coordinate source, the BPR run {}",
                    dir.display(),
                    b.display()
                )
            })?),
            _ => None,
        };
        Ok(Preparation {
            dir: dir.to_path_buf(),
            run,
            data,
            bpr,
        })
    }

    /// k, the coordinate channels the backbone takes.
    pub fn k(&self) -> usize {
        self.run.cfg.coord_channels()
    }

    /// Prepare the CT at `image`; its coordinates from `coords` (a k-channel
    /// NIfTI on its grid) when given, else from the pretraining run's source
    /// (its BPR run; none when k = 0).
    pub fn prepare(
        &self,
        dev: &dyn Backend,
        image: &Path,
        coords: Option<&Path>,
    ) -> Result<PretrainVolume> {
        let k = self.k();
        let source = match (coords, &self.bpr) {
            (Some(p), _) => Coords::File(p),
            (None, Some(b)) => Coords::Bpr(b),
            (None, None) if k == 0 => Coords::None,
            (None, None) => bail!(
                "{}: the backbone of {} takes k = {k} coordinate channel(s) from files: give this \
                 CT's coordinate NIfTI (data.coords in a probe configuration, --coords to segment)",
                image.display(),
                self.dir.display()
            ),
        };
        prepare_ct(dev, &self.data, image, source, k)
    }
}

/// The body mask of a `[D, H, W]` volume: not `air` (values below `air`)
/// connected to the in-plane border (module docs).
pub fn body_mask(values: &[f32], dims: [usize; 3], air: f32) -> Vec<bool> {
    let [d, h, w] = dims;
    let idx = |z: usize, y: usize, x: usize| (z * h + y) * w + x;
    let is_air: Vec<bool> = values.iter().map(|&v| v < air).collect();
    let mut outside = vec![false; values.len()];
    let mut stack = Vec::new();
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let border = y == 0 || x == 0 || y + 1 == h || x + 1 == w;
                let i = idx(z, y, x);
                if border && is_air[i] && !outside[i] {
                    outside[i] = true;
                    stack.push((z, y, x));
                }
            }
        }
    }
    while let Some((z, y, x)) = stack.pop() {
        let mut visit = |z: usize, y: usize, x: usize| {
            let i = idx(z, y, x);
            if is_air[i] && !outside[i] {
                outside[i] = true;
                stack.push((z, y, x));
            }
        };
        if z > 0 {
            visit(z - 1, y, x);
        }
        if z + 1 < d {
            visit(z + 1, y, x);
        }
        if y > 0 {
            visit(z, y - 1, x);
        }
        if y + 1 < h {
            visit(z, y + 1, x);
        }
        if x > 0 {
            visit(z, y, x - 1);
        }
        if x + 1 < w {
            visit(z, y, x + 1);
        }
    }
    outside.iter().map(|&o| !o).collect()
}

/// The body mask of a prepared CT (windowed with `window`), refusing a
/// window that does not contain −500 HU.
pub fn prepared_body_mask(v: &PretrainVolume, window: [f32; 2]) -> Result<Vec<bool>> {
    ensure!(
        window[0] < BODY_THRESHOLD_HU && BODY_THRESHOLD_HU < window[1],
        "{}: the body mask needs the window {window:?} to contain {BODY_THRESHOLD_HU} HU \
         (set infer.body_mask = false)",
        v.name
    );
    let air = Window::new(window[0], window[1]).map(BODY_THRESHOLD_HU);
    Ok(body_mask(&v.image.data, v.image.dims, air))
}

/// The class map of a probe run (`data.class_map` restricted to
/// `data.classes`).
pub fn probe_class_map(d: &ProbeDataConfig) -> Result<ClassMap> {
    let seg = DataConfig {
        source: DataSource::Files,
        class_map: d.class_map.clone(),
        classes: d.classes.clone(),
        ..DataConfig::default()
    };
    class_map(&seg)
}

/// One labelled CT ready for patch sampling.
pub struct ProbeCase {
    /// The prepared CT (image, coordinates, held-out slices).
    pub volume: PretrainVolume,
    /// Class ids (0 = background, 1..=K) per voxel of its grid.
    pub labels: Vec<u8>,
    /// For each class 1..=K, the voxels holding it (indices into the grid).
    pub class_voxels: Vec<Vec<u32>>,
}

/// The label map at `path` (of the CT prepared as `v`) remapped by `map`
/// onto `v`'s grid: the same reorientation, nearest resampling, padding as
/// background. Refuses a label map off the CT's grid, naming both files.
pub fn prepared_labels(
    path: &Path,
    v: &PretrainVolume,
    map: &ClassMap,
    data: &PretrainData,
) -> Result<Vec<u8>> {
    let label = read_nifti(path)?;
    let diff = label.affine.max_abs_diff(&v.input_affine);
    if label.dims != v.input_dims || diff > GRID_TOL_MM {
        bail!(
            "{}: the label map must lie on the grid of the CT {} (shape [D,H,W] {:?} vs {:?}, \
             affines differ by up to {diff:.4} mm)",
            path.display(),
            v.name,
            label.dims,
            v.input_dims
        );
    }
    let label = map.remap(&label)?;
    let (lc, _) = to_canonical(&label);
    let lab = resample_to_spacing(&lc, data.spacing_dhw(), Interp::Nearest)?;
    ensure!(
        lab.dims == v.valid,
        "{}: resampled to {:?}, its CT to {:?}",
        path.display(),
        lab.dims,
        v.valid
    );
    let dims = v.image.dims;
    let mut out = vec![0u8; dims.iter().product()];
    for d in 0..v.valid[0] {
        for h in 0..v.valid[1] {
            for w in 0..v.valid[2] {
                let src = (d * v.valid[1] + h) * v.valid[2] + w;
                out[(d * dims[1] + h) * dims[2] + w] = lab.data[src].round().max(0.0) as u8;
            }
        }
    }
    Ok(out)
}

/// Read and prepare every training case of `d` through `prep`.
pub fn training_cases(
    dev: &dyn Backend,
    d: &ProbeDataConfig,
    map: &ClassMap,
    prep: &Preparation,
) -> Result<Vec<ProbeCase>> {
    ensure!(
        map.names.len() < 255,
        "{} classes do not fit a uint8 label map",
        map.names.len()
    );
    let mut cases = Vec::new();
    for (i, (ip, lp)) in d.images.iter().zip(&d.labels).enumerate() {
        let mut volume = prep.prepare(dev, ip, d.coords.get(i).map(|p| p.as_path()))?;
        for h in d.held_out.iter().filter(|h| h.image == i) {
            volume.mark_held_out(h.slices[0], h.slices[1])?;
        }
        let labels = prepared_labels(lp, &volume, map, &prep.data)?;
        let kc = map.names.len();
        let mut class_voxels = vec![Vec::new(); kc];
        for (v, &l) in labels.iter().enumerate() {
            if l > 0 && (l as usize) <= kc {
                class_voxels[l as usize - 1].push(v as u32);
            }
        }
        ensure!(
            class_voxels.iter().any(|v| !v.is_empty()),
            "{}: no voxel of any probed class ({}) after preprocessing",
            lp.display(),
            map.names.join(", ")
        );
        cases.push(ProbeCase {
            volume,
            labels,
            class_voxels,
        });
    }
    Ok(cases)
}

/// One step's patches of one volume, host data.
pub struct ProbeBatch {
    pub volume: usize,
    /// Patch extents `[D, H, W]`.
    pub patch: [usize; 3],
    /// Patch origins `[D, H, W]` (prepared grid).
    pub origins: Vec<[usize; 3]>,
    /// `[P, D, H, W]` clean windowed image.
    pub image: Vec<f32>,
    /// `[P, D, H, W, k]`.
    pub coords: Vec<f32>,
    pub k: usize,
    /// `[P, D, H, W, K]` one channel per class, 1 where the class is.
    pub target: Vec<f32>,
    pub classes: usize,
}

/// vox2vec's sampler over the prepared cases (module docs).
pub struct ProbeSource {
    cases: Vec<ProbeCase>,
    /// `[D, H, W]`.
    patch: [usize; 3],
    per_step: usize,
    class_prob: f64,
    classes: usize,
    seed: u64,
    position: u64,
    /// Per case, the z origins whose patch touches no held-out slice.
    z_starts: Vec<Vec<usize>>,
}

impl ProbeSource {
    pub fn new(
        cases: Vec<ProbeCase>,
        d: &ProbeDataConfig,
        classes: usize,
        seed: u64,
    ) -> Result<ProbeSource> {
        ensure!(!cases.is_empty(), "no training cases");
        let patch = d.patch_dhw();
        let mut z_starts = Vec::new();
        for c in &cases {
            let v = &c.volume;
            ensure!(
                (0..3).all(|a| v.image.dims[a] >= patch[a]),
                "{}: prepared to {:?}, smaller than the patch {patch:?}",
                v.name,
                v.image.dims
            );
            let starts: Vec<usize> = (0..=v.image.dims[0] - patch[0])
                .filter(|&s| !v.held[s..s + patch[0]].iter().any(|&h| h))
                .collect();
            if starts.is_empty() {
                bail!(
                    "{}: its held-out slices (data.held_out) leave no room for a patch of {} \
                     slices",
                    v.name,
                    patch[0]
                );
            }
            z_starts.push(starts);
        }
        Ok(ProbeSource {
            cases,
            patch,
            per_step: d.patches_per_step,
            class_prob: d.class_prob,
            classes,
            seed,
            position: 0,
            z_starts,
        })
    }

    /// The batch of draw `n` (a pure function of the seed and `n`).
    pub fn batch(&self, n: u64) -> ProbeBatch {
        let mut rng = Rng::derive(self.seed, &[n]);
        let v = rng.below(self.cases.len());
        let c = &self.cases[v];
        let p = self.patch;
        let cls = rng.below(self.classes);
        let anchors = &c.class_voxels[cls];
        let dims = c.volume.image.dims;
        let zs = &self.z_starts[v];
        let mut origins = Vec::with_capacity(self.per_step);
        for _ in 0..self.per_step {
            let forced = !anchors.is_empty() && rng.bernoulli(self.class_prob);
            let mut o = [0usize; 3];
            let anchor = forced.then(|| {
                let i = anchors[rng.below(anchors.len())] as usize;
                [
                    i / (dims[1] * dims[2]),
                    (i / dims[2]) % dims[1],
                    i % dims[2],
                ]
            });
            // z among the allowed starts (those holding the anchor if any).
            let fit: Vec<usize> = match anchor {
                Some(a) => zs
                    .iter()
                    .copied()
                    .filter(|&s| s <= a[0] && a[0] < s + p[0])
                    .collect(),
                None => Vec::new(),
            };
            o[0] = if fit.is_empty() {
                zs[rng.below(zs.len())]
            } else {
                fit[rng.below(fit.len())]
            };
            for ax in 1..3 {
                let hi = dims[ax] - p[ax];
                let (lo, hi) = match anchor {
                    Some(a) => (a[ax].saturating_sub(p[ax] - 1), a[ax].min(hi)),
                    None => (0, hi),
                };
                o[ax] = lo + rng.below(hi - lo + 1);
            }
            origins.push(o);
        }
        let nk = self.classes;
        let k = c.volume.k;
        let vox = p.iter().product::<usize>();
        let mut image = Vec::with_capacity(vox * origins.len());
        let mut coords = Vec::with_capacity(vox * origins.len() * k);
        let mut target = vec![0.0f32; vox * origins.len() * nk];
        let mut lab = Vec::with_capacity(vox);
        for (j, &o) in origins.iter().enumerate() {
            copy_patch(&c.volume.image.data, dims, 1, o, p, &mut image);
            if k > 0 {
                copy_patch(&c.volume.coords, dims, k, o, p, &mut coords);
            }
            lab.clear();
            for d in 0..p[0] {
                for h in 0..p[1] {
                    let row = ((o[0] + d) * dims[1] + o[1] + h) * dims[2] + o[2];
                    lab.extend_from_slice(&c.labels[row..row + p[2]]);
                }
            }
            for (t, &l) in lab.iter().enumerate() {
                if l >= 1 && (l as usize) <= nk {
                    target[(j * vox + t) * nk + l as usize - 1] = 1.0;
                }
            }
        }
        ProbeBatch {
            volume: v,
            patch: p,
            k,
            origins,
            image,
            coords,
            target,
            classes: nk,
        }
    }
}

impl BatchSource for ProbeSource {
    type Batch = ProbeBatch;
    fn next_batch(&mut self) -> Result<ProbeBatch> {
        let b = self.batch(self.position);
        self.position += 1;
        Ok(b)
    }
    fn position(&self) -> u64 {
        self.position
    }
    fn seek(&mut self, n: u64) -> Result<()> {
        self.position = n;
        Ok(())
    }
}
