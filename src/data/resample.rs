//! Resampling: to a target spacing, and through any affine map of indices.
//!
//! Both go through [`resample_map`]: every output voxel `(d, h, w)` reads the
//! source at the fractional index `m · [d, h, w, 1]` (D, H, W order), with
//! trilinear interpolation for images or nearest neighbour for labels. Source
//! neighbours outside the grid read `fill` ([`Outside::Fill`]) or the nearest
//! edge voxel ([`Outside::Clamp`]). The inner loop walks W, where the source
//! position advances by the constant column `m[·][2]`; rows are parallel
//! (rayon) over (d, h).

use super::affine::Affine;
use super::volume::Volume;
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// Interpolation of [`resample_map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    /// Trilinear (images).
    Linear,
    /// Nearest neighbour, ties rounding up (`⌊x + ½⌋`) (label maps).
    Nearest,
}

/// What a source read outside the grid returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outside {
    /// The nearest edge voxel.
    Clamp,
    /// A constant (e.g. −1024 HU for CT, 0 for labels).
    Fill(f32),
}

/// A map from output index (d, h, w) to source index: `src = m · [d, h, w, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexMap(pub [[f64; 4]; 3]);

impl IndexMap {
    pub fn identity() -> IndexMap {
        IndexMap([
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ])
    }
    /// Pure translation by `offset` voxels (a crop at `offset`).
    pub fn translation(offset: [f64; 3]) -> IndexMap {
        let mut m = IndexMap::identity();
        for (r, o) in offset.iter().enumerate() {
            m.0[r][3] = *o;
        }
        m
    }
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        let mut o = [0.0; 3];
        for r in 0..3 {
            o[r] = m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3];
        }
        o
    }
    /// As a voxel-index affine in (i, j, k) order: maps output (i, j, k) to
    /// source (i, j, k). Used to carry the world affine through a resampling:
    /// `affine_out = affine_src · ijk()`.
    pub fn ijk(&self) -> Affine {
        // (d, h, w) = (k, j, i): reverse rows and columns.
        let m = &self.0;
        let mut a = Affine::IDENTITY.0;
        for r in 0..3 {
            for c in 0..3 {
                a[2 - r][2 - c] = m[r][c];
            }
            a[2 - r][3] = m[r][3];
        }
        Affine(a)
    }
}

/// Sample `src` (dims `[D, H, W]`) at every output voxel of `out_dims`.
pub fn resample_map(
    src: &[f32],
    dims: [usize; 3],
    out_dims: [usize; 3],
    map: &IndexMap,
    interp: Interp,
    outside: Outside,
) -> Vec<f32> {
    let mut out = vec![0f32; out_dims.iter().product()];
    let [_, oh, ow] = out_dims;
    if out.is_empty() {
        return out;
    }
    let m = map.0;
    out.par_chunks_mut(ow).enumerate().for_each(|(row, dst)| {
        let (d, h) = ((row / oh) as f64, (row % oh) as f64);
        let base = [
            m[0][0] * d + m[0][1] * h + m[0][3],
            m[1][0] * d + m[1][1] * h + m[1][3],
            m[2][0] * d + m[2][1] * h + m[2][3],
        ];
        let step = [m[0][2], m[1][2], m[2][2]];
        for (w, o) in dst.iter_mut().enumerate() {
            let wf = w as f64;
            let p = [
                base[0] + step[0] * wf,
                base[1] + step[1] * wf,
                base[2] + step[2] * wf,
            ];
            *o = match interp {
                Interp::Linear => sample_linear(src, dims, p, outside),
                Interp::Nearest => sample_nearest(src, dims, p, outside),
            };
        }
    });
    out
}

#[inline]
fn fetch(
    src: &[f32],
    dims: [usize; 3],
    mut z: i64,
    mut y: i64,
    mut x: i64,
    outside: Outside,
) -> f32 {
    let [d, h, w] = dims;
    let inside =
        z >= 0 && y >= 0 && x >= 0 && (z as usize) < d && (y as usize) < h && (x as usize) < w;
    if !inside {
        match outside {
            Outside::Fill(v) => return v,
            Outside::Clamp => {
                z = z.clamp(0, d as i64 - 1);
                y = y.clamp(0, h as i64 - 1);
                x = x.clamp(0, w as i64 - 1);
            }
        }
    }
    src[(z as usize * h + y as usize) * w + x as usize]
}

/// ⌊x⌋ as an integer without a libm call (the default x86-64 target has no
/// SSE4.1 `roundsd`); exact for |x| < 2⁶³.
#[inline]
fn floor_i64(x: f64) -> i64 {
    let t = x as i64;
    t - ((t as f64) > x) as i64
}

/// Trilinear sample at fractional index `p = [d, h, w]`.
#[inline]
pub fn sample_linear(src: &[f32], dims: [usize; 3], p: [f64; 3], outside: Outside) -> f32 {
    let (z0, y0, x0) = (floor_i64(p[0]), floor_i64(p[1]), floor_i64(p[2]));
    let (tz, ty, tx) = (
        (p[0] - z0 as f64) as f32,
        (p[1] - y0 as f64) as f32,
        (p[2] - x0 as f64) as f32,
    );
    let [d, h, w] = dims;
    // Fast path: the 2×2×2 neighbourhood is inside.
    if z0 >= 0
        && y0 >= 0
        && x0 >= 0
        && ((z0 + 1) as usize) < d
        && ((y0 + 1) as usize) < h
        && ((x0 + 1) as usize) < w
    {
        let i = (z0 as usize * h + y0 as usize) * w + x0 as usize;
        let (sy, sz) = (w, h * w);
        let c00 = src[i] + (src[i + 1] - src[i]) * tx;
        let c01 = src[i + sy] + (src[i + sy + 1] - src[i + sy]) * tx;
        let c10 = src[i + sz] + (src[i + sz + 1] - src[i + sz]) * tx;
        let c11 = src[i + sz + sy] + (src[i + sz + sy + 1] - src[i + sz + sy]) * tx;
        let c0 = c00 + (c01 - c00) * ty;
        let c1 = c10 + (c11 - c10) * ty;
        return c0 + (c1 - c0) * tz;
    }
    let f = |dz: i64, dy: i64, dx: i64| fetch(src, dims, z0 + dz, y0 + dy, x0 + dx, outside);
    let c00 = f(0, 0, 0) * (1.0 - tx) + f(0, 0, 1) * tx;
    let c01 = f(0, 1, 0) * (1.0 - tx) + f(0, 1, 1) * tx;
    let c10 = f(1, 0, 0) * (1.0 - tx) + f(1, 0, 1) * tx;
    let c11 = f(1, 1, 0) * (1.0 - tx) + f(1, 1, 1) * tx;
    let c0 = c00 * (1.0 - ty) + c01 * ty;
    let c1 = c10 * (1.0 - ty) + c11 * ty;
    c0 * (1.0 - tz) + c1 * tz
}

/// Nearest-neighbour sample at fractional index `p = [d, h, w]`.
#[inline]
pub fn sample_nearest(src: &[f32], dims: [usize; 3], p: [f64; 3], outside: Outside) -> f32 {
    fetch(
        src,
        dims,
        floor_i64(p[0] + 0.5),
        floor_i64(p[1] + 0.5),
        floor_i64(p[2] + 0.5),
        outside,
    )
}

/// Resample to voxel size `target` `[sd, sh, sw]` mm.
///
/// Convention (as MONAI's `Spacing` and nibabel): the centre of voxel
/// (0, 0, 0) stays where it is; the new extents are
/// `round(n · s / s_target)` (at least 1); output index `o` reads source index
/// `o · s_target / s`, clamped to the edge. The affine's columns are scaled
/// by `s_target / s`, so world positions are preserved.
pub fn resample_to_spacing(vol: &Volume, target: [f64; 3], interp: Interp) -> Result<Volume> {
    ensure!(
        target.iter().all(|s| s.is_finite() && *s > 0.0),
        "target spacing {target:?} must be positive and finite"
    );
    let mut out_dims = [0usize; 3];
    let mut m = IndexMap::identity();
    for a in 0..3 {
        let ratio = target[a] / vol.spacing[a];
        out_dims[a] = ((vol.dims[a] as f64 * vol.spacing[a] / target[a]).round() as usize).max(1);
        m.0[a][a] = ratio;
    }
    let data = resample_map(&vol.data, vol.dims, out_dims, &m, interp, Outside::Clamp);
    let affine = vol.affine.mul(&m.ijk());
    Ok(Volume {
        data,
        dims: out_dims,
        spacing: target,
        affine,
        source: vol.source.clone(),
    })
}

/// Resample `vol` onto the grid (`dims`, `affine`) of another volume through
/// world coordinates (e.g. a prediction made at another spacing, back onto the
/// input grid).
pub fn resample_to_grid(
    vol: &Volume,
    dims: [usize; 3],
    affine: &Affine,
    spacing: [f64; 3],
    interp: Interp,
    outside: Outside,
) -> Result<Volume> {
    // source ijk = src_affine⁻¹ · target_affine · target ijk
    let ijk = vol.affine.inverse()?.mul(affine);
    let a = &ijk.0;
    let mut m = [[0.0; 4]; 3];
    for r in 0..3 {
        for c in 0..3 {
            m[2 - r][2 - c] = a[r][c];
        }
        m[2 - r][3] = a[r][3];
    }
    let data = resample_map(&vol.data, vol.dims, dims, &IndexMap(m), interp, outside);
    Ok(Volume {
        data,
        dims,
        spacing,
        affine: *affine,
        source: vol.source.clone(),
    })
}
