//! `voxdiff segment` refuses, before computing anything, what it cannot do
//! right: an output that would overwrite the scan or cannot be written, a
//! scan with NaN or infinite voxels (unless told what to put there), and a
//! scan thinner than the network's coarsest voxel (a 2D slice, a 1D profile).

mod common;
use common::tmp;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::data::phantom::{generate, PhantomConfig};
use voxdiff::data::{read_nifti, write_nifti, Volume};
use voxdiff::pipeline::seg_config::SegConfig;
use voxdiff::pipeline::seg_train::train_run;

/// A run of one training step on tiny phantoms (two levels: the network
/// needs at least 4 voxels along each axis at 16×14×14 mm).
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = tmp("run");
        let cfg = SegConfig::load(
            None,
            &[
                "data.phantom_cases=1".into(),
                "data.phantom.dims=[12,20,20]".into(),
                "data.phantom.spacing=[16.0,14.0,14.0]".into(),
                "data.spacing=[16.0,14.0,14.0]".into(),
                "model.channels=[4,8]".into(),
                "train.steps=1".into(),
            ],
        )
        .unwrap();
        train_run(&CpuBackend::new(), &cfg, &run, false, false).unwrap();
        run
    })
}

/// A phantom scan of `dims` voxels written to `path`.
fn scan(path: &Path, dims: [usize; 3]) -> Volume {
    let (img, _) = generate(
        &PhantomConfig {
            dims,
            spacing: [16.0, 14.0, 14.0],
            noise_hu: 12.0,
        },
        5,
    );
    write_nifti(&img, path).unwrap();
    img
}

fn segment(input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["segment", "--device", "cpu", "--steps", "1", "--run"])
        .arg(trained_run())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "segment should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_output_may_not_be_the_input_nor_unwritable() {
    let dir = tmp("outputs");
    let input = dir.join("scan.nii.gz");
    scan(&input, [12, 20, 20]);
    let before = std::fs::read(&input).unwrap();
    // The same file, and the same file spelled differently.
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for output in [input.clone(), dir.join("sub/../scan.nii.gz")] {
        let err = failure(&segment(&input, &output, &[]));
        assert!(
            err.contains("it is the input scan") && err.contains("scan.nii.gz"),
            "{err}"
        );
        assert_eq!(std::fs::read(&input).unwrap(), before, "the scan changed");
    }
    // A folder where the mask should go; a file where its folder should be.
    let err = failure(&segment(&input, &dir.join("sub"), &[]));
    assert!(err.contains("must end in .nii"), "{err}");
    std::fs::create_dir_all(dir.join("taken.nii.gz")).unwrap();
    let err = failure(&segment(&input, &dir.join("taken.nii.gz"), &[]));
    assert!(
        err.contains("taken.nii.gz") && err.contains("is a folder"),
        "{err}"
    );
    let err = failure(&segment(&input, &dir.join("scan.nii.gz/mask.nii.gz"), &[]));
    assert!(err.contains("is not a folder"), "{err}");
    let err = failure(&segment(
        &input,
        &dir.join("mask.nii.gz"),
        &["--save-steps", input.to_str().unwrap()],
    ));
    assert!(err.contains("--save-steps"), "{err}");
    assert!(!dir.join("mask.nii.gz").exists());
    // A new folder for the mask is fine, and the mask lies on the scan's grid.
    let ok = segment(&input, &dir.join("new/mask.nii.gz"), &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mask = read_nifti(dir.join("new/mask.nii.gz")).unwrap();
    mask.check_same_grid(&read_nifti(&input).unwrap(), 0.0)
        .unwrap();
}

#[test]
fn non_finite_voxels_are_refused_with_the_file_and_count_or_replaced() {
    let dir = tmp("nonfinite");
    let good = dir.join("good.nii.gz");
    let mut v = scan(&good, [12, 20, 20]);
    v.data[0] = f32::NAN;
    v.data[17] = f32::INFINITY;
    v.data[300] = f32::NAN;
    let bad = dir.join("bad.nii.gz");
    write_nifti(&v, &bad).unwrap();
    let mask = dir.join("mask.nii.gz");
    let err = failure(&segment(&bad, &mask, &[]));
    assert!(
        err.contains("bad.nii.gz")
            && err.contains("3 of 4800 voxels are not finite (2 NaN, 1 infinite")
            && err.contains("--replace-nonfinite"),
        "{err}"
    );
    assert!(!mask.exists());
    // With the flag, they are set (here to air) and the scan is segmented.
    let out = segment(&bad, &mask, &["--replace-nonfinite", "-1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 voxels that were not finite set to -1000")
    );
    assert!(read_nifti(&mask)
        .unwrap()
        .data
        .iter()
        .all(|x| x.is_finite()));
}

#[test]
fn scans_thinner_than_the_network_can_see_are_refused() {
    let dir = tmp("thin");
    let mask = dir.join("mask.nii.gz");
    // A 2D slice, a 1D profile and a 3-slice slab (the network needs 4).
    for (name, dims, extra) in [
        ("slice.nii.gz", [1, 20, 20], "a 2D slice"),
        ("profile.nii.gz", [1, 1, 20], "a 2D slice or 1D profile"),
        (
            "slab.nii.gz",
            [3, 20, 20],
            "at least 4 voxels along every axis",
        ),
    ] {
        let input = dir.join(name);
        scan(&input, dims);
        let err = failure(&segment(&input, &mask, &[]));
        assert!(
            err.contains(name) && err.contains("at least 4 voxels") && err.contains(extra),
            "{name}: {err}"
        );
        assert!(!mask.exists());
    }
    // Four slices are enough.
    let input = dir.join("four.nii.gz");
    scan(&input, [4, 20, 20]);
    let out = segment(&input, &mask, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_window_larger_than_the_machine_is_refused_by_the_memory_plan() {
    // 1000³ voxels per window: planned before anything is allocated, refused
    // with the number and a smaller window that fits, instead of running
    // until the kernel's OOM killer ends the process.
    let dir = tmp("huge_window");
    let input = dir.join("scan.nii.gz");
    scan(&input, [12, 20, 20]);
    let output = dir.join("mask.nii.gz");
    let t0 = std::time::Instant::now();
    let err = failure(&segment(
        &input,
        &output,
        &["--patch", "1000", "1000", "1000"],
    ));
    eprintln!("refused in {:.1} s: {err}", t0.elapsed().as_secs_f64());
    assert!(err.contains("windows of 1000×1000×1000"), "{err}");
    assert!(err.contains("needs about"), "{err}");
    assert!(err.contains("GB"), "{err}");
    assert!(err.contains("MemAvailable"), "{err}");
    assert!(err.contains("--patch"), "{err}");
    assert!(!output.exists());
    // The same scan with a window that fits is segmented.
    let ok = segment(&input, &output, &["--patch", "8", "8", "8"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
