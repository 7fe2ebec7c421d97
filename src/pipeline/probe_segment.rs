//! `voxdiff segment` on a probe run: whole-volume inference.
//!
//! The CT is prepared as the probe's training data was, by its pretraining
//! run's one mechanism (RAS, the run's spacing and window; its coordinate
//! channels from `--coords`, else from the run's BPR run), cut into
//! sliding windows (`infer.patch`, default the training patch; `infer.overlap`
//! 0.5), each window's features made as in training (the fixed noise of a
//! window derives from its origin) and its logits predicted; overlapping
//! logits are averaged (`Mean`, the paper) or centre-stitched
//! (`CentreStitch`, vox2vec's code). A CT smaller than one window is padded
//! with air.
//! Each voxel gets the class of its largest sigmoid probability when that
//! reaches `infer.threshold` (0.5, vox2vec's), else background; voxels outside
//! the body mask (air below −500 HU flooded from the in-plane border) are
//! background. The label map goes back onto the input's exact grid (shape,
//! affine) with the class names in the JSON sidecar, so `voxdiff evaluate`
//! scores it.

use super::probe_config::ProbeConfig;
use super::probe_data::{prepared_body_mask, Preparation};
use super::probe_features::{patch_noise_seed, ProbeModel};
use super::probe_train::check_patch;
use super::run::{read_classes, CHECKPOINT, CONFIG};
use super::segment::{check_outputs, write_mask, SegmentArgs};
use crate::autograd::Graph;
use crate::backend::{self, Backend};
use crate::data::resample::Interp;
use crate::data::sliding::SlidingWindow;
use crate::train::checkpoint;
use anyhow::{Context, Result};
use std::path::Path;

/// The volume id of an inference input in the noise seed (training volumes
/// are 0, 1, …).
const INFER_VOLUME: u64 = u64::MAX;

/// A trained probe loaded from its run folder, with its pretraining run.
pub struct LoadedProbe {
    pub cfg: ProbeConfig,
    pub classes: Vec<String>,
    pub model: ProbeModel,
    pub prep: Preparation,
}

/// Build a probe run's model on its pretraining run and load its checkpoint;
/// CTs are prepared for windows of `patch` (x, y, z; default: the run's
/// `infer.patch`, else its training patch).
pub fn load_probe(dev: &dyn Backend, run: &Path, patch: Option<[usize; 3]>) -> Result<LoadedProbe> {
    let cfg = ProbeConfig::load(Some(&run.join(CONFIG)), &[])
        .with_context(|| format!("{}: not a probe run folder", run.display()))?;
    let classes = read_classes(run)?;
    let dir = cfg
        .data
        .pretrained_run
        .as_deref()
        .context("the probe run's data.pretrained_run is not set")?;
    let patch = patch.or(cfg.infer.patch).unwrap_or(cfg.data.patch);
    let prep = Preparation::open(dev, dir, patch)
        .with_context(|| format!("{}: its pretraining run", run.display()))?;
    check_patch("the window", patch, &prep)?;
    let f = &cfg.features;
    let model = ProbeModel::new(
        dev,
        prep.run.cfg.model.clone(),
        &prep.run.cfg.objective,
        cfg.head.kind,
        classes.len().saturating_sub(1),
        f.source,
        f.timesteps.clone(),
        f.noise_seed,
        cfg.train.seed,
    )?;
    let ckpt = run.join(CHECKPOINT);
    checkpoint::load(&ckpt, dev, &model.ps, None).with_context(|| {
        format!(
            "{}: the probe run's checkpoint does not fit the backbone of its pretraining run {}",
            run.display(),
            dir.display()
        )
    })?;
    Ok(LoadedProbe {
        cfg,
        classes,
        model,
        prep,
    })
}

/// Per voxel, the class id of `logits` `[…, K]`: 1 + the argmax when its
/// sigmoid reaches `threshold`, else 0 (background); 0 outside `body`.
pub fn label_map(logits: &[f32], k: usize, threshold: f64, body: Option<&[bool]>) -> Vec<f32> {
    // σ(z) ≥ τ ⇔ z ≥ logit(τ).
    let cut = if threshold <= 0.0 {
        f64::NEG_INFINITY
    } else if threshold >= 1.0 {
        f64::INFINITY
    } else {
        (threshold / (1.0 - threshold)).ln()
    };
    logits
        .chunks_exact(k)
        .enumerate()
        .map(|(v, z)| {
            if body.is_some_and(|b| !b[v]) {
                return 0.0;
            }
            let mut best = 0;
            for (i, &a) in z.iter().enumerate() {
                if a > z[best] {
                    best = i;
                }
            }
            if z[best] as f64 >= cut {
                (best + 1) as f32
            } else {
                0.0
            }
        })
        .collect()
}

pub fn run(args: &SegmentArgs) -> Result<()> {
    check_outputs(args)?;
    let dev = backend::select(&args.device)?;
    // --patch is D H W, as for every run; the probe's settings are x, y, z.
    let window = args.patch.as_ref().map(|p| [p[2], p[1], p[0]]);
    let probe = load_probe(dev.as_ref(), &args.run, window)?;
    let prep = &probe.prep;
    let vol = prep.prepare(dev.as_ref(), &args.input, args.coords.as_deref())?;
    let infer = &probe.cfg.infer;
    let patch = prep.data.patch_dhw();
    let sw = SlidingWindow {
        patch,
        overlap: infer.overlap,
        aggregation: infer.aggregation,
    };
    let dims = vol.image.dims;
    let kk = vol.k;
    let mut input = Vec::with_capacity(vol.image.numel() * (1 + kk));
    for (v, &x) in vol.image.data.iter().enumerate() {
        input.push(x);
        input.extend_from_slice(&vol.coords[v * kk..(v + 1) * kk]);
    }
    let nk = probe.classes.len() - 1;
    let t0 = std::time::Instant::now();
    let model = &probe.model;
    let d = dev.as_ref();
    let logits = sw.run_channels(&input, dims, 1 + kk, nk, 0.0, |win, w| {
        let vox = patch.iter().product::<usize>();
        let mut img = Vec::with_capacity(vox);
        let mut co = Vec::with_capacity(vox * kk);
        for v in 0..vox {
            img.push(win[v * (1 + kk)]);
            co.extend_from_slice(&win[v * (1 + kk) + 1..(v + 1) * (1 + kk)]);
        }
        let seed = patch_noise_seed(model.noise_seed, INFER_VOLUME, w.origin);
        let mut g = Graph::inference(d);
        let y = model.logits(&mut g, patch, &img, &co, &[seed], false)?;
        d.download(&y.t)
    })?;
    let body = if infer.body_mask {
        Some(prepared_body_mask(&vol, prep.data.window)?)
    } else {
        None
    };
    let labels = label_map(&logits, nk, infer.threshold, body.as_deref());
    let mask = vol.to_input_grid(&vol.image.with_data(labels), Interp::Nearest)?;
    write_mask(&mask, &args.output, &probe.classes)?;
    println!(
        "segmented {} in {:.1} s on {} → {} ({} classes, {} windows of {:?} [D, H, W])",
        args.input.display(),
        t0.elapsed().as_secs_f64(),
        dev.name(),
        args.output.display(),
        nk,
        sw.windows(dims).len(),
        patch
    );
    Ok(())
}
