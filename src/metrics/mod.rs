//! Segmentation scores per class and case: Dice, IoU, NSD, HD95, HD100, ASSD
//! and centroid distance, with the conventions of DeepMind's surface-distance
//! library (default) or ImgX-DiffSeg's voxel counting ([`SurfaceConvention`]);
//! and for binary 2D masks, IoU and F1 as scikit-learn computes them, WCov
//! and the DAVIS boundary F ([`mask2d`], [`boundary`]).
//!
//! Empty masks (the conventions of `docs/metrics.md`):
//! - both empty: every score is NaN (the class is absent; summaries skip it);
//! - exactly one empty: Dice = IoU = NSD = 0; HD95, HD100, ASSD and centroid
//!   distance are NaN (a distance to nothing is undefined).

pub mod boundary;
pub mod edt;
pub mod mask2d;
pub mod rank;
pub mod summary;
pub mod surface;
pub mod surfel;

pub use surface::{surface_distances, SurfaceConvention, SurfaceDistances};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// What to compute.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricOptions {
    /// NSD tolerances in mm.
    pub tolerances_mm: Vec<f64>,
    pub convention: SurfaceConvention,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            tolerances_mm: vec![1.0, 3.0],
            convention: SurfaceConvention::DeepMind,
        }
    }
}

/// Scores of one class in one case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub gt_voxels: u64,
    pub pred_voxels: u64,
    pub dice: f64,
    pub iou: f64,
    /// One per tolerance of [`MetricOptions::tolerances_mm`].
    pub nsd: Vec<f64>,
    pub hd95: f64,
    pub hd100: f64,
    pub assd: f64,
    /// Distance between the centres of mass, mm.
    pub centroid_mm: f64,
}

/// Centre of mass (voxel index units, D, H, W), or None for an empty mask.
pub fn centre_of_mass(mask: &[bool], dims: [usize; 3]) -> Option<[f64; 3]> {
    let [_, h, w] = dims;
    let mut s = [0f64; 3];
    let mut n = 0u64;
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        s[0] += (i / (h * w)) as f64;
        s[1] += ((i / w) % h) as f64;
        s[2] += (i % w) as f64;
        n += 1;
    }
    (n > 0).then(|| s.map(|v| v / n as f64))
}

/// All scores of one binary pair on a grid with `spacing` (mm, D, H, W).
pub fn class_metrics(
    gt: &[bool],
    pred: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
    opt: &MetricOptions,
) -> ClassMetrics {
    assert_eq!(gt.len(), pred.len(), "class_metrics: masks differ in size");
    let g = gt.iter().filter(|&&b| b).count() as u64;
    let p = pred.iter().filter(|&&b| b).count() as u64;
    let inter = gt.iter().zip(pred).filter(|(&a, &b)| a && b).count() as u64;
    let nan = f64::NAN;
    if g == 0 && p == 0 {
        return ClassMetrics {
            gt_voxels: 0,
            pred_voxels: 0,
            dice: nan,
            iou: nan,
            nsd: vec![nan; opt.tolerances_mm.len()],
            hd95: nan,
            hd100: nan,
            assd: nan,
            centroid_mm: nan,
        };
    }
    let dice = 2.0 * inter as f64 / (g + p) as f64;
    let iou = inter as f64 / (g + p - inter) as f64;
    if g == 0 || p == 0 {
        return ClassMetrics {
            gt_voxels: g,
            pred_voxels: p,
            dice,
            iou,
            nsd: vec![0.0; opt.tolerances_mm.len()],
            hd95: nan,
            hd100: nan,
            assd: nan,
            centroid_mm: nan,
        };
    }
    let sd = surface_distances(gt, pred, dims, spacing, opt.convention);
    let cg = centre_of_mass(gt, dims).unwrap();
    let cp = centre_of_mass(pred, dims).unwrap();
    let centroid_mm = (0..3)
        .map(|a| ((cg[a] - cp[a]) * spacing[a]).powi(2))
        .sum::<f64>()
        .sqrt();
    ClassMetrics {
        gt_voxels: g,
        pred_voxels: p,
        dice,
        iou,
        nsd: opt.tolerances_mm.iter().map(|&t| sd.nsd(t)).collect(),
        hd95: sd.hausdorff(95.0),
        hd100: sd.hausdorff_max(),
        assd: sd.assd(),
        centroid_mm,
    }
}

/// Scores for each class id of two label maps on one grid (classes in parallel).
pub fn label_metrics(
    gt: &[f32],
    pred: &[f32],
    dims: [usize; 3],
    spacing: [f64; 3],
    class_ids: &[u32],
    opt: &MetricOptions,
) -> Vec<ClassMetrics> {
    class_ids
        .par_iter()
        .map(|&c| {
            let c = c as f32;
            let g: Vec<bool> = gt.iter().map(|&v| v == c).collect();
            let p: Vec<bool> = pred.iter().map(|&v| v == c).collect();
            class_metrics(&g, &p, dims, spacing, opt)
        })
        .collect()
}
