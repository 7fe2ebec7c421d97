//! Boxes: crop to the body, centre pad/crop to a shape, and their inverses.
//!
//! Every crop or pad is [`extract`]: copy the box `[origin, origin + size)`
//! of the source (origin may be negative and the box may run past the end;
//! voxels outside the source read `fill`). The affine is shifted so each
//! voxel keeps its world position: `affine_out = affine · T(origin)`.

use super::affine::Affine;
use super::volume::Volume;
use anyhow::{ensure, Result};

/// Copy the box `[origin, origin + size)` (D, H, W order) of `vol`.
pub fn extract(vol: &Volume, origin: [i64; 3], size: [usize; 3], fill: f32) -> Volume {
    let data = extract_raw(&vol.data, vol.dims, origin, size, fill);
    let mut t = Affine::IDENTITY;
    // (d, h, w) origin → (i, j, k) translation.
    t.0[0][3] = origin[2] as f64;
    t.0[1][3] = origin[1] as f64;
    t.0[2][3] = origin[0] as f64;
    Volume {
        data,
        dims: size,
        spacing: vol.spacing,
        affine: vol.affine.mul(&t),
        source: vol.source.clone(),
    }
}

/// [`extract`] on a bare array: rows are copied with one `copy_from_slice`
/// for the in-bounds span of each (d, h) row.
pub fn extract_raw(
    src: &[f32],
    dims: [usize; 3],
    origin: [i64; 3],
    size: [usize; 3],
    fill: f32,
) -> Vec<f32> {
    let [sd, sh, sw] = size;
    let mut out = vec![fill; sd * sh * sw];
    let [d, h, w] = dims.map(|v| v as i64);
    let x0 = origin[2].max(0);
    let x1 = (origin[2] + sw as i64).min(w);
    if x1 <= x0 {
        return out;
    }
    for od in 0..sd {
        let z = origin[0] + od as i64;
        if z < 0 || z >= d {
            continue;
        }
        for oh in 0..sh {
            let y = origin[1] + oh as i64;
            if y < 0 || y >= h {
                continue;
            }
            let s = ((z * h + y) * w + x0) as usize;
            let o = (od * sh + oh) * sw + (x0 - origin[2]) as usize;
            let n = (x1 - x0) as usize;
            out[o..o + n].copy_from_slice(&src[s..s + n]);
        }
    }
    out
}

/// [`extract_raw`] for a `[D, H, W, C]` array (channels innermost): each
/// in-bounds row span is `W·C` contiguous values.
pub fn extract_raw_channels(
    src: &[f32],
    dims: [usize; 3],
    channels: usize,
    origin: [i64; 3],
    size: [usize; 3],
    fill: f32,
) -> Vec<f32> {
    if channels == 1 {
        return extract_raw(src, dims, origin, size, fill);
    }
    let c = channels;
    let [sd, sh, sw] = size;
    let mut out = vec![fill; sd * sh * sw * c];
    let [d, h, w] = dims.map(|v| v as i64);
    let x0 = origin[2].max(0);
    let x1 = (origin[2] + sw as i64).min(w);
    if x1 <= x0 {
        return out;
    }
    for od in 0..sd {
        let z = origin[0] + od as i64;
        if z < 0 || z >= d {
            continue;
        }
        for oh in 0..sh {
            let y = origin[1] + oh as i64;
            if y < 0 || y >= h {
                continue;
            }
            let s = ((z * h + y) * w + x0) as usize * c;
            let o = ((od * sh + oh) * sw + (x0 - origin[2]) as usize) * c;
            let n = (x1 - x0) as usize * c;
            out[o..o + n].copy_from_slice(&src[s..s + n]);
        }
    }
    out
}

/// The origin that centres a box of `size` on extents `dims`:
/// `floor((n − s) / 2)` per axis (negative when padding).
pub fn centre_origin(dims: [usize; 3], size: [usize; 3]) -> [i64; 3] {
    let mut o = [0i64; 3];
    for a in 0..3 {
        o[a] = (dims[a] as i64 - size[a] as i64).div_euclid(2);
    }
    o
}

/// A centre pad/crop that can be undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PadCrop {
    pub origin: [i64; 3],
    pub original_dims: [usize; 3],
}

impl PadCrop {
    /// Put a volume of the padded/cropped shape back on the original extents.
    pub fn undo(&self, vol: &Volume, fill: f32) -> Volume {
        extract(vol, self.origin.map(|o| -o), self.original_dims, fill)
    }
}

/// Centre pad (with `fill`) and/or crop to `size`.
pub fn centre_pad_crop(vol: &Volume, size: [usize; 3], fill: f32) -> (Volume, PadCrop) {
    let origin = centre_origin(vol.dims, size);
    (
        extract(vol, origin, size, fill),
        PadCrop {
            origin,
            original_dims: vol.dims,
        },
    )
}

/// Bounding box `(lo, hi)` (hi exclusive) of the true voxels, or None.
pub fn bounding_box(mask: &[bool], dims: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let [_, h, w] = dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let p = [i / (h * w), (i / w) % h, i % w];
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a] + 1);
        }
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

/// The largest 6-connected component of `mask` (ties: the first found in
/// D, H, W scan order). Iterative flood fill with an explicit stack.
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [d, h, w] = dims;
    let n = mask.len();
    let mut label = vec![0u32; n];
    let mut best = (0u32, 0usize);
    let mut next = 0u32;
    let mut stack: Vec<usize> = Vec::new();
    for start in 0..n {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut count = 0usize;
        while let Some(i) = stack.pop() {
            count += 1;
            let (z, y, x) = (i / (h * w), (i / w) % h, i % w);
            let mut visit = |j: usize| {
                if mask[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
            if z > 0 {
                visit(i - h * w);
            }
            if z + 1 < d {
                visit(i + h * w);
            }
        }
        if count > best.1 {
            best = (next, count);
        }
    }
    label.iter().map(|&l| l != 0 && l == best.0).collect()
}

/// The box around the body of a CT: voxels above `threshold_hu` (−500 HU
/// separates tissue from air), their largest 6-connected component (the table
/// and stray air pockets drop out), its bounding box grown by `margin` voxels
/// and clipped to the volume. Returns (origin, size) for [`extract`].
pub fn body_box(vol: &Volume, threshold_hu: f32, margin: usize) -> Result<([i64; 3], [usize; 3])> {
    let mask: Vec<bool> = vol.data.iter().map(|&v| v > threshold_hu).collect();
    let body = largest_component(&mask, vol.dims);
    let (lo, hi) = bounding_box(&body, vol.dims).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no voxel above {threshold_hu} HU, cannot find the body",
            vol.name()
        )
    })?;
    let mut origin = [0i64; 3];
    let mut size = [0usize; 3];
    for a in 0..3 {
        let l = lo[a].saturating_sub(margin);
        let u = (hi[a] + margin).min(vol.dims[a]);
        origin[a] = l as i64;
        size[a] = u - l;
    }
    ensure!(size.iter().all(|&s| s > 0), "empty body box");
    Ok((origin, size))
}

/// Crop a CT and any label maps on its grid to the body box.
pub fn crop_to_body(
    image: &Volume,
    labels: &[&Volume],
    threshold_hu: f32,
    margin: usize,
) -> Result<(Volume, Vec<Volume>)> {
    let (origin, size) = body_box(image, threshold_hu, margin)?;
    let img = extract(image, origin, size, 0.0);
    let mut out = Vec::with_capacity(labels.len());
    for l in labels {
        image.check_same_grid(l, 1e-3)?;
        out.push(extract(l, origin, size, 0.0));
    }
    Ok((img, out))
}
