//! Scores of one binary 2D mask against its reference: IoU and F1 exactly as
//! scikit-learn computes them on the flattened masks, the weighted covering
//! (WCov), and the boundary F-measure at pixel tolerances
//! ([`super::boundary`]).
//!
//! Conventions (`docs/metrics.md`):
//! - IoU = `sklearn.metrics.jaccard_score(gt.ravel(), pred.ravel())` =
//!   TP / (TP + FP + FN); F1 = `f1_score(...)` = 2TP / (2TP + FP + FN)
//!   (= Dice). When both masks are empty the ratio is 0/0 and scikit-learn's
//!   default `zero_division="warn"` returns 0.0 (with a warning): so do these,
//!   unlike the 3D scores, where an absent class is NaN and skipped.
//! - WCov: the covering of the reference's regions by the prediction's
//!   (Arbeláez, Maire, Fowlkes & Malik, "Contour Detection and Hierarchical
//!   Image Segmentation", IEEE TPAMI 33(5), 2011, §3.2):
//!   `C(S' → S) = 1/N Σ_{R ∈ S} |R| · max_{R' ∈ S'} |R ∩ R'| / |R ∪ R'|`,
//!   where S is the reference segmentation, S' the prediction and N the
//!   number of pixels. A binary mask is read as a segmentation by taking its
//!   regions to be the 8-connected components of the foreground and of the
//!   background. WCov is in [0, 1], 1 for identical masks, and defined for
//!   empty masks (one background region: two empty masks score 1).

use super::boundary::{boundary_scores, BoundaryF};

/// Pixel counts of a binary comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    pub fn of(gt: &[bool], pred: &[bool]) -> Confusion {
        assert_eq!(gt.len(), pred.len(), "confusion: masks differ in size");
        let mut c = Confusion::default();
        for (&g, &p) in gt.iter().zip(pred) {
            match (g, p) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }
    /// sklearn's `jaccard_score` (binary): TP / (TP + FP + FN), 0 for 0/0.
    pub fn jaccard(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }
    /// sklearn's `f1_score` (binary): 2TP / (2TP + FP + FN), 0 for 0/0.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

/// a / b with scikit-learn's default zero division (0/0 → 0.0).
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Label the 8-connected components of each value of `mask` (foreground and
/// background alike): a region id per pixel, ids 0..count.
pub fn regions(mask: &[bool], width: usize, height: usize) -> (Vec<u32>, usize) {
    assert_eq!(mask.len(), width * height, "regions: mask size");
    const NONE: u32 = u32::MAX;
    let mut label = vec![NONE; mask.len()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if label[start] != NONE {
            continue;
        }
        let v = mask[start];
        label[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (y, x) = ((i / width) as i64, (i % width) as i64);
            for dy in -1..=1i64 {
                for dx in -1..=1i64 {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= height as i64 || nx >= width as i64 {
                        continue;
                    }
                    let j = ny as usize * width + nx as usize;
                    if label[j] == NONE && mask[j] == v {
                        label[j] = next;
                        stack.push(j);
                    }
                }
            }
        }
        next += 1;
    }
    (label, next as usize)
}

/// The weighted covering of `gt`'s regions by `pred`'s (see the module doc).
pub fn weighted_covering(gt: &[bool], pred: &[bool], width: usize, height: usize) -> f64 {
    assert_eq!(
        gt.len(),
        pred.len(),
        "weighted_covering: masks differ in size"
    );
    let n = gt.len();
    if n == 0 {
        return f64::NAN;
    }
    let (lg, ng) = regions(gt, width, height);
    let (lp, np) = regions(pred, width, height);
    let mut size_g = vec![0u64; ng];
    let mut size_p = vec![0u64; np];
    // (reference region, predicted region) of every pixel, sorted: each run
    // of equal keys is one intersection.
    let mut keys: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n {
        size_g[lg[i] as usize] += 1;
        size_p[lp[i] as usize] += 1;
        keys.push((lg[i] as u64) << 32 | lp[i] as u64);
    }
    keys.sort_unstable();
    let mut best = vec![0f64; ng];
    for run in keys.chunk_by(|a, b| a == b) {
        let (g, p) = ((run[0] >> 32) as usize, (run[0] & 0xFFFF_FFFF) as usize);
        let c = run.len() as u64;
        let o = c as f64 / (size_g[g] + size_p[p] - c) as f64;
        if o > best[g] {
            best[g] = o;
        }
    }
    size_g
        .iter()
        .zip(&best)
        .map(|(&s, &o)| s as f64 * o)
        .sum::<f64>()
        / n as f64
}

/// Every score of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageScores {
    pub gt_pixels: u64,
    pub pred_pixels: u64,
    pub iou: f64,
    pub f1: f64,
    pub wcov: f64,
    /// One per tolerance, in the order given.
    pub boundary: Vec<BoundaryF>,
}

impl ImageScores {
    /// The mean boundary F over the tolerances (SegDiff's "FBound" at 1..5 px).
    pub fn boundary_f_mean(&self) -> f64 {
        self.boundary.iter().map(|b| b.f).sum::<f64>() / self.boundary.len() as f64
    }
}

/// Score `pred` against `gt` (row-major, `width` × `height`); `tolerances`
/// as in [`super::boundary::boundary_f`].
pub fn score_masks(
    gt: &[bool],
    pred: &[bool],
    width: usize,
    height: usize,
    tolerances: &[f64],
) -> ImageScores {
    assert_eq!(gt.len(), width * height, "score_masks: reference size");
    assert_eq!(pred.len(), width * height, "score_masks: prediction size");
    let c = Confusion::of(gt, pred);
    ImageScores {
        gt_pixels: c.tp + c.fn_,
        pred_pixels: c.tp + c.fp,
        iou: c.jaccard(),
        f1: c.f1(),
        wcov: weighted_covering(gt, pred, width, height),
        boundary: boundary_scores(gt, pred, width, height, tolerances),
    }
}
