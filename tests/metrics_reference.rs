//! Metrics on the real CT label maps against values computed by DeepMind's
//! surface-distance library and scipy (../shared/data/ct_abdomen/metrics_reference.json).

mod common;
use common::data_dir;

use voxdiff::data::{read_nifti, ClassMap};
use voxdiff::metrics::{label_metrics, MetricOptions};

/// |got − want| ≤ 1e-3·|want| or ≤ 1e-3 (mm for distances).
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-3 * want.abs() || (got - want).abs() <= 1e-3
}

#[test]
fn library_metrics_match_reference_for_every_organ() {
    let Some(dir) = data_dir() else { return };
    let ct = dir.join("ct_abdomen");
    let gt = read_nifti(ct.join("example_seg.nii.gz")).unwrap();
    let pred = read_nifti(ct.join("example_seg_fast.nii.gz")).unwrap();
    let map = ClassMap::read(ct.join("btcv13_to_totalseg_ids.json")).unwrap();
    let gt = map.remap(&gt).unwrap();
    let pred = map.remap(&pred).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct.join("metrics_reference.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = (1..=map.num_classes() as u32).collect();
    let opt = MetricOptions {
        tolerances_mm: vec![1.0, 3.0],
        ..Default::default()
    };
    let got = label_metrics(&gt.data, &pred.data, gt.dims, gt.spacing, &ids, &opt);
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut worst = (0.0f64, String::new());
    for (t, name) in map.names.iter().enumerate() {
        let r = &reference["per_class"][name];
        let m = &got[t];
        assert_eq!(
            m.gt_voxels,
            r["gt_voxels"].as_u64().unwrap(),
            "{name} gt_voxels"
        );
        assert_eq!(
            m.pred_voxels,
            r["pred_voxels"].as_u64().unwrap(),
            "{name} pred_voxels"
        );
        if m.gt_voxels == 0 && m.pred_voxels == 0 {
            assert!(
                m.dice.is_nan() && m.hd95.is_nan() && m.nsd[0].is_nan(),
                "{name}: absent class must be NaN"
            );
            continue;
        }
        for (key, v) in [
            ("dice", m.dice),
            ("nsd_1mm", m.nsd[0]),
            ("nsd_3mm", m.nsd[1]),
            ("hd95", m.hd95),
            ("hd100", m.hd100),
            ("assd", m.assd),
            ("centroid_mm", m.centroid_mm),
        ] {
            let want = r[key].as_f64().unwrap();
            checked += 1;
            let rel = (v - want).abs() / want.abs().max(1e-12);
            if rel > worst.0 {
                worst = (rel, format!("{name}.{key}"));
            }
            if !close(v, want) {
                failures.push(format!("{name}.{key}: got {v}, want {want}"));
            }
        }
    }
    eprintln!("largest relative difference: {:.2e} ({})", worst.0, worst.1);
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    assert_eq!(checked, 12 * 7, "every present organ and metric checked");
}
