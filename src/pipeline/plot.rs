//! Line plots as PNG (the loss curve of a run), drawn with a tiny bitmap
//! font so no plotting stack is needed: axes, min/max tick labels, one or
//! more series.

use anyhow::{ensure, Result};
use std::path::Path;

/// 3×5 glyphs, one row per u8 (bit 2 = left column).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        's' => [0, 7, 4, 1, 7],
        't' => [2, 7, 2, 2, 3],
        'p' => [0, 7, 5, 7, 4],
        'l' => [6, 2, 2, 2, 7],
        'o' => [0, 7, 5, 5, 7],
        _ => [0; 5],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }
    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let o = (y as usize * self.w + x as usize) * 3;
            self.px[o..o + 3].copy_from_slice(&rgb);
        }
    }
    /// Bresenham line.
    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.set(x0, y0, rgb);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }
    /// Text at (x, y) (top-left), glyphs scaled by `s`.
    fn text(&mut self, x: i64, y: i64, s: i64, text: &str) {
        for (i, c) in text.chars().enumerate() {
            let g = glyph(c);
            for (r, row) in g.iter().enumerate() {
                for col in 0..3 {
                    if row & (4 >> col) != 0 {
                        for dy in 0..s {
                            for dx in 0..s {
                                self.set(
                                    x + i as i64 * 4 * s + col * s + dx,
                                    y + r as i64 * s + dy,
                                    [0, 0, 0],
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
        format!("{v:.1e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Plot series of (x, y) points (one colour each) with the y axis on a log
/// scale when `log_y` and every value is positive; writes a PNG atomically.
pub fn line_plot(path: &Path, series: &[(&[(f64, f64)], [u8; 3])], log_y: bool) -> Result<()> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(s, _)| s.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    ensure!(!pts.is_empty(), "{}: nothing to plot", path.display());
    let log_y = log_y && pts.iter().all(|p| p.1 > 0.0);
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(ty(y));
        y1 = y1.max(ty(y));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let (w, h) = (640usize, 400usize);
    let (l, r, t, b) = (70i64, 20i64, 20i64, 40i64);
    let mut c = Canvas::new(w, h);
    let (pw, ph) = (w as i64 - l - r, h as i64 - t - b);
    let grey = [160, 160, 160];
    c.line((l, t), (l, t + ph), grey);
    c.line((l, t + ph), (l + pw, t + ph), grey);
    let to_px = |x: f64, y: f64| -> (i64, i64) {
        let px = l + ((x - x0) / (x1 - x0) * pw as f64).round() as i64;
        let py = t + ph - ((ty(y) - y0) / (y1 - y0) * ph as f64).round() as i64;
        (px, py)
    };
    for (s, rgb) in series {
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in s.iter().filter(|p| p.1.is_finite()) {
            let p = to_px(x, y);
            if let Some(q) = prev {
                c.line(q, p, *rgb);
            }
            prev = Some(p);
        }
    }
    let unty = |v: f64| if log_y { 10f64.powf(v) } else { v };
    c.text(4, t, 2, &fmt_num(unty(y1)));
    c.text(4, t + ph - 10, 2, &fmt_num(unty(y0)));
    c.text(l, t + ph + 8, 2, &fmt_num(x0));
    let xr = fmt_num(x1);
    c.text(l + pw - xr.len() as i64 * 8, t + ph + 8, 2, &xr);
    c.text(l + pw / 2 - 16, t + ph + 8, 2, "step");
    c.text(4, t + ph / 2, 2, "loss");
    crate::fsutil::write_atomic_with(path, |f| {
        let mut enc = png::Encoder::new(f, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&c.px)?;
        wr.finish()?;
        Ok(())
    })
}

/// The loss curve of a run's log (`step`, `loss` records) as a PNG.
pub fn loss_curve(log: &Path, out: &Path) -> Result<()> {
    let recs = crate::train::RunLog::read(log)?;
    let pts: Vec<(f64, f64)> = recs
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get("loss")?.as_f64()?)))
        .collect();
    line_plot(out, &[(&pts, [200, 40, 40])], true)
}
