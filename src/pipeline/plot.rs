//! The progress figure of a training run (`<run>/progress.png`), in the
//! spirit of nnU-Net's `progress.png`: three panels over the optimiser step,
//! read from the run's `log.jsonl` —
//!
//! 1. training loss: every logged value (light) and, from 8 values on, their
//!    moving mean (dark), on a log scale when every value is positive and
//!    they span more than a factor of 10 (the axis says which);
//! 2. learning rate;
//! 3. seconds per step: the wall time between consecutive log records over the
//!    steps between them, less the time spent validating (a resumed run
//!    restarts its clock; the gap across a restart is left out);
//! 4. when the run validates (`train.validate_every` and held-out data), the
//!    validation score of each class (e.g. Dice) — a fourth panel.

use crate::draw::{fonts, plot_err, Rgb, FONT};
use anyhow::{ensure, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

/// Figure size in pixels.
pub const WIDTH: usize = 1000;
pub const HEIGHT: usize = 1000;

/// Series colours: raw loss, smoothed loss, learning rate, seconds per step.
pub const RAW_LOSS: RGBColor = RGBColor(240, 160, 160);
pub const SMOOTH_LOSS: RGBColor = RGBColor(190, 20, 20);
pub const LR: RGBColor = RGBColor(20, 90, 200);
pub const STEP_TIME: RGBColor = RGBColor(20, 140, 60);
/// Colours of the validation series, in the order the classes first appear
/// (repeating past eight).
pub const VALIDATION: [RGBColor; 8] = [
    RGBColor(200, 60, 20),
    RGBColor(30, 100, 200),
    RGBColor(40, 150, 60),
    RGBColor(150, 60, 170),
    RGBColor(220, 150, 0),
    RGBColor(0, 150, 160),
    RGBColor(120, 80, 40),
    RGBColor(90, 90, 90),
];

/// What the figure shows, taken from a run log.
#[derive(Debug, Default)]
pub struct Progress {
    /// (step, loss) of every record with both.
    pub loss: Vec<(f64, f64)>,
    /// (step, learning rate).
    pub lr: Vec<(f64, f64)>,
    /// (step, seconds per step since the previous record of the same process).
    pub step_time: Vec<(f64, f64)>,
    /// Per validated name (e.g. a class), in order of first appearance:
    /// (step, score).
    pub validation: Vec<(String, Vec<(f64, f64)>)>,
}

impl Progress {
    /// Collect the series from log records (`step`, `loss`, `lr`,
    /// `seconds`, `seconds_validating`, `validation`).
    pub fn from_records(recs: &[Value]) -> Progress {
        let mut p = Progress::default();
        let mut prev: Option<(f64, f64)> = None; // (step, training seconds)
        for r in recs {
            let Some(step) = r.get("step").and_then(Value::as_f64) else {
                continue;
            };
            let num = |k: &str| r.get(k).and_then(Value::as_f64).filter(|v| v.is_finite());
            if let Some(l) = num("loss") {
                p.loss.push((step, l));
            }
            if let Some(l) = num("lr") {
                p.lr.push((step, l));
            }
            if let Some(v) = r.get("validation").and_then(Value::as_array) {
                for pair in v {
                    let name = pair.get(0).and_then(Value::as_str);
                    let score = pair
                        .get(1)
                        .and_then(Value::as_f64)
                        .filter(|x| x.is_finite());
                    let (Some(name), Some(score)) = (name, score) else {
                        continue;
                    };
                    match p.validation.iter_mut().find(|(n, _)| n == name) {
                        Some((_, pts)) => pts.push((step, score)),
                        None => p.validation.push((name.to_string(), vec![(step, score)])),
                    }
                }
                // A validation record times validation, not training steps.
                continue;
            }
            if let Some(s) = num("seconds") {
                let s = s - num("seconds_validating").unwrap_or(0.0);
                // A later record of the same process has a larger step and a
                // larger clock; anything else is a restart.
                if let Some((s0, t0)) = prev.filter(|&(s0, t0)| step > s0 && s >= t0) {
                    p.step_time.push((step, (s - t0) / (step - s0)));
                }
                prev = Some((step, s));
            }
        }
        p
    }
}

/// Half-width of the moving mean over `n` logged values: `n / 40`, at least
/// 1; 0 (no smoothed curve) below 8 values.
pub fn smoothing_half_width(n: usize) -> usize {
    if n < 8 {
        0
    } else {
        (n / 40).max(1)
    }
}

/// Moving mean over the `2w + 1` surrounding values (fewer at the ends): a
/// curve that follows the trend of a noisy loss.
pub fn smooth(pts: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    (0..pts.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(w), (i + w + 1).min(pts.len()));
            let m = pts[a..b].iter().map(|p| p.1).sum::<f64>() / (b - a) as f64;
            (pts[i].0, m)
        })
        .collect()
}

/// The range of `vals`, widened when empty or flat.
fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - d, hi + d)
    }
}

/// Tick labels that stay short: plain for moderate values (no trailing
/// zeros), else scientific.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A line of a panel: its points, colour and legend label.
type Series<'a> = (&'a [(f64, f64)], RGBColor, String);

/// The y axis of a panel.
#[derive(Clone, Copy, PartialEq)]
enum YAxis {
    /// Logarithmic when every value is positive and they span more than a
    /// factor of 10 (a narrower range would get no tick labels), else as `Data`.
    Log,
    /// The data's range (from 0 for non-negative data).
    Data,
    /// Scores in [0, 1], the whole range shown.
    Unit,
}

/// One panel: `series` of (points, colour, legend label) over `x`.
fn panel(
    area: &Area,
    title: &str,
    y_desc: &str,
    x: (f64, f64),
    series: &[Series],
    y_axis: YAxis,
) -> Result<()> {
    let all = || series.iter().flat_map(|s| s.0.iter().map(|p| p.1));
    let (y0, y1) = match y_axis {
        YAxis::Unit => (0.0, 1.0),
        _ => range(all()),
    };
    // Many series (one per class): a smaller legend.
    let legend_font = if series.len() > 6 { 11 } else { 15 };
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80);
    let draw_legend = series.len() > 1;
    macro_rules! finish {
        ($chart:expr, $y_desc:expr) => {{
            let mut c = $chart;
            c.configure_mesh()
                .x_desc("step")
                .y_desc($y_desc)
                .axis_desc_style((FONT, 17))
                .label_style((FONT, 14))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| tick(*v))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(plot_err)?;
            for (pts, colour, label) in series {
                let colour = *colour;
                c.draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
                    });
            }
            if draw_legend {
                c.configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .label_font((FONT, legend_font))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(plot_err)?;
            }
        }};
    }
    if y_axis == YAxis::Log && y0 > 0.0 && y1 > 10.0 * y0 {
        let c = chart
            .build_cartesian_2d(x.0..x.1, (y0 * 0.9..y1 * 1.1).log_scale())
            .map_err(plot_err)?;
        finish!(c, format!("{y_desc} (log scale)"));
    } else {
        // Non-negative quantities (rates, times) start at 0; scores of 0
        // are drawn just above the axis line.
        let pad = (y1 - y0) * 0.05;
        let lo = match y_axis {
            YAxis::Unit => -0.02,
            _ if y0 >= 0.0 => 0.0,
            _ => y0 - pad,
        };
        let c = chart
            .build_cartesian_2d(x.0..x.1, lo..y1 + pad)
            .map_err(plot_err)?;
        finish!(c, y_desc.to_string());
    }
    Ok(())
}

/// Draw the progress figure of `p` into an RGB image.
pub fn render(p: &Progress, title: &str) -> Result<Rgb> {
    ensure!(!p.loss.is_empty(), "no loss values to plot");
    fonts();
    let mut img = Rgb::filled(WIDTH, HEIGHT, [255, 255, 255]);
    {
        let root = BitMapBackend::with_buffer(&mut img.px, (WIDTH as u32, HEIGHT as u32))
            .into_drawing_area();
        let (head, body) = root.split_vertically(36);
        head.titled(title, (FONT, 24).into_font().style(FontStyle::Bold))
            .map_err(plot_err)?;
        let panels = body.split_evenly((if p.validation.is_empty() { 3 } else { 4 }, 1));
        let validated = p.validation.iter().flat_map(|(_, pts)| pts);
        let steps = p
            .loss
            .iter()
            .chain(&p.lr)
            .chain(&p.step_time)
            .chain(validated);
        let steps = steps.map(|q| q.0);
        let (x0, x1) = range(steps);
        let x = (x0, x1);
        let w = smoothing_half_width(p.loss.len());
        let smoothed = smooth(&p.loss, w);
        let mut loss: Vec<Series> = vec![(&p.loss, RAW_LOSS, "logged value".into())];
        if w > 0 {
            let label = format!("moving mean of {} values", 2 * w + 1);
            loss.push((&smoothed, SMOOTH_LOSS, label));
        }
        panel(&panels[0], "training loss", "loss", x, &loss, YAxis::Log)?;
        panel(
            &panels[1],
            "learning rate",
            "learning rate",
            x,
            &[(&p.lr, LR, "learning rate".into())],
            YAxis::Data,
        )?;
        panel(
            &panels[2],
            "time per optimiser step",
            "seconds per step",
            x,
            &[(&p.step_time, STEP_TIME, "seconds per step".into())],
            YAxis::Data,
        )?;
        if !p.validation.is_empty() {
            let series: Vec<Series> = p
                .validation
                .iter()
                .enumerate()
                .map(|(i, (name, pts))| (pts.as_slice(), VALIDATION[i % 8], name.clone()))
                .collect();
            panel(&panels[3], "validation", "score", x, &series, YAxis::Unit)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(img)
}

/// The progress figure of a run log, written to `out` as PNG (atomically).
pub fn progress_figure(log: &Path, out: &Path) -> Result<()> {
    let recs = crate::train::RunLog::read(log)?;
    let p = Progress::from_records(&recs);
    let run = log.parent().unwrap_or(Path::new("."));
    let last = p.loss.last().map(|q| q.0).unwrap_or(0.0);
    let img = render(&p, &format!("{} · step {last:.0}", run.display()))
        .map_err(|e| e.context(format!("{}: progress figure", log.display())))?;
    img.write_png(out)
}
