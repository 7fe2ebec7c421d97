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
fn demo_writes_mask_scan_overlay_progress_figure_and_metrics() {
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
        "progress.png",
        "run/progress.png",
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
fn a_diverging_run_says_whether_and_at_which_step_a_checkpoint_exists() {
    // Diverges at once: no checkpoint can exist, and the error must say so.
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
    assert!(
        err.contains("no checkpoint was written") && !err.contains("intact"),
        "{err}"
    );
    assert!(!run.join("checkpoint.safetensors").exists());

    // A small rate first, then a huge one: checkpoints exist when it
    // diverges, and the error names the step of the one on disk.
    let run = tmp("diverge_late");
    let out = bin()
        .args([
            "train", "seg", "--quiet", "--device", "cpu", "--steps", "40", "--run",
        ])
        .arg(&run)
        .args(sets(&[
            "train.lr.init=1e-4",
            "train.lr.peak=1e30",
            "train.lr.warmup_steps=3",
            "train.adamw.max_grad_norm=1e30",
            "train.checkpoint_every=1",
        ]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let at = err
        .find("the checkpoint of step ")
        .unwrap_or_else(|| panic!("no checkpoint step named: {err}"));
    let step: u64 = err[at + "the checkpoint of step ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        header.metadata().as_ref().unwrap()["step"],
        step.to_string(),
        "{err}"
    );
}

/// A project folder as a user lays one out: `data/` with a phantom scan, its
/// label map and a class map, and `configs/tiny.toml` pointing at them with
/// paths relative to the config file.
fn project(root: &Path) {
    use voxdiff::data::phantom::{generate, PhantomConfig};
    let cfg = PhantomConfig {
        dims: [12, 20, 20],
        spacing: [16.0, 14.0, 14.0],
        noise_hu: 12.0,
    };
    let (img, lab) = generate(&cfg, 3);
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("configs")).unwrap();
    voxdiff::data::write_nifti(&img, root.join("data/ct.nii.gz")).unwrap();
    voxdiff::data::write_nifti(&lab, root.join("data/seg.nii.gz")).unwrap();
    std::fs::write(
        root.join("data/classes.json"),
        r#"{"classes": [{"name": "liver", "ids": [6]}, {"name": "spleen", "ids": [1]}]}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("configs/tiny.toml"),
        r#"[data]
source = "files"
images = ["../data/ct.nii.gz"]
labels = ["../data/seg.nii.gz"]
class_map = "../data/classes.json"

[model]
channels = [4, 8]

[train]
log_every = 1
checkpoint_every = 1
"#,
    )
    .unwrap();
}

fn trained_steps(run: &Path) -> String {
    let bytes = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().as_ref().unwrap()["step"].clone()
}

#[test]
fn a_run_started_from_a_relative_config_resumes_from_anywhere_and_after_a_move() {
    let root = tmp("relative_run");
    let proj = root.join("project");
    project(&proj);
    let train = |cwd: &Path, args: &[&str]| {
        run_ok(
            bin()
                .current_dir(cwd)
                .args(["train", "seg", "--quiet", "--device", "cpu"])
                .args(args),
        )
    };
    // As the README says: a relative config and a relative run folder.
    train(
        &proj,
        &[
            "--config",
            "configs/tiny.toml",
            "--run",
            "runs/X",
            "--steps",
            "1",
        ],
    );
    let run = proj.join("runs/X");
    // A partial checkpoint a killed run left behind (its writer is gone).
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let partial = run.join(format!(".checkpoint.safetensors.tmp{dead}"));
    std::fs::write(&partial, vec![0u8; 4096]).unwrap();

    // Resume from the same folder, the documented command.
    train(&proj, &["--run", "runs/X", "--resume", "--steps", "2"]);
    assert_eq!(trained_steps(&run), "2");
    assert!(
        !partial.exists(),
        "the stale partial checkpoint was not removed"
    );
    // From another working directory.
    train(
        &root,
        &["--run", run.to_str().unwrap(), "--resume", "--steps", "3"],
    );
    assert_eq!(trained_steps(&run), "3");

    // The project (data and run together) moved: found relative to the run.
    let moved = root.join("moved");
    std::fs::rename(&proj, &moved).unwrap();
    let out = bin()
        .current_dir(&moved)
        .args(["train", "seg", "--quiet", "--device", "cpu"])
        .args(["--run", "runs/X", "--resume", "--steps", "4"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(trained_steps(&moved.join("runs/X")), "4");
    assert!(err.contains("relative to the run folder"), "{err}");
    assert!(
        err.contains(&*moved.join("data/ct.nii.gz").to_string_lossy()),
        "{err}"
    );

    // Data gone from both places: the error names what was tried.
    std::fs::remove_file(moved.join("data/seg.nii.gz")).unwrap();
    let out = bin()
        .current_dir(&moved)
        .args(["train", "seg", "--quiet", "--device", "cpu"])
        .args(["--run", "runs/X", "--resume", "--steps", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data.labels[0]")
            && err.contains(&*proj.join("data/seg.nii.gz").to_string_lossy())
            && err.contains(&*moved.join("data/seg.nii.gz").to_string_lossy()),
        "{err}"
    );
}

#[test]
fn the_documented_real_ct_run_resumes() {
    // The exact workflow of the README on configs/ct_abdomen.toml, from the
    // repository root with a relative run folder (tiny network, few steps).
    let Some(_) = data_dir() else { return };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tmp("ct_resume");
    let run = dir.join("X");
    // `run` relative to the repository, as a user types it (`runs/X`).
    let (r, b): (Vec<_>, Vec<_>) = (run.components().collect(), repo.components().collect());
    let common = r.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = std::path::PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    rel.extend(&r[common..]);
    let rel = rel.as_path();
    let small = [
        "--set",
        "model.channels=[4,8]",
        "--set",
        "data.spacing=[15.0,15.0,15.0]",
    ];
    run_ok(
        bin()
            .current_dir(repo)
            .args(["train", "seg", "--quiet", "--device", "cpu", "--steps", "1"])
            .args(["--config", "configs/ct_abdomen.toml", "--run"])
            .arg(rel)
            .args(small),
    );
    let out = run_ok(
        bin()
            .current_dir(repo)
            .args(["train", "seg", "--quiet", "--device", "cpu", "--steps", "2"])
            .args(["--resume", "--run"])
            .arg(rel),
    );
    assert!(out.contains("trained 1 steps"), "{out}");
    assert_eq!(trained_steps(&run), "2");
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
