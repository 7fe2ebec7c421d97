//! `voxdiff demo pretrain` runs the whole chain — BPR, diffusion pretraining,
//! the probe on frozen features, segmenting a held-out phantom — and writes
//! every output it promises, the mask on the held-out scan's grid.

mod common;
use common::tmp;

use voxdiff::backend::cpu::CpuBackend;
use voxdiff::data::read_nifti;
use voxdiff::pipeline::pretrain_demo::{run_demo, PretrainDemoArgs, ORGANS};

#[test]
fn the_pretraining_demo_runs_the_chain_and_scores_a_held_out_phantom() {
    let out = tmp("demo_pretrain");
    let args = PretrainDemoArgs {
        out: out.clone(),
        minutes: 0.25,
        scans: 2,
        device: "cpu".into(),
        quiet: true,
    };
    let named = run_demo(&CpuBackend::new(), &args).unwrap();
    let names: Vec<&str> = named.iter().map(|n| n.0.as_str()).collect();
    assert_eq!(names, ORGANS);
    for (name, m) in &named {
        // Every organ is in the held-out phantom: its Dice is a number in [0, 1].
        assert!(m.gt_voxels > 0, "{name}: not in the truth");
        assert!((0.0..=1.0).contains(&m.dice), "{name}: Dice {}", m.dice);
    }
    for run in ["bpr", "pre", "probe"] {
        for f in [
            "config.toml",
            "checkpoint.safetensors",
            "log.jsonl",
            "progress.png",
        ] {
            assert!(out.join(run).join(f).is_file(), "{run}/{f} missing");
        }
    }
    let scan = read_nifti(out.join("scan.nii.gz")).unwrap();
    let mask = read_nifti(out.join("mask.nii.gz")).unwrap();
    assert_eq!(mask.dims, scan.dims);
    assert!(mask.check_same_grid(&scan, 1e-4).is_ok());
    assert!(mask
        .data
        .iter()
        .all(|&v| v >= 0.0 && v <= ORGANS.len() as f32));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    for o in ORGANS {
        assert!(metrics[o]["dice"].is_number(), "metrics.json: {o}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_pretraining_demo_refuses_bad_arguments() {
    let args = |scans: usize, minutes: f64| PretrainDemoArgs {
        out: tmp("demo_pretrain_bad"),
        minutes,
        scans,
        device: "cpu".into(),
        quiet: true,
    };
    let err = run_demo(&CpuBackend::new(), &args(1, 1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--scans 1"), "{err}");
    let err = run_demo(&CpuBackend::new(), &args(2, -1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--minutes"), "{err}");
}
