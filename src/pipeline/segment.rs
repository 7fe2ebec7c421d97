//! `voxdiff segment`: segment a scan with a trained run and write the mask on
//! the scan's own grid (same shape, same affine), with the run's class names
//! in a JSON sidecar (`<mask>.json`, MSD "labels" form).
//!
//! The scan is prepared as the run's training data was (RAS, resampled,
//! windowed), predicted whole or by sliding windows — one mechanism: the
//! whole volume is a single window — and the label map is resampled
//! (nearest) back onto the canonical grid and reoriented to the scan's own.
//! With `--save-steps DIR`, the x̂₀ of every denoising step is written too
//! (`DIR/step_<k>.nii.gz`, k = T−1 … 0).
//!
//! Before any compute: every output location is checked to be writable and
//! different from the input, the options are validated like the run's
//! configuration, the scan's voxels must be finite (or `--replace-nonfinite`
//! given), and the scan must span at least the network's coarsest voxel
//! along every axis ([`check_extent`]).

use super::config::RunConfig;
use super::run::absolute;
use super::run::{classes_json, read_classes, CHECKPOINT, CONFIG};
use super::seg_config::{InferConfig, SegConfig};
use super::seg_data::{check_extent, prepare_scan, NonFinite, PreparedScan};
use super::seg_model::{volume_shape, SegModel};
use crate::backend::{self, Backend};
use crate::data::resample::{resample_to_grid, Interp, Outside};
use crate::data::sliding::{argmax_channels, Aggregation, SlidingWindow};
use crate::data::{write_nifti_with, DataType, Volume, WriteOptions};
use crate::diffusion::Sampler;
use crate::train::checkpoint;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct SegmentArgs {
    /// Run folder of `voxdiff train seg` (3D scans) or `voxdiff train segdiff` (2D photos).
    #[arg(long)]
    pub run: PathBuf,
    /// Scan to segment (.nii / .nii.gz), or a folder holding one DICOM series;
    /// for a SegDiff run, a PNG/JPEG photo or a folder of them.
    #[arg(long)]
    pub input: PathBuf,
    /// Mask to write (.nii.gz compresses; a .png, or a folder, for SegDiff).
    #[arg(long)]
    pub output: PathBuf,
    /// Sampling steps (≤ the run's T; default all).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// Samples fused by majority vote (SegDiff: the ensemble, mean thresholded at ½).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Sliding-window patch D H W (default: the run's infer.patch, else whole volume).
    #[arg(long, num_args = 3)]
    pub patch: Option<Vec<usize>>,
    /// Keep each denoising step's x̂₀ as NIfTI files in this folder.
    #[arg(long)]
    pub save_steps: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Set voxels that are NaN or infinite to this value (in the scan's
    /// units, e.g. -1000 for air in CT); without it such a scan is refused.
    #[arg(long, value_name = "VALUE", allow_hyphen_values = true)]
    pub replace_nonfinite: Option<f32>,
    /// Coordinate NIfTI of the input (k channels on its grid), for a probe
    /// run whose backbone takes coordinates.
    #[arg(long)]
    pub coords: Option<PathBuf>,
    /// The checkpoint's weights to run: the moving average or the raw
    /// weights (default: ema when the run kept one, else raw).
    #[arg(long, value_enum)]
    pub weights: Option<checkpoint::Weights>,
    /// SegDiff: how the ensemble is fused (default: the run's infer.fusion, mean).
    #[arg(long, value_enum)]
    pub fusion: Option<super::segdiff_fusion::Fusion>,
    /// auto, cpu, emu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SamplerArg {
    Ddpm,
    Ddim,
}

impl From<SamplerArg> for Sampler {
    fn from(s: SamplerArg) -> Sampler {
        match s {
            SamplerArg::Ddpm => Sampler::Ddpm,
            SamplerArg::Ddim => Sampler::Ddim,
        }
    }
}

/// A trained model loaded from a run folder.
pub struct LoadedRun {
    pub cfg: SegConfig,
    pub classes: Vec<String>,
    pub model: SegModel,
}

/// Build the run's model and load its checkpoint (the EMA weights when it
/// holds them).
pub fn load_run(b: &dyn Backend, run: &Path) -> Result<LoadedRun> {
    let cfg = SegConfig::load(Some(&run.join(CONFIG)), &[])
        .with_context(|| format!("{}: not a run folder", run.display()))?;
    let classes = read_classes(run)?;
    let model = SegModel::new(b, &cfg.model, &cfg.diffusion, classes.len())?;
    checkpoint::load_weights(&run.join(CHECKPOINT), b, &model.ps, None)?;
    Ok(LoadedRun {
        cfg,
        classes,
        model,
    })
}

/// Per-class scores `[D, H, W, K]` on the prepared image's grid, and (when
/// `keep_steps`) the vote fraction of each denoising step's x̂₀, step T−1 first.
pub fn predict_scores(
    b: &dyn Backend,
    model: &SegModel,
    infer: &InferConfig,
    image: &Volume,
    keep_steps: bool,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let k = model.classes;
    let n_steps = match (&model.diffusion, keep_steps) {
        (Some(d), true) => d.sampling_schedule(infer.steps)?.0.len(),
        _ => 0,
    };
    // Whole volume = one window covering it.
    let sw = match infer.patch {
        Some(p) => SlidingWindow {
            patch: p,
            overlap: infer.overlap,
            aggregation: infer.aggregation,
        },
        None => SlidingWindow {
            patch: image.dims,
            overlap: 0.0,
            aggregation: Aggregation::Mean,
        },
    };
    let channels = k * (1 + n_steps);
    let out = sw.run(&image.data, image.dims, channels, 0.0, |patch, _| {
        let p = sw.patch;
        let x = b.upload(patch, volume_shape(p, 1), b.act_dtype())?;
        let (scores, steps) = predict_window(b, model, infer, &x, n_steps > 0)?;
        let mut parts = vec![b.download(&scores)?];
        for s in steps {
            parts.push(b.download(&s)?);
        }
        // Interleave per voxel: [final K | step T−1 K | …].
        let vox = p.iter().product::<usize>();
        let mut y = Vec::with_capacity(vox * channels);
        for v in 0..vox {
            for part in &parts {
                y.extend_from_slice(&part[v * k..(v + 1) * k]);
            }
        }
        Ok(y)
    })?;
    let vox = image.numel();
    let mut finals = Vec::with_capacity(vox * k);
    let mut steps = vec![Vec::with_capacity(vox * k); n_steps];
    for v in 0..vox {
        let row = &out[v * channels..(v + 1) * channels];
        finals.extend_from_slice(&row[..k]);
        for (s, st) in steps.iter_mut().enumerate() {
            st.extend_from_slice(&row[(s + 1) * k..(s + 2) * k]);
        }
    }
    Ok((finals, steps))
}

/// The scores `[1, D, H, W, K]` of one window `x` `[1, D, H, W, 1]` and
/// (when `keep_steps`) each denoising step's vote, step T−1 first: the
/// device work of one window, also what the memory plan records.
pub fn predict_window(
    b: &dyn Backend,
    model: &SegModel,
    infer: &InferConfig,
    x: &crate::tensor::Tensor,
    keep_steps: bool,
) -> Result<(crate::tensor::Tensor, Vec<crate::tensor::Tensor>)> {
    let k = model.classes;
    let n_steps = match (&model.diffusion, keep_steps) {
        (Some(d), true) => d.sampling_schedule(infer.steps)?.0.len(),
        _ => 0,
    };
    let mut steps: Vec<Option<crate::tensor::Tensor>> = vec![None; n_steps];
    let samples = infer.samples;
    let scores = model.predict(
        b,
        x,
        infer.sampler,
        infer.steps,
        samples,
        infer.seed,
        |_, step, x0| {
            if n_steps > 0 {
                // Accumulate this sample's step vote: one-hot of argmax / samples.
                let lab = b.argmax_c(x0)?;
                let oh = b.one_hot(&lab, k, 1.0 / samples as f32, 0.0)?;
                let slot = &mut steps[n_steps - 1 - step];
                *slot = Some(match slot.take() {
                    None => oh,
                    Some(acc) => b.lincomb(&[(1.0, &acc), (1.0, &oh)])?,
                });
            }
            Ok(())
        },
    )?;
    let steps = steps
        .into_iter()
        .map(|s| s.context("a sampling step produced no prediction"))
        .collect::<Result<Vec<_>>>()?;
    Ok((scores, steps))
}

/// A label map on the prepared grid, back onto the scan's own grid.
pub fn to_scan_grid(scan: &PreparedScan, labels: Vec<f32>) -> Result<Volume> {
    let lab = scan.image.with_data(labels);
    let g = &scan.canonical_grid;
    let canon = resample_to_grid(
        &lab,
        g.dims,
        &g.affine,
        g.spacing,
        Interp::Nearest,
        Outside::Clamp,
    )?;
    let mut out = scan.reorientation.undo(&canon, &scan.original.affine)?;
    out.source = scan.original.source.clone();
    Ok(out)
}

/// Write a label map as uint8 NIfTI on its grid plus the class-name sidecar.
pub fn write_mask(mask: &Volume, path: &Path, classes: &[String]) -> Result<()> {
    ensure!(
        classes.len() <= 256,
        "{} classes do not fit a uint8 label map",
        classes.len()
    );
    write_nifti_with(mask, path, WriteOptions::plain(DataType::U8))?;
    crate::fsutil::write_atomic(
        &sidecar(path),
        serde_json::to_string_pretty(&classes_json(classes))?.as_bytes(),
    )
}

/// `mask.nii.gz` → `mask.json`.
pub fn sidecar(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
    path.with_file_name(format!("{stem}.json"))
}

/// The files `segment` writes: the mask, its class-name sidecar and (with
/// `--save-steps`) one mask per denoising step (at most T, checked as one).
fn outputs(args: &SegmentArgs) -> Vec<(&'static str, PathBuf)> {
    let mut v = vec![
        ("--output", args.output.clone()),
        ("--output", sidecar(&args.output)),
    ];
    if let Some(d) = &args.save_steps {
        v.push(("--save-steps", d.join("step_0.nii.gz")));
    }
    v
}

/// Refuse outputs that would overwrite the input or cannot be written, before
/// anything is computed.
pub fn check_outputs(args: &SegmentArgs) -> Result<()> {
    let name = args.output.to_string_lossy();
    if !(name.ends_with(".nii") || name.ends_with(".nii.gz")) {
        bail!(
            "--output {}: the mask is NIfTI, its name must end in .nii or .nii.gz",
            args.output.display()
        );
    }
    let here = Path::new(".");
    let input = absolute(&args.input, here);
    if let Some(d) = &args.save_steps {
        if d.is_file() {
            bail!("--save-steps {}: is a file, not a folder", d.display());
        }
    }
    for (flag, out) in outputs(args) {
        if absolute(&out, here) == input {
            bail!(
                "{flag} {}: it is the input scan {} (it would be overwritten); choose another name",
                out.display(),
                args.input.display()
            );
        }
        crate::fsutil::check_writable(&out).context(flag)?;
    }
    Ok(())
}

pub fn run(args: &SegmentArgs) -> Result<()> {
    // One command, two kinds of run: a SegDiff run segments 2D photos.
    if super::segdiff_config::is_segdiff_run(&args.run) {
        return super::segdiff_segment::run(args);
    }
    if super::probe_config::is_probe_run(&args.run) {
        return super::probe_segment::run(args);
    }
    if let Some(c) = &args.coords {
        bail!(
            "--coords {}: only a probe run (`voxdiff train probe`) takes coordinates; {} is not one",
            c.display(),
            args.run.display()
        );
    }
    if super::segdiff_segment::is_2d_input(&args.input) {
        bail!(
            "--input {}: a 2D photo (or folder of photos), but {} is a 3D segmentation run; \
             segment 2D photos with a run of `voxdiff train segdiff`",
            args.input.display(),
            args.run.display()
        );
    }
    ensure!(
        args.fusion.is_none(),
        "--fusion applies to SegDiff 2D runs; {} is a 3D segmentation run",
        args.run.display()
    );
    check_outputs(args)?;
    let b = backend::select(&args.device)?;
    let mut run = load_run(b.as_ref(), &args.run)?;
    if args.weights.is_some() {
        checkpoint::load_weights(
            &args.run.join(CHECKPOINT),
            b.as_ref(),
            &run.model.ps,
            args.weights,
        )?;
    }
    let infer = &mut run.cfg.infer;
    if let Some(s) = args.steps {
        infer.steps = Some(s);
    }
    if let Some(s) = args.sampler {
        infer.sampler = s.into();
    }
    if let Some(n) = args.samples {
        infer.samples = n;
    }
    if let Some(p) = &args.patch {
        infer.patch = Some([p[0], p[1], p[2]]);
    }
    if let Some(s) = args.seed {
        infer.seed = s;
    }
    run.cfg
        .validate()
        .context("the run's inference settings with --steps/--samples/--patch")?;
    let infer = run.cfg.infer.clone();
    let policy = match args.replace_nonfinite {
        Some(v) => {
            ensure!(
                v.is_finite(),
                "--replace-nonfinite {v}: must be a finite number"
            );
            NonFinite::Replace(v)
        }
        None => NonFinite::Refuse,
    };
    let scan = prepare_scan(&run.cfg.data, &args.input, policy)?;
    check_extent(&scan, run.cfg.model.channels.len(), &args.input)?;
    super::plan_step::check_segment_memory(
        b.as_ref(),
        &run.cfg.model,
        &run.cfg.diffusion,
        run.classes.len(),
        &infer,
        scan.image.dims,
        args.save_steps.is_some(),
    )?;
    let t0 = std::time::Instant::now();
    let (scores, steps) = predict_scores(
        b.as_ref(),
        &run.model,
        &infer,
        &scan.image,
        args.save_steps.is_some(),
    )?;
    let k = run.classes.len();
    let mask = to_scan_grid(&scan, argmax_channels(&scores, k))?;
    write_mask(&mask, &args.output, &run.classes)?;
    if let Some(dir) = &args.save_steps {
        let t = steps.len();
        for (i, s) in steps.iter().enumerate() {
            let m = to_scan_grid(&scan, argmax_channels(s, k))?;
            write_nifti_with(
                &m,
                dir.join(format!("step_{}.nii.gz", t - 1 - i)),
                WriteOptions::plain(DataType::U8),
            )?;
        }
    }
    println!(
        "segmented {} in {:.1} s on {} → {} ({} classes)",
        args.input.display(),
        t0.elapsed().as_secs_f64(),
        b.name(),
        args.output.display(),
        k
    );
    Ok(())
}
