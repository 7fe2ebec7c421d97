//! The configuration of a segmentation run: every numeric setting is range
//! checked at load with its key named, errors mention command-line settings
//! only when some were given, and data paths resolve once to absolute paths.

mod common;
use common::tmp;

use voxdiff::pipeline::config::RunConfig;
use voxdiff::pipeline::seg_config::SegConfig;

fn load_err(set: &str) -> String {
    match SegConfig::load(None, &[set.to_string()]) {
        Ok(_) => panic!("--set {set} was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn every_numeric_setting_is_range_checked_with_its_key() {
    SegConfig::load(None, &[]).expect("the defaults are valid");
    let cases: &[(&str, &str)] = &[
        (
            "data.validation_images=[\"a.nii.gz\"]",
            "data: 1 validation images but 0 validation label maps",
        ),
        (
            "train.adamw.beta1=3",
            "train.adamw.beta1 must be in [0, 1), got 3",
        ),
        (
            "train.adamw.beta1=-0.1",
            "train.adamw.beta1 must be in [0, 1)",
        ),
        (
            "train.adamw.beta2=1.0",
            "train.adamw.beta2 must be in [0, 1), got 1",
        ),
        (
            "train.adamw.eps=-1",
            "train.adamw.eps must be a finite number > 0, got -1",
        ),
        (
            "train.adamw.eps=0",
            "train.adamw.eps must be a finite number > 0",
        ),
        (
            "train.adamw.weight_decay=-5",
            "train.adamw.weight_decay must be a finite number ≥ 0, got -5",
        ),
        (
            "train.adamw.max_grad_norm=0",
            "train.adamw.max_grad_norm must be",
        ),
        (
            "train.lr.peak=-0.001",
            "train.lr.peak must be a finite number > 0, got -0.001",
        ),
        (
            "train.lr.init=-1e-5",
            "train.lr.init must be a finite number ≥ 0",
        ),
        ("train.lr.end=-1", "train.lr.end must be"),
        (
            "train.lr.peak=inf",
            "train.lr.peak must be a finite number > 0, got inf",
        ),
        ("train.steps=0", "train.steps must be ≥ 1, got 0"),
        (
            "train.max_minutes=-2",
            "train.max_minutes must be a finite number ≥ 0",
        ),
        ("train.log_every=0", "train.log_every must be ≥ 1"),
        (
            "train.checkpoint_every=0",
            "train.checkpoint_every must be ≥ 1",
        ),
        (
            "data.fg_prob=1.5",
            "data.fg_prob must be in [0, 1], got 1.5",
        ),
        ("data.workers=0", "data.workers must be ≥ 1"),
        (
            "data.spacing=[1.0,0.0,1.0]",
            "data.spacing[1] must be a finite number > 0",
        ),
        (
            "data.window=[100.0,-100.0]",
            "data.window must be two finite numbers",
        ),
        (
            "data.window=[nan,1.0]",
            "data.window must be two finite numbers",
        ),
        (
            "data.patch=[8,64,64]",
            "data.patch must be 0 (the whole extent) or ≥ 16",
        ),
        ("data.phantom_cases=0", "data.phantom_cases must be ≥ 1"),
        (
            "data.phantom.dims=[0,8,8]",
            "data.phantom.dims[0] must be ≥ 1",
        ),
        (
            "data.phantom.spacing=[1.0,1.0,-1.0]",
            "data.phantom.spacing[2] must be",
        ),
        (
            "data.phantom.noise_hu=-3",
            "data.phantom.noise_hu must be a finite number ≥ 0",
        ),
        (
            "model.channels=[]",
            "model.channels must list at least one level",
        ),
        ("model.channels=[4,0]", "model.channels must all be ≥ 1"),
        (
            "diffusion.num_timesteps=0",
            "diffusion.num_timesteps must be in 1..=1001",
        ),
        (
            "diffusion.num_timesteps=2000",
            "diffusion.num_timesteps must be in 1..=1001",
        ),
        (
            "diffusion.num_timesteps_beta=0",
            "diffusion.num_timesteps_beta must be ≥ 1",
        ),
        (
            "diffusion.beta_start=0",
            "diffusion.beta_start must be in (0, 1), got 0",
        ),
        (
            "diffusion.beta_end=1.5",
            "diffusion.beta_end must be in (0, 1), got 1.5",
        ),
        (
            "diffusion.mse_weight=-1",
            "diffusion.mse_weight must be a finite number ≥ 0",
        ),
        ("diffusion.ce_weight=-1", "diffusion.ce_weight must be"),
        ("diffusion.dice_weight=nan", "diffusion.dice_weight must be"),
        ("infer.steps=6", "infer.steps must be in 1..=5"),
        ("infer.samples=0", "infer.samples must be ≥ 1"),
        (
            "infer.patch=[64,64,4]",
            "infer.patch must be ≥ 16 along every axis",
        ),
        (
            "infer.overlap=1.0",
            "infer.overlap must be in [0, 1), got 1",
        ),
        (
            "infer.aggregation={ Gaussian = { sigma_scale = 0.0 } }",
            "infer.aggregation.Gaussian.sigma_scale must be a finite number > 0",
        ),
    ];
    for (set, want) in cases {
        let err = load_err(set);
        assert!(
            err.contains(want),
            "--set {set}: expected {want:?} in: {err}"
        );
    }
    // Several bad settings are all reported at once.
    let err = match SegConfig::load(
        None,
        &["train.adamw.beta1=3".into(), "train.adamw.eps=-1".into()],
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("beta1") && err.contains("eps"), "{err}");
}

#[test]
fn errors_mention_command_line_settings_only_when_there_were_some() {
    let dir = tmp("wording");
    let p = dir.join("bad.toml");
    std::fs::write(&p, "[train]\nsteps = 0\n").unwrap();
    let err = format!("{:#}", SegConfig::load(Some(&p), &[]).unwrap_err());
    assert!(
        err.contains("bad.toml") && err.contains("train.steps"),
        "{err}"
    );
    assert!(
        !err.contains("--set") && !err.contains("command-line"),
        "{err}"
    );
    // A type error in the file alone: no mention of overrides either.
    std::fs::write(&p, "[train]\nsteps = \"many\"\n").unwrap();
    let err = format!("{:#}", SegConfig::load(Some(&p), &[]).unwrap_err());
    assert!(
        !err.contains("--set") && !err.contains("command-line"),
        "{err}"
    );
    // With a setting given, the message names it.
    let err = format!(
        "{:#}",
        SegConfig::load(Some(&p), &["train.seed=3".into()]).unwrap_err()
    );
    assert!(err.contains("command-line settings train.seed=3"), "{err}");
}

#[test]
fn data_paths_resolve_once_to_absolute_paths() {
    let dir = tmp("paths");
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    let p = dir.join("configs/c.toml");
    std::fs::write(
        &p,
        "[data]\nsource = \"files\"\nimages = [\"../data/ct.nii.gz\"]\nlabels = [\"../data/seg.nii.gz\"]\n",
    )
    .unwrap();
    let cwd = std::env::current_dir().unwrap();
    let cfg = SegConfig::load(Some(&p), &["data.class_map=\"maps/m.json\"".into()]).unwrap();
    let base = std::fs::canonicalize(&dir).unwrap();
    // File paths against the file's folder, command-line ones against the cwd.
    assert_eq!(cfg.data.images, vec![base.join("data/ct.nii.gz")]);
    assert_eq!(cfg.data.labels, vec![base.join("data/seg.nii.gz")]);
    assert_eq!(
        cfg.data.class_map,
        Some(std::fs::canonicalize(&cwd).unwrap().join("maps/m.json"))
    );
    // Written out and read back from anywhere, they stay the same.
    let again = dir.join("again.toml");
    std::fs::write(&again, cfg.to_toml().unwrap()).unwrap();
    assert_eq!(SegConfig::load(Some(&again), &[]).unwrap().data, cfg.data);
}
