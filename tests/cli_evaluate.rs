//! `voxdiff evaluate` as a user runs it, on the real CT label maps: the CSV
//! and JSON it writes must match the DeepMind surface-distance / scipy
//! reference (metrics_reference.json) for every organ and metric.

mod common;
use common::{data_dir, tmp};

use std::path::Path;
use std::process::Command;

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-3 * want.abs() || (got - want).abs() <= 1e-3
}

const METRICS: [&str; 7] = [
    "dice",
    "nsd_1mm",
    "nsd_3mm",
    "hd95",
    "hd100",
    "assd",
    "centroid_mm",
];

#[test]
fn evaluate_matches_reference_through_the_binary() {
    let Some(dir) = data_dir() else { return };
    let ct = dir.join("ct_abdomen");
    let out = tmp("single");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(ct.join("example_seg_fast.nii.gz"))
        .arg("--gt")
        .arg(ct.join("example_seg.nii.gz"))
        .arg("--classes")
        .arg(ct.join("btcv13_to_totalseg_ids.json"))
        .args(["--tolerance", "1,3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "evaluate failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("spleen") && stdout.contains("overall"),
        "console table: {stdout}"
    );

    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct.join("metrics_reference.json")).unwrap())
            .unwrap();
    let per_class = reference["per_class"].as_object().unwrap();

    // CSV: one row per class with the reference values.
    let csv = std::fs::read_to_string(out.join("per_class.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 13, "13 BTCV classes");
    let mut checked = 0;
    for (name, r) in per_class {
        let row = rows
            .iter()
            .find(|row| row[col("class")] == name)
            .unwrap_or_else(|| panic!("no row for {name}"));
        assert_eq!(
            row[col("gt_voxels")],
            r["gt_voxels"].to_string(),
            "{name} gt_voxels"
        );
        assert_eq!(
            row[col("pred_voxels")],
            r["pred_voxels"].to_string(),
            "{name} pred_voxels"
        );
        if r.get("dice").is_none() {
            for m in METRICS {
                assert_eq!(row[col(m)], "nan", "{name}.{m}: absent class");
            }
            continue;
        }
        for m in METRICS {
            let got: f64 = row[col(m)].parse().unwrap();
            let want = r[m].as_f64().unwrap();
            assert!(close(got, want), "CSV {name}.{m}: got {got}, want {want}");
            checked += 1;
        }
    }
    assert_eq!(checked, 12 * METRICS.len());

    // JSON summary: one case, so each class mean is the value itself, n = 1.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for (name, r) in per_class {
        let s = &summary["per_class"][name];
        for m in METRICS {
            match r.get(m) {
                Some(want) => {
                    let got = s[m]["mean"]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{name}.{m} mean missing"));
                    assert!(
                        close(got, want.as_f64().unwrap()),
                        "JSON {name}.{m}: got {got}, want {want}"
                    );
                    assert_eq!(s[m]["n"], 1);
                }
                None => {
                    assert!(
                        s[m]["mean"].is_null(),
                        "{name}.{m}: absent class mean must be null"
                    );
                    assert_eq!(s[m]["n"], 0);
                    assert_eq!(s[m]["skipped"], 1);
                }
            }
        }
    }
    // Overall dice = nan-mean over the 12 present organs.
    let dices: Vec<f64> = per_class
        .values()
        .filter_map(|r| r.get("dice").and_then(|d| d.as_f64()))
        .collect();
    let mean = dices.iter().sum::<f64>() / dices.len() as f64;
    let got = summary["overall"]["dice"]["mean"].as_f64().unwrap();
    assert!(close(got, mean), "overall dice {got} vs {mean}");
    assert_eq!(summary["overall"]["dice"]["n"], 12);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn evaluate_pairs_folders_by_name() {
    let Some(dir) = data_dir() else { return };
    let ct = dir.join("ct_abdomen");
    let root = tmp("folders");
    let (p, g) = (root.join("pred"), root.join("gt"));
    std::fs::create_dir_all(&p).unwrap();
    std::fs::create_dir_all(&g).unwrap();
    for case in ["case_a", "case_b"] {
        std::fs::copy(
            ct.join("example_seg_fast.nii.gz"),
            p.join(format!("{case}.nii.gz")),
        )
        .unwrap();
        std::fs::copy(
            ct.join("example_seg.nii.gz"),
            g.join(format!("{case}.nii.gz")),
        )
        .unwrap();
    }
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(&p)
        .arg("--gt")
        .arg(&g)
        .arg("--classes")
        .arg(ct.join("btcv13_to_totalseg_ids.json"))
        .arg("--out")
        .arg(root.join("out"))
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let csv = std::fs::read_to_string(root.join("out/per_class.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 13);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["cases"].as_array().unwrap().len(), 2);
    let spleen = &summary["per_class"]["spleen"]["dice"];
    assert_eq!(spleen["n"], 2);
    assert!(close(spleen["mean"].as_f64().unwrap(), 0.9773608636411277));
    assert!(
        spleen["sd"].as_f64().unwrap().abs() < 1e-12,
        "identical cases: sd 0"
    );

    // A missing prediction is an error naming the case.
    std::fs::copy(ct.join("example_seg.nii.gz"), g.join("case_c.nii.gz")).unwrap();
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(&p)
        .arg("--gt")
        .arg(&g)
        .arg("--out")
        .arg(root.join("out2"))
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("case_c"),
        "error should name the missing case: {err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn evaluate_rejects_mismatched_grids() {
    let Some(dir) = data_dir() else { return };
    let ct = dir.join("ct_abdomen");
    let out = tmp("grid");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(ct.join("example_seg_fast_force_split.nii.gz"))
        .arg("--gt")
        .arg(ct.join("example_seg.nii.gz"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("not on the same grid") && err.contains("example_seg_fast_force_split"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn evaluate_voxelcount_surfaces_and_raw_label_ids() {
    let Some(dir) = data_dir() else { return };
    let ct = dir.join("ct_abdomen");
    let out = tmp("voxelcount");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(ct.join("example_seg_fast.nii.gz"))
        .arg("--gt")
        .arg(ct.join("example_seg.nii.gz"))
        .args(["--surface", "voxelcount", "--tolerance", "2.5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let csv = std::fs::read_to_string(out.join("per_class.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert!(header.contains(&"nsd_2.5mm"), "{header:?}");
    // Without a class map every id present in either map is a class.
    let ids = |p: &Path| voxdiff::data::labels::present_ids(&voxdiff::data::read_nifti(p).unwrap());
    let mut all = ids(&ct.join("example_seg.nii.gz"));
    all.extend(ids(&ct.join("example_seg_fast.nii.gz")));
    all.sort();
    all.dedup();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), all.len());
    // Spleen (id 1): Dice does not depend on the surface convention.
    let spleen = rows.iter().find(|r| r[2] == "label_1").unwrap();
    let dice: f64 = spleen[header.iter().position(|h| *h == "dice").unwrap()]
        .parse()
        .unwrap();
    assert!(close(dice, 0.9773608636411277));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["surface_convention"], "voxelcount");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn evaluate_writes_overlays_of_the_prediction_on_the_scan() {
    let Some(dir) = data_dir() else { return };
    let ct = dir.join("ct_abdomen");
    let out = tmp("overlay");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(ct.join("example_seg_fast.nii.gz"))
        .arg("--gt")
        .arg(ct.join("example_seg.nii.gz"))
        .arg("--classes")
        .arg(ct.join("btcv13_to_totalseg_ids.json"))
        .arg("--image")
        .arg(ct.join("example_ct_sm.nii.gz"))
        .args(["--overlay-slices", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let png = out.join("overlays/example_seg.png");
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    // Two rows (slices) of reference and prediction side by side: 122 × 101
    // voxels at 3 mm are enlarged to 366 mm / 303 mm at MIN_PANEL_PX pixels
    // on the shorter side, plus titles, gaps and a legend column.
    use voxdiff::data::overlay::MIN_PANEL_PX;
    let (pw, ph) = (
        (366.0 * MIN_PANEL_PX as f64 / 303.0).round() as u32,
        MIN_PANEL_PX as u32,
    );
    assert!(info.width > 8 + 2 * (pw + 8), "width {}", info.width);
    assert_eq!(info.height, 8 + 2 * (30 + ph + 8));
    let coloured = buf
        .chunks(3)
        .filter(|p| !(p[0] == p[1] && p[1] == p[2]))
        .count();
    assert!(coloured > 1000, "{coloured} coloured pixels");
    let _ = std::fs::remove_dir_all(&out);
}

/// A reference with TotalSegmentator-like ids (spleen 1, liver 5) and the
/// same organs predicted with voxdiff's ids (liver 1, spleen 2), as
/// `voxdiff segment` writes them: a mask and its class-name sidecar.
fn differing_ids(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use voxdiff::data::{write_nifti_with, DataType, Volume, WriteOptions};
    let dims = [6, 8, 10];
    let organ = |i: usize| -> u8 {
        let (d, h, w) = (i / 80, (i / 10) % 8, i % 10);
        match ((1..5).contains(&d), h, w) {
            (true, 1..=3, 1..=4) => 1, // liver
            (true, 4..=6, 6..=8) => 2, // spleen
            _ => 0,
        }
    };
    let n = dims.iter().product::<usize>();
    let vol = |f: &dyn Fn(u8) -> f32| {
        Volume::new((0..n).map(|i| f(organ(i))).collect(), dims, [2.0, 1.5, 1.5]).unwrap()
    };
    let gt = vol(&|o| [0.0, 5.0, 1.0][o as usize]);
    let pred = vol(&|o| o as f32);
    let (g, p, m) = (
        dir.join("ref.nii.gz"),
        dir.join("mask.nii.gz"),
        dir.join("map.json"),
    );
    write_nifti_with(&gt, &g, WriteOptions::plain(DataType::U8)).unwrap();
    write_nifti_with(&pred, &p, WriteOptions::plain(DataType::U8)).unwrap();
    std::fs::write(
        dir.join("mask.json"),
        r#"{"labels": {"0": "background", "1": "liver", "2": "spleen"}}"#,
    )
    .unwrap();
    std::fs::write(
        &m,
        r#"{"classes": [{"name": "spleen", "ids": [1]}, {"name": "liver", "ids": [5]}]}"#,
    )
    .unwrap();
    (p, g, m)
}

fn dice_of(out: &Path, class: &str) -> f64 {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    s["per_class"][class]["dice"]["mean"].as_f64().unwrap()
}

#[test]
fn evaluate_reads_the_class_names_segment_writes_next_to_the_mask() {
    let dir = tmp("sidecar");
    let (pred, gt, map) = differing_ids(&dir);
    // The README's command: no --pred-classes; the sidecar is found.
    let out = dir.join("eval");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(&gt)
        .arg("--classes")
        .arg(&map)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(dice_of(&out, "liver"), 1.0);
    assert_eq!(dice_of(&out, "spleen"), 1.0);

    // Without the sidecar the ids are taken as the reference's: Dice 0, and
    // a loud warning says where the predicted organs lie.
    std::fs::remove_file(dir.join("mask.json")).unwrap();
    let out = dir.join("eval_raw");
    let res = Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(["evaluate", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(&gt)
        .arg("--classes")
        .arg(&map)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert_eq!(dice_of(&out, "spleen"), 0.0);
    assert!(
        err.contains(
            "warning: case ref: spleen: the prediction never overlaps the reference's spleen"
        ) && err.contains("100 % of its 48 voxels lie on the reference's liver")
            && err.contains("in the reference but never predicted: liver"),
        "{err}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["warnings"].as_array().unwrap().len(), 2, "{s}");
}
