//! Intensity transforms: HU windows and z-normalisation.

use serde::{Deserialize, Serialize};

/// Clip to `[lo, hi]`, then scale linearly so `lo → out_lo`, `hi → out_hi`:
/// `y = out_lo + (clamp(x, lo, hi) − lo) · (out_hi − out_lo) / (hi − lo)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub lo: f32,
    pub hi: f32,
    pub out_lo: f32,
    pub out_hi: f32,
}

impl Window {
    /// ImgX-DiffSeg's abdominal CT window, [-991, 362] HU to [0, 1].
    pub const IMGX_CT: Window = Window {
        lo: -991.0,
        hi: 362.0,
        out_lo: 0.0,
        out_hi: 1.0,
    };
    /// vox2vec's CT window, [-1350, 1000] HU to [0, 1].
    pub const VOX2VEC_CT: Window = Window {
        lo: -1350.0,
        hi: 1000.0,
        out_lo: 0.0,
        out_hi: 1.0,
    };

    pub fn new(lo: f32, hi: f32) -> Window {
        Window {
            lo,
            hi,
            out_lo: 0.0,
            out_hi: 1.0,
        }
    }

    #[inline]
    pub fn map(&self, x: f32) -> f32 {
        let scale = (self.out_hi - self.out_lo) / (self.hi - self.lo);
        self.out_lo + (x.clamp(self.lo, self.hi) - self.lo) * scale
    }

    /// Apply in place.
    pub fn apply(&self, data: &mut [f32]) {
        let scale = (self.out_hi - self.out_lo) / (self.hi - self.lo);
        for v in data.iter_mut() {
            *v = self.out_lo + (v.clamp(self.lo, self.hi) - self.lo) * scale;
        }
    }

    /// The HU value that maps to `y` (for filling padding consistently).
    pub fn unmap(&self, y: f32) -> f32 {
        self.lo + (y - self.out_lo) * (self.hi - self.lo) / (self.out_hi - self.out_lo)
    }
}

/// Mean and standard deviation (population, f64 accumulation) of the voxels
/// where `mask` is true (all voxels when `mask` is None).
pub fn mean_std(data: &[f32], mask: Option<&[bool]>) -> (f64, f64) {
    let (mut n, mut s, mut s2) = (0usize, 0f64, 0f64);
    for (i, &v) in data.iter().enumerate() {
        if mask.is_none_or(|m| m[i]) {
            n += 1;
            s += v as f64;
            s2 += v as f64 * v as f64;
        }
    }
    if n == 0 {
        return (0.0, 1.0);
    }
    let mean = s / n as f64;
    let var = (s2 / n as f64 - mean * mean).max(0.0);
    (mean, var.sqrt())
}

/// z-normalisation in place: `(x − mean) / max(std, 1e-8)`, statistics over
/// the `mask` voxels (e.g. the body) or all voxels; returns (mean, std).
pub fn z_normalize(data: &mut [f32], mask: Option<&[bool]>) -> (f64, f64) {
    let (mean, std) = mean_std(data, mask);
    let inv = 1.0 / std.max(1e-8);
    for v in data.iter_mut() {
        *v = ((*v as f64 - mean) * inv) as f32;
    }
    (mean, std)
}
