//! `voxdiff segment` with a SegDiff run: a photo in, a mask PNG out, or a
//! folder in, a folder out.
//!
//! Each photo is resized to the run's model size and normalised as in
//! training; an ensemble of `--samples` N masks is sampled as one batch of
//! N (`super::segdiff_model`; a supervised run makes one forward pass, an
//! ensemble of one with variance 0); the ensemble is fused
//! (`super::segdiff_fusion`: the mean, or STAPLE with `--fusion staple`) and the
//! fused probability is resized
//! back to the photo's own size and thresholded at ½. Beside each mask:
//!
//! ```text
//! single photo:  <mask>.png  <mask>_overlay.png  <mask>_uncertainty.png
//! folder:        <out>/<id>.png  <out>/overlay/<id>.png  <out>/uncertainty/<id>.png
//! ```
//! The overlay draws the mask's outline over the photo; the uncertainty map
//! colours the ensemble's pixelwise variance (viridis, 0 … ¼, the largest
//! variance of values in [0, 1]). Every file is written atomically. A
//! folder run skips, and reports, the photos it cannot read instead of
//! stopping; it fails only when no photo could be segmented.

use super::config::RunConfig;
use super::run::{absolute, CHECKPOINT, CONFIG};
use super::segdiff_config::{Objective, SegDiffConfig, SegDiffInfer};
use super::segdiff_fusion::fuse;
use super::segdiff_model::SegDiffModel;
use super::segment::SegmentArgs;
use crate::backend::{self, Backend};
use crate::data::image2d::dataset::{model_input, Normalisation};
use crate::data::image2d::folder::{is_image_file, list_images, Skipped};
use crate::data::image2d::picture::PREDICTION_COLOUR;
use crate::data::image2d::read::Mask;
use crate::data::image2d::resize::{probability_to_mask, resize};
use crate::data::image2d::{read_photo, write_mask_png, write_overlay_png, write_uncertainty_png};
use crate::draw::Rgb;
use crate::train::{checkpoint, Weights};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// A trained SegDiff run.
pub struct LoadedSegDiff {
    pub cfg: SegDiffConfig,
    pub norm: Normalisation,
    pub model: SegDiffModel,
}

/// Build the run's model and load its checkpoint's `weights` (None: the EMA
/// weights when it holds them, else the raw ones).
pub fn load_run(b: &dyn Backend, run: &Path, weights: Option<Weights>) -> Result<LoadedSegDiff> {
    let cfg = SegDiffConfig::load(Some(&run.join(CONFIG)), &[])
        .with_context(|| format!("{}: not a SegDiff run folder", run.display()))?;
    let (Some(mean), Some(std)) = (cfg.data.mean, cfg.data.std) else {
        bail!(
            "{}: data.mean and data.std are missing (written by `voxdiff train segdiff`)",
            run.join(CONFIG).display()
        );
    };
    let model = SegDiffModel::new(b, &cfg)?;
    checkpoint::load_weights(&run.join(CHECKPOINT), b, &model.ps, weights)?;
    Ok(LoadedSegDiff {
        cfg,
        norm: Normalisation { mean, std },
        model,
    })
}

/// How a run segments, for the report line.
fn method(cfg: &SegDiffConfig, infer: &SegDiffInfer) -> String {
    match cfg.objective {
        Objective::Supervised => "supervised, one forward pass".to_string(),
        Objective::Diffusion => format!(
            "{} samples, {:?}, {} steps",
            infer.samples,
            infer.sampler,
            infer.steps.unwrap_or(cfg.diffusion.timesteps)
        ),
    }
}

/// The segmentation of one photo at its own size.
pub struct Prediction2d {
    pub mask: Mask,
    /// The ensemble's fused foreground probability, at the photo's size.
    pub probability: Vec<f32>,
    /// The fusion's pixelwise uncertainty (the ensemble's variance, or
    /// STAPLE's W(1 − W)), at the photo's size.
    pub variance: Vec<f32>,
}

/// Segment `photo` with the run (see the module docs).
pub fn predict_photo(
    b: &dyn Backend,
    run: &LoadedSegDiff,
    infer: &SegDiffInfer,
    photo: &Rgb,
) -> Result<Prediction2d> {
    let size = run.cfg.data.size;
    let x = model_input(photo, size, &run.norm);
    let samples = run.model.sample_ensemble(b, &x, size, infer)?;
    let (mean, var) = fuse(&samples, infer.fusion);
    let (w, h) = (photo.width, photo.height);
    let mask = probability_to_mask(&mean, size, size, w, h);
    let (probability, variance) = if (w, h) == (size, size) {
        (mean, var)
    } else {
        (
            resize(&mean, size, size, 1, w, h),
            resize(&var, size, size, 1, w, h),
        )
    };
    Ok(Prediction2d {
        mask,
        probability,
        variance,
    })
}

/// Write a prediction's mask, overlay and uncertainty map.
pub fn write_prediction(
    p: &Prediction2d,
    photo: &Rgb,
    mask: &Path,
    overlay: &Path,
    uncertainty: &Path,
) -> Result<()> {
    write_mask_png(&p.mask, mask)?;
    write_overlay_png(photo, &[(&p.mask, PREDICTION_COLOUR)], overlay)?;
    write_uncertainty_png(&p.variance, p.mask.width, p.mask.height, 0.25, uncertainty)
}

/// `mask.png` → (`mask_overlay.png`, `mask_uncertainty.png`).
pub fn companions(mask: &Path) -> (PathBuf, PathBuf) {
    let stem = mask
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        mask.with_file_name(format!("{stem}_overlay.png")),
        mask.with_file_name(format!("{stem}_uncertainty.png")),
    )
}

/// Whether `p` is a 2D input: an image file, or a folder holding one.
pub fn is_2d_input(p: &Path) -> bool {
    if p.is_dir() {
        list_images(p).is_ok()
    } else {
        is_image_file(p)
    }
}

/// The run's inference settings with the command line's.
fn infer_settings(args: &SegmentArgs, cfg: &SegDiffConfig) -> Result<SegDiffInfer> {
    ensure!(
        args.patch.is_none() && args.save_steps.is_none() && args.replace_nonfinite.is_none(),
        "--patch, --save-steps and --replace-nonfinite apply to 3D runs; {} is a SegDiff 2D run",
        args.run.display()
    );
    let mut infer = cfg.infer.clone();
    if let Some(s) = args.steps {
        infer.steps = Some(s);
    }
    if let Some(s) = args.sampler {
        infer.sampler = s.into();
    }
    if let Some(n) = args.samples {
        infer.samples = n;
    }
    if let Some(f) = args.fusion {
        infer.fusion = f;
    }
    if let Some(s) = args.seed {
        infer.seed = s;
    }
    let mut check = cfg.clone();
    check.infer = infer.clone();
    check
        .validate()
        .context("the run's inference settings with --steps/--samples")?;
    Ok(infer)
}

pub fn run(args: &SegmentArgs) -> Result<()> {
    let input = &args.input;
    if !input.exists() {
        bail!("--input {}: does not exist", input.display());
    }
    if !is_2d_input(input) {
        bail!(
            "--input {}: not a PNG/JPEG photo or a folder of them, but {} is a SegDiff 2D run \
             (segment 3D scans with a run of `voxdiff train seg`)",
            input.display(),
            args.run.display()
        );
    }
    let b = backend::select(&args.device)?;
    let b = b.as_ref();
    if input.is_dir() {
        return run_folder(b, args);
    }
    let name = args.output.to_string_lossy().to_ascii_lowercase();
    ensure!(
        name.ends_with(".png"),
        "--output {}: the mask is a PNG, its name must end in .png",
        args.output.display()
    );
    let (overlay, uncertainty) = companions(&args.output);
    let here = Path::new(".");
    for out in [&args.output, &overlay, &uncertainty] {
        ensure!(
            absolute(out, here) != absolute(input, here),
            "--output {}: it is the input photo (it would be overwritten); choose another name",
            out.display()
        );
        crate::fsutil::check_writable(out).context("--output")?;
    }
    let run = load_run(b, &args.run, args.weights)?;
    let infer = infer_settings(args, &run.cfg)?;
    let photo = read_photo(input)?;
    let t0 = std::time::Instant::now();
    let p = predict_photo(b, &run, &infer, &photo)?;
    write_prediction(&p, &photo, &args.output, &overlay, &uncertainty)?;
    println!(
        "segmented {} ({}) in {:.1} s on {} → {} (+ {}, {})",
        input.display(),
        method(&run.cfg, &infer),
        t0.elapsed().as_secs_f64(),
        b.name(),
        args.output.display(),
        overlay.display(),
        uncertainty.display()
    );
    Ok(())
}

/// A folder in, a folder out (see the module docs).
fn run_folder(b: &dyn Backend, args: &SegmentArgs) -> Result<()> {
    let out = &args.output;
    ensure!(
        !out.is_file(),
        "--output {}: is a file; with a folder of photos, --output is a folder",
        out.display()
    );
    ensure!(
        absolute(out, Path::new(".")) != absolute(&args.input, Path::new(".")),
        "--output {}: is the input folder; choose another",
        out.display()
    );
    let run = load_run(b, &args.run, args.weights)?;
    let infer = infer_settings(args, &run.cfg)?;
    let (files, mut skipped) = list_images(&args.input)?;
    for d in [out.clone(), out.join("overlay"), out.join("uncertainty")] {
        std::fs::create_dir_all(&d)
            .with_context(|| format!("{}: cannot create folder", d.display()))?;
    }
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let mut done = 0;
    for (id, path) in &files {
        bar.set_message(id.clone());
        let r = read_photo(path).and_then(|photo| {
            let p = predict_photo(b, &run, &infer, &photo)?;
            let name = format!("{id}.png");
            write_prediction(
                &p,
                &photo,
                &out.join(&name),
                &out.join("overlay").join(&name),
                &out.join("uncertainty").join(&name),
            )
        });
        match r {
            Ok(()) => done += 1,
            Err(e) => skipped.push(Skipped {
                path: path.clone(),
                reason: format!("{e:#}"),
            }),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for s in &skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    ensure!(
        done > 0,
        "{}: no photo could be segmented ({} skipped)",
        args.input.display(),
        skipped.len()
    );
    println!(
        "segmented {done} photos ({} skipped; {}) in {:.1} s on {} → {}",
        skipped.len(),
        method(&run.cfg, &infer),
        t0.elapsed().as_secs_f64(),
        b.name(),
        out.display()
    );
    Ok(())
}
