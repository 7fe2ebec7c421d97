//! `voxdiff demo`: the main job on the built-in phantom, end to end — train a
//! diffusion segmentation model on a few synthetic abdomens, segment a
//! held-out one with the 5-step sampler, print its metrics, and write the
//! mask, the scan, an overlay PNG and the run's progress figure.
//!
//! ```text
//! <out>/run/            the training run (config, log, checkpoint, progress.png)
//! <out>/scan.nii.gz     the held-out phantom scan (HU)
//! <out>/truth.nii.gz    its true labels
//! <out>/mask.nii.gz     the predicted labels (+ mask.json: class names)
//! <out>/overlay.png     truth and prediction side by side on three axial slices
//! <out>/progress.png    the run's progress figure (loss, learning rate, time per step)
//! <out>/metrics.json    per-class Dice, IoU, NSD, HD95, ASSD, centroid distance
//! ```

use super::run::PROGRESS;
use super::seg_config::{DataSource, SegConfig};
use super::seg_data::{class_map, class_names, prepare_volume};
use super::seg_train::train_run;
use super::segment::{load_run, predict_scores, to_scan_grid, write_mask};
use crate::backend::{self, Backend};
use crate::data::intensity::Window;
use crate::data::overlay::{write_overlay, Overlay};
use crate::data::phantom;
use crate::data::sliding::argmax_channels;
use crate::data::{write_nifti_with, DataType, WriteOptions};
use crate::metrics::{label_metrics, ClassMetrics, MetricOptions};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Output folder (replaced if it holds an earlier demo).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 650)]
    pub steps: u64,
    /// Stop training after this many minutes at the latest (checkpointing first).
    #[arg(long, default_value_t = 3.75)]
    pub minutes: f64,
    /// Train on the supervised UNet instead of the diffusion model.
    #[arg(long)]
    pub unet: bool,
    /// auto, cpu, emu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Override any config field (as `train seg --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[arg(long)]
    pub quiet: bool,
}

/// Organs a person looks at first (the large ones), by class name.
pub const LARGE_ORGANS: [&str; 5] = ["liver", "spleen", "kidney_right", "kidney_left", "stomach"];

/// The demo's configuration: phantom data, the paper's network and diffusion.
pub fn demo_config(args: &DemoArgs) -> Result<SegConfig> {
    // Measured on 2 cores (docs/performance.md): 0.36–0.44 s per step, so
    // `--minutes` usually stops the default 650 steps first; the learning rate
    // then follows the time spent, so the run ends annealed either way.
    let mut o = vec![
        "data.source=\"phantom\"".to_string(),
        "data.phantom_cases=16".to_string(),
        "data.phantom.dims=[32,48,48]".to_string(),
        "data.phantom.spacing=[7.5,7.0,7.0]".to_string(),
        "data.phantom.noise_hu=12.0".to_string(),
        // Patches of 32×40×40 from the 32×48×48 cases; the whole volume at inference.
        "data.patch=[32,40,40]".to_string(),
        // One more phantom scored every 100 steps: the validation panel of
        // progress.png.
        "data.validation_phantom_cases=1".to_string(),
        "train.validate_every=100".to_string(),
        format!("train.steps={}", args.steps),
        format!("train.max_minutes={:?}", args.minutes),
        "train.lr_follows_time=true".to_string(),
        "train.lr.peak=6e-3".to_string(),
        "train.lr.warmup_steps=20".to_string(),
        format!("train.lr.decay_steps={}", args.steps),
        "train.log_every=5".to_string(),
        format!("train.checkpoint_every={}", args.steps),
    ];
    if args.unet {
        o.push("model.kind=\"unet\"".to_string());
    }
    o.extend(args.set.iter().cloned());
    let cfg = SegConfig::load(None, &o)?;
    anyhow::ensure!(
        cfg.data.source == DataSource::Phantom,
        "the demo trains on the phantom"
    );
    Ok(cfg)
}

/// Per-class scores of the demo as printed.
pub fn print_table(names: &[String], m: &[ClassMetrics]) {
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "class", "Dice", "IoU", "NSD@3mm", "HD95 mm", "ASSD mm", "centroid mm"
    );
    for (n, c) in names.iter().zip(m) {
        println!(
            "{:<30} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {:>8.2} {:>10.2}",
            n,
            c.dice,
            c.iou,
            c.nsd.get(1).copied().unwrap_or(f64::NAN),
            c.hd95,
            c.assd,
            c.centroid_mm
        );
    }
}

/// Run the demo; returns the per-class metrics (background excluded) with names.
pub fn run_demo(b: &dyn Backend, args: &DemoArgs) -> Result<Vec<(String, ClassMetrics)>> {
    let cfg = demo_config(args)?;
    let out = &args.out;
    let run = out.join("run");
    if run.exists() {
        // A demo folder is a scratch product: start afresh.
        std::fs::remove_dir_all(&run)
            .with_context(|| format!("{}: cannot clear the previous demo", run.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let names = class_names(&class_map(&cfg.data)?);
    let s = train_run(b, &cfg, &run, false, !args.quiet)?;
    if !args.quiet {
        eprintln!(
            "trained {} steps in {:.0} s (loss {:.3} → {:.3})",
            s.steps_done,
            s.seconds,
            s.first_loss.unwrap_or(f32::NAN),
            s.last_loss.unwrap_or(f32::NAN)
        );
    }

    // A phantom none of the training cases was generated from.
    let (scan, truth) = phantom::generate(&cfg.data.phantom, 1000);
    write_nifti_with(
        &scan,
        out.join("scan.nii.gz"),
        WriteOptions::plain(DataType::I16),
    )?;
    write_nifti_with(
        &truth,
        out.join("truth.nii.gz"),
        WriteOptions::plain(DataType::U8),
    )?;
    let loaded = load_run(b, &run)?;
    let prepared = prepare_volume(&cfg.data, scan.clone())?;
    let t0 = std::time::Instant::now();
    let (scores, _) = predict_scores(b, &loaded.model, &cfg.infer, &prepared.image, false)?;
    let mask = to_scan_grid(&prepared, argmax_channels(&scores, names.len()))?;
    if !args.quiet {
        eprintln!(
            "segmented the held-out phantom in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    write_mask(&mask, &out.join("mask.nii.gz"), &names)?;
    write_overlay(
        &Overlay {
            image: &scan,
            labels: vec![("truth", &truth), ("prediction", &mask)],
            names: &names,
            window: Window::new(-200.0, 300.0),
            slices: 3,
        },
        out.join("overlay.png"),
    )?;
    let figure = std::fs::read(run.join(PROGRESS)).context("reading the run's progress figure")?;
    crate::fsutil::write_atomic(&out.join(PROGRESS), &figure)?;
    let ids: Vec<u32> = (1..names.len() as u32).collect();
    let m = label_metrics(
        &truth.data,
        &mask.data,
        truth.dims,
        truth.spacing,
        &ids,
        &MetricOptions::default(),
    );
    let named: Vec<(String, ClassMetrics)> = names[1..].iter().cloned().zip(m).collect();
    crate::fsutil::write_atomic(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(
            &named
                .iter()
                .map(|(n, c)| (n.clone(), c.clone()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )?
        .as_bytes(),
    )?;
    Ok(named)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let b = backend::select(&args.device)?;
    let t0 = std::time::Instant::now();
    let named = run_demo(b.as_ref(), args)?;
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let m: Vec<ClassMetrics> = named.iter().map(|(_, c)| c.clone()).collect();
    println!();
    print_table(&names, &m);
    let large: Vec<f64> = named
        .iter()
        .filter(|(n, _)| LARGE_ORGANS.contains(&n.as_str()))
        .map(|(_, c)| c.dice)
        .collect();
    println!(
        "\nmean Dice of the large organs ({}): {:.3}; all foreground classes: {:.3}",
        LARGE_ORGANS.join(", "),
        crate::metrics::summary::Stat::of(&large).mean,
        crate::metrics::summary::Stat::of(&m.iter().map(|c| c.dice).collect::<Vec<_>>()).mean
    );
    println!(
        "wrote {}/{{mask.nii.gz, scan.nii.gz, truth.nii.gz, overlay.png, progress.png, metrics.json}} in {:.0} s on {}",
        args.out.display(),
        t0.elapsed().as_secs_f64(),
        b.name()
    );
    Ok(())
}
