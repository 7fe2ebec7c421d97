//! The probe's data: a CT prepared for the backbone (RAS, resampled,
//! windowed to [0, 1], its k coordinate channels on the same grid, its body
//! mask), the labelled training cases, and vox2vec's patch sampling — one
//! volume per step, several patches of it, each forced with probability
//! `class_prob` to hold a voxel of one class drawn for the step.
//!
//! The body mask is vox2vec's: voxels below −500 HU connected (in 3D) to the
//! in-plane border of the scan are air outside the body; everything else is
//! body. Held-out slice ranges (in the file's RAS slice index) are mapped
//! onto the resampled grid, widened by one slice each side for the linear
//! interpolation, and no training patch touches them.

use super::bpr_config::HeldOut;
use super::bpr_data::read_ct;
use super::probe_config::ProbeDataConfig;
use super::seg_config::{DataConfig, DataSource};
use super::seg_data::{class_map, PreparedScan};
use super::train_loop::BatchSource;
use crate::data::crop::extract_raw_channels;
use crate::data::intensity::Window;
use crate::data::nifti_io::read_nifti_channels;
use crate::data::orient::to_canonical;
use crate::data::resample::{resample_to_spacing, Interp};
use crate::data::rng::Rng;
use crate::data::{read_nifti, ClassMap, Volume};
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

/// HU below which a voxel is air (vox2vec's `BODY_THRESHOLD_HU`).
pub const BODY_THRESHOLD_HU: f32 = -500.0;

/// How a CT becomes the backbone's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// [sd, sh, sw] mm, D = z.
    pub spacing: [f64; 3],
    /// HU window mapped to [0, 1].
    pub window: [f32; 2],
}

impl Preprocess {
    /// vox2vec's: 1×1×2 mm, [−1350, 1000] HU.
    pub const VOX2VEC: Preprocess = Preprocess {
        spacing: [2.0, 1.0, 1.0],
        window: [-1350.0, 1000.0],
    };
}

/// A CT prepared for the backbone, with what maps a prediction back.
pub struct ProbeScan {
    /// `image`: windowed to [0, 1] on the RAS, resampled grid.
    pub scan: PreparedScan,
    /// `[D, H, W, k]` coordinate channels on the image's grid.
    pub coords: Vec<f32>,
    pub k: usize,
    /// Inside the body, per voxel of the image's grid.
    pub body: Vec<bool>,
    /// Prepared slices per RAS slice of the file (z spacing ratio).
    pub z_ratio: f64,
}

/// The body mask of a HU volume `[D, H, W]`: not air connected to the
/// in-plane border (module docs).
pub fn body_mask(hu: &[f32], dims: [usize; 3]) -> Vec<bool> {
    let [d, h, w] = dims;
    let idx = |z: usize, y: usize, x: usize| (z * h + y) * w + x;
    let air: Vec<bool> = hu.iter().map(|&v| v < BODY_THRESHOLD_HU).collect();
    let mut outside = vec![false; hu.len()];
    let mut stack = Vec::new();
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let border = y == 0 || x == 0 || y + 1 == h || x + 1 == w;
                let i = idx(z, y, x);
                if border && air[i] && !outside[i] {
                    outside[i] = true;
                    stack.push((z, y, x));
                }
            }
        }
    }
    while let Some((z, y, x)) = stack.pop() {
        let mut visit = |z: usize, y: usize, x: usize| {
            let i = idx(z, y, x);
            if air[i] && !outside[i] {
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

/// Read a k-channel coordinate NIfTI for the CT `ct` (read from
/// `ct_path`), refusing one on another grid or with another k than
/// `expect_k`, naming both files.
pub fn read_coords(
    path: &Path,
    ct: &Volume,
    ct_path: &Path,
    expect_k: usize,
) -> Result<Vec<Volume>> {
    let ch = read_nifti_channels(path)
        .with_context(|| format!("{}: cannot read the coordinate volume", path.display()))?;
    ensure!(
        ch.len() == expect_k,
        "{}: {} coordinate channel(s), but the backbone was trained with k = {expect_k}",
        path.display(),
        ch.len()
    );
    for c in &ch {
        c.check_same_grid(ct, 1e-3).with_context(|| {
            format!(
                "{}: the coordinates are not on the grid of the CT {} (they must have its shape \
                 and affine)",
                path.display(),
                ct_path.display()
            )
        })?;
    }
    Ok(ch)
}

/// Prepare a CT (HU, read from `path`) and its coordinate channels (each
/// on the CT's grid; [`read_coords`]) for the backbone.
pub fn prepare_ct(original: Volume, coords: &[Volume], pre: &Preprocess) -> Result<ProbeScan> {
    let (canon, reorientation) = to_canonical(&original);
    let mut image = resample_to_spacing(&canon, pre.spacing, Interp::Linear)?;
    let body = body_mask(&image.data, image.dims);
    Window::new(pre.window[0], pre.window[1]).apply(&mut image.data);
    let k = coords.len();
    let n = image.numel();
    let mut cdata = vec![0.0f32; n * k];
    for (j, c) in coords.iter().enumerate() {
        let (cc, _) = to_canonical(c);
        let r = resample_to_spacing(&cc, pre.spacing, Interp::Linear)?;
        ensure!(
            r.dims == image.dims,
            "coordinate channel {j}: resampled to {:?}, the CT to {:?}",
            r.dims,
            image.dims
        );
        for (v, &x) in r.data.iter().enumerate() {
            cdata[v * k + j] = x;
        }
    }
    let z_ratio = canon.spacing[0] / pre.spacing[0];
    Ok(ProbeScan {
        scan: PreparedScan {
            image,
            original,
            canonical_grid: canon,
            reorientation,
        },
        coords: cdata,
        k,
        body,
        z_ratio,
    })
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
    pub name: String,
    pub dims: [usize; 3],
    /// Windowed image `[D, H, W]`.
    pub image: Vec<f32>,
    /// `[D, H, W, k]`.
    pub coords: Vec<f32>,
    /// Class ids (0 = background, 1..=K) per voxel.
    pub labels: Vec<u8>,
    /// For each class 1..=K, the voxels holding it (indices into the grid).
    pub class_voxels: Vec<Vec<u32>>,
    /// Slices (prepared grid) no patch may touch.
    pub held_out: Vec<[usize; 2]>,
}

/// Read and prepare every training case; `coords[i]` are image i's
/// coordinate channels (empty when k = 0).
pub fn training_cases(
    d: &ProbeDataConfig,
    map: &ClassMap,
    pre: &Preprocess,
    coords: impl Fn(usize, &Volume) -> Result<Vec<Volume>>,
) -> Result<Vec<ProbeCase>> {
    ensure!(
        map.names.len() < 255,
        "{} classes do not fit a uint8 label map",
        map.names.len()
    );
    let mut cases = Vec::new();
    for (i, (ip, lp)) in d.images.iter().zip(&d.labels).enumerate() {
        let ct = read_ct(ip)?;
        let label = read_nifti(lp)?;
        ct.check_same_grid(&label, 1e-3).with_context(|| {
            format!(
                "{}: the label map must lie on the grid of the CT {}",
                lp.display(),
                ip.display()
            )
        })?;
        let label = map.remap(&label)?;
        let c = coords(i, &ct)?;
        let ps = prepare_ct(ct, &c, pre)?;
        let (lc, _) = to_canonical(&label);
        let lab = resample_to_spacing(&lc, pre.spacing, Interp::Nearest)?;
        ensure!(
            lab.dims == ps.scan.image.dims,
            "label map resampled off the CT's grid"
        );
        let labels: Vec<u8> = lab.data.iter().map(|&v| v.round().max(0.0) as u8).collect();
        let kc = map.names.len();
        let mut class_voxels = vec![Vec::new(); kc];
        for (v, &l) in labels.iter().enumerate() {
            if l > 0 && (l as usize) <= kc {
                class_voxels[l as usize - 1].push(v as u32);
            }
        }
        let nz = ps.scan.image.dims[0];
        let held_out = d
            .held_out
            .iter()
            .filter(|h| h.image == i)
            .map(|h| held_range(h, ps.z_ratio, nz))
            .collect();
        ensure!(
            class_voxels.iter().any(|v| !v.is_empty()),
            "{}: no voxel of any probed class ({}) after preprocessing",
            lp.display(),
            map.names.join(", ")
        );
        cases.push(ProbeCase {
            name: ip.display().to_string(),
            dims: ps.scan.image.dims,
            image: ps.scan.image.data,
            coords: ps.coords,
            labels,
            class_voxels,
            held_out,
        });
    }
    Ok(cases)
}

/// A held-out range of file slices as prepared slices `[start, end)`,
/// widened by one each side.
pub fn held_range(h: &HeldOut, z_ratio: f64, nz: usize) -> [usize; 2] {
    let a = (h.slices[0] as f64 * z_ratio).floor() as usize;
    let b = (h.slices[1] as f64 * z_ratio).ceil() as usize;
    [a.saturating_sub(1), (b + 1).min(nz)]
}

/// One step's patches of one volume, host data.
pub struct ProbeBatch {
    pub volume: usize,
    pub patch: [usize; 3],
    /// Patch origins (prepared grid).
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

/// vox2vec's sampler over the prepared cases (module docs). Cases smaller
/// than the patch are padded (image 0, coordinates 0, background).
pub struct ProbeSource {
    cases: Vec<ProbeCase>,
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
        let patch = d.patch;
        let mut z_starts = Vec::new();
        for c in &cases {
            let nz = c.dims[0].max(patch[0]);
            let starts: Vec<usize> = (0..=nz - patch[0])
                .filter(|&s| c.held_out.iter().all(|h| s + patch[0] <= h[0] || s >= h[1]))
                .collect();
            if starts.is_empty() {
                bail!(
                    "{}: the held-out slices {:?} (prepared grid) leave no room for a patch of {} \
                     slices",
                    c.name,
                    c.held_out,
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
        let dims = c.dims;
        let pd = [0, 1, 2].map(|a| dims[a].max(p[a]));
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
                let hi = pd[ax] - p[ax];
                let (lo, hi) = match anchor {
                    Some(a) => (a[ax].saturating_sub(p[ax] - 1), a[ax].min(hi)),
                    None => (0, hi),
                };
                o[ax] = lo + rng.below(hi - lo + 1);
            }
            origins.push(o);
        }
        let k = self.classes;
        let vox = p.iter().product::<usize>();
        let mut image = Vec::with_capacity(vox * origins.len());
        let mut coords = Vec::new();
        let mut target = vec![0.0f32; vox * origins.len() * k];
        let labels_f: Vec<f32> = c.labels.iter().map(|&l| l as f32).collect();
        for (j, o) in origins.iter().enumerate() {
            let oi = o.map(|x| x as i64);
            image.extend(extract_raw_channels(&c.image, dims, 1, oi, p, 0.0));
            if !c.coords.is_empty() {
                let kk = c.coords.len() / c.image.len();
                coords.extend(extract_raw_channels(&c.coords, dims, kk, oi, p, 0.0));
            }
            let lab = extract_raw_channels(&labels_f, dims, 1, oi, p, 0.0);
            for (t, &l) in lab.iter().enumerate() {
                if l >= 1.0 {
                    target[(j * vox + t) * k + l as usize - 1] = 1.0;
                }
            }
        }
        ProbeBatch {
            volume: v,
            patch: p,
            k: coords.len() / (vox * origins.len()),
            origins,
            image,
            coords,
            target,
            classes: k,
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
