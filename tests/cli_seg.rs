//! The segmentation commands as a user runs them: the demo, train → segment →
//! evaluate, resuming a killed run, and the errors a user can cause.

mod common;
use common::{data_dir, tmp};

use std::path::Path;
use std::process::Command;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::data::read_nifti;
use voxdiff::pipeline::seg_config::SegConfig;
use voxdiff::pipeline::seg_train::train_run;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_voxdiff"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run voxdiff");
    assert!(
        out.status.success(),
        "voxdiff failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small, fast configuration: tiny phantoms and a narrow UNet.
const TINY: [&str; 6] = [
    "data.phantom_cases=2",
    "data.phantom.dims=[12,20,20]",
    "data.phantom.spacing=[16.0,14.0,14.0]",
    "model.channels=[4,8]",
    "train.log_every=1",
    "train.checkpoint_every=2",
];

fn sets(extra: &[&str]) -> Vec<String> {
    TINY.iter()
        .chain(extra)
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

#[test]
fn demo_writes_mask_scan_overlay_loss_curve_and_metrics() {
    let out = tmp("demo");
    let stdout = run_ok(
        bin()
            .args([
                "demo", "--device", "cpu", "--quiet", "--steps", "3", "--out",
            ])
            .arg(&out)
            .args(sets(&[])),
    );
    assert!(stdout.contains("mean Dice of the large organs"), "{stdout}");
    let scan = read_nifti(out.join("scan.nii.gz")).unwrap();
    let mask = read_nifti(out.join("mask.nii.gz")).unwrap();
    mask.check_same_grid(&scan, 0.0).unwrap();
    assert!(mask
        .data
        .iter()
        .all(|&v| v >= 0.0 && v < 14.0 && v.fract() == 0.0));
    for f in [
        "overlay.png",
        "loss.png",
        "run/checkpoint.safetensors",
        "run/log.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(m.get("liver").and_then(|l| l.get("dice")).is_some());
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mask.json")).unwrap()).unwrap();
    assert_eq!(classes["labels"]["6"], "liver");
}

/// Train `steps` steps of `cfg` into `run`, resuming if asked.
fn train(cfg: &SegConfig, run: &Path, resume: bool) {
    let b = CpuBackend::new();
    train_run(&b, cfg, run, resume, false).unwrap();
}

fn params(run: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_resumed_run_continues_exactly_where_it_stopped() {
    let overrides: Vec<String> = TINY
        .iter()
        .map(|s| s.to_string())
        .chain(["train.steps=6".to_string()])
        .collect();
    let full_cfg = SegConfig::load(None, &overrides).unwrap();
    let straight = tmp("resume_straight");
    train(&full_cfg, &straight, false);

    // The same run stopped after 4 steps (its last checkpoint), then resumed.
    let mut short = overrides.clone();
    short.push("train.steps=4".into());
    let stopped = tmp("resume_stopped");
    train(&SegConfig::load(None, &short).unwrap(), &stopped, false);
    // Resuming reads the run's own config; extend its step budget as a user would.
    let out = run_ok(
        bin()
            .args([
                "train", "seg", "--resume", "--quiet", "--device", "cpu", "--steps", "6", "--run",
            ])
            .arg(&stopped),
    );
    assert!(out.contains("trained 2 steps"), "{out}");
    let (a, b) = (params(&straight), params(&stopped));
    assert_eq!(a.len(), b.len());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            da == db,
            "{na} differs between the straight and the resumed run"
        );
    }
    // The log holds every step once per run segment.
    let steps: Vec<u64> = voxdiff::train::RunLog::read(&stopped.join("log.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoint() {
    let run = tmp("diverge");
    let out = bin()
        .args([
            "train", "seg", "--quiet", "--device", "cpu", "--steps", "40", "--run",
        ])
        .arg(&run)
        .args(sets(&[
            "train.lr.peak=1e30",
            "train.lr.init=1e30",
            "train.adamw.max_grad_norm=1e30",
        ]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("training diverged at step"), "{err}");
    assert!(err.contains("checkpoint"), "{err}");
}

#[test]
fn bad_inputs_get_errors_that_name_the_problem() {
    let run = tmp("bad");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--set".into(), "model.kind=\"gan\"".into()],
            "model.kind",
        ),
        (
            vec!["--set".into(), "data.source=\"files\"".into()],
            "data.images",
        ),
        (
            vec!["--set".into(), "train.nosuchfield=3".into()],
            "nosuchfield",
        ),
        (
            vec!["--set".into(), "data.classes=[\"unicorn\"]".into()],
            "unicorn",
        ),
        (vec!["--device".into(), "tpu".into()], "unknown device"),
        (
            vec!["--set".into(), "train.lr.peak=-0.001".into()],
            "train.lr.peak must be a finite number > 0, got -0.001",
        ),
        (
            vec!["--set".into(), "train.adamw.beta1=3".into()],
            "train.adamw.beta1 must be in [0, 1), got 3",
        ),
        (
            vec!["--config".into(), "/nonexistent/x.toml".into()],
            "/nonexistent/x.toml",
        ),
    ];
    for (args, needle) in cases {
        let out = bin()
            .args(["train", "seg", "--quiet", "--steps", "1", "--run"])
            .arg(&run)
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: error does not mention {needle:?}:\n{err}"
        );
    }
    // Segmenting with a folder that is not a run, and a missing scan.
    let out = bin()
        .args([
            "segment",
            "--device",
            "cpu",
            "--run",
            "/nonexistent/run",
            "--input",
            "x.nii.gz",
            "--output",
        ])
        .arg(run.join("m.nii.gz"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/run"));
}

#[test]
fn the_emulated_gpu_trains_from_the_cli() {
    // The CUDA kernels, run by the CPU emulation of the CUDA execution model,
    // through the same command a GPU user runs.
    let run = tmp("emu_train");
    let out = run_ok(
        bin()
            .args([
                "train", "seg", "--quiet", "--device", "emu", "--steps", "3", "--run",
            ])
            .arg(&run)
            .args(sets(&[
                "data.phantom.dims=[8,12,12]",
                "data.phantom.spacing=[24.0,24.0,24.0]",
            ])),
    );
    assert!(out.contains("trained 3 steps"), "{out}");
    let log = voxdiff::train::RunLog::read(&run.join("log.jsonl")).unwrap();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
}

#[test]
fn segment_writes_the_mask_on_the_input_grid_and_evaluate_scores_it() {
    let Some(data) = data_dir() else { return };
    let ct = data.join("ct_abdomen/example_ct_sm.nii.gz");
    let seg = data.join("ct_abdomen/example_seg.nii.gz");
    let map = data.join("ct_abdomen/btcv13_to_totalseg_ids.json");
    let dir = tmp("segment_real");
    let run = dir.join("run");
    // A few steps on the real scan at 9 mm: enough to exercise the geometry.
    run_ok(
        bin()
            .args([
                "train", "seg", "--quiet", "--device", "cpu", "--steps", "2", "--run",
            ])
            .arg(&run)
            .args([
                "--set",
                "data.source=\"files\"",
                "--set",
                "model.channels=[4,8]",
                "--set",
                "data.spacing=[9.0,9.0,9.0]",
                "--set",
                "data.classes=[\"liver\",\"spleen\"]",
            ])
            .args([
                "--set",
                &format!("data.images=[{:?}]", ct.display().to_string()),
            ])
            .args([
                "--set",
                &format!("data.labels=[{:?}]", seg.display().to_string()),
            ])
            .args([
                "--set",
                &format!("data.class_map={:?}", map.display().to_string()),
            ]),
    );
    let mask = dir.join("mask.nii.gz");
    let steps = dir.join("steps");
    run_ok(
        bin()
            .args([
                "segment",
                "--device",
                "cpu",
                "--steps",
                "3",
                "--sampler",
                "ddim",
                "--run",
            ])
            .arg(&run)
            .arg("--input")
            .arg(&ct)
            .arg("--output")
            .arg(&mask)
            .arg("--save-steps")
            .arg(&steps),
    );
    let scan = read_nifti(&ct).unwrap();
    let m = read_nifti(&mask).unwrap();
    m.check_same_grid(&scan, 0.0).unwrap();
    assert_eq!(m.affine, scan.affine);
    for k in 0..3 {
        let s = read_nifti(steps.join(format!("step_{k}.nii.gz"))).unwrap();
        s.check_same_grid(&scan, 0.0).unwrap();
    }
    assert!(!steps.join("step_3.nii.gz").exists());
    // The mask's sidecar names its classes; evaluate matches them by name.
    let eval = dir.join("eval");
    run_ok(
        bin()
            .args(["evaluate", "--pred"])
            .arg(&mask)
            .arg("--pred-classes")
            .arg(dir.join("mask.json"))
            .arg("--gt")
            .arg(&seg)
            .arg("--classes")
            .arg(&map)
            .arg("--out")
            .arg(&eval),
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("summary.json")).unwrap()).unwrap();
    assert!(summary.to_string().contains("liver"), "{summary}");
}
