//! Pretraining data: CT volumes prepared for the backbone with their
//! coordinate channels ([`prepare_ct`], shared by the trainer, the probe
//! and sliding-window inference), and the training stream of random patches
//! ([`PatchSource`]).
//!
//! Preparation: the CT (HU) is reoriented to RAS, resampled (linear) to
//! `data.spacing_mm`, windowed to [0, 1] (`data.window`, clipped); its k
//! coordinate channels — a k-channel NIfTI on the CT's exact grid, or the
//! smoothed slice scores of a body-part-regression run, computed on the fly
//! — take the same reorientation and resampling, then `data.coord_window`
//! (if any). A volume smaller than one patch along an axis is padded at the
//! high end of that axis (the voxels already there keep their index and
//! world position): the image with air (−1000 HU, windowed), the
//! coordinates with their last slice repeated.
//!
//! Sampling: every step draws `data.patches_per_step` patches, each from a
//! uniformly drawn volume at a uniform origin among those whose slices
//! avoid the volume's held-out slices. The draws of batch p derive from
//! (seed, p) alone, so a resumed run repeats an uninterrupted one. The
//! prepared volumes live on disk in the run folder ([`PreparedVolumes`]) and
//! each patch is read from there, so the number of CTs is bounded by the
//! disk, not by memory.

use super::bpr_config::BprConfig;
use super::bpr_data::read_ct;
use super::bpr_infer::{coordinate_volume, load_run, score_ct};
use super::bpr_train::BprModel;
use super::pretrain_config::{CoordSource, PretrainData};
use super::train_loop::BatchSource;
use crate::backend::Backend;
use crate::data::intensity::Window;
use crate::data::nifti_io::read_nifti_channels;
use crate::data::orient::{to_canonical, Reorientation};
use crate::data::resample::{resample_to_grid, resample_to_spacing, Interp, Outside};
use crate::data::rng::Rng;
use crate::data::{Affine, Volume};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// HU of air, the value padding stands for.
pub const AIR_HU: f32 = -1000.0;

/// Grid tolerance between a coordinate NIfTI and its CT, mm.
const GRID_TOL_MM: f64 = 1e-3;

/// A CT prepared for the backbone.
pub struct PretrainVolume {
    /// The CT file, for messages.
    pub name: String,
    /// The windowed CT in [0, 1] on the RAS grid at `data.spacing_mm`
    /// (dims `[D, H, W]` = z, y, x), padded to at least one patch; its
    /// affine maps its voxels to world mm.
    pub image: Volume,
    /// k coordinate channels on the same grid, channels last `[D, H, W, k]`
    /// (empty when k = 0).
    pub coords: Vec<f32>,
    pub k: usize,
    /// Extents `[D, H, W]` before padding; voxels at or beyond them are padding.
    pub valid: [usize; 3],
    /// Per slice of `image` (along D): true when it reads a held-out slice
    /// of the CT (see [`PretrainVolume::mark_held_out`]).
    pub held: Vec<bool>,
    /// The CT's grid as read, and how it was taken to RAS (to map results back).
    pub input_dims: [usize; 3],
    pub input_affine: Affine,
    pub input_spacing: [f64; 3],
    pub reorientation: Reorientation,
    /// The RAS grid before resampling: dims, affine, spacing.
    pub canonical_dims: [usize; 3],
    pub canonical_affine: Affine,
    pub canonical_spacing: [f64; 3],
}

impl PretrainVolume {
    /// Mark the slices of `image` that read (through linear interpolation)
    /// any of the CT's RAS slices `[a, b)`.
    pub fn mark_held_out(&mut self, a: usize, b: usize) -> Result<()> {
        let n = self.canonical_dims[0];
        ensure!(
            a < b && b <= n,
            "{}: held-out slices [{a}, {b}) must lie within its {n} slices",
            self.name
        );
        let ratio = self.image.spacing[0] / self.canonical_spacing[0];
        for (o, h) in self.held.iter_mut().enumerate().take(self.valid[0]) {
            let p = (o as f64 * ratio).min((n - 1) as f64);
            let (lo, hi) = (p.floor() as usize, p.ceil() as usize);
            if (a..b).contains(&lo) || (a..b).contains(&hi) {
                *h = true;
            }
        }
        Ok(())
    }

    /// A single-channel volume on this volume's grid (e.g. a prediction),
    /// mapped back onto the CT's grid as read: padding dropped, resampled
    /// onto the RAS grid of the CT, reoriented back.
    pub fn to_input_grid(&self, vol: &Volume, interp: Interp) -> Result<Volume> {
        ensure!(
            vol.dims == self.image.dims,
            "{}: a volume of extents {:?} is not on the prepared grid {:?}",
            self.name,
            vol.dims,
            self.image.dims
        );
        let canon = resample_to_grid(
            vol,
            self.canonical_dims,
            &self.canonical_affine,
            self.canonical_spacing,
            interp,
            Outside::Clamp,
        )?;
        let mut out = self.reorientation.undo(&canon, &self.input_affine)?;
        out.spacing = self.input_spacing;
        Ok(out)
    }
}

/// A body-part-regression run loaded once, to compute coordinates.
pub struct BprCoords {
    pub cfg: BprConfig,
    pub model: BprModel,
}

impl BprCoords {
    pub fn load(dev: &dyn Backend, run: &Path) -> Result<BprCoords> {
        let (cfg, model) = load_run(dev, run)?;
        Ok(BprCoords { cfg, model })
    }

    /// The coordinate volume of `ct` (the scan as read from `path`), on its grid.
    pub fn coordinates(&self, dev: &dyn Backend, ct: &Volume, path: &Path) -> Result<Volume> {
        let smoothing = self.cfg.infer.smoothing_mm;
        let (prepared, scores) = score_ct(dev, &self.cfg, &self.model, ct, path, smoothing)?;
        coordinate_volume(&scores, &prepared, ct)
    }
}

/// Where one CT's coordinates come from.
pub enum Coords<'a> {
    /// k = 0.
    None,
    /// A k-channel NIfTI on the CT's grid.
    File(&'a Path),
    /// Computed with a BPR run (k = 1).
    Bpr(&'a BprCoords),
}

/// The coordinate provider of a configuration (loads the BPR run, if any).
/// One exists per command, so its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum CoordProvider {
    None,
    Files,
    Bpr(BprCoords),
}

impl CoordProvider {
    pub fn new(dev: &dyn Backend, data: &PretrainData) -> Result<CoordProvider> {
        Ok(match data.coord_source() {
            CoordSource::None => CoordProvider::None,
            CoordSource::Files(_) => CoordProvider::Files,
            CoordSource::Bpr(run) => CoordProvider::Bpr(
                BprCoords::load(dev, run)
                    .with_context(|| format!("data.bpr_run = {}", run.display()))?,
            ),
        })
    }

    /// The coordinates of training image `i` of `data`.
    pub fn for_image<'a>(&'a self, data: &'a PretrainData, i: usize) -> Coords<'a> {
        match self {
            CoordProvider::None => Coords::None,
            CoordProvider::Files => Coords::File(&data.coords[i]),
            CoordProvider::Bpr(b) => Coords::Bpr(b),
        }
    }
}

/// Read the CT at `image`, prepare it with `coords` as the module doc says,
/// and check that it has `k` coordinate channels. Errors name the file: a
/// missing file, a scan that is not a CT, a coordinate NIfTI on another grid
/// (shape or affine) than its CT, or with another k.
pub fn prepare_ct(
    dev: &dyn Backend,
    data: &PretrainData,
    image: &Path,
    coords: Coords,
    k: usize,
) -> Result<PretrainVolume> {
    let ct = read_ct(image)?;
    let channels = match coords {
        Coords::None => Vec::new(),
        Coords::File(path) => {
            if !path.exists() {
                bail!(
                    "{}: no such coordinate file (the coordinates of {})",
                    path.display(),
                    image.display()
                );
            }
            let chans = read_nifti_channels(path)?;
            if let Some(bad) = chans
                .iter()
                .find_map(|c| c.check_same_grid(&ct, GRID_TOL_MM).err())
            {
                bail!(
                    "{}: the coordinate map is not on the grid of its CT {}: {bad:#}",
                    path.display(),
                    image.display()
                );
            }
            if chans.len() != k {
                bail!(
                    "{}: {} coordinate channel(s), but the model takes k = {k} \
                     (model.in_channels = {})",
                    path.display(),
                    chans.len(),
                    k + 1
                );
            }
            chans
        }
        Coords::Bpr(b) => {
            if k != 1 {
                bail!(
                    "{}: body-part regression gives 1 coordinate channel, but the model takes k = {k}",
                    image.display()
                );
            }
            vec![b.coordinates(dev, &ct, image)?]
        }
    };
    if matches!(coords, Coords::None) && k != 0 {
        bail!(
            "{}: no coordinates given, but the model takes k = {k} coordinate channel(s)",
            image.display()
        );
    }
    prepare_volume_with(data, &ct, image, &channels)
}

/// [`prepare_ct`] on a CT already read, with its coordinate channels (each
/// on the CT's grid, checked by the caller).
pub fn prepare_volume_with(
    data: &PretrainData,
    ct: &Volume,
    path: &Path,
    channels: &[Volume],
) -> Result<PretrainVolume> {
    let spacing = data.spacing_dhw();
    let (canonical, reorientation) = to_canonical(ct);
    let mut img = resample_to_spacing(&canonical, spacing, Interp::Linear)?;
    let window = Window::new(data.window[0], data.window[1]);
    window.apply(&mut img.data);
    let valid = img.dims;
    let k = channels.len();
    let mut coords = vec![0f32; img.numel() * k];
    for (c, ch) in channels.iter().enumerate() {
        let (cc, _) = to_canonical(ch);
        let r = resample_to_spacing(&cc, spacing, Interp::Linear)?;
        let map = |v: f32| match data.coord_window {
            Some([a, b]) => (v - a) / (b - a),
            None => v,
        };
        for (i, &v) in r.data.iter().enumerate() {
            coords[i * k + c] = map(v);
        }
    }
    let patch = data.patch_dhw();
    let dims = [0, 1, 2].map(|a| valid[a].max(patch[a]));
    let image = if dims == valid {
        img
    } else {
        let air = window.map(AIR_HU);
        let data_p = pad_high(&img.data, valid, dims, 1, Some(air));
        coords = pad_high(&coords, valid, dims, k, None);
        Volume {
            data: data_p,
            dims,
            ..img
        }
    };
    Ok(PretrainVolume {
        name: path.display().to_string(),
        held: vec![false; dims[0]],
        image,
        coords,
        k,
        valid,
        input_dims: ct.dims,
        input_affine: ct.affine,
        input_spacing: ct.spacing,
        reorientation,
        canonical_dims: canonical.dims,
        canonical_affine: canonical.affine,
        canonical_spacing: canonical.spacing,
    })
}

/// `[D, H, W, c]` data of extents `from` padded at the high end of each
/// axis to `to`: with `fill`, or (None) by repeating the last voxel.
fn pad_high(
    src: &[f32],
    from: [usize; 3],
    to: [usize; 3],
    c: usize,
    fill: Option<f32>,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(to.iter().product::<usize>() * c);
    for d in 0..to[0] {
        for h in 0..to[1] {
            for w in 0..to[2] {
                let inside = d < from[0] && h < from[1] && w < from[2];
                match (inside, fill) {
                    (false, Some(v)) => out.extend(std::iter::repeat_n(v, c)),
                    _ => {
                        let (sd, sh, sw) =
                            (d.min(from[0] - 1), h.min(from[1] - 1), w.min(from[2] - 1));
                        let i = ((sd * from[1] + sh) * from[2] + sw) * c;
                        out.extend_from_slice(&src[i..i + c]);
                    }
                }
            }
        }
    }
    out
}

/// The prepared training volumes, kept on disk and read a patch at a time:
/// in memory only each volume's name, extents and held-out slices, so a run
/// over a thousand CTs holds one volume at a time, never all of them.
///
/// `<dir>/NNNNNN.f32` holds volume N's windowed image `[D, H, W]` and then
/// its coordinates `[D, H, W, k]`, little-endian f32; `<dir>/index.json`
/// lists the volumes with the fingerprint of what they were prepared from
/// (the data settings, k, and the size and modification time of every CT,
/// coordinate file and BPR checkpoint), so a resumed run, or a new one on
/// the same data, reuses them and anything else prepares them again.
pub struct PreparedVolumes {
    dir: PathBuf,
    pub volumes: Vec<PreparedEntry>,
}

/// One prepared volume (see [`PreparedVolumes`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedEntry {
    /// The CT file, for messages.
    pub name: String,
    /// Extents `[D, H, W]` of the prepared grid (padded to one patch).
    pub dims: [usize; 3],
    pub k: usize,
    /// Per slice: true when it reads a held-out slice of the CT.
    pub held: Vec<bool>,
    /// Its file in the folder.
    file: String,
}

#[derive(Serialize, Deserialize)]
struct PreparedIndex {
    fingerprint: serde_json::Value,
    volumes: Vec<PreparedEntry>,
}

/// The folder of a run that holds its prepared training volumes.
pub const PREPARED_DIR: &str = "prepared";

/// Size and modification time of a file, or of a folder's entries (a DICOM
/// series), for the fingerprint of [`PreparedVolumes`].
fn file_stamp(path: &Path) -> serde_json::Value {
    let stamp = |p: &Path| -> Option<(u64, u128)> {
        let m = std::fs::metadata(p).ok()?;
        let t = m
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some((m.len(), t.as_nanos()))
    };
    if path.is_dir() {
        let mut entries: Vec<(String, Option<(u64, u128)>)> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            stamp(&e.path()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        serde_json::json!([path, entries])
    } else {
        serde_json::json!([path, stamp(path)])
    }
}

impl PreparedVolumes {
    /// Prepare every training image of `data` ([`prepare_ct`]) with its
    /// held-out slices marked, into `dir` — or reuse what `dir` already holds
    /// when it was prepared from the same data and settings. `progress`
    /// shows a bar on stderr.
    pub fn prepare(
        dev: &dyn Backend,
        data: &PretrainData,
        k: usize,
        dir: &Path,
        progress: bool,
    ) -> Result<PreparedVolumes> {
        let mut inputs: Vec<serde_json::Value> = data
            .images
            .iter()
            .chain(&data.coords)
            .map(|p| file_stamp(p))
            .collect();
        if let Some(run) = &data.bpr_run {
            inputs.push(file_stamp(&run.join(super::run::CHECKPOINT)));
        }
        let fingerprint = serde_json::json!({
            "data": toml::Value::try_from(data).context("cannot write the data settings")?,
            "k": k,
            "inputs": inputs,
        });
        let index_path = dir.join("index.json");
        if let Some(index) = std::fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<PreparedIndex>(&b).ok())
        {
            let sizes_fit = index.volumes.iter().all(|v| {
                let bytes = (v.dims.iter().product::<usize>() * (1 + v.k) * 4) as u64;
                std::fs::metadata(dir.join(&v.file)).is_ok_and(|m| m.len() == bytes)
            });
            if index.fingerprint == fingerprint && sizes_fit {
                return Ok(PreparedVolumes {
                    dir: dir.to_path_buf(),
                    volumes: index.volumes,
                });
            }
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        crate::fsutil::remove_stale_temps(dir)?;
        let provider = CoordProvider::new(dev, data)?;
        let bar = progress.then(|| {
            let pb = indicatif::ProgressBar::new(data.images.len() as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "preparing volumes {elapsed_precise} [{bar:30}] {pos}/{len}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb
        });
        let mut volumes = Vec::with_capacity(data.images.len());
        for (i, path) in data.images.iter().enumerate() {
            let mut v = prepare_ct(dev, data, path, provider.for_image(data, i), k)?;
            for h in data.held_out.iter().filter(|h| h.image == i) {
                v.mark_held_out(h.slices[0], h.slices[1])?;
            }
            let file = format!("{i:06}.f32");
            let mut bytes = Vec::with_capacity((v.image.data.len() + v.coords.len()) * 4);
            bytes.extend_from_slice(bytemuck::cast_slice(&v.image.data));
            bytes.extend_from_slice(bytemuck::cast_slice(&v.coords));
            crate::fsutil::write_atomic(&dir.join(&file), &bytes)?;
            volumes.push(PreparedEntry {
                name: v.name.clone(),
                dims: v.image.dims,
                k: v.k,
                held: v.held.clone(),
                file,
            });
            if let Some(pb) = &bar {
                pb.inc(1);
            }
        }
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        let index = PreparedIndex {
            fingerprint,
            volumes,
        };
        crate::fsutil::write_atomic(&index_path, &serde_json::to_vec_pretty(&index)?)?;
        Ok(PreparedVolumes {
            dir: dir.to_path_buf(),
            volumes: index.volumes,
        })
    }

    /// Append the patch of volume `i` at `origin` (`[D, H, W]`, extents
    /// `patch`) to `image` and its coordinates to `coords`, read from disk.
    pub fn read_patch(
        &self,
        i: usize,
        origin: [usize; 3],
        patch: [usize; 3],
        image: &mut Vec<f32>,
        coords: &mut Vec<f32>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let v = &self.volumes[i];
        ensure!(
            (0..3).all(|a| origin[a] + patch[a] <= v.dims[a]),
            "{}: a patch of {patch:?} at {origin:?} leaves its prepared grid {:?}",
            v.name,
            v.dims
        );
        let path = self.dir.join(&v.file);
        let file = std::fs::File::open(&path).with_context(|| {
            format!(
                "{}: cannot open the prepared volume of {}",
                path.display(),
                v.name
            )
        })?;
        let [_, h, w] = v.dims;
        let image_len = v.dims.iter().product::<usize>();
        let read_rows = |base: usize, c: usize, out: &mut Vec<f32>| -> Result<()> {
            let mut row = vec![0f32; patch[2] * c];
            for d in 0..patch[0] {
                for y in 0..patch[1] {
                    let first = ((origin[0] + d) * h + origin[1] + y) * w + origin[2];
                    file.read_exact_at(
                        bytemuck::cast_slice_mut(&mut row),
                        ((base + first * c) * 4) as u64,
                    )
                    .with_context(|| {
                        format!(
                            "{}: the prepared volume of {} is truncated",
                            path.display(),
                            v.name
                        )
                    })?;
                    out.extend_from_slice(&row);
                }
            }
            Ok(())
        };
        read_rows(0, 1, image)?;
        if v.k > 0 {
            read_rows(image_len, v.k, coords)?;
        }
        Ok(())
    }
}

/// One step's patches.
pub struct PatchBatch {
    /// Clean images `[N, D, H, W, 1]` in [0, 1].
    pub x0: Vec<f32>,
    /// Coordinates `[N, D, H, W, k]`.
    pub coords: Vec<f32>,
    pub n: usize,
    /// Patch extents `[D, H, W]`.
    pub dhw: [usize; 3],
    pub k: usize,
}

/// The endless, seeded stream of patches (see the module doc).
pub struct PatchSource {
    volumes: PreparedVolumes,
    /// Per volume: the first slices of patches that avoid held-out slices.
    starts: Vec<Vec<usize>>,
    patch: [usize; 3],
    per_step: usize,
    seed: u64,
    position: u64,
}

impl PatchSource {
    /// Refuses a volume whose training slices cannot hold one patch.
    pub fn new(volumes: PreparedVolumes, data: &PretrainData, seed: u64) -> Result<PatchSource> {
        ensure!(!volumes.volumes.is_empty(), "no training volumes");
        let patch = data.patch_dhw();
        let mut starts = Vec::new();
        for v in &volumes.volumes {
            let d = v.dims[0];
            let s: Vec<usize> = (0..=d - patch[0])
                .filter(|&z| !v.held[z..z + patch[0]].iter().any(|&h| h))
                .collect();
            ensure!(
                !s.is_empty(),
                "{}: no {} consecutive slices (at {} mm) outside its held-out slices \
                 (data.held_out): nothing to train on",
                v.name,
                patch[0],
                data.spacing_mm[2]
            );
            starts.push(s);
        }
        Ok(PatchSource {
            volumes,
            starts,
            patch,
            per_step: data.patches_per_step,
            seed,
            position: 0,
        })
    }

    pub fn volumes(&self) -> &[PreparedEntry] {
        &self.volumes.volumes
    }
}

/// Copy the patch at `origin` (`[D, H, W]`, `patch` extents) of `c`-channel
/// `[D, H, W, c]` data of extents `dims` onto `out`.
pub fn copy_patch(
    src: &[f32],
    dims: [usize; 3],
    c: usize,
    origin: [usize; 3],
    patch: [usize; 3],
    out: &mut Vec<f32>,
) {
    for d in 0..patch[0] {
        for h in 0..patch[1] {
            let row = ((origin[0] + d) * dims[1] + origin[1] + h) * dims[2] + origin[2];
            out.extend_from_slice(&src[row * c..(row + patch[2]) * c]);
        }
    }
}

impl BatchSource for PatchSource {
    type Batch = PatchBatch;
    fn next_batch(&mut self) -> Result<PatchBatch> {
        let mut rng = Rng::derive(self.seed, &[0x9E, self.position]);
        self.position += 1;
        let p = self.patch;
        let k = self.volumes.volumes[0].k;
        let vox = p.iter().product::<usize>();
        let mut x0 = Vec::with_capacity(self.per_step * vox);
        let mut coords = Vec::with_capacity(self.per_step * vox * k);
        for _ in 0..self.per_step {
            let i = rng.below(self.volumes.volumes.len());
            let dims = self.volumes.volumes[i].dims;
            let z = self.starts[i][rng.below(self.starts[i].len())];
            let y = rng.below(dims[1] - p[1] + 1);
            let x = rng.below(dims[2] - p[2] + 1);
            self.volumes
                .read_patch(i, [z, y, x], p, &mut x0, &mut coords)?;
        }
        Ok(PatchBatch {
            x0,
            coords,
            n: self.per_step,
            dhw: p,
            k,
        })
    }
    fn position(&self) -> u64 {
        self.position
    }
    fn seek(&mut self, n: u64) -> Result<()> {
        self.position = n;
        Ok(())
    }
}
