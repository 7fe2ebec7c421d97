//! `voxdiff demo pretrain`: the diffusion-pretraining chain end to end on
//! built-in data (the phantom abdomen), minutes on 2 cores —
//!
//! 1. body-part regression trained on the unlabelled phantom scans;
//! 2. DDPM pretraining of the FPN3d backbone on them, conditioned on the
//!    coordinates of step 1;
//! 3. the non-linear probe on the frozen features (t = 10, 30, 60) of step 2,
//!    trained on the same scans' labels for four organs;
//! 4. the probe segments a phantom none of them was generated from (sliding
//!    windows, mean of the overlapping logits, body mask), and the mask is
//!    scored against its truth.
//!
//! ```text
//! <out>/data/                       the phantom scans, label maps and class map written as NIfTI/JSON
//! <out>/bpr/  <out>/pre/  <out>/probe/   the three runs (config, log, checkpoint, progress.png)
//! <out>/scan.nii.gz  truth.nii.gz   the held-out phantom and its labels
//! <out>/mask.nii.gz (+ .json)       the probe's segmentation of it
//! <out>/metrics.json                Dice, IoU, NSD, HD95, ASSD, centroid distance per organ
//! ```
//! Each stage gets a share of `--minutes`; the models are CPU-sized, so the
//! demo shows the chain working, not the paper's numbers (docs/pretraining.md
//! has the measured runs on the real CTs).

use super::bpr_config::BprConfig;
use super::demo::print_table;
use super::pretrain_config::PretrainConfig;
use super::probe_config::ProbeConfig;
use super::run::classes_json;
use super::segment::SegmentArgs;
use super::{bpr_data, bpr_infer};
use crate::backend::{self, Backend};
use crate::data::phantom::{self, PhantomConfig};
use crate::data::read_nifti;
use crate::data::{write_nifti_with, DataType, WriteOptions};
use crate::metrics::{label_metrics, ClassMetrics, MetricOptions};
use anyhow::{Context, Result};
use clap::Parser;
use std::path::{Path, PathBuf};

/// The organs the demo's probe learns.
pub const ORGANS: [&str; 4] = ["liver", "spleen", "kidney_right", "kidney_left"];

#[derive(clap::Args, Debug, Clone)]
pub struct PretrainDemoArgs {
    /// Output folder (earlier demo runs in it are replaced).
    #[arg(long, default_value = "runs/demo_pretrain")]
    pub out: PathBuf,
    /// Training minutes of the three stages together (BPR 20 %, pretraining
    /// 45 %, probe 35 %).
    #[arg(long, default_value_t = 3.5)]
    pub minutes: f64,
    /// Unlabelled phantom scans for BPR and pretraining; the probe trains on
    /// the first two of them with labels.
    #[arg(long, default_value_t = 6)]
    pub scans: usize,
    /// auto, cpu, emu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

/// The phantom of the demo: 32×48×48 voxels at 7.5×7×7 mm (240×336×336 mm).
fn phantom_config() -> PhantomConfig {
    PhantomConfig {
        dims: [32, 48, 48],
        spacing: [7.5, 7.0, 7.0],
        noise_hu: 12.0,
    }
}

/// A TOML string value for `--set`-style overrides.
fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A TOML list of paths.
fn list(paths: &[PathBuf]) -> String {
    let q: Vec<String> = paths.iter().map(|p| quoted(p)).collect();
    format!("[{}]", q.join(", "))
}

/// Write phantom `seed`'s scan (HU, int16) and label map (uint8) into `dir`.
fn write_phantom(dir: &Path, seed: u64, name: &str) -> Result<(PathBuf, PathBuf)> {
    let (scan, labels) = phantom::generate(&phantom_config(), seed);
    let ct = dir.join(format!("{name}_ct.nii.gz"));
    let seg = dir.join(format!("{name}_seg.nii.gz"));
    write_nifti_with(&scan, &ct, WriteOptions::plain(DataType::I16))?;
    write_nifti_with(&labels, &seg, WriteOptions::plain(DataType::U8))?;
    Ok((ct, seg))
}

/// The lowest and highest smoothed slice score of the BPR run in `run` over
/// the scans `cts`.
fn score_range(b: &dyn Backend, run: &Path, cts: &[PathBuf]) -> Result<(f32, f32)> {
    let (cfg, model) = bpr_infer::load_run(b, run)?;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for path in cts {
        let original = bpr_data::read_ct(path)?;
        let smoothing = cfg.infer.smoothing_mm;
        let (_, scores) = bpr_infer::score_ct(b, &cfg, &model, &original, path, smoothing)?;
        for &v in &scores.smoothed {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    anyhow::ensure!(
        lo.is_finite() && hi > lo,
        "{}: the body-part scores of the demo scans are flat ({lo} … {hi})",
        run.display()
    );
    Ok((lo as f32, hi as f32))
}

/// Start a stage's run folder afresh.
fn fresh(run: &Path) -> Result<()> {
    if run.exists() {
        std::fs::remove_dir_all(run)
            .with_context(|| format!("{}: cannot replace the earlier demo run", run.display()))?;
    }
    Ok(())
}

/// Run the demo on `b`; returns the per-organ metrics of the held-out phantom.
pub fn run_demo(b: &dyn Backend, args: &PretrainDemoArgs) -> Result<Vec<(String, ClassMetrics)>> {
    anyhow::ensure!(
        args.scans >= 2,
        "--scans {}: the demo needs at least 2 phantom scans",
        args.scans
    );
    anyhow::ensure!(
        args.minutes.is_finite() && args.minutes > 0.0,
        "--minutes must be a positive number, got {}",
        args.minutes
    );
    let out = &args.out;
    let data = out.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("{}: cannot create", data.display()))?;
    let say = |s: String| {
        if !args.quiet {
            eprintln!("{s}");
        }
    };

    // The data: phantom scans (seeds 0..n), one held out (seed 1000), and a
    // class map naming the phantom's label ids.
    let mut cts = Vec::new();
    let mut segs = Vec::new();
    for seed in 0..args.scans as u64 {
        let (ct, seg) = write_phantom(&data, seed, &format!("phantom{seed}"))?;
        cts.push(ct);
        segs.push(seg);
    }
    let (held_ct, held_seg) = write_phantom(out, 1000, "held_out")?;
    let scan = out.join("scan.nii.gz");
    let truth_path = out.join("truth.nii.gz");
    std::fs::rename(&held_ct, &scan)?;
    std::fs::rename(&held_seg, &truth_path)?;
    let names: Vec<String> = phantom::CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let class_map = data.join("classes.json");
    crate::fsutil::write_atomic(
        &class_map,
        serde_json::to_string_pretty(&classes_json(&names))?.as_bytes(),
    )?;
    say(format!(
        "wrote {} phantom scans with labels to {}; held out: {}",
        args.scans,
        data.display(),
        scan.display()
    ));

    // 1. Body-part regression on the unlabelled scans.
    let bpr_run = out.join("bpr");
    fresh(&bpr_run)?;
    let bpr = BprConfig::load(
        None,
        &[
            format!("data.images={}", list(&cts)),
            "data.spacing_mm=7.0".into(),
            "data.size=48".into(),
            "data.gap_mm=[8.0, 60.0]".into(),
            "model.blocks=[[8], [16], [16], [32]]".into(),
            "model.head=32".into(),
            "train.steps=3000".into(),
            format!("train.max_minutes={:?}", 0.20 * args.minutes),
            "train.lr_follows_time=true".into(),
            "train.lr.warmup_steps=50".into(),
            "train.lr.decay_steps=3000".into(),
            "train.log_every=50".into(),
            "train.checkpoint_every=3000".into(),
        ],
    )?;
    let s = super::bpr_train::train_run(b, &bpr, &bpr_run, false, !args.quiet)?;
    say(format!(
        "1/4 body-part regression: {} steps in {:.0} s, loss {:.3} → {:.3}",
        s.steps_done,
        s.seconds,
        s.first_loss.unwrap_or(f32::NAN),
        s.last_loss.unwrap_or(f32::NAN)
    ));

    // The coordinates enter the network mapped to about [0, 1]: the range of
    // the smoothed scores over the training scans (as configs/pretrain.toml
    // maps the real CTs' scores).
    let (lo, hi) = score_range(b, &bpr_run, &cts)?;
    say(format!(
        "   BPR scores of the training scans: {lo:.2} … {hi:.2}"
    ));

    // 2. DDPM pretraining conditioned on the BPR coordinates.
    let pre_run = out.join("pre");
    fresh(&pre_run)?;
    let pre = PretrainConfig::load(
        None,
        &[
            format!("data.images={}", list(&cts)),
            format!("data.bpr_run={}", quoted(&bpr_run)),
            format!("data.coord_window=[{lo:?}, {hi:?}]"),
            "data.spacing_mm=[7.0, 7.0, 7.5]".into(),
            "data.patch=[32, 32, 16]".into(),
            "data.patches_per_step=2".into(),
            "model.in_channels=2".into(),
            "model.base_channels=8".into(),
            "model.num_scales=3".into(),
            "model.blocks=1".into(),
            "model.norm=\"batch\"".into(),
            "model.groups=4".into(),
            "model.time=true".into(),
            "model.position_attention=\"fused\"".into(),
            "model.channel_attention=\"linear\"".into(),
            "train.steps=1000".into(),
            format!("train.max_minutes={:?}", 0.45 * args.minutes),
            "train.lr_follows_time=true".into(),
            "train.lr.peak=1e-3".into(),
            "train.lr.warmup_steps=20".into(),
            "train.lr.decay_steps=1000".into(),
            "train.log_every=10".into(),
            "train.checkpoint_every=1000".into(),
        ],
    )?;
    let s = super::pretrain_train::train_run(b, &pre, &pre_run, false, !args.quiet)?;
    say(format!(
        "2/4 diffusion pretraining: {} steps in {:.0} s, ε-MSE {:.3} → {:.3}",
        s.steps_done,
        s.seconds,
        s.first_loss.unwrap_or(f32::NAN),
        s.last_loss.unwrap_or(f32::NAN)
    ));

    // 3. The probe on the frozen features, trained on two labelled scans.
    let probe_run = out.join("probe");
    fresh(&probe_run)?;
    let organs: Vec<String> = ORGANS.iter().map(|o| format!("{o:?}")).collect();
    let probe = ProbeConfig::load(
        None,
        &[
            format!("data.images={}", list(&cts[..2])),
            format!("data.labels={}", list(&segs[..2])),
            format!("data.class_map={}", quoted(&class_map)),
            format!("data.classes=[{}]", organs.join(", ")),
            format!("data.pretrained_run={}", quoted(&pre_run)),
            "data.patch=[32, 32, 16]".into(),
            "data.held_out=[]".into(),
            "train.steps=600".into(),
            format!("train.max_minutes={:?}", 0.35 * args.minutes),
            "train.lr.decay_steps=600".into(),
            "train.log_every=10".into(),
            "train.checkpoint_every=600".into(),
        ],
    )?;
    let s = super::probe_train::train_run(b, &probe, &probe_run, false, !args.quiet)?;
    say(format!(
        "3/4 probe on frozen features (t = {:?}): {} steps in {:.0} s, loss {:.3} → {:.3}",
        probe.features.timesteps,
        s.steps_done,
        s.seconds,
        s.first_loss.unwrap_or(f32::NAN),
        s.last_loss.unwrap_or(f32::NAN)
    ));

    // 4. Segment the held-out phantom and score it.
    let mask_path = out.join("mask.nii.gz");
    let seg_args = SegmentCli::try_parse_from([
        "segment".to_string(),
        "--run".into(),
        probe_run.display().to_string(),
        "--input".into(),
        scan.display().to_string(),
        "--output".into(),
        mask_path.display().to_string(),
        "--device".into(),
        args.device.clone(),
    ])
    .context("the demo's segment arguments")?;
    super::probe_segment::run(&seg_args.args)?;
    let truth = read_nifti(&truth_path)?;
    let mask = read_nifti(&mask_path)?;
    // The truth (phantom ids, `phantom::CLASS_NAMES`) in the probe's class
    // ids: 1.. = ORGANS, the other organs background.
    let truth_ids: Vec<f32> = truth
        .data
        .iter()
        .map(|&v| {
            let name = phantom::CLASS_NAMES.get(v as usize).copied().unwrap_or("");
            ORGANS
                .iter()
                .position(|o| *o == name)
                .map_or(0.0, |i| (i + 1) as f32)
        })
        .collect();
    let ids: Vec<u32> = (1..=ORGANS.len() as u32).collect();
    let m = label_metrics(
        &truth_ids,
        &mask.data,
        truth.dims,
        truth.spacing,
        &ids,
        &MetricOptions::default(),
    );
    let named: Vec<(String, ClassMetrics)> = ORGANS.iter().map(|o| o.to_string()).zip(m).collect();
    crate::fsutil::write_atomic(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(
            &named
                .iter()
                .cloned()
                .collect::<std::collections::BTreeMap<_, _>>(),
        )?
        .as_bytes(),
    )?;
    Ok(named)
}

/// `segment`'s arguments parsed as the command line would give them, so the
/// demo passes exactly what a user would type.
#[derive(Parser)]
struct SegmentCli {
    #[command(flatten)]
    args: SegmentArgs,
}

pub fn run(args: &PretrainDemoArgs) -> Result<()> {
    let b = backend::select(&args.device)?;
    let t0 = std::time::Instant::now();
    let named = run_demo(b.as_ref(), args)?;
    println!(
        "held-out phantom, probe on diffusion-pretrained frozen features ({:.1} min in all):",
        t0.elapsed().as_secs_f64() / 60.0
    );
    let names: Vec<String> = named.iter().map(|n| n.0.clone()).collect();
    let m: Vec<ClassMetrics> = named.into_iter().map(|n| n.1).collect();
    print_table(&names, &m);
    println!("outputs in {}", args.out.display());
    Ok(())
}
