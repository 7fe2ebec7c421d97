//! Sliding-window inference geometry and aggregation.
//!
//! Along each axis of extent n with patch p and overlap f, the window starts
//! at `0, s, 2s, …` with stride `s = max(1, floor(p · (1 − f)))`, and the last
//! window is clamped to end exactly at the edge (`n − p`), so the grid covers
//! the volume with no window sticking out. An axis shorter than the patch is
//! padded at its end to p (and the result cropped back).
//!
//! Aggregation of the C-channel patch outputs:
//! - `Mean`: every window voxel weighs 1; output = Σ w·y / Σ w;
//! - `Gaussian`: weight `Π_a exp(−(x_a − c_a)² / (2 (σ·p_a)²))` about the patch
//!   centre c (σ = 0.125 as nnU-Net), normalised to a maximum of 1 and floored
//!   at its smallest non-zero value;
//! - `CentreStitch` (vox2vec): each voxel takes the output of the one window
//!   whose centre is nearest along every axis (ties to the earlier window),
//!   so each voxel is written exactly once, from the part of a patch farthest
//!   from its borders.

use super::crop::extract_raw_channels;
use anyhow::{ensure, Result};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Aggregation {
    Mean,
    Gaussian { sigma_scale: f64 },
    CentreStitch,
}

/// Window starts along one axis (see the module docs).
pub fn positions(n: usize, p: usize, overlap: f64) -> Vec<usize> {
    if n <= p {
        return vec![0];
    }
    let stride = ((p as f64 * (1.0 - overlap)).floor() as usize).max(1);
    let mut v: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s < n - p)
        .collect();
    v.push(n - p);
    v
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlidingWindow {
    pub patch: [usize; 3],
    /// Fraction of a patch shared by neighbouring windows, in [0, 1).
    pub overlap: f64,
    pub aggregation: Aggregation,
}

/// One window: its index along each axis and its origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub index: [usize; 3],
    pub origin: [usize; 3],
}

impl SlidingWindow {
    /// Extents after padding short axes up to the patch.
    pub fn padded_dims(&self, dims: [usize; 3]) -> [usize; 3] {
        [0, 1, 2].map(|a| dims[a].max(self.patch[a]))
    }

    /// All windows over a volume of `dims` (D-major order).
    pub fn windows(&self, dims: [usize; 3]) -> Vec<Window> {
        let pd = self.padded_dims(dims);
        let pos: Vec<Vec<usize>> = (0..3)
            .map(|a| positions(pd[a], self.patch[a], self.overlap))
            .collect();
        let mut out = Vec::new();
        for (i, &z) in pos[0].iter().enumerate() {
            for (j, &y) in pos[1].iter().enumerate() {
                for (k, &x) in pos[2].iter().enumerate() {
                    out.push(Window {
                        index: [i, j, k],
                        origin: [z, y, x],
                    });
                }
            }
        }
        out
    }

    /// Run `predict` on every window of a 1-channel volume and aggregate its
    /// `channels`-channel outputs (NDHWC order within the patch) into a
    /// `[D, H, W, channels]` result on the original extents.
    pub fn run(
        &self,
        image: &[f32],
        dims: [usize; 3],
        channels: usize,
        pad_value: f32,
        predict: impl FnMut(&[f32], &Window) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        self.run_channels(image, dims, 1, channels, pad_value, predict)
    }

    /// As [`SlidingWindow::run`] for a `[D, H, W, in_channels]` input (e.g.
    /// an image with coordinate channels); each patch handed to `predict` is
    /// `[pd, ph, pw, in_channels]`.
    pub fn run_channels(
        &self,
        image: &[f32],
        dims: [usize; 3],
        in_channels: usize,
        channels: usize,
        pad_value: f32,
        mut predict: impl FnMut(&[f32], &Window) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        ensure!(
            image.len() == dims.iter().product::<usize>() * in_channels,
            "sliding window: {} input values for extents {dims:?} × {in_channels} channels",
            image.len()
        );
        ensure!(
            self.patch.iter().all(|&p| p > 0),
            "sliding window: empty patch {:?}",
            self.patch
        );
        ensure!(
            (0.0..1.0).contains(&self.overlap),
            "sliding window: overlap {} not in [0, 1)",
            self.overlap
        );
        let pd = self.padded_dims(dims);
        let padded;
        let src: &[f32] = if pd != dims {
            padded = extract_raw_channels(image, dims, in_channels, [0; 3], pd, pad_value);
            &padded
        } else {
            image
        };
        let mut agg = Aggregator::new(pd, channels, self.patch, self.overlap, self.aggregation);
        for win in self.windows(dims) {
            let o = win.origin.map(|v| v as i64);
            let patch = extract_raw_channels(src, pd, in_channels, o, self.patch, pad_value);
            let y = predict(&patch, &win)?;
            ensure!(
                y.len() == self.patch.iter().product::<usize>() * channels,
                "sliding window: predictor returned {} values for a {:?}×{channels} patch",
                y.len(),
                self.patch
            );
            agg.add(&win, &y);
        }
        let full = agg.finish();
        if pd == dims {
            return Ok(full);
        }
        // Crop the padding away (channels innermost).
        let mut out = Vec::with_capacity(dims.iter().product::<usize>() * channels);
        for z in 0..dims[0] {
            for y in 0..dims[1] {
                let s = ((z * pd[1] + y) * pd[2]) * channels;
                out.extend_from_slice(&full[s..s + dims[2] * channels]);
            }
        }
        Ok(out)
    }
}

/// Accumulates window outputs (see the module docs for the weights).
pub struct Aggregator {
    dims: [usize; 3],
    channels: usize,
    patch: [usize; 3],
    mode: Aggregation,
    acc: Vec<f32>,
    wsum: Vec<f32>,
    weights: Vec<f32>,
    /// Centre stitching: for each axis and voxel, the window index that owns it.
    owner: [Vec<usize>; 3],
}

impl Aggregator {
    pub fn new(
        dims: [usize; 3],
        channels: usize,
        patch: [usize; 3],
        overlap: f64,
        mode: Aggregation,
    ) -> Aggregator {
        let n: usize = dims.iter().product();
        let pn: usize = patch.iter().product();
        let weights = match mode {
            Aggregation::Gaussian { sigma_scale } => {
                let g: Vec<Vec<f64>> = (0..3)
                    .map(|a| {
                        let c = (patch[a] as f64 - 1.0) / 2.0;
                        let s = (sigma_scale * patch[a] as f64).max(1e-6);
                        (0..patch[a])
                            .map(|x| (-((x as f64 - c).powi(2)) / (2.0 * s * s)).exp())
                            .collect()
                    })
                    .collect();
                let mut w = Vec::with_capacity(pn);
                for z in 0..patch[0] {
                    for y in 0..patch[1] {
                        for x in 0..patch[2] {
                            w.push(g[0][z] * g[1][y] * g[2][x]);
                        }
                    }
                }
                let max = w.iter().cloned().fold(0.0, f64::max);
                let min_nz = w
                    .iter()
                    .cloned()
                    .filter(|&v| v > 0.0)
                    .fold(f64::INFINITY, f64::min)
                    / max;
                w.iter().map(|&v| ((v / max).max(min_nz)) as f32).collect()
            }
            _ => vec![1.0; pn],
        };
        let owner = [0, 1, 2].map(|a| {
            let pos = positions(dims[a], patch[a], overlap);
            let centres: Vec<f64> = pos
                .iter()
                .map(|&s| s as f64 + (patch[a] as f64 - 1.0) / 2.0)
                .collect();
            (0..dims[a])
                .map(|x| {
                    let mut best = 0;
                    for (i, &c) in centres.iter().enumerate() {
                        let inside = x >= pos[i] && x < pos[i] + patch[a];
                        let b_inside = x >= pos[best] && x < pos[best] + patch[a];
                        if inside
                            && (!b_inside
                                || (x as f64 - c).abs() < (x as f64 - centres[best]).abs())
                        {
                            best = i;
                        }
                    }
                    best
                })
                .collect()
        });
        Aggregator {
            dims,
            channels,
            patch,
            mode,
            acc: vec![0.0; n * channels],
            wsum: vec![0.0; n],
            weights,
            owner,
        }
    }

    /// Add one window's output (`patch` voxels × `channels`, NDHWC order).
    pub fn add(&mut self, win: &Window, y: &[f32]) {
        let [pd, ph, pw] = self.patch;
        let [_, h, w] = self.dims;
        let c = self.channels;
        for z in 0..pd {
            let gz = win.origin[0] + z;
            for yy in 0..ph {
                let gy = win.origin[1] + yy;
                for x in 0..pw {
                    let gx = win.origin[2] + x;
                    if self.mode == Aggregation::CentreStitch
                        && (self.owner[0][gz] != win.index[0]
                            || self.owner[1][gy] != win.index[1]
                            || self.owner[2][gx] != win.index[2])
                    {
                        continue;
                    }
                    let pi = (z * ph + yy) * pw + x;
                    let gi = (gz * h + gy) * w + gx;
                    let wt = self.weights[pi];
                    self.wsum[gi] += wt;
                    for ch in 0..c {
                        self.acc[gi * c + ch] += wt * y[pi * c + ch];
                    }
                }
            }
        }
    }

    /// The weighted mean per voxel (NaN where no window wrote).
    pub fn finish(self) -> Vec<f32> {
        let c = self.channels;
        let mut out = self.acc;
        for (i, &ws) in self.wsum.iter().enumerate() {
            for ch in 0..c {
                out[i * c + ch] = if ws > 0.0 {
                    out[i * c + ch] / ws
                } else {
                    f32::NAN
                };
            }
        }
        out
    }
}

/// Argmax over channels of a `[…, C]` array (first maximum wins) as class ids.
pub fn argmax_channels(x: &[f32], channels: usize) -> Vec<f32> {
    x.chunks_exact(channels)
        .map(|v| {
            let mut best = 0;
            for (i, &a) in v.iter().enumerate() {
                if a > v[best] {
                    best = i;
                }
            }
            best as f32
        })
        .collect()
}
