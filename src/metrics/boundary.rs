//! The boundary F-measure of a 2D mask against its reference, with the
//! conventions of the DAVIS benchmark (Perazzi et al., CVPR 2016;
//! `f_measure` / `db_eval_boundary` of the davis2017 evaluation code, used by
//! SegDiff at 1–5 px):
//!
//! 1. Boundary map of each mask (`seg2bmap`, for a map the size of the mask,
//!    where it does no thinning): pixel (y, x) is a boundary pixel when it
//!    differs from its east, south or south-east neighbour, pixels past the
//!    last row or column reading 0; on the last row only the east neighbour
//!    counts, on the last column only the south one, and the bottom-right
//!    pixel is never a boundary pixel.
//! 2. Tolerance radius r: `bound_th` pixels when `bound_th ≥ 1` (a whole
//!    number), else `⌈bound_th · √(H² + W²)⌉` (a fraction of the diagonal).
//! 3. Each boundary is dilated by the disk `{(dy, dx): dy² + dx² ≤ r²}`
//!    (scikit-image's `disk(r)`), clipped to the image.
//! 4. Precision = |pred boundary ∩ dilated reference boundary| / |pred
//!    boundary|; recall = |reference boundary ∩ dilated pred boundary| /
//!    |reference boundary|; F = 2PR / (P + R), 0 when P + R = 0.
//!    Empty boundaries: none in the prediction only → P = 1, R = 0; none in
//!    the reference only → P = 0, R = 1; none in either → P = R = 1 (F = 1).

use serde::{Deserialize, Serialize};

/// Boundary precision, recall and F at one tolerance.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoundaryF {
    pub f: f64,
    pub precision: f64,
    pub recall: f64,
}

/// The tolerance radius in pixels for `bound_th` on a `width` × `height`
/// image, or None when `bound_th` is not a valid tolerance (not positive and
/// finite, or ≥ 1 and not a whole number).
pub fn tolerance_px(bound_th: f64, width: usize, height: usize) -> Option<usize> {
    if !(bound_th.is_finite() && bound_th > 0.0) {
        return None;
    }
    if bound_th >= 1.0 {
        return (bound_th.fract() == 0.0).then_some(bound_th as usize);
    }
    let diag = ((width * width + height * height) as f64).sqrt();
    Some((bound_th * diag).ceil() as usize)
}

/// The DAVIS boundary map (`seg2bmap` at the mask's own size).
pub fn boundary_map(mask: &[bool], width: usize, height: usize) -> Vec<bool> {
    assert_eq!(mask.len(), width * height, "boundary_map: mask size");
    let at = |y: usize, x: usize| y < height && x < width && mask[y * width + x];
    let mut b = vec![false; mask.len()];
    for y in 0..height {
        for x in 0..width {
            let s = at(y, x);
            let (east, south, se) = (at(y, x + 1), at(y + 1, x), at(y + 1, x + 1));
            let last_row = y + 1 == height;
            let last_col = x + 1 == width;
            b[y * width + x] = match (last_row, last_col) {
                (true, true) => false,
                (false, true) => s ^ south,
                (true, false) => s ^ east,
                (false, false) => (s ^ east) | (s ^ south) | (s ^ se),
            };
        }
    }
    b
}

/// Dilate a boundary map by the disk of radius `r` (clipped to the image).
fn dilate_disk(b: &[bool], width: usize, height: usize, r: usize) -> Vec<bool> {
    let ri = r as i64;
    let offsets: Vec<(i64, i64)> = (-ri..=ri)
        .flat_map(|dy| (-ri..=ri).map(move |dx| (dy, dx)))
        .filter(|(dy, dx)| dy * dy + dx * dx <= ri * ri)
        .collect();
    let mut out = vec![false; b.len()];
    for (i, _) in b.iter().enumerate().filter(|(_, &v)| v) {
        let (y, x) = ((i / width) as i64, (i % width) as i64);
        for &(dy, dx) in &offsets {
            let (ny, nx) = (y + dy, x + dx);
            if ny >= 0 && nx >= 0 && ny < height as i64 && nx < width as i64 {
                out[ny as usize * width + nx as usize] = true;
            }
        }
    }
    out
}

/// The boundary F-measure of `pred` against `gt` at tolerance `bound_th`
/// (see the module doc). Panics on a tolerance [`tolerance_px`] refuses
/// (callers check their input with it first).
pub fn boundary_f(
    gt: &[bool],
    pred: &[bool],
    width: usize,
    height: usize,
    bound_th: f64,
) -> BoundaryF {
    boundary_scores(gt, pred, width, height, &[bound_th])[0]
}

/// [`boundary_f`] at several tolerances (the boundary maps made once).
pub fn boundary_scores(
    gt: &[bool],
    pred: &[bool],
    width: usize,
    height: usize,
    bound_th: &[f64],
) -> Vec<BoundaryF> {
    let bp = boundary_map(pred, width, height);
    let bg = boundary_map(gt, width, height);
    let n_p = bp.iter().filter(|&&v| v).count();
    let n_g = bg.iter().filter(|&&v| v).count();
    bound_th
        .iter()
        .map(|&t| {
            let r = tolerance_px(t, width, height)
                .unwrap_or_else(|| panic!("boundary tolerance {t} is not valid"));
            let (precision, recall) = match (n_p, n_g) {
                (0, 0) => (1.0, 1.0),
                (0, _) => (1.0, 0.0),
                (_, 0) => (0.0, 1.0),
                _ => {
                    let dg = dilate_disk(&bg, width, height, r);
                    let dp = dilate_disk(&bp, width, height, r);
                    let matched_p = bp.iter().zip(&dg).filter(|(&a, &b)| a && b).count();
                    let matched_g = bg.iter().zip(&dp).filter(|(&a, &b)| a && b).count();
                    (matched_p as f64 / n_p as f64, matched_g as f64 / n_g as f64)
                }
            };
            let f = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            BoundaryF {
                f,
                precision,
                recall,
            }
        })
        .collect()
}
