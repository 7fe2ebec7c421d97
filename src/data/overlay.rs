//! PNG overlays of label maps on their scan, for a person to look at.
//!
//! One row per shown axial slice, one column per label map (e.g. the
//! reference and the prediction side by side, on the same slice), and a
//! legend naming each class shown with its colour. Slices are drawn in the
//! radiological convention (patient's right on the left of the image,
//! anterior at the top): every volume is brought to RAS first, the scan is
//! shown through an intensity window in grey, enlarged to at least
//! [`MIN_PANEL_PX`] pixels on its shorter side with the in-plane voxel
//! spacing respected, and each class is blended in its own colour (α = 0.35)
//! with a one-pixel outline drawn opaque.

use super::intensity::Window;
use super::orient::to_canonical;
use super::volume::Volume;
use crate::draw::{fonts, plot_err, Rgb, FONT};
use anyhow::{ensure, Context, Result};
use plotters::prelude::*;
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

/// The colour of class `class` (≥ 1).
pub fn colour(class: u32) -> [u8; 3] {
    PALETTE[(class as usize - 1) % PALETTE.len()]
}

/// The shorter side of a slice panel is enlarged to at least this many pixels.
pub const MIN_PANEL_PX: usize = 360;

const TITLE_PX: usize = 30;
const GAP_PX: usize = 8;
const LEGEND_ROW_PX: usize = 24;

/// What an overlay shows.
pub struct Overlay<'a> {
    /// The scan.
    pub image: &'a Volume,
    /// (column title, label map on the scan's grid), e.g. ("reference", gt),
    /// ("prediction", mask).
    pub labels: Vec<(&'a str, &'a Volume)>,
    /// Class names by id (index 0 = background); ids past the end are shown
    /// as "class <id>".
    pub names: &'a [String],
    pub window: Window,
    /// Slices (rows) to show.
    pub slices: usize,
}

/// Foreground voxels of each axial slice `k` summed over the label maps.
fn foreground_per_slice(labels: &[Volume]) -> Vec<usize> {
    let [d, h, w] = labels[0].dims;
    (0..d)
        .map(|k| {
            labels
                .iter()
                .map(|l| {
                    l.data[k * h * w..(k + 1) * h * w]
                        .iter()
                        .filter(|&&v| v > 0.0)
                        .count()
                })
                .sum()
        })
        .collect()
}

/// The slices to show: the labelled extent (every slice when nothing is
/// labelled) is cut into `n` equal runs of slices and each run gives its
/// slice with the most foreground; so `n = 1` is the slice with the most
/// foreground of all. Ascending, without repeats.
pub fn pick_slices(fg: &[usize], n: usize) -> Vec<usize> {
    let d = fg.len();
    let lo = fg.iter().position(|&c| c > 0).unwrap_or(0);
    let hi = fg.iter().rposition(|&c| c > 0).unwrap_or(d - 1);
    let len = hi - lo + 1;
    let n = n.clamp(1, len);
    (0..n)
        .map(|i| {
            let (a, b) = (lo + len * i / n, lo + len * (i + 1) / n);
            // The first slice of the run with the largest count.
            (a..b).rev().max_by_key(|&k| fg[k]).unwrap_or(a)
        })
        .collect()
}

/// The output pixel → voxel maps of a slice panel: for each output column
/// the voxel column, for each output row the voxel row, enlarged so the
/// shorter side reaches [`MIN_PANEL_PX`] with square millimetres per pixel.
fn panel_maps(w: usize, h: usize, sw: f64, sh: f64) -> (Vec<usize>, Vec<usize>) {
    let (wmm, hmm) = (w as f64 * sw, h as f64 * sh);
    let mm_per_px = (wmm.min(hmm) / MIN_PANEL_PX as f64).min(sw.min(sh));
    let (pw, ph) = (
        (wmm / mm_per_px).round().max(1.0) as usize,
        (hmm / mm_per_px).round().max(1.0) as usize,
    );
    let map = |n_out: usize, n_in: usize| -> Vec<usize> {
        (0..n_out)
            .map(|o| ((o as f64 + 0.5) * n_in as f64 / n_out as f64) as usize)
            .map(|v| v.min(n_in - 1))
            .collect()
    };
    (map(pw, w), map(ph, h))
}

/// Render the overlay as an RGB image.
pub fn render(ov: &Overlay) -> Result<Rgb> {
    ensure!(!ov.labels.is_empty(), "overlay: no label map to show");
    ensure!(ov.slices > 0, "overlay: at least one slice");
    for (_, l) in &ov.labels {
        ov.image.check_same_grid(l, 1e-3)?;
    }
    let (img, _) = to_canonical(ov.image);
    let labs: Vec<Volume> = ov.labels.iter().map(|(_, l)| to_canonical(l).0).collect();
    let [_, h, w] = img.dims;
    let ks = pick_slices(&foreground_per_slice(&labs), ov.slices);
    let (cols, rows) = panel_maps(w, h, img.spacing[2], img.spacing[1]);
    let (pw, ph) = (cols.len(), rows.len());
    // The voxel of each picture column and row: patient's right first
    // (i = w−1−col), anterior first (j = h−1−row).
    let vi: Vec<usize> = cols.iter().map(|&c| w - 1 - c).collect();
    let vj: Vec<usize> = rows.iter().map(|&r| h - 1 - r).collect();
    let mut shown: Vec<u32> = Vec::new();
    for l in &labs {
        for &k in &ks {
            for &v in &l.data[k * h * w..(k + 1) * h * w] {
                let c = v as u32;
                if c > 0 && !shown.contains(&c) {
                    shown.push(c);
                }
            }
        }
    }
    shown.sort_unstable();
    let legend: Vec<(u32, String)> = shown
        .iter()
        .map(|&c| {
            let name = ov.names.get(c as usize).filter(|n| !n.is_empty());
            let name = name.cloned().unwrap_or_else(|| format!("class {c}"));
            (c, format!("{c}  {name}"))
        })
        .collect();
    fonts();
    let font = (FONT, 18).into_font();
    let mut legend_px = 200;
    for (_, text) in &legend {
        let (w, _) = font.box_size(text).map_err(plot_err)?;
        legend_px = legend_px.max(w as usize + 24 + 2 * GAP_PX);
    }
    let ncol = labs.len();
    let width = GAP_PX + ncol * (pw + GAP_PX) + legend_px;
    let legend_h = TITLE_PX + LEGEND_ROW_PX * (shown.len() + 1);
    let height = (GAP_PX + ks.len() * (TITLE_PX + ph + GAP_PX)).max(legend_h);
    let mut out = Rgb::filled(width, height, [255, 255, 255]);
    for (row, &k) in ks.iter().enumerate() {
        let y0 = GAP_PX + row * (TITLE_PX + ph + GAP_PX) + TITLE_PX;
        for (col, lab) in labs.iter().enumerate() {
            let x0 = GAP_PX + col * (pw + GAP_PX);
            let class_at = |c: usize, r: usize| lab.at(k, vj[r], vi[c]) as u32;
            for (r, &j) in vj.iter().enumerate() {
                for (c, &i) in vi.iter().enumerate() {
                    let v = ov.window.map(img.at(k, j, i));
                    let g = (v.clamp(0.0, 1.0) * 255.0) as u8;
                    let mut rgb = [g; 3];
                    let cls = class_at(c, r);
                    if cls > 0 {
                        let col = colour(cls);
                        let edge = (c == 0 || class_at(c - 1, r) != cls)
                            || (c + 1 == pw || class_at(c + 1, r) != cls)
                            || (r == 0 || class_at(c, r - 1) != cls)
                            || (r + 1 == ph || class_at(c, r + 1) != cls);
                        for ch in 0..3 {
                            rgb[ch] = if edge {
                                col[ch]
                            } else {
                                (0.65 * rgb[ch] as f32 + 0.35 * col[ch] as f32) as u8
                            };
                        }
                    }
                    out.set(x0 + c, y0 + r, rgb);
                }
            }
        }
    }
    // Text: column titles per row, the legend.
    {
        let (wu, hu) = (width as u32, height as u32);
        let root = BitMapBackend::with_buffer(&mut out.px, (wu, hu)).into_drawing_area();
        let text = font.color(&BLACK);
        let z_mm = |k: usize| img.affine.apply([0.0, 0.0, k as f64])[2];
        for (row, &k) in ks.iter().enumerate() {
            let y = GAP_PX + row * (TITLE_PX + ph + GAP_PX) + 6;
            for (col, (title, _)) in ov.labels.iter().enumerate() {
                let x = GAP_PX + col * (pw + GAP_PX);
                root.draw(&Text::new(
                    format!("{title} · slice {k} (z {:.0} mm)", z_mm(k)),
                    (x as i32, y as i32),
                    text.clone(),
                ))
                .map_err(plot_err)?;
            }
        }
        let lx = (GAP_PX + ncol * (pw + GAP_PX)) as i32;
        let bold = (FONT, 18).into_font().style(FontStyle::Bold).color(&BLACK);
        root.draw(&Text::new("classes", (lx, (GAP_PX + 6) as i32), bold))
            .map_err(plot_err)?;
        if shown.is_empty() {
            root.draw(&Text::new(
                "(none on these slices)",
                (lx, (GAP_PX + TITLE_PX + 4) as i32),
                text.clone(),
            ))
            .map_err(plot_err)?;
        }
        for (i, (c, label)) in legend.iter().enumerate() {
            let y = (GAP_PX + TITLE_PX + i * LEGEND_ROW_PX) as i32;
            let [r, g, b] = colour(*c);
            root.draw(&Rectangle::new(
                [(lx, y + 2), (lx + 16, y + 18)],
                RGBColor(r, g, b).filled(),
            ))
            .map_err(plot_err)?;
            root.draw(&Text::new(label.as_str(), (lx + 24, y + 2), text.clone()))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

/// Render the overlay and write it as PNG (temporary file, then rename).
pub fn write_overlay(ov: &Overlay, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    render(ov)
        .with_context(|| format!("{}: overlay", path.display()))?
        .write_png(path)
}
