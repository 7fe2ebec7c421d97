//! Pictures of 2D results, written as PNG atomically (temporary sibling, then
//! rename; `draw::Rgb::write_png`): a mask as a grey PNG, mask outlines over
//! the photo, and an uncertainty map (a colour map of a field in [0, vmax]).

use super::read::Mask;
use crate::draw::Rgb;
use crate::fsutil::write_atomic_with;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Outline colour of a predicted mask (yellow: visible on the pink and brown
/// of colonoscopy and dermoscopy photos).
pub const PREDICTION_COLOUR: [u8; 3] = [255, 225, 25];
/// Outline colour of a reference mask (cyan).
pub const REFERENCE_COLOUR: [u8; 3] = [70, 240, 240];

/// Write a mask as an 8-bit grey PNG, foreground 255 and background 0 (read
/// back by [`super::read_mask`] as the same 0/1 mask).
pub fn write_mask_png(mask: &Mask, path: &Path) -> Result<()> {
    ensure!(
        mask.px.len() == mask.width * mask.height,
        "{}: mask holds {} pixels, not {}×{}",
        path.display(),
        mask.px.len(),
        mask.width,
        mask.height
    );
    let grey: Vec<u8> = mask
        .px
        .iter()
        .map(|&v| if v != 0 { 255 } else { 0 })
        .collect();
    write_atomic_with(path, |f| {
        let mut enc = png::Encoder::new(f, mask.width as u32, mask.height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::High);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&grey)?;
        wr.finish()?;
        Ok(())
    })
    .with_context(|| format!("{}: mask PNG", path.display()))
}

/// Outline thickness in pixels for an image: one pixel per 200 pixels of the
/// shorter side, at least one, so the line reads the same at any size.
pub fn outline_px(width: usize, height: usize) -> usize {
    (width.min(height) / 200).max(1)
}

/// Erosion of a 0/1 mask by a (2r+1)² square (pixels outside the image count
/// as background), as two separable passes of a running minimum.
fn erode(px: &[u8], w: usize, h: usize, r: usize) -> Vec<u8> {
    let pass = |src: &[u8], n: usize, lines: usize, at: &dyn Fn(usize, usize) -> usize| {
        let mut out = vec![0u8; src.len()];
        for line in 0..lines {
            // Distance to the nearest background pixel before / after each position.
            let mut run = 0usize;
            let mut left = vec![0usize; n];
            for (i, l) in left.iter_mut().enumerate() {
                run = if src[at(line, i)] != 0 { run + 1 } else { 0 };
                *l = run;
            }
            run = 0;
            for i in (0..n).rev() {
                run = if src[at(line, i)] != 0 { run + 1 } else { 0 };
                // Inside for r steps either way and not past the image edge.
                let keep = left[i] > r && run > r;
                out[at(line, i)] = u8::from(keep);
            }
        }
        out
    };
    let rows = pass(px, w, h, &|y, x| y * w + x);
    pass(&rows, h, w, &|x, y| y * w + x)
}

/// The outline band of a mask: foreground pixels within `thickness` pixels
/// (chessboard distance) of background or of the image edge.
pub fn outline(mask: &Mask, thickness: usize) -> Vec<bool> {
    // The erosion keeps the pixels farther than `thickness` from the outside.
    let inner = erode(&mask.px, mask.width, mask.height, thickness.max(1));
    mask.px
        .iter()
        .zip(&inner)
        .map(|(&m, &i)| m != 0 && i == 0)
        .collect()
}

/// The photo with each mask's outline drawn opaque in its colour (later
/// layers on top), [`outline_px`] thick.
pub fn render_outlines(photo: &Rgb, layers: &[(&Mask, [u8; 3])]) -> Result<Rgb> {
    let t = outline_px(photo.width, photo.height);
    let mut out = photo.clone();
    for (mask, colour) in layers {
        ensure!(
            mask.width == photo.width && mask.height == photo.height,
            "overlay: a {}×{} mask over a {}×{} photo",
            mask.width,
            mask.height,
            photo.width,
            photo.height
        );
        for (i, on) in outline(mask, t).into_iter().enumerate() {
            if on {
                out.px[i * 3..i * 3 + 3].copy_from_slice(colour);
            }
        }
    }
    Ok(out)
}

/// Render and write [`render_outlines`] as PNG.
pub fn write_overlay_png(photo: &Rgb, layers: &[(&Mask, [u8; 3])], path: &Path) -> Result<()> {
    render_outlines(photo, layers)
        .with_context(|| format!("{}: overlay", path.display()))?
        .write_png(path)
}

/// Matplotlib's viridis at 17 evenly spaced points (sRGB, 8-bit):
/// perceptually uniform and readable with colour-vision deficiencies.
const VIRIDIS: [[u8; 3]; 17] = [
    [68, 1, 84],
    [72, 24, 106],
    [71, 45, 123],
    [66, 64, 134],
    [59, 82, 139],
    [51, 99, 141],
    [44, 114, 142],
    [38, 130, 142],
    [33, 145, 140],
    [31, 160, 136],
    [40, 174, 128],
    [63, 188, 115],
    [94, 201, 98],
    [132, 212, 75],
    [173, 220, 48],
    [216, 226, 25],
    [253, 231, 37],
];

/// The colour of `t` in [0, 1] (clamped) on the viridis map, linear between
/// the table's points.
pub fn viridis(t: f32) -> [u8; 3] {
    let x = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f32;
    let i = (x as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|c| (a[c] as f32 + (b[c] as f32 - a[c] as f32) * f).round() as u8)
}

/// An uncertainty map: each value of `field` (row-major `width` × `height`,
/// e.g. the pixelwise variance of an ensemble of samples in [0, 1]) divided
/// by `vmax` and coloured on [`viridis`] (dark violet 0, yellow ≥ `vmax`).
/// The variance of values in [0, 1] is at most ¼, so `vmax = 0.25` uses
/// the whole scale for it. Non-finite values are an error.
pub fn render_uncertainty(field: &[f32], width: usize, height: usize, vmax: f32) -> Result<Rgb> {
    ensure!(
        field.len() == width * height,
        "uncertainty map: {} values for {width}×{height} pixels",
        field.len()
    );
    ensure!(
        vmax.is_finite() && vmax > 0.0,
        "uncertainty map: vmax {vmax} must be positive"
    );
    let mut px = Vec::with_capacity(field.len() * 3);
    for (i, &v) in field.iter().enumerate() {
        ensure!(
            v.is_finite(),
            "uncertainty map: value {v} at (x, y) = ({}, {})",
            i % width,
            i / width
        );
        px.extend_from_slice(&viridis(v / vmax));
    }
    Ok(Rgb { width, height, px })
}

/// Render and write [`render_uncertainty`] as PNG.
pub fn write_uncertainty_png(
    field: &[f32],
    width: usize,
    height: usize,
    vmax: f32,
    path: &Path,
) -> Result<()> {
    render_uncertainty(field, width, height, vmax)
        .with_context(|| format!("{}", path.display()))?
        .write_png(path)
}
