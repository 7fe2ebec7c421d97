//! The frozen-feature probe (`voxdiff train probe`) and whole-volume
//! inference on a probe run (`voxdiff segment`): the heads' golden parameter
//! counts, frozen features that are deterministic and equal to a taped run,
//! a few probe steps lowering the loss on a small phantom, a segmentation on
//! the input's exact grid that `voxdiff evaluate` scores, the body mask, and
//! each bad input refused with the file named.

mod common;

use common::{cpu, tmp};
use std::path::{Path, PathBuf};
use std::process::Command;
use voxdiff::autograd::Graph;
use voxdiff::data::phantom::{self, PhantomConfig};
use voxdiff::data::{read_nifti, write_nifti, Volume};
use voxdiff::model::{FpnConfig, HeadKind, HeadShape, NormMode, ProbeHead};
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::ops::MemoryOps;
use voxdiff::pipeline::bpr_config::HeldOut;
use voxdiff::pipeline::config::RunConfig;
use voxdiff::pipeline::pretrain_config::{Objective, PretrainConfig};
use voxdiff::pipeline::pretrain_run::PretrainNet;
use voxdiff::pipeline::probe_config::{FeatureSource, ProbeConfig};
use voxdiff::pipeline::probe_data::{
    body_mask, probe_class_map, training_cases, Preparation, ProbeSource,
};
use voxdiff::pipeline::probe_features::ProbeModel;
use voxdiff::pipeline::probe_segment::load_probe;
use voxdiff::pipeline::probe_train::{build_model, train_run};
use voxdiff::train::checkpoint;

/// Trainable parameters of a head (batch norm's running statistics are
/// state, not counted — as PyTorch's `parameters()`).
fn head_count(kind: HeadKind, in_mult: usize) -> usize {
    let b = cpu();
    let mut ps = ParamStore::new(0);
    ProbeHead::new(
        &mut ParamBuilder::new(&mut ps, &b),
        HeadShape {
            kind,
            base_channels: 16,
            num_scales: 6,
            in_mult,
            classes: 13,
        },
    )
    .unwrap();
    ps.trainable().map(|(_, e)| e.t.numel()).sum()
}

#[test]
fn head_parameter_counts_match_vox2vec() {
    // vox2vec's setting: base 16, 6 scales (c = 16, 32, 64, 128, 256, 512),
    // 13 classes, one pyramid. Σc over the five upper levels = 496,
    // Σc² = 87,296.
    //
    // Linear head: a 1×1×1 conv c → 13 per level, bias on level 0 only:
    // 13·(16+32+64+128+256+512) + 13 = 13·1008 + 13 = 13,117.
    assert_eq!(head_count(HeadKind::Linear, 1), 13_117);
    // Non-linear head (ResBlock3d(c, c) of 1×1×1 convolutions *with* bias,
    // PyTorch's default, and two batch norms of 2c each):
    //   right blocks, c = 16…256: Σ(2c² + 2c + 4c) = 174,592 + 2,976 = 177,568
    //   bottom block, c = 512:      2·512² + 6·512              = 527,360
    //   up (2c → c, bias):          Σ(2c² + c)  = 174,592 + 496  = 175,088
    //   skip (c → c, bias):         Σ(c² + c)   =  87,296 + 496  =  87,792
    //   final (16 → 13, bias):      16·13 + 13                   =     221
    // total 968,029 ≈ 0.968 M (the bias-free convolutions would give 966,013).
    assert_eq!(head_count(HeadKind::Nonlinear, 1), 968_029);
    // Three time steps widen every level's input to 3c:
    //   linear: 13·3·1008 + 13 = 39,325;
    //   non-linear: the skip convs 3c → c: Σ(3c² + c) = 261,888 + 496 = 262,384;
    //   the bottom ResBlock(1536 → 512) = bn 2·1536 + conv 1536·512 + 512
    //     + bn 2·512 + conv 512² + 512 + skip conv 1536·512 + 512 = 1,840,640;
    //   right, up, final unchanged: 177,568 + 175,088 + 221;
    //   total 2,455,901.
    assert_eq!(head_count(HeadKind::Linear, 3), 39_325);
    assert_eq!(head_count(HeadKind::Nonlinear, 3), 2_455_901);
}

/// A small backbone taking k coordinate channels (time embedding on, as a
/// diffusion pretraining run's; no attention, to stay fast).
fn tiny_backbone(k: usize) -> FpnConfig {
    FpnConfig {
        base_channels: 4,
        num_scales: 3,
        time: true,
        ..FpnConfig::vox2vec(1 + k)
    }
}

/// The phantom's voxel size, [sd, sh, sw] mm.
const SPACING: [f64; 3] = [15.0, 13.0, 13.0];

/// A small phantom CT, its label map and a class map, written to `dir`.
fn phantom_case(dir: &Path, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let cfg = PhantomConfig {
        dims: [16, 24, 24],
        spacing: SPACING,
        noise_hu: 5.0,
    };
    let (img, lab) = phantom::generate(&cfg, seed);
    let (ip, lp, cp) = (
        dir.join(format!("ct{seed}.nii.gz")),
        dir.join(format!("seg{seed}.nii.gz")),
        dir.join("classes.json"),
    );
    write_nifti(&img, &ip).unwrap();
    write_nifti(&lab, &lp).unwrap();
    std::fs::write(&cp, r#"{"1": "spleen", "6": "liver"}"#).unwrap();
    (ip, lp, cp)
}

/// A pretraining run folder as `voxdiff train pretrain` leaves it: its
/// configuration (CT `image` at the phantom's spacing, no resampling; k
/// coordinate channels from the files `coords`) and a checkpoint of a
/// [`PretrainNet`] (`backbone.*`, `head.*`) initialised from `seed`, whose
/// backbone parameters are returned.
fn pretraining_run(
    dir: &Path,
    image: &Path,
    coords: Option<&Path>,
    model: FpnConfig,
    seed: u64,
) -> (PathBuf, Vec<(String, Vec<f32>)>) {
    let b = cpu();
    let run = dir.to_path_buf();
    std::fs::create_dir_all(&run).unwrap();
    let mut cfg = PretrainConfig::default();
    cfg.data.images = vec![image.to_path_buf()];
    cfg.data.coords = coords.map(|c| vec![c.to_path_buf()]).unwrap_or_default();
    cfg.data.spacing_mm = [SPACING[2], SPACING[1], SPACING[0]];
    cfg.data.patch = [16, 16, 8];
    cfg.model = model;
    cfg.validate().unwrap();
    std::fs::write(run.join("config.toml"), cfg.to_toml().unwrap()).unwrap();
    let mut ps = ParamStore::new(seed);
    PretrainNet::new(&mut ParamBuilder::new(&mut ps, &b), &cfg.model).unwrap();
    checkpoint::save(
        &run.join("checkpoint.safetensors"),
        &b,
        &ps,
        None,
        &serde_json::json!({}),
    )
    .unwrap();
    let backbone = ps
        .entries
        .iter()
        .filter(|e| e.name.starts_with("backbone."))
        .map(|e| (e.name.clone(), b.download(&e.t).unwrap()))
        .collect();
    (run, backbone)
}

#[test]
fn frozen_features_are_deterministic_and_equal_a_taped_run() {
    let b = cpu();
    let m = ProbeModel::new(
        &b,
        tiny_backbone(1),
        &Objective::default(),
        HeadKind::Nonlinear,
        2,
        FeatureSource::Random,
        vec![10, 30, 60],
        7,
        3,
    )
    .unwrap();
    let patch = [4, 8, 8];
    let vox = 4 * 8 * 8;
    let image: Vec<f32> = (0..2 * vox)
        .map(|i| (i as f32 * 0.37).sin() * 0.5 + 0.5)
        .collect();
    let coords: Vec<f32> = (0..2 * vox).map(|i| i as f32 / (2 * vox) as f32).collect();
    let seeds = [11, 12];
    let get = |seeds: &[u64]| -> Vec<Vec<f32>> {
        m.frozen_features(&b, patch, &image, &coords, seeds)
            .unwrap()
            .unwrap()
            .iter()
            .map(|t| b.download(t).unwrap())
            .collect()
    };
    let a = get(&seeds);
    assert_eq!(
        a,
        get(&seeds),
        "the same patches must get the same features"
    );
    // Three pyramids per level, concatenated: level 0 has 3 · 4 channels.
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].len(), 2 * vox * 3 * 4);
    // A taped graph computes the same values.
    let mut g = Graph::train(&b);
    let taped = m
        .pyramid(&mut g, patch, &image, &coords, &seeds, NormMode::Eval)
        .unwrap();
    for (l, v) in taped.iter().enumerate() {
        assert_eq!(b.download(&v.t).unwrap(), a[l], "level {l}");
    }
    // Another noise seed gives other features: the noise enters.
    assert_ne!(get(&[11, 13])[0], a[0]);
    // A time step beyond the pretraining schedule is refused.
    let e = err_of(ProbeModel::new(
        &b,
        tiny_backbone(1),
        &Objective {
            timesteps: 50,
            ..Objective::default()
        },
        HeadKind::Linear,
        2,
        FeatureSource::Random,
        vec![10, 60],
        7,
        3,
    ));
    assert!(e.contains("t = 60") && e.contains("timesteps = 50"), "{e}");
}

/// A probe configuration on the phantom CT 0 in `dir` with a k = 0
/// pretraining run (backbone seed 42) under `dir/pre`.
fn phantom_config(dir: &Path) -> (ProbeConfig, Vec<(String, Vec<f32>)>) {
    let (ip, lp, cp) = phantom_case(dir, 0);
    let (pre, backbone) = pretraining_run(&dir.join("pre"), &ip, None, tiny_backbone(0), 42);
    let mut cfg = ProbeConfig::default();
    cfg.data.images = vec![ip];
    cfg.data.labels = vec![lp];
    cfg.data.class_map = Some(cp);
    cfg.data.pretrained_run = Some(pre);
    cfg.data.patch = [16, 16, 8];
    cfg.features.source = FeatureSource::Random;
    cfg.features.timesteps = vec![10, 30];
    cfg.train.steps = 30;
    cfg.train.log_every = 1;
    cfg.train.checkpoint_every = 30;
    cfg.validate().unwrap();
    (cfg, backbone)
}

fn preparation(cfg: &ProbeConfig) -> Preparation {
    Preparation::open(
        &cpu(),
        cfg.data.pretrained_run.as_ref().unwrap(),
        cfg.data.patch,
    )
    .unwrap()
}

/// Mean loss of `m` over the first four batches of `cfg`'s sampler.
fn fixed_batch_loss(m: &ProbeModel, cfg: &ProbeConfig) -> f32 {
    let b = cpu();
    let prep = preparation(cfg);
    let map = probe_class_map(&cfg.data).unwrap();
    let cases = training_cases(&b, &cfg.data, &map, &prep).unwrap();
    let src = ProbeSource::new(cases, &cfg.data, 2, 99).unwrap();
    let mut s = 0.0;
    for n in 0..4 {
        let mut g = Graph::inference(&b);
        let (l, _, _) = m.loss(&mut g, &src.batch(n)).unwrap();
        s += b.download(&l.t).unwrap()[0];
    }
    s / 4.0
}

fn backbone_of(m: &ProbeModel) -> Vec<(String, Vec<f32>)> {
    let b = cpu();
    m.ps.entries
        .iter()
        .filter(|e| e.name.starts_with("backbone."))
        .map(|e| (e.name.clone(), b.download(&e.t).unwrap()))
        .collect()
}

#[test]
fn pretrained_features_load_the_runs_backbone_and_random_ones_do_not() {
    let dir = tmp("probe_pretrained");
    let (mut cfg, pretrained) = phantom_config(&dir);
    let b = cpu();
    let prep = preparation(&cfg);
    cfg.features.source = FeatureSource::Pretrained;
    let m = build_model(&b, &cfg, &prep, 2).unwrap();
    assert_eq!(backbone_of(&m), pretrained);
    cfg.features.source = FeatureSource::Random;
    let r = build_model(&b, &cfg, &prep, 2).unwrap();
    let random = backbone_of(&r);
    assert_eq!(random.len(), pretrained.len());
    assert!(
        random
            .iter()
            .zip(&pretrained)
            .any(|(a, p)| a.0 == p.0 && a.1 != p.1),
        "the random backbone must not be the pretrained one"
    );
}

#[test]
fn a_few_probe_steps_lower_the_loss_and_segment_writes_the_input_grid() {
    let dir = tmp("probe_train");
    let (cfg, _) = phantom_config(&dir);
    let b = cpu();
    let run = dir.join("run");
    let summary = train_run(&b, &cfg, &run, false, false).unwrap();
    assert_eq!(summary.steps_done, 30);
    let trained = load_probe(&b, &run, None).unwrap();
    let fresh = build_model(&b, &cfg, &preparation(&cfg), 2).unwrap();
    let (l0, l1) = (
        fixed_batch_loss(&fresh, &cfg),
        fixed_batch_loss(&trained.model, &cfg),
    );
    eprintln!("probe loss on four fixed batches: {l0} → {l1}");
    assert!(l1 < 0.9 * l0, "loss on fixed batches {l0} → {l1}");
    // The frozen backbone did not move: it is the random backbone of the seed.
    for (e, f) in trained.model.ps.entries.iter().zip(&fresh.ps.entries) {
        if e.name.starts_with("backbone.") && !e.name.contains("running") {
            assert_eq!(
                b.download(&e.t).unwrap(),
                b.download(&f.t).unwrap(),
                "{}",
                e.name
            );
        }
    }

    // Whole-volume inference through the binary, with a window larger than
    // the scan along D (padded with air, not refused).
    let input = &cfg.data.images[0];
    let out = dir.join("mask.nii.gz");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args([
            "segment", "--device", "cpu", "--patch", "32", "16", "16", "--run",
        ])
        .arg(&run)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "segment failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mask = read_nifti(&out).unwrap();
    let ct = read_nifti(input).unwrap();
    mask.check_same_grid(&ct, 0.0).unwrap();
    assert!(mask.data.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0));
    assert!(dir.join("mask.json").is_file());
    let eval_out = dir.join("eval");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(&out)
        .arg("--gt")
        .arg(&cfg.data.labels[0])
        .arg("--classes")
        .arg(cfg.data.class_map.as_ref().unwrap())
        .arg("--pred-classes")
        .arg(dir.join("mask.json"))
        .arg("--out")
        .arg(&eval_out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "evaluate failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let csv = std::fs::read_to_string(eval_out.join("per_class.csv")).unwrap();
    assert!(csv.contains("liver") && csv.contains("spleen"), "{csv}");

    // The pretraining run moved away: segment names it.
    let pre = cfg.data.pretrained_run.as_ref().unwrap();
    let moved = dir.join("pre_moved");
    std::fs::rename(pre, &moved).unwrap();
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["segment", "--device", "cpu", "--run"])
        .arg(&run)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(dir.join("mask2.nii.gz"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        e.contains(&*pre.to_string_lossy()) && e.contains("not a run folder"),
        "{e}"
    );
    assert!(!dir.join("mask2.nii.gz").exists());
}

#[test]
fn body_mask_floods_outside_air_only() {
    let (img, _) = phantom::generate(
        &PhantomConfig {
            dims: [6, 20, 20],
            spacing: [10.0, 16.0, 16.0],
            noise_hu: 0.0,
        },
        1,
    );
    let mut hu = img.data.clone();
    let [d, h, w] = img.dims;
    let at = |z: usize, y: usize, x: usize| (z * h + y) * w + x;
    // An air pocket inside the body (bowel gas) stays body.
    hu[at(3, 10, 10)] = -1000.0;
    let body = body_mask(&hu, img.dims, -500.0);
    assert!(!body[at(0, 0, 0)], "the corner is outside air");
    assert!(!body[at(d - 1, h - 1, w - 1)]);
    assert!(body[at(3, 10, 10)], "enclosed air is inside the body");
    assert!(body[at(3, 10, 11)]);
    // Every outside voxel is air, and some voxels are outside.
    let outside = body.iter().filter(|&&b| !b).count();
    assert!(outside > 0 && outside < body.len());
    assert!(body.iter().zip(&hu).all(|(&b, &v)| b || v < -500.0));
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_pretraining_runs_are_refused_naming_the_folder() {
    let dir = tmp("probe_bad_run");
    let b = cpu();
    let (mut cfg, _) = phantom_config(&dir);
    cfg.features.source = FeatureSource::Pretrained;
    // No pretraining run at all.
    let mut none = cfg.clone();
    none.data.pretrained_run = None;
    let e = err_of(none.validate());
    assert!(e.contains("data.pretrained_run"), "{e}");
    // A missing folder.
    cfg.data.pretrained_run = Some(dir.join("no_such_run"));
    let e = err_of(train_run(&b, &cfg, &dir.join("r1"), false, false));
    assert!(
        e.contains("no_such_run") && e.contains("not a run folder"),
        "{e}"
    );
    // Another command's run (a segmentation run's configuration).
    let seg = dir.join("seg_run");
    std::fs::create_dir_all(&seg).unwrap();
    std::fs::write(seg.join("config.toml"), "[model]\nchannels = [8, 16]\n").unwrap();
    cfg.data.pretrained_run = Some(seg);
    let e = err_of(train_run(&b, &cfg, &dir.join("r2"), false, false));
    assert!(
        e.contains("seg_run") && e.contains("not a pretraining run"),
        "{e}"
    );
    // A pretraining run without a checkpoint.
    let pre = dir.join("pre");
    let unfinished = dir.join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::copy(pre.join("config.toml"), unfinished.join("config.toml")).unwrap();
    cfg.data.pretrained_run = Some(unfinished);
    let e = err_of(train_run(&b, &cfg, &dir.join("r3"), false, false));
    assert!(e.contains("unfinished") && e.contains("checkpoint"), "{e}");
    // A checkpoint of another model than the run's configuration says.
    let (other, _) = pretraining_run(
        &dir.join("other_model"),
        &cfg.data.images[0],
        None,
        FpnConfig {
            base_channels: 8,
            ..tiny_backbone(0)
        },
        1,
    );
    std::fs::copy(pre.join("config.toml"), other.join("config.toml")).unwrap();
    cfg.data.pretrained_run = Some(other);
    let e = err_of(train_run(&b, &cfg, &dir.join("r4"), false, false));
    assert!(
        e.contains("other_model") && e.contains("backbone does not load"),
        "{e}"
    );
    // A patch the backbone cannot take (3 scales: multiples of 4).
    cfg.data.pretrained_run = Some(pre);
    cfg.data.patch = [16, 16, 6];
    let e = err_of(train_run(&b, &cfg, &dir.join("r5"), false, false));
    assert!(e.contains("data.patch") && e.contains("multiple"), "{e}");
    // Nothing was written for the refused runs.
    for r in ["r1", "r2", "r3", "r4", "r5"] {
        assert!(!dir.join(r).exists(), "{r}");
    }
}

#[test]
fn coordinates_off_grid_or_of_another_k_are_refused_naming_the_file() {
    let dir = tmp("probe_bad_coords");
    let b = cpu();
    let (mut cfg, _) = phantom_config(&dir);
    let ct = read_nifti(&cfg.data.images[0]).unwrap();
    // Coordinates for a backbone that takes none (k = 0).
    let cp = dir.join("coords.nii.gz");
    write_nifti(&ct.with_data(vec![0.5; ct.numel()]), &cp).unwrap();
    cfg.data.coords = vec![cp.clone()];
    let e = err_of(train_run(&b, &cfg, &dir.join("r1"), false, false));
    assert!(e.contains("coords.nii.gz") && e.contains("k = 0"), "{e}");

    // A k = 1 pretraining run (coordinate files).
    let (pre1, _) = pretraining_run(
        &dir.join("pre_k1"),
        &cfg.data.images[0],
        Some(&cp),
        tiny_backbone(1),
        5,
    );
    cfg.data.pretrained_run = Some(pre1);
    // Coordinates on another grid than the CT.
    let other = Volume::new(vec![0.5; 8 * 8 * 8], [8, 8, 8], [1.0; 3]).unwrap();
    let op = dir.join("coords_other.nii.gz");
    write_nifti(&other, &op).unwrap();
    cfg.data.coords = vec![op];
    let e = err_of(train_run(&b, &cfg, &dir.join("r2"), false, false));
    assert!(
        e.contains("coords_other.nii.gz") && e.contains("not on the grid"),
        "{e}"
    );
    // No coordinates for a k = 1 backbone whose run takes them from files.
    cfg.data.coords = vec![];
    let e = err_of(train_run(&b, &cfg, &dir.join("r4"), false, false));
    assert!(
        e.contains("ct0.nii.gz") && e.contains("k = 1") && e.contains("data.coords"),
        "{e}"
    );
    // With its coordinates the k = 1 probe trains.
    cfg.data.coords = vec![cp];
    cfg.train.steps = 2;
    cfg.train.checkpoint_every = 2;
    train_run(&b, &cfg, &dir.join("r5"), false, false).unwrap();
}

#[test]
fn segment_refuses_a_coordinate_mismatch_naming_the_file() {
    let dir = tmp("probe_segment_bad");
    let (mut cfg, _) = phantom_config(&dir);
    cfg.train.steps = 2;
    cfg.train.checkpoint_every = 2;
    let b = cpu();
    let run = dir.join("run");
    train_run(&b, &cfg, &run, false, false).unwrap();
    let input = &cfg.data.images[0];
    let ct = read_nifti(input).unwrap();
    let cp = dir.join("coords.nii.gz");
    write_nifti(&ct.with_data(vec![0.5; ct.numel()]), &cp).unwrap();
    let seg = |input: &Path, coords: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_voxdiff"));
        c.args(["segment", "--device", "cpu", "--run"])
            .arg(&run)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(dir.join("m.nii.gz"));
        if let Some(p) = coords {
            c.arg("--coords").arg(p);
        }
        let o = c.output().unwrap();
        assert!(!o.status.success());
        assert!(!dir.join("m.nii.gz").exists());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = seg(input, Some(&cp));
    assert!(e.contains("coords.nii.gz") && e.contains("k = 0"), "{e}");
    // A missing input is named.
    let e = seg(&dir.join("missing.nii.gz"), None);
    assert!(e.contains("missing.nii.gz"), "{e}");
}

#[test]
fn no_training_patch_touches_a_held_out_range() {
    let dir = tmp("probe_held_out");
    let (mut cfg, _) = phantom_config(&dir);
    cfg.data.patch = [16, 16, 4];
    // File slices 6..10; the pretraining run keeps the file's z spacing, so
    // exactly prepared slices 6..10 are held out.
    cfg.data.held_out = vec![HeldOut {
        image: 0,
        slices: [6, 10],
    }];
    let b = cpu();
    let map = probe_class_map(&cfg.data).unwrap();
    let prep = preparation(&cfg);
    let cases = training_cases(&b, &cfg.data, &map, &prep).unwrap();
    let held: Vec<usize> = (0..16).filter(|&z| cases[0].volume.held[z]).collect();
    assert_eq!(held, (6..10).collect::<Vec<_>>());
    let src = ProbeSource::new(cases, &cfg.data, 2, 5).unwrap();
    let mut seen = [false; 2];
    for n in 0..300 {
        for o in src.batch(n).origins {
            let z = o[0];
            assert!(
                z + 4 <= 6 || z >= 10,
                "patch at z = {z} touches slices 6..10"
            );
            seen[usize::from(z >= 10)] = true;
        }
    }
    assert!(
        seen[0] && seen[1],
        "patches on both sides of the held-out range"
    );
    // A held-out range that leaves no room for a patch is refused.
    cfg.data.held_out[0].slices = [2, 14];
    let cases = training_cases(&b, &cfg.data, &map, &prep).unwrap();
    let e = err_of(ProbeSource::new(cases, &cfg.data, 2, 5));
    assert!(e.contains("ct0.nii.gz") && e.contains("no room"), "{e}");
}

#[test]
fn the_shipped_configuration_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/probe.toml");
    let cfg = ProbeConfig::load(Some(&p), &[]).unwrap();
    assert_eq!(cfg.data.patch_dhw(), [16, 64, 64]);
    assert_eq!(cfg.data.classes.len(), 12);
    assert_eq!(cfg.features.source, FeatureSource::Pretrained);
    assert_eq!(cfg.features.timesteps, vec![10, 30, 60]);
    assert_eq!(cfg.train.lr.init, 3e-4);
    assert_eq!(cfg.train.adamw.weight_decay, 0.0);
    assert!(cfg
        .data
        .pretrained_run
        .as_ref()
        .unwrap()
        .ends_with("runs/pre"));
    // The classes exist in the class map.
    if common::data_dir().is_some() {
        assert_eq!(probe_class_map(&cfg.data).unwrap().names.len(), 12);
    }
}
