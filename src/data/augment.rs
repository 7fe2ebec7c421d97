//! Augmentation: a random affine (rotation, scale, flips, translation)
//! applied while the patch is cut — one resampling pass, trilinear for the
//! image and nearest for the labels — then intensity scale/shift, gamma and
//! Gaussian noise on the image, then a simulated smaller field of view
//! ([`Augment::fov_cut`]). Every draw comes from the `Rng` passed in.
//!
//! Geometry of the spatial transform, in millimetres about the patch centre
//! (vectors in D, H, W order, `S = diag(spacing)`):
//! `x_src = s · R · F · x_out + t`, with R = R_D(α₀)·R_H(α₁)·R_W(α₂) (R_A rotates
//! the plane of the two other axes), F the flips (±1), s the scale and t the
//! translation; in voxel indices `src = c + S⁻¹(s R F S (p − c_p) + t)`
//! where c is the patch centre in the source and c_p = (size − 1)/2.

use super::resample::{resample_map, IndexMap, Interp, Outside};
use super::rng::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Probability of a random rotation/scale/translation.
    pub affine_prob: f64,
    /// Largest |angle| (degrees) about the D, H and W axes.
    pub rotate_deg: [f64; 3],
    /// Scale drawn uniformly in this range (values < 1 zoom in).
    pub scale: [f64; 2],
    /// Largest |shift| in mm along D, H, W.
    pub translate_mm: [f64; 3],
    /// Probability of flipping each axis (D, H, W).
    pub flip_prob: [f64; 3],
    /// Probability of the intensity scale/shift.
    pub intensity_prob: f64,
    /// Multiply by U(1 − s, 1 + s).
    pub intensity_scale: f64,
    /// Add U(−s, s) (in the units of the preprocessed image).
    pub intensity_shift: f64,
    /// Probability of a gamma curve.
    pub gamma_prob: f64,
    /// γ drawn uniformly in this range; applied over the patch's own
    /// [min, max]: `y = min + (max − min)·((x − min)/(max − min))^γ`.
    pub gamma: [f64; 2],
    /// Probability of additive Gaussian noise.
    pub noise_prob: f64,
    /// Its standard deviation.
    pub noise_std: f64,
    /// Probability that a patch is cut to a smaller simulated field of view
    /// ([`Augment::fov_cut`]).
    pub fov_prob: f64,
    /// Smallest fraction of the patch's extent, per axis, such a cut keeps.
    pub fov_keep: f64,
}

impl Augment {
    /// No augmentation: patches are plain crops.
    pub fn none() -> Augment {
        Augment {
            affine_prob: 0.0,
            rotate_deg: [0.0; 3],
            scale: [1.0, 1.0],
            translate_mm: [0.0; 3],
            flip_prob: [0.0; 3],
            intensity_prob: 0.0,
            intensity_scale: 0.0,
            intensity_shift: 0.0,
            gamma_prob: 0.0,
            gamma: [1.0, 1.0],
            noise_prob: 0.0,
            noise_std: 0.0,
            fov_prob: 0.0,
            fov_keep: 1.0,
        }
    }

    /// Defaults for windowed CT in [0, 1] (nnU-Net-like magnitudes; no flips,
    /// since left and right organs are different classes).
    pub fn ct_default() -> Augment {
        Augment {
            affine_prob: 0.3,
            rotate_deg: [15.0, 15.0, 15.0],
            scale: [0.85, 1.15],
            translate_mm: [5.0, 5.0, 5.0],
            flip_prob: [0.0; 3],
            intensity_prob: 0.3,
            intensity_scale: 0.1,
            intensity_shift: 0.05,
            gamma_prob: 0.3,
            gamma: [0.7, 1.5],
            noise_prob: 0.2,
            noise_std: 0.02,
            fov_prob: 0.0,
            fov_keep: 1.0,
        }
    }

    /// Draw the spatial map for a patch of `size` at `origin` of a volume with
    /// `spacing` (identity crop when no spatial augmentation fires).
    pub fn spatial_map(
        &self,
        spacing: [f64; 3],
        origin: [i64; 3],
        size: [usize; 3],
        rng: &mut Rng,
    ) -> IndexMap {
        let flips: Vec<bool> = self
            .flip_prob
            .iter()
            .map(|&p| p > 0.0 && rng.bernoulli(p))
            .collect();
        let affine = self.affine_prob > 0.0 && rng.bernoulli(self.affine_prob);
        if !affine && !flips.iter().any(|&f| f) {
            return IndexMap::translation(origin.map(|o| o as f64));
        }
        let (mut ang, mut s, mut t) = ([0.0f64; 3], 1.0, [0.0f64; 3]);
        if affine {
            for a in 0..3 {
                ang[a] = rng
                    .uniform(-self.rotate_deg[a], self.rotate_deg[a])
                    .to_radians();
            }
            s = rng.uniform(self.scale[0], self.scale[1]);
            for a in 0..3 {
                t[a] = rng.uniform(-self.translate_mm[a], self.translate_mm[a]);
            }
        }
        let rot = |axis: usize, a: f64| -> [[f64; 3]; 3] {
            let (c, sn) = (a.cos(), a.sin());
            let (u, v) = match axis {
                0 => (1, 2),
                1 => (0, 2),
                _ => (0, 1),
            };
            let mut m = [[0.0; 3]; 3];
            m[axis][axis] = 1.0;
            m[u][u] = c;
            m[u][v] = -sn;
            m[v][u] = sn;
            m[v][v] = c;
            m
        };
        let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
            let mut m = [[0.0; 3]; 3];
            for r in 0..3 {
                for c in 0..3 {
                    m[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
                }
            }
            m
        };
        let r = mul(mul(rot(0, ang[0]), rot(1, ang[1])), rot(2, ang[2]));
        // M (index space) = S⁻¹ · s R F · S
        let mut m = [[0.0f64; 4]; 3];
        for row in 0..3 {
            for col in 0..3 {
                let f = if flips[col] { -1.0 } else { 1.0 };
                m[row][col] = s * r[row][col] * f * spacing[col] / spacing[row];
            }
        }
        // src = c + S⁻¹ t + M (p − c_p), with c = origin + c_p.
        for row in 0..3 {
            let cp: Vec<f64> = size.iter().map(|&n| (n as f64 - 1.0) / 2.0).collect();
            let c = origin[row] as f64 + cp[row];
            m[row][3] =
                c + t[row] / spacing[row] - (0..3).map(|col| m[row][col] * cp[col]).sum::<f64>();
        }
        IndexMap(m)
    }

    /// Intensity augmentation of an image patch in place.
    pub fn intensity(&self, x: &mut [f32], rng: &mut Rng) {
        if self.gamma_prob > 0.0 && rng.bernoulli(self.gamma_prob) {
            let g = rng.uniform(self.gamma[0], self.gamma[1]) as f32;
            let (lo, hi) = x
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let range = hi - lo;
            if range > 0.0 {
                for v in x.iter_mut() {
                    *v = lo + range * ((*v - lo) / range).max(0.0).powf(g);
                }
            }
        }
        if self.intensity_prob > 0.0 && rng.bernoulli(self.intensity_prob) {
            let a = rng.uniform(1.0 - self.intensity_scale, 1.0 + self.intensity_scale) as f32;
            let b = rng.uniform(-self.intensity_shift, self.intensity_shift) as f32;
            for v in x.iter_mut() {
                *v = *v * a + b;
            }
        }
        if self.noise_prob > 0.0 && self.noise_std > 0.0 && rng.bernoulli(self.noise_prob) {
            // Counter-based Philox normals (f32 Box–Muller, the stream the
            // devices use), keyed by a draw so the patch's other draws stay put.
            let mut noise = vec![0f32; x.len()];
            crate::backend::philox::fill_normal(&mut noise, rng.next_u64(), 0);
            let sd = self.noise_std as f32;
            for (v, n) in x.iter_mut().zip(&noise) {
                *v += sd * n;
            }
        }
    }

    /// Simulate a scan with a smaller field of view, as the sliding window
    /// sees it at inference: with probability `fov_prob` the patch keeps only
    /// a box of itself, and the box is moved to the patch's low corner with
    /// everything after it "outside the scan" (image `fill`, label 0) — the
    /// way [`crate::data::sliding::SlidingWindow`] pads a scan shorter than
    /// the patch at its end. Each axis is cut with probability
    /// [`FOV_AXIS_CUT_PROB`]; a cut axis keeps a random extent of at least
    /// `fov_keep` of the patch, from a random start, so an organ the patch
    /// was centred on lands anywhere in the box — in its middle as in a crop
    /// centred on that organ, at its edge, or outside it. A network trained
    /// with it neither takes padding for anatomy nor expects organs where
    /// the scan has ended. Draws nothing when `fov_prob` is 0.
    pub fn fov_cut(
        &self,
        image: &mut [f32],
        label: Option<&mut [f32]>,
        size: [usize; 3],
        fill: f32,
        rng: &mut Rng,
    ) {
        if self.fov_prob <= 0.0 || !rng.bernoulli(self.fov_prob) {
            return;
        }
        let (mut start, mut keep) = ([0usize; 3], size);
        for a in 0..3 {
            if !rng.bernoulli(FOV_AXIS_CUT_PROB) {
                continue;
            }
            let n = size[a];
            let least = ((self.fov_keep * n as f64).ceil() as usize).clamp(1, n);
            keep[a] = least + rng.below(n - least + 1);
            start[a] = rng.below(n - keep[a] + 1);
        }
        if keep == size {
            return;
        }
        let [_, h, w] = size;
        let index = |p: [usize; 3]| (p[0] * h + p[1]) * w + p[2];
        // In place, low to high: the source of each kept voxel lies at or
        // after it, so no source is overwritten before it is read.
        let shift = |v: &mut [f32], outside: f32| {
            for d in 0..size[0] {
                for y in 0..h {
                    for x in 0..w {
                        let p = [d, y, x];
                        let kept = (0..3).all(|a| p[a] < keep[a]);
                        v[index(p)] = if kept {
                            v[index([p[0] + start[0], p[1] + start[1], p[2] + start[2]])]
                        } else {
                            outside
                        };
                    }
                }
            }
        };
        shift(image, fill);
        if let Some(l) = label {
            shift(l, 0.0);
        }
    }
}

/// Probability that a simulated field of view ([`Augment::fov_cut`]) cuts a
/// given axis: three in four, so most cuts shorten two or three axes, as a
/// box cropped around an organ does, and some leave an axis whole, as a scan
/// cut in one direction only does.
pub const FOV_AXIS_CUT_PROB: f64 = 0.75;

/// Cut (and spatially augment) one patch: the image with trilinear
/// interpolation (outside reads `image_fill`), the label with nearest
/// (outside reads 0). A pure translation is a plain copy.
pub fn cut_patch(
    image: &[f32],
    label: Option<&[f32]>,
    dims: [usize; 3],
    map: &IndexMap,
    size: [usize; 3],
    image_fill: f32,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let m = map.0;
    let is_translation = (0..3).all(|r| (0..3).all(|c| m[r][c] == if r == c { 1.0 } else { 0.0 }))
        && m.iter().all(|row| row[3].fract() == 0.0);
    if is_translation {
        let o = [m[0][3] as i64, m[1][3] as i64, m[2][3] as i64];
        let img = super::crop::extract_raw(image, dims, o, size, image_fill);
        let lab = label.map(|l| super::crop::extract_raw(l, dims, o, size, 0.0));
        return (img, lab);
    }
    let img = resample_map(
        image,
        dims,
        size,
        map,
        Interp::Linear,
        Outside::Fill(image_fill),
    );
    let lab = label.map(|l| resample_map(l, dims, size, map, Interp::Nearest, Outside::Fill(0.0)));
    (img, lab)
}
