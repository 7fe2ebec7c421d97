//! PNG overlays of a label map on its scan, for a person to look at.
//!
//! A few axial slices side by side, in the radiological convention (patient's
//! right on the left of the image, anterior at the top): both volumes are
//! brought to RAS first, the scan is shown through an intensity window in
//! grey, and each class is blended in its own colour (α = 0.45) with its
//! outline drawn opaque.

use super::intensity::Window;
use super::orient::to_canonical;
use super::volume::Volume;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Distinct colours for classes 1, 2, … (cycled past the end).
pub const PALETTE: [[u8; 3]; 13] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [220, 190, 255],
    [170, 110, 40],
];

fn colour(class: u32) -> [u8; 3] {
    PALETTE[(class as usize - 1) % PALETTE.len()]
}

/// Evenly spaced axial slices through the labelled extent (or the whole
/// volume when the label map is empty).
pub fn pick_slices(label: &Volume, n: usize) -> Vec<usize> {
    let d = label.dims[0];
    let plane = label.dims[1] * label.dims[2];
    let rows: Vec<usize> = (0..d)
        .filter(|&k| {
            label.data[k * plane..(k + 1) * plane]
                .iter()
                .any(|&v| v > 0.0)
        })
        .collect();
    let (lo, hi) = match (rows.first(), rows.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (0, d - 1),
    };
    (0..n)
        .map(|i| lo + (hi - lo) * (2 * i + 1) / (2 * n))
        .collect()
}

/// RGB pixels (width, height, data) of the overlay.
pub fn render(
    image: &Volume,
    label: &Volume,
    window: Window,
    slices: usize,
) -> Result<(usize, usize, Vec<u8>)> {
    image.check_same_grid(label, 1e-3)?;
    ensure!(slices > 0, "overlay: at least one slice");
    let (img, _) = to_canonical(image);
    let (lab, _) = to_canonical(label);
    let [_, h, w] = img.dims;
    let ks = pick_slices(&lab, slices);
    let (width, height) = (w * ks.len(), h);
    let mut px = vec![0u8; width * height * 3];
    for (t, &k) in ks.iter().enumerate() {
        for r in 0..h {
            let j = h - 1 - r; // anterior at the top
            for c in 0..w {
                let i = w - 1 - c; // patient's right on the left
                let v = (window.map(img.at(k, j, i)).clamp(0.0, 1.0) * 255.0) as u8;
                let mut rgb = [v; 3];
                let cls = lab.at(k, j, i) as u32;
                if cls > 0 {
                    let col = colour(cls);
                    let edge = [(0i64, 1i64), (0, -1), (1, 0), (-1, 0)]
                        .iter()
                        .any(|&(dj, di)| {
                            let (jj, ii) = (j as i64 + dj, i as i64 + di);
                            jj < 0
                                || ii < 0
                                || jj >= h as i64
                                || ii >= w as i64
                                || lab.at(k, jj as usize, ii as usize) as u32 != cls
                        });
                    for ch in 0..3 {
                        rgb[ch] = if edge {
                            col[ch]
                        } else {
                            (0.55 * rgb[ch] as f32 + 0.45 * col[ch] as f32) as u8
                        };
                    }
                }
                let o = (r * width + t * w + c) * 3;
                px[o..o + 3].copy_from_slice(&rgb);
            }
        }
    }
    Ok(zoom(
        width,
        height,
        px,
        (MIN_SLICE_PX / h.min(w).max(1)).max(1),
    ))
}

/// Slices smaller than this (pixels) are enlarged by an integer factor so a
/// coarse volume is still readable.
const MIN_SLICE_PX: usize = 192;

/// Nearest-neighbour enlargement by an integer factor `z`.
fn zoom(width: usize, height: usize, px: Vec<u8>, z: usize) -> (usize, usize, Vec<u8>) {
    if z == 1 {
        return (width, height, px);
    }
    let (zw, zh) = (width * z, height * z);
    let mut out = vec![0u8; zw * zh * 3];
    for r in 0..zh {
        for c in 0..zw {
            let s = ((r / z) * width + c / z) * 3;
            let o = (r * zw + c) * 3;
            out[o..o + 3].copy_from_slice(&px[s..s + 3]);
        }
    }
    (zw, zh, out)
}

/// Write the overlay PNG (temporary file, then rename).
pub fn write_overlay(
    image: &Volume,
    label: &Volume,
    window: Window,
    slices: usize,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let (w, h, px) = render(image, label, window, slices)?;
    crate::fsutil::write_atomic_with(path, |f| {
        let mut enc = png::Encoder::new(f, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&px)?;
        wr.finish()?;
        Ok(())
    })
    .with_context(|| format!("{}: overlay", path.display()))
}
