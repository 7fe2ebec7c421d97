//! `voxdiff segment` on a probe run: whole-volume inference.
//!
//! The CT is prepared as the probe's training data was (RAS, the backbone's
//! spacing, its window; its coordinate channels from `--coords`), cut into
//! sliding windows (`infer.patch`, default the training patch; `infer.overlap`
//! 0.5), each window's features made as in training (the fixed noise of a
//! window derives from its origin) and its logits predicted; overlapping
//! logits are averaged (`Mean`, the paper) or centre-stitched
//! (`CentreStitch`, vox2vec's code). A CT smaller than one window is padded.
//! Each voxel gets the class of its largest sigmoid probability when that
//! reaches `infer.threshold` (0.5, vox2vec's), else background; voxels outside
//! the body mask (air below −500 HU flooded from the in-plane border) are
//! background. The label map goes back onto the input's exact grid (shape,
//! affine) with the class names in the JSON sidecar, so `voxdiff evaluate`
//! scores it.

use super::probe_config::ProbeConfig;
use super::probe_data::{prepare_ct, read_coords, Preprocess};
use super::probe_features::{patch_noise_seed, ProbeModel};
use super::run::{read_classes, CHECKPOINT, CONFIG};
use super::segment::{check_outputs, to_scan_grid, write_mask, SegmentArgs};
use crate::autograd::Graph;
use crate::backend::{self, Backend};
use crate::data::sliding::SlidingWindow;
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The volume id of an inference input in the noise seed (training volumes
/// are 0, 1, …).
const INFER_VOLUME: u64 = u64::MAX;

/// A trained probe loaded from its run folder.
pub struct LoadedProbe {
    pub cfg: ProbeConfig,
    pub classes: Vec<String>,
    pub model: ProbeModel,
    pub pre: Preprocess,
}

/// Build a probe run's model and load its checkpoint.
pub fn load_probe(dev: &dyn Backend, run: &Path) -> Result<LoadedProbe> {
    let cfg = ProbeConfig::load(Some(&run.join(CONFIG)), &[])
        .with_context(|| format!("{}: not a probe run folder", run.display()))?;
    let classes = read_classes(run)?;
    let f = &cfg.features;
    let model = ProbeModel::new(
        dev,
        f.backbone.clone(),
        cfg.head.kind,
        classes.len().saturating_sub(1),
        f.source,
        f.timesteps.clone(),
        f.noise_seed,
        cfg.train.seed,
    )?;
    let ckpt = run.join(CHECKPOINT);
    checkpoint::load(&ckpt, dev, &model.ps, None)
        .with_context(|| format!("{}: the probe run's checkpoint", run.display()))?;
    let pre = Preprocess {
        spacing: cfg
            .data
            .spacing
            .context("the probe run's data.spacing is not set")?,
        window: cfg
            .data
            .window
            .context("the probe run's data.window is not set")?,
    };
    Ok(LoadedProbe {
        cfg,
        classes,
        model,
        pre,
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
    let probe = load_probe(dev.as_ref(), &args.run)?;
    let k = probe.model.k();
    let ct = super::bpr_data::read_ct(&args.input)?;
    let coords = match (&args.coords, k) {
        (Some(c), 0) => bail!(
            "--coords {}: the probe's backbone takes no coordinate channels (k = 0)",
            c.display()
        ),
        (Some(c), _) => read_coords(c, &ct, &args.input, k)?,
        (None, 0) => Vec::new(),
        (None, _) => bail!(
            "{}: the probe's backbone takes k = {k} coordinate channel(s): give the input's \
             coordinates with --coords (e.g. from `voxdiff bpr` with the pretraining run's BPR run)",
            args.input.display()
        ),
    };
    let ps = prepare_ct(ct, &coords, &probe.pre)?;
    let infer = &probe.cfg.infer;
    let patch = match &args.patch {
        Some(p) => [p[0], p[1], p[2]],
        None => infer.patch.unwrap_or(probe.cfg.data.patch),
    };
    let sw = SlidingWindow {
        patch,
        overlap: infer.overlap,
        aggregation: infer.aggregation,
    };
    let dims = ps.scan.image.dims;
    let kk = ps.k;
    let mut input = Vec::with_capacity(ps.scan.image.numel() * (1 + kk));
    for (v, &x) in ps.scan.image.data.iter().enumerate() {
        input.push(x);
        input.extend_from_slice(&ps.coords[v * kk..(v + 1) * kk]);
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
    let body = infer.body_mask.then_some(&ps.body[..]);
    let labels = label_map(&logits, nk, infer.threshold, body);
    let mask = to_scan_grid(&ps.scan, labels)?;
    write_mask(&mask, &args.output, &probe.classes)?;
    println!(
        "segmented {} in {:.1} s on {} → {} ({} classes, {} windows of {:?})",
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
