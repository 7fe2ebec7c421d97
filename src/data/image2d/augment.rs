//! Augmentation of a 2D sample at the model size: random flips and an affine
//! (rotation, scale) applied to the photo and its mask in one resampling pass
//! (bilinear for the photo, nearest for the mask; outside the source reads 0,
//! black and background, as torchvision's `RandomAffine` fills), then colour
//! jitter of the photo (brightness, contrast, saturation, in a random order,
//! each clamped to [0, 1], with torchvision's `ColorJitter` formulas). Every
//! draw comes from the [`Rng`] passed in, so a sample is a pure function of
//! its seed.

use crate::data::resample::{resample_map, IndexMap, Interp, Outside};
use crate::data::rng::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment2d {
    /// Probability of a left–right flip.
    pub flip_horizontal: f64,
    /// Probability of an up–down flip.
    pub flip_vertical: f64,
    /// Probability of the random affine.
    pub affine_prob: f64,
    /// Rotation drawn uniformly in ±this many degrees, about the centre.
    pub rotate_deg: f64,
    /// Scale drawn uniformly in this range (> 1 enlarges the content).
    pub scale: [f64; 2],
    /// Brightness factor drawn in [max(0, 1 − b), 1 + b]: x·f.
    pub brightness: f64,
    /// Contrast factor in [max(0, 1 − c), 1 + c]: blend with the mean grey level.
    pub contrast: f64,
    /// Saturation factor in [max(0, 1 − s), 1 + s]: blend with the grey image.
    pub saturation: f64,
}

impl Default for Augment2d {
    fn default() -> Self {
        Augment2d::none()
    }
}

impl Augment2d {
    /// No augmentation.
    pub fn none() -> Augment2d {
        Augment2d {
            flip_horizontal: 0.0,
            flip_vertical: 0.0,
            affine_prob: 0.0,
            rotate_deg: 0.0,
            scale: [1.0, 1.0],
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
        }
    }

    /// SegDiff's training transforms for its medical data sets: flips with
    /// p = ½ each, an affine every time (±22°, scale 0.75–1.25), and colour
    /// jitter 0.4 / 0.4 / 0.4 (its hue jitter of 0.1 is not implemented).
    pub fn segdiff() -> Augment2d {
        Augment2d {
            flip_horizontal: 0.5,
            flip_vertical: 0.5,
            affine_prob: 1.0,
            rotate_deg: 22.0,
            scale: [0.75, 1.25],
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
        }
    }

    /// Check the ranges (`what` names the setting's place for the message).
    pub fn validate(&self, what: &str) -> anyhow::Result<()> {
        for (name, p) in [
            ("flip_horizontal", self.flip_horizontal),
            ("flip_vertical", self.flip_vertical),
            ("affine_prob", self.affine_prob),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&p),
                "{what}.{name} = {p}: a probability in [0, 1]"
            );
        }
        anyhow::ensure!(
            self.rotate_deg.is_finite() && self.rotate_deg >= 0.0,
            "{what}.rotate_deg = {}: must be ≥ 0",
            self.rotate_deg
        );
        anyhow::ensure!(
            self.scale[0] > 0.0 && self.scale[0] <= self.scale[1] && self.scale[1].is_finite(),
            "{what}.scale = {:?}: need 0 < low ≤ high",
            self.scale
        );
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{what}.{name} = {v}: must be ≥ 0"
            );
        }
        Ok(())
    }

    /// Draw the map from output pixel to source pixel, or None when no
    /// spatial change was drawn. Pixel (y, x) of a `size`² image maps to
    /// `c + A·(p − c)`, c = ((size − 1)/2, (size − 1)/2), A = F·R(θ)/s.
    fn spatial_map(&self, size: usize, rng: &mut Rng) -> Option<IndexMap> {
        let fy = self.flip_vertical > 0.0 && rng.bernoulli(self.flip_vertical);
        let fx = self.flip_horizontal > 0.0 && rng.bernoulli(self.flip_horizontal);
        let affine = self.affine_prob > 0.0 && rng.bernoulli(self.affine_prob);
        if !(fy || fx || affine) {
            return None;
        }
        let (mut theta, mut s) = (0.0f64, 1.0f64);
        if affine {
            theta = rng.uniform(-self.rotate_deg, self.rotate_deg).to_radians();
            s = rng.uniform(self.scale[0], self.scale[1]);
        }
        let (c, sn) = (theta.cos(), theta.sin());
        let (sy, sx) = (if fy { -1.0 } else { 1.0 }, if fx { -1.0 } else { 1.0 });
        // A = R(θ)·F / s in (y, x) coordinates.
        let a = [[c * sy / s, -sn * sx / s], [sn * sy / s, c * sx / s]];
        let ctr = (size as f64 - 1.0) / 2.0;
        let mut m = IndexMap::identity().0;
        for r in 0..2 {
            m[r + 1][1] = a[r][0];
            m[r + 1][2] = a[r][1];
            m[r + 1][3] = ctr - a[r][0] * ctr - a[r][1] * ctr;
        }
        Some(IndexMap(m))
    }

    /// Augment one sample in place: `rgb` is `size`² interleaved RGB in
    /// [0, 1], `mask` `size`² in {0, 1}.
    pub fn apply(&self, rgb: &mut Vec<f32>, mask: &mut Vec<f32>, size: usize, rng: &mut Rng) {
        let n = size * size;
        assert_eq!(rgb.len(), 3 * n, "augment: photo size");
        assert_eq!(mask.len(), n, "augment: mask size");
        if let Some(map) = self.spatial_map(size, rng) {
            let dims = [1, size, size];
            let mut out = vec![0f32; 3 * n];
            for ch in 0..3 {
                let plane: Vec<f32> = rgb.iter().skip(ch).step_by(3).copied().collect();
                let warped =
                    resample_map(&plane, dims, dims, &map, Interp::Linear, Outside::Fill(0.0));
                for (i, v) in warped.into_iter().enumerate() {
                    out[i * 3 + ch] = v;
                }
            }
            *rgb = out;
            *mask = resample_map(mask, dims, dims, &map, Interp::Nearest, Outside::Fill(0.0));
        }
        self.colour_jitter(rgb, rng);
    }

    /// Brightness, contrast and saturation in a random order.
    fn colour_jitter(&self, rgb: &mut [f32], rng: &mut Rng) {
        let mut order = [0usize, 1, 2];
        rng.shuffle(&mut order);
        let factor = |m: f64, rng: &mut Rng| rng.uniform((1.0 - m).max(0.0), 1.0 + m) as f32;
        let grey = |p: &[f32]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        for op in order {
            match op {
                0 if self.brightness > 0.0 => {
                    let f = factor(self.brightness, rng);
                    rgb.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
                }
                1 if self.contrast > 0.0 => {
                    let f = factor(self.contrast, rng);
                    let n = rgb.len() / 3;
                    let mean = rgb.chunks(3).map(|p| grey(p) as f64).sum::<f64>() / n as f64;
                    let m = mean as f32 * (1.0 - f);
                    rgb.iter_mut()
                        .for_each(|v| *v = (*v * f + m).clamp(0.0, 1.0));
                }
                2 if self.saturation > 0.0 => {
                    let f = factor(self.saturation, rng);
                    for p in rgb.chunks_mut(3) {
                        let g = grey(p) * (1.0 - f);
                        p.iter_mut().for_each(|v| *v = (*v * f + g).clamp(0.0, 1.0));
                    }
                }
                _ => {}
            }
        }
    }
}
