//! `scripts/gpu-check.sh`, the first run on a GPU machine, runs here in full
//! without one at a small size (the same stages: info, the tests on the
//! emulator, sanitizer skipped, benchmarks and training on the CPU), and on
//! the absent GPU it stops at once with the driver's reason. The bundle it runs in is made the
//! way `scripts/gpu-bundle.sh` makes it: voxdiff, tests/, the script.

mod common;
use common::tmp;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest executable `name-<hash>` beside this test's own executable
/// (cargo puts every test executable of the build in one folder).
fn sibling_test(name: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap();
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            f.starts_with(&prefix) && p.extension().is_none() && p.is_file()
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no test executable {name}-* in {}", dir.display()))
}

/// A bundle folder as gpu-bundle.sh lays it out, with one test executable.
fn bundle(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_voxdiff"), dir.join("voxdiff")).unwrap();
    std::fs::copy(root.join("scripts/gpu-check.sh"), dir.join("gpu-check.sh")).unwrap();
    std::fs::copy(
        sibling_test("gpu_elementwise"),
        dir.join("tests/gpu_elementwise"),
    )
    .unwrap();
}

fn check(dir: &Path, out: &Path, device: &str) -> (std::process::Output, serde_json::Value) {
    let o = Command::new("bash")
        .arg(dir.join("gpu-check.sh"))
        .arg(out)
        .env("VOXDIFF_GPU_CHECK_DEVICE", device)
        .env("VOXDIFF_GPU_CHECK_TESTS", "gpu_elementwise")
        .env("VOXDIFF_GPU_CHECK_DIMS", "16 16 16")
        .env("VOXDIFF_GPU_CHECK_STEPS", "1")
        .env("VOXDIFF_GPU_CHECK_REPS", "1")
        .env_remove("VOXDIFF_TEST_DEVICE")
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap_or_else(|e| {
        panic!(
            "no summary.json ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let json = serde_json::from_str(&summary)
        .unwrap_or_else(|e| panic!("summary.json is not JSON ({e}):\n{summary}"));
    (o, json)
}

fn statuses(json: &serde_json::Value) -> Vec<(String, String)> {
    json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_gpu_check_runs_every_stage_without_a_gpu() {
    let d = tmp("cpu");
    bundle(&d.join("bundle"));
    let out = d.join("out");
    let (o, json) = check(&d.join("bundle"), &out, "cpu");
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "gpu-check failed:\n{log}");
    let want: Vec<(String, String)> = [
        ("info", "ok"),
        ("tests", "ok"),
        ("sanitizer", "skip"),
        ("bench", "ok"),
        ("train", "ok"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(statuses(&json), want, "{log}");
    // The stages left their evidence: the test log, both benchmarks, the run.
    let test_log = std::fs::read_to_string(out.join("test-gpu_elementwise.log")).unwrap();
    assert!(test_log.contains("test result: ok"), "{test_log}");
    let step: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-step.json")).unwrap())
            .unwrap();
    assert!(step[0]["median_ms"].as_f64().unwrap() > 0.0);
    assert!(out.join("bench-ops.json").is_file());
    let train_log = std::fs::read_to_string(out.join("train/log.jsonl")).unwrap();
    assert_eq!(
        train_log.lines().count(),
        1,
        "one step logged:\n{train_log}"
    );
}

#[test]
fn without_a_gpu_the_check_stops_with_the_reason() {
    if voxdiff::backend::gpu::cuda::Cuda::new(0).is_ok() {
        eprintln!("skipping: this machine has a CUDA GPU; the no-GPU path is not reachable");
        return;
    }
    let d = tmp("nogpu");
    bundle(&d.join("bundle"));
    let out = d.join("out");
    let (o, json) = check(&d.join("bundle"), &out, "cuda");
    assert_eq!(
        o.status.code(),
        Some(2),
        "exit code 2 when the device is unusable"
    );
    assert_eq!(statuses(&json), [("info".to_string(), "FAIL".to_string())]);
    let detail = json["stages"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("CUDA driver:"), "{detail}");
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(summary.contains("not usable here"), "{summary}");
}

#[test]
fn a_failing_test_is_rerun_alone_and_the_check_fails() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp("flaky");
    let dir = d.join("bundle");
    bundle(&dir);
    // A test executable whose `beta` fails among the others and passes alone.
    let flaky = dir.join("tests/flaky");
    std::fs::write(
        &flaky,
        "#!/bin/bash\n\
         if [ \"$1\" = --exact ]; then echo \"test $2 ... ok\"; exit 0; fi\n\
         echo 'test alpha ... ok'; echo 'test beta ... FAILED'; exit 101\n",
    )
    .unwrap();
    std::fs::set_permissions(&flaky, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = d.join("out");
    let o = Command::new("bash")
        .arg(dir.join("gpu-check.sh"))
        .arg(&out)
        .env("VOXDIFF_GPU_CHECK_DEVICE", "cpu")
        .env("VOXDIFF_GPU_CHECK_TESTS", "gpu_elementwise flaky")
        .env("VOXDIFF_GPU_CHECK_DIMS", "16 16 16")
        .env("VOXDIFF_GPU_CHECK_STEPS", "1")
        .env("VOXDIFF_GPU_CHECK_REPS", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "a failed stage fails the check");
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(
        summary.contains("flaky::beta failed in the batch and PASSED alone"),
        "{summary}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let tests = &json["stages"][1];
    assert_eq!(tests["status"], "FAIL");
    assert!(
        tests["detail"]
            .as_str()
            .unwrap()
            .contains("1 executables passed, 1 failed: flaky::beta"),
        "{tests}"
    );
    assert!(out.join("rerun-flaky-beta.log").is_file());
}
