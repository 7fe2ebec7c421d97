//! `voxdiff demo segdiff`: SegDiff end to end on the shared dermoscopy
//! photos (`../shared/data/skin_2d`, five image/mask pairs: four train, one
//! held out) — train the CPU-sized network for a few minutes at 64², segment
//! the held-out photo with a 9-sample DDIM ensemble, score it against its
//! mask, and write:
//!
//! ```text
//! <out>/run/                     the training run (config, split, log, checkpoint, progress.png)
//! <out>/mask.png                 the predicted mask at the photo's size
//! <out>/mask_overlay.png         its outline over the photo
//! <out>/mask_uncertainty.png     the ensemble's pixelwise variance
//! <out>/metrics.json             IoU, F1, WCov, boundary F at 1–5 px
//! ```
//! Four photos cannot teach a segmenter much: the demo shows the pipeline
//! working, not a good model (docs/segdiff.md has a measured run).

use super::segdiff_config::SegDiffConfig;
use super::segdiff_segment::{companions, load_run, predict_photo, write_prediction};
use super::segdiff_train::{train_run, SPLIT};
use crate::backend;
use crate::data::image2d::{read_mask, read_photo};
use crate::diffusion::Sampler;
use crate::metrics::mask2d::score_masks;
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct SegDiffDemoArgs {
    /// Folder with `images/` and `masks/` (paired by name).
    #[arg(long, default_value = "../shared/data/skin_2d")]
    pub data: PathBuf,
    /// Output folder (an earlier demo's run in it is replaced).
    #[arg(long, default_value = "runs/demo_segdiff")]
    pub out: PathBuf,
    /// Training steps (the time limit usually stops first).
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    /// Stop training after this many minutes.
    #[arg(long, default_value_t = 3.0)]
    pub minutes: f64,
    /// auto, cpu, emu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Override any config field (as `train segdiff --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: &SegDiffDemoArgs) -> Result<()> {
    let images = args.data.join("images");
    let masks = args.data.join("masks");
    ensure!(
        images.is_dir() && masks.is_dir(),
        "{}: needs images/ and masks/ folders (the shared dermoscopy photos are in \
         ../shared/data/skin_2d; give another folder with --data)",
        args.data.display()
    );
    let mut o = vec![
        format!("data.images={:?}", images.display().to_string()),
        format!("data.masks={:?}", masks.display().to_string()),
        "data.validation=1".to_string(),
        "batch=2".to_string(),
        format!("train.steps={}", args.steps),
        format!("train.max_minutes={:?}", args.minutes),
        "train.lr_follows_time=true".to_string(),
        format!("train.lr.decay_steps={}", args.steps),
        "train.lr.warmup_steps=20".to_string(),
        format!("train.checkpoint_every={}", args.steps),
    ];
    o.extend(args.set.iter().cloned());
    let cfg = SegDiffConfig::load(None, &o)?;
    let run = args.out.join("run");
    if run.exists() {
        std::fs::remove_dir_all(&run)
            .with_context(|| format!("{}: cannot replace the earlier demo run", run.display()))?;
    }
    let b = backend::select(&args.device)?;
    let b = b.as_ref();
    let s = train_run(b, &cfg, &run, false, !args.quiet)?;
    println!(
        "trained {} steps in {:.0} s; loss {} → {}",
        s.steps_done,
        s.seconds,
        s.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
        s.last_loss.map_or("-".into(), |l| format!("{l:.4}"))
    );
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(SPLIT))?)?;
    let id = split["validation"][0]
        .as_str()
        .context("the run holds out no photo")?
        .to_string();
    let loaded = load_run(b, &run, None)?;
    let mut infer = loaded.cfg.infer.clone();
    infer.sampler = Sampler::Ddim;
    infer.steps = Some(20);
    let photo_path = crate::data::image2d::folder::list_images(&images)?
        .0
        .remove(&id)
        .with_context(|| format!("{}: no photo {id}", images.display()))?;
    let photo = read_photo(&photo_path)?;
    let t0 = std::time::Instant::now();
    let p = predict_photo(b, &loaded, &infer, &photo)?;
    let mask_path = args.out.join("mask.png");
    let (overlay, uncertainty) = companions(&mask_path);
    write_prediction(&p, &photo, &mask_path, &overlay, &uncertainty)?;
    let gt = read_mask(&masks.join(format!("{id}.png")))?;
    let sc = score_masks(
        &gt.to_bools(),
        &p.mask.to_bools(),
        gt.width,
        gt.height,
        &[1.0, 2.0, 3.0, 4.0, 5.0],
    );
    let metrics = serde_json::json!({
        "image": id, "samples": infer.samples, "sampler": "ddim", "steps": 20,
        "iou": sc.iou, "f1": sc.f1, "wcov": sc.wcov, "boundary_f_mean": sc.boundary_f_mean(),
    });
    crate::fsutil::write_atomic(
        &args.out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    println!(
        "held-out {id}: {} samples (DDIM, 20 steps) in {:.1} s: IoU {:.3}, F1 {:.3}, WCov {:.3}, boundary F {:.3}",
        infer.samples,
        t0.elapsed().as_secs_f64(),
        sc.iou,
        sc.f1,
        sc.wcov,
        sc.boundary_f_mean()
    );
    println!(
        "wrote {}, {}, {}, {} and the run in {}",
        mask_path.display(),
        overlay.display(),
        uncertainty.display(),
        args.out.join("metrics.json").display(),
        run.display()
    );
    Ok(())
}
