//! Body-part regression data: CT volumes turned into stacks of axial slices
//! the way bpreg prepares them, and the training stream of equidistant
//! slice samples.
//!
//! Preprocessing ([`prepare_volume`]): reorient to RAS (so the slice index
//! k runs from inferior to superior), resample in-plane only to
//! `data.spacing_mm` (z keeps the scan's own spacing), clip HU to
//! `data.window` and map it linearly to [−1, 1], centre crop / pad every
//! slice to `data.size × data.size` (padding reads −1, air).
//!
//! Sampling ([`SliceSource`]): every step draws, for every volume, m
//! equidistant slices: a gap of k slices with k·z-spacing in `data.gap_mm`
//! (the largest gap that fits when the volume is too short for m slices
//! that far apart, as bpreg does), uniform over the gaps that admit a draw,
//! then a uniform first slice among those whose m slices all avoid the
//! volume's held-out slices (`data.held_out`) — a draw may straddle a
//! held-out range, so the order across it is still trained, but no held-out
//! slice is ever seen. The draws of batch p derive from (seed, p) alone, so
//! a resumed run repeats the stream of an uninterrupted one.

use super::bpr_config::BprDataConfig;
use super::seg_data::{read_finite_scan, NonFinite};
use super::train_loop::BatchSource;
use crate::data::crop::centre_pad_crop;
use crate::data::intensity::Window;
use crate::data::orient::{to_canonical, Reorientation};
use crate::data::resample::{resample_to_spacing, Interp};
use crate::data::rng::Rng;
use crate::data::Volume;
use anyhow::{bail, ensure, Result};
use std::path::Path;

/// A volume's preprocessed slices.
pub struct SliceStack {
    /// The file, for messages.
    pub name: String,
    /// `[D, S, S]`: D slices (inferior first) of S × S, values in [−1, 1].
    pub data: Vec<f32>,
    pub slices: usize,
    pub size: usize,
    /// Distance between consecutive slices, mm.
    pub z_spacing: f64,
}

impl SliceStack {
    /// Slice `k` (S·S values).
    pub fn slice(&self, k: usize) -> &[f32] {
        let n = self.size * self.size;
        &self.data[k * n..(k + 1) * n]
    }
}

/// A volume prepared for scoring, with what maps results back to its grid.
pub struct PreparedCt {
    pub stack: SliceStack,
    /// The volume in RAS, before resampling (the grid scores are laid on).
    pub canonical: Volume,
    pub reorientation: Reorientation,
}

/// HU below which a volume's minimum must lie for it to be taken as a CT
/// (air is about −1000 HU; a label map, an MR or a probability map is not).
const CT_AIR_HU: f32 = -200.0;

/// Refuse a volume that is not a stack of axial CT slices in HU.
pub fn check_ct(vol: &Volume, path: &Path) -> Result<()> {
    let (lo, hi) = vol.min_max();
    if lo > CT_AIR_HU {
        bail!(
            "{}: does not look like a CT in Hounsfield units: its values lie in [{lo}, {hi}], \
             with nothing below {CT_AIR_HU} (air in a CT is about −1000 HU); body-part regression \
             needs a CT scan, not a label map, an MR or a normalised image",
            path.display()
        );
    }
    Ok(())
}

/// Read a CT (NIfTI file or DICOM series folder) and check it.
pub fn read_ct(path: &Path) -> Result<Volume> {
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    let vol = read_finite_scan(path, NonFinite::Refuse, ": fix the scan")?;
    check_ct(&vol, path)?;
    Ok(vol)
}

/// Preprocess a CT as the module doc says.
pub fn prepare_volume(cfg: &BprDataConfig, vol: &Volume, path: &Path) -> Result<PreparedCt> {
    let (canonical, reorientation) = to_canonical(vol);
    let [d, h, w] = canonical.dims;
    if d < 2 {
        bail!(
            "{}: {} slice(s) along the superior–inferior axis (the volume is {}×{}×{} in RAS, \
             D×H×W): body-part regression scores a stack of axial slices and needs at least 2",
            path.display(),
            d,
            d,
            h,
            w
        );
    }
    let sz = canonical.spacing[0];
    let mut res = resample_to_spacing(
        &canonical,
        [sz, cfg.spacing_mm, cfg.spacing_mm],
        Interp::Linear,
    )?;
    Window {
        lo: cfg.window[0],
        hi: cfg.window[1],
        out_lo: -1.0,
        out_hi: 1.0,
    }
    .apply(&mut res.data);
    let (cropped, _) = centre_pad_crop(&res, [res.dims[0], cfg.size, cfg.size], -1.0);
    Ok(PreparedCt {
        stack: SliceStack {
            name: path.display().to_string(),
            data: cropped.data,
            slices: cropped.dims[0],
            size: cfg.size,
            z_spacing: sz,
        },
        canonical,
        reorientation,
    })
}

/// Read and preprocess the training volumes.
pub fn training_stacks(cfg: &BprDataConfig) -> Result<Vec<SliceStack>> {
    cfg.images
        .iter()
        .map(|p| Ok(prepare_volume(cfg, &read_ct(p)?, p)?.stack))
        .collect()
}

/// One step's slices: m per volume, inferior to superior.
pub struct SliceBatch {
    /// `[v·m, S, S]`, volume-major.
    pub slices: Vec<f32>,
    pub size: usize,
    /// Slices per volume.
    pub m: usize,
    /// The gap of each volume's slices, mm.
    pub gaps_mm: Vec<f32>,
    /// Each volume's region number (`data.regions`; empty = none).
    pub regions: Vec<i64>,
}

/// A volume's admissible draws: for each gap k (in slices), the first
/// slices whose m slices avoid every held-out slice.
struct Draws {
    by_gap: Vec<(usize, Vec<usize>)>,
}

/// The endless, seeded stream of slice samples (see the module doc).
pub struct SliceSource {
    stacks: Vec<SliceStack>,
    draws: Vec<Draws>,
    regions: Vec<i64>,
    m: usize,
    seed: u64,
    position: u64,
}

impl SliceSource {
    /// Refuses a volume whose training slices cannot hold m equidistant
    /// slices, and a held-out range outside its volume.
    pub fn new(stacks: Vec<SliceStack>, cfg: &BprDataConfig, seed: u64) -> Result<SliceSource> {
        let m = cfg.slices_per_volume;
        ensure!(m >= 2, "data.slices_per_volume must be ≥ 2, got {m}");
        let mut draws = Vec::new();
        for (i, s) in stacks.iter().enumerate() {
            let n = s.slices;
            let mut held = vec![false; n];
            for h in cfg.held_out.iter().filter(|h| h.image == i) {
                let [a, b] = h.slices;
                ensure!(
                    b <= n,
                    "{}: data.held_out slices [{a}, {b}) run past its {n} slices",
                    s.name
                );
                held[a..b].iter_mut().for_each(|x| *x = true);
            }
            let cap = (n.saturating_sub(1)) / (m - 1);
            let lo = ((cfg.gap_mm[0] / s.z_spacing).ceil() as usize).max(1);
            let hi = (cfg.gap_mm[1] / s.z_spacing).floor() as usize;
            // bpreg: a volume too short for the gaps asked for uses the largest that fits.
            let (lo, hi) = if cap >= lo {
                (lo, hi.clamp(lo, cap))
            } else {
                (cap, cap)
            };
            let mut by_gap = Vec::new();
            for k in lo.max(1)..=hi {
                let starts: Vec<usize> = (0..n - (m - 1) * k)
                    .filter(|&st| (0..m).all(|j| !held[st + j * k]))
                    .collect();
                if !starts.is_empty() {
                    by_gap.push((k, starts));
                }
            }
            ensure!(
                !by_gap.is_empty(),
                "{}: {n} slices ({} held out) cannot hold {m} equidistant training slices \
                 (data.slices_per_volume = {m}, data.gap_mm = {:?})",
                s.name,
                held.iter().filter(|&&x| x).count(),
                cfg.gap_mm
            );
            draws.push(Draws { by_gap });
        }
        Ok(SliceSource {
            stacks,
            draws,
            regions: cfg.regions.clone(),
            m,
            seed,
            position: 0,
        })
    }
}

impl BatchSource for SliceSource {
    type Batch = SliceBatch;
    fn next_batch(&mut self) -> Result<SliceBatch> {
        let mut rng = Rng::derive(self.seed, &[0xB9, self.position]);
        self.position += 1;
        let size = self.stacks[0].size;
        let mut slices = Vec::with_capacity(self.stacks.len() * self.m * size * size);
        let mut gaps_mm = Vec::new();
        for (s, d) in self.stacks.iter().zip(&self.draws) {
            let (k, starts) = &d.by_gap[rng.below(d.by_gap.len())];
            let start = starts[rng.below(starts.len())];
            for j in 0..self.m {
                slices.extend_from_slice(s.slice(start + j * k));
            }
            gaps_mm.push((*k as f64 * s.z_spacing) as f32);
        }
        Ok(SliceBatch {
            slices,
            size,
            m: self.m,
            gaps_mm,
            regions: self.regions.clone(),
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
