//! `voxdiff bpr`: score every axial slice of a CT with a trained
//! body-part-regression run, and write
//! - a coordinate volume: each slice's smoothed score broadcast over the
//!   slice, as float32 NIfTI on the input's exact grid (shape, affine and
//!   header of the input);
//! - with `--json`, a bpreg-like JSON: raw and smoothed slice scores (from
//!   the most inferior slice up), each slice's world z, the z spacing,
//!   whether the file's slice index runs against the patient's height, the
//!   slope of the smoothed scores, and Spearman's ρ of the scores against
//!   the slice position (1 = scores rise monotonically toward the head).
//!
//! Smoothing is bpreg's: a Gaussian of σ = `infer.smoothing_mm` (10 mm)
//! along z, as scipy's `gaussian_filter1d` (mirror at the ends, kernel cut at
//! 4σ). Both files are written through temporary files and renamed, the
//! NIfTI first.

use super::bpr_config::BprConfig;
use super::bpr_data::{prepare_volume, read_ct, PreparedCt, SliceStack};
use super::bpr_train::BprModel;
use super::run::{absolute, CHECKPOINT, CONFIG};
use crate::autograd::Graph;
use crate::backend::{self, Backend};
use crate::data::{write_nifti_with, DataType, Volume, WriteOptions};
use crate::metrics::rank::spearman;
use crate::tensor::Shape;
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct BprArgs {
    /// A run folder of `voxdiff train bpr`.
    #[arg(long)]
    pub run: PathBuf,
    /// The CT: a NIfTI file or a DICOM series folder.
    #[arg(long)]
    pub input: PathBuf,
    /// The coordinate volume to write (NIfTI, on the input's grid).
    #[arg(long)]
    pub output: PathBuf,
    /// Also write the slice scores as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also report Spearman's ρ over the RAS slices [START, END) alone (e.g.
    /// a held-out range).
    #[arg(long, num_args = 2, value_names = ["START", "END"])]
    pub range: Option<Vec<usize>>,
    /// σ of the smoothing along z, mm (default: the run's infer.smoothing_mm).
    #[arg(long)]
    pub smoothing_mm: Option<f64>,
    /// auto, cpu, emu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Build the network of the BPR run in `run` and load its checkpoint.
pub fn load_run(dev: &dyn Backend, run: &Path) -> Result<(BprConfig, BprModel)> {
    let cfg_path = run.join(CONFIG);
    if !cfg_path.is_file() {
        bail!(
            "{}: not a run folder (no {CONFIG}); train one with `voxdiff train bpr`",
            run.display()
        );
    }
    let cfg = BprConfig::load(Some(&cfg_path), &[]).with_context(|| {
        format!(
            "{}: not a body-part-regression run (its {CONFIG} is not a `voxdiff train bpr` configuration)",
            run.display()
        )
    })?;
    let ckpt = run.join(CHECKPOINT);
    if !ckpt.is_file() {
        bail!(
            "{}: the run has no {CHECKPOINT} (it was never trained, or is still training)",
            run.display()
        );
    }
    let model = BprModel::new(dev, &cfg)?;
    checkpoint::load(&ckpt, dev, &model.ps, None)?;
    Ok((cfg, model))
}

/// The network's score of every slice of `stack`, `batch` slices per pass.
pub fn score_slices(
    dev: &dyn Backend,
    model: &BprModel,
    stack: &SliceStack,
    batch: usize,
) -> Result<Vec<f32>> {
    let per = stack.size * stack.size;
    let mut out = Vec::with_capacity(stack.slices);
    for start in (0..stack.slices).step_by(batch.max(1)) {
        let n = batch.min(stack.slices - start);
        let x = dev.upload(
            &stack.data[start * per..(start + n) * per],
            Shape::ndhwc(n, 1, stack.size, stack.size, 1),
            dev.act_dtype(),
        )?;
        let mut g = Graph::inference(dev);
        let x = g.constant(x);
        let s = model.net.forward(&mut g, &model.ps, &x)?;
        out.extend(dev.download(&s.t)?);
    }
    Ok(out)
}

/// Gaussian smoothing of `x` with σ = `sigma` samples, as scipy's
/// `gaussian_filter1d(x, sigma)` (mode "reflect": d c b a | a b c d | d c b
/// a; radius ⌊4σ + ½⌋). σ = 0 returns `x`.
pub fn gaussian_smooth(x: &[f64], sigma: f64) -> Vec<f64> {
    let n = x.len() as i64;
    if sigma <= 0.0 || n == 0 {
        return x.to_vec();
    }
    let radius = (4.0 * sigma + 0.5) as i64;
    let w: Vec<f64> = (-radius..=radius)
        .map(|t| (-0.5 * (t as f64 / sigma).powi(2)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    // Index into x with half-sample mirroring, repeated for long kernels.
    let at = |mut i: i64| -> f64 {
        let period = 2 * n;
        i = i.rem_euclid(period);
        if i >= n {
            i = period - 1 - i;
        }
        x[i as usize]
    };
    (0..n)
        .map(|i| {
            (-radius..=radius)
                .zip(&w)
                .map(|(t, wt)| wt * at(i + t))
                .sum::<f64>()
                / total
        })
        .collect()
}

/// The least-squares slope of `y` over `x`.
fn slope(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    sxy / sxx
}

/// The scores of one CT, slice by slice from inferior to superior.
pub struct CtScores {
    pub raw: Vec<f64>,
    pub smoothed: Vec<f64>,
    /// World z (mm) of each slice's centre.
    pub z_mm: Vec<f64>,
    pub z_spacing: f64,
    pub smoothing_mm: f64,
    /// The file's slice index decreases toward the head.
    pub reverse_z: bool,
    /// Spearman's ρ of the raw (smoothed) scores against the slice position.
    pub spearman_raw: f64,
    pub spearman_smoothed: f64,
    /// Slope of the smoothed scores over z, score per mm.
    pub slope_per_mm: f64,
}

impl CtScores {
    pub fn new(raw: &[f32], ct: &PreparedCt, smoothing_mm: f64) -> CtScores {
        let raw: Vec<f64> = raw.iter().map(|&v| v as f64).collect();
        let sz = ct.stack.z_spacing;
        let smoothed = gaussian_smooth(&raw, smoothing_mm / sz);
        let c = &ct.canonical;
        let (ci, cj) = (
            (c.dims[2] as f64 - 1.0) / 2.0,
            (c.dims[1] as f64 - 1.0) / 2.0,
        );
        let z_mm: Vec<f64> = (0..raw.len())
            .map(|k| c.affine.apply([ci, cj, k as f64])[2])
            .collect();
        let position: Vec<f64> = (0..raw.len()).map(|k| k as f64).collect();
        CtScores {
            spearman_raw: spearman(&position, &raw),
            spearman_smoothed: spearman(&position, &smoothed),
            slope_per_mm: slope(&z_mm, &smoothed),
            raw,
            smoothed,
            z_mm,
            z_spacing: sz,
            smoothing_mm,
            reverse_z: ct.reorientation.flip[2],
        }
    }

    /// Spearman's ρ of the raw and the smoothed scores against the slice
    /// position over the slices `[a, b)`.
    pub fn spearman_in(&self, a: usize, b: usize) -> (f64, f64) {
        let position: Vec<f64> = (a..b).map(|k| k as f64).collect();
        (
            spearman(&position, &self.raw[a..b]),
            spearman(&position, &self.smoothed[a..b]),
        )
    }

    /// The bpreg-like JSON description (with Spearman's ρ over `range` too).
    pub fn to_json(
        &self,
        input: &Path,
        run: &Path,
        range: Option<[usize; 2]>,
    ) -> serde_json::Value {
        let nan_null = |v: f64| if v.is_finite() { Some(v) } else { None };
        let in_range = range.map(|[a, b]| {
            let (r, s) = self.spearman_in(a, b);
            serde_json::json!({ "slices": [a, b], "raw": nan_null(r), "smoothed": nan_null(s) })
        });
        serde_json::json!({
            "spearman in range": in_range,
            "input": input.display().to_string(),
            "run": run.display().to_string(),
            "slice order": "inferior to superior (RAS slice index k = 0, 1, …)",
            "unprocessed slice scores": self.raw,
            "smoothed slice scores": self.smoothed,
            "smoothing sigma mm": self.smoothing_mm,
            "z": self.z_mm,
            "z-spacing": self.z_spacing,
            "reverse z-ordering": u8::from(self.reverse_z),
            "observed slope": nan_null(self.slope_per_mm),
            "spearman vs slice position": nan_null(self.spearman_raw),
            "spearman vs slice position (smoothed)": nan_null(self.spearman_smoothed),
        })
    }
}

/// Score every slice of `original` (the scan as read from `path`) with the
/// run's network: the prepared slices and their raw and smoothed scores
/// (Gaussian σ = `smoothing_mm`).
pub fn score_ct(
    dev: &dyn Backend,
    cfg: &BprConfig,
    model: &BprModel,
    original: &Volume,
    path: &Path,
    smoothing_mm: f64,
) -> Result<(PreparedCt, CtScores)> {
    let ct = prepare_volume(&cfg.data, original, path)?;
    let raw = score_slices(dev, model, &ct.stack, cfg.infer.batch)?;
    let scores = CtScores::new(&raw, &ct, smoothing_mm);
    Ok((ct, scores))
}

/// The coordinate volume: each slice's smoothed score over the whole slice,
/// on the grid of `original` (the scan as read).
pub fn coordinate_volume(scores: &CtScores, ct: &PreparedCt, original: &Volume) -> Result<Volume> {
    let c = &ct.canonical;
    let per = c.dims[1] * c.dims[2];
    let mut data = Vec::with_capacity(c.numel());
    for &s in &scores.smoothed {
        data.extend(std::iter::repeat_n(s as f32, per));
    }
    ct.reorientation.undo(&c.with_data(data), &original.affine)
}

/// Refuse an output path that is the input scan.
fn check_not_input(out: &Path, input: &Path, what: &str) -> Result<()> {
    let cwd = Path::new(".");
    if absolute(out, cwd) == absolute(input, cwd) {
        bail!(
            "{}: the {what} would overwrite the input scan; choose another path",
            out.display()
        );
    }
    Ok(())
}

pub fn run(args: &BprArgs) -> Result<()> {
    check_not_input(&args.output, &args.input, "--output")?;
    if let Some(j) = &args.json {
        check_not_input(j, &args.input, "--json")?;
        check_not_input(j, &args.output, "--json (same as --output)")?;
    }
    let dev = backend::select(&args.device)?;
    let dev = dev.as_ref();
    let (cfg, model) = load_run(dev, &args.run)?;
    let original = read_ct(&args.input)?;
    let smoothing = args.smoothing_mm.unwrap_or(cfg.infer.smoothing_mm);
    if !(smoothing.is_finite() && smoothing >= 0.0) {
        bail!("--smoothing-mm must be a finite number ≥ 0, got {smoothing}");
    }
    let (ct, scores) = score_ct(dev, &cfg, &model, &original, &args.input, smoothing)?;
    let range = match args.range.as_deref() {
        Some(&[a, b]) => {
            if !(a + 1 < b && b <= scores.raw.len()) {
                bail!(
                    "--range {a} {b}: must be [START, END) with at least 2 slices within the {} \
                     slices of {}",
                    scores.raw.len(),
                    args.input.display()
                );
            }
            Some([a, b])
        }
        _ => None,
    };
    let coords = coordinate_volume(&scores, &ct, &original)?;
    write_nifti_with(&coords, &args.output, WriteOptions::plain(DataType::F32))?;
    if let Some(j) = &args.json {
        let text = serde_json::to_string_pretty(&scores.to_json(&args.input, &args.run, range))?;
        crate::fsutil::write_atomic(j, text.as_bytes())?;
    }
    let (lo, hi) = scores
        .raw
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    println!(
        "{}: {} slices, scores {lo:.3} … {hi:.3} (inferior → superior: first {:.3}, last {:.3}); \
         Spearman ρ vs slice position {:.4} (smoothed {:.4}); wrote {}{}",
        args.input.display(),
        scores.raw.len(),
        scores.raw[0],
        scores.raw[scores.raw.len() - 1],
        scores.spearman_raw,
        scores.spearman_smoothed,
        args.output.display(),
        args.json
            .as_ref()
            .map_or(String::new(), |j| format!(" and {}", j.display()))
    );
    if let Some([a, b]) = range {
        let (r, sm) = scores.spearman_in(a, b);
        println!("slices [{a}, {b}): Spearman ρ vs slice position {r:.4} (smoothed {sm:.4})");
    }
    Ok(())
}
