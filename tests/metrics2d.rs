//! 2D mask scores: hand-computed cases for IoU/F1 (scikit-learn's
//! definitions and zero division), WCov and the DAVIS boundary F; and the
//! values scripts/metrics2d_reference.py computed with scikit-learn,
//! scikit-image and scipy on real masks and perturbed copies of them
//! (tests/data/metrics2d_reference.json).

mod common;
use common::data_dir;

use voxdiff::data::image2d::read_mask;
use voxdiff::metrics::boundary::{boundary_f, boundary_map, tolerance_px};
use voxdiff::metrics::mask2d::{regions, score_masks, weighted_covering, Confusion};

/// A mask from rows of '#' (foreground) and '.'.
fn grid(rows: &[&str]) -> (Vec<bool>, usize, usize) {
    let w = rows[0].len();
    let px = rows
        .iter()
        .flat_map(|r| r.chars().map(|c| c == '#'))
        .collect();
    (px, w, rows.len())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12
}

#[test]
fn iou_and_f1_as_sklearn() {
    let gt = [true, true, false, false];
    let pred = [true, false, true, false];
    let c = Confusion::of(&gt, &pred);
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (1, 1, 1, 1));
    assert!(close(c.jaccard(), 1.0 / 3.0));
    assert!(close(c.f1(), 0.5));
    // Both empty: 0/0, scikit-learn's default zero_division gives 0.0.
    let none = [false; 6];
    let c = Confusion::of(&none, &none);
    assert_eq!((c.jaccard(), c.f1()), (0.0, 0.0));
    // One empty: 0 without any division by zero.
    let c = Confusion::of(&[true, false], &[false, false]);
    assert_eq!((c.jaccard(), c.f1()), (0.0, 0.0));
    // F1 = Dice = 2 IoU / (1 + IoU).
    let gt: Vec<bool> = (0..100).map(|i| i % 3 == 0).collect();
    let pred: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
    let c = Confusion::of(&gt, &pred);
    let j = c.jaccard();
    assert!(close(c.f1(), 2.0 * j / (1.0 + j)));
}

#[test]
fn weighted_covering_by_hand() {
    // Reference: left half; prediction: three quarters.
    let (g, w, h) = grid(&["##..", "##..", "##..", "##.."]);
    let (p, _, _) = grid(&["###.", "###.", "###.", "###."]);
    // fg: 8·max(8/12, 0) ; bg: 8·max(4/16, 4/8) → (16/3 + 4) / 16 = 7/12.
    assert!(close(weighted_covering(&g, &p, w, h), 7.0 / 12.0));
    // Two reference regions, the prediction finds one: regions are
    // connected components, not classes.
    let (g, w, h) = grid(&["#....", ".....", ".....", ".....", "....#"]);
    let (p, _, _) = grid(&["#....", ".....", ".....", ".....", "....."]);
    // {(0,0)}: 1·1; {(4,4)}: 1·(1/24); background 23·(23/24); over 25.
    assert!(close(
        weighted_covering(&g, &p, w, h),
        (1.0 + 1.0 / 24.0 + 23.0 * 23.0 / 24.0) / 25.0
    ));
    // Diagonal neighbours are one region (8-connectivity).
    let (d, w, h) = grid(&["#..", ".#.", "..#"]);
    let (labels, n) = regions(&d, w, h);
    // The background is 8-connected too: its two corners touch diagonally.
    assert_eq!(n, 2, "{labels:?}");
    assert_eq!(labels[0], labels[4]);
    assert_eq!(labels[4], labels[8]);
    assert_eq!(labels[1], labels[3]);
    // Identical masks and two empty masks cover perfectly; the score is not symmetric.
    assert_eq!(weighted_covering(&g, &g, 5, 5), 1.0);
    assert_eq!(weighted_covering(&[false; 9], &[false; 9], 3, 3), 1.0);
    let (a, w, h) = grid(&["##..", "##..", "....", "...."]);
    let (b, _, _) = grid(&["###.", "###.", "###.", "...."]);
    assert_ne!(
        weighted_covering(&a, &b, w, h),
        weighted_covering(&b, &a, w, h)
    );
}

#[test]
fn boundary_map_as_seg2bmap() {
    let (m, w, h) = grid(&["....", ".##.", ".##.", "...."]);
    let b = boundary_map(&m, w, h);
    let (want, _, _) = grid(&["###.", "#.#.", "###.", "...."]);
    assert_eq!(b, want, "the boundary sits half a pixel toward the origin");
    // A full mask has no boundary (the image edge is not one).
    assert!(boundary_map(&[true; 12], 4, 3).iter().all(|&v| !v));
    // Last row and column: only the east / south neighbour counts.
    let (m, w, h) = grid(&["..", ".#"]);
    let (want, _, _) = grid(&["##", "#."]);
    assert_eq!(boundary_map(&m, w, h), want);
}

#[test]
fn boundary_f_by_hand() {
    // A 2×2 square and the same square moved 3 pixels right.
    let (g, w, h) = grid(&["........", ".##.....", ".##.....", "........"]);
    let (p, _, _) = grid(&["........", "....##..", "....##..", "........"]);
    // r = 1 (plus-shaped disk): 3 of 8 boundary pixels match either way.
    let b = boundary_f(&g, &p, w, h, 1.0);
    assert!(
        close(b.precision, 3.0 / 8.0) && close(b.recall, 3.0 / 8.0),
        "{b:?}"
    );
    assert!(close(b.f, 3.0 / 8.0));
    // r = 2: two more columns reach.
    let b = boundary_f(&g, &p, w, h, 2.0);
    assert!(
        close(b.precision, 5.0 / 8.0) && close(b.recall, 5.0 / 8.0),
        "{b:?}"
    );
    // r = 3: everything within the disk.
    assert!(close(boundary_f(&g, &p, w, h, 3.0).f, 1.0));
    // Precision and recall differ when the sizes do: prediction = square + a far pixel.
    let (p2, _, _) = grid(&["........", ".##.....", ".##.....", ".......#"]);
    let b = boundary_f(&g, &p2, w, h, 1.0);
    // Prediction boundary: the square's 8, and 3 for the corner pixel
    // ((y, x) = (2, 6) by its south-east neighbour, (2, 7) by its south one,
    // (3, 6) by its east one; the corner itself never counts): 8 of 11 match.
    assert!(
        close(b.recall, 1.0) && close(b.precision, 8.0 / 11.0),
        "{b:?}"
    );
    assert!(close(b.f, 2.0 * (8.0 / 11.0) / (1.0 + 8.0 / 11.0)));
    // Empty-boundary conventions.
    let none = vec![false; w * h];
    let b = boundary_f(&g, &none, w, h, 2.0);
    assert_eq!((b.precision, b.recall, b.f), (1.0, 0.0, 0.0));
    let b = boundary_f(&none, &g, w, h, 2.0);
    assert_eq!((b.precision, b.recall, b.f), (0.0, 1.0, 0.0));
    let b = boundary_f(&none, &none, w, h, 2.0);
    assert_eq!((b.precision, b.recall, b.f), (1.0, 1.0, 1.0));
    // Tolerances: whole pixels from 1, a fraction of the diagonal below 1.
    assert_eq!(tolerance_px(3.0, 100, 100), Some(3));
    assert_eq!(tolerance_px(0.008, 100, 100), Some(2)); // ⌈0.008 · 141.4⌉
    assert_eq!(tolerance_px(0.008, 600, 450), Some(6)); // ⌈0.008 · 750⌉
    assert_eq!(tolerance_px(1.5, 100, 100), None);
    assert_eq!(tolerance_px(0.0, 100, 100), None);
    assert_eq!(tolerance_px(f64::NAN, 100, 100), None);
}

/// The perturbations of scripts/metrics2d_reference.py.
fn perturb(m: &[bool], w: usize, h: usize, name: &str) -> Vec<bool> {
    let at = |y: i64, x: i64| {
        y >= 0 && x >= 0 && y < h as i64 && x < w as i64 && m[y as usize * w + x as usize]
    };
    let map = |f: &dyn Fn(i64, i64) -> bool| -> Vec<bool> {
        (0..w * h)
            .map(|i| f((i / w) as i64, (i % w) as i64))
            .collect()
    };
    let square = |r: i64, any: bool| {
        map(&|y, x| {
            let mut it = (-r..=r).flat_map(|dy| (-r..=r).map(move |dx| (dy, dx)));
            if any {
                it.any(|(dy, dx)| at(y + dy, x + dx))
            } else {
                it.all(|(dy, dx)| at(y + dy, x + dx))
            }
        })
    };
    match name {
        "identical" => m.to_vec(),
        "empty" => vec![false; w * h],
        "full" => vec![true; w * h],
        "shift" => map(&|y, x| at(y - 7, x + 4) && x < w as i64 - 4),
        "dilate3" => square(3, true),
        "erode5" => square(5, false),
        "cut_right_half" => map(&|y, x| at(y, x) && x < (w / 2) as i64),
        "speckle" => map(&|y, x| at(y, x) ^ ((x * 7 + y * 13) % 97 == 0)),
        "holes" => map(&|y, x| at(y, x) && !(((x / 8 + y / 8) % 5 == 0) && x % 8 < 3 && y % 8 < 3)),
        _ => panic!("unknown perturbation {name}"),
    }
}

#[test]
fn real_masks_match_the_python_reference() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/metrics2d_reference.json")).unwrap();
    assert_eq!(reference["both_empty"]["iou"], 0.0);
    assert_eq!(reference["both_empty"]["f1"], 0.0);
    let Some(data) = data_dir() else {
        return;
    };
    let tol: Vec<f64> = reference["tolerances_px"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 45);
    let mut worst = 0f64;
    for case in cases {
        let rel = case["mask"].as_str().unwrap();
        let name = case["perturbation"].as_str().unwrap();
        let m = read_mask(&data.join(rel)).unwrap();
        let gt = m.to_bools();
        let pred = perturb(&gt, m.width, m.height, name);
        let s = score_masks(&gt, &pred, m.width, m.height, &tol);
        let what = format!("{rel} / {name}");
        assert_eq!(
            s.gt_pixels,
            case["gt_pixels"].as_u64().unwrap(),
            "{what}: gt pixels"
        );
        assert_eq!(
            s.pred_pixels,
            case["pred_pixels"].as_u64().unwrap(),
            "{what}: pred pixels (perturbation differs)"
        );
        let mut check = |metric: &str, got: f64, want: f64| {
            let err = (got - want).abs();
            worst = worst.max(err);
            assert!(err <= 1e-12, "{what}: {metric} = {got}, reference {want}");
        };
        check("iou", s.iou, case["iou"].as_f64().unwrap());
        check("f1", s.f1, case["f1"].as_f64().unwrap());
        check("wcov", s.wcov, case["wcov"].as_f64().unwrap());
        for (k, b) in s.boundary.iter().enumerate() {
            check(
                &format!("boundary_f@{}", tol[k]),
                b.f,
                case["boundary_f"][k].as_f64().unwrap(),
            );
            check(
                &format!("precision@{}", tol[k]),
                b.precision,
                case["boundary_precision"][k].as_f64().unwrap(),
            );
            check(
                &format!("recall@{}", tol[k]),
                b.recall,
                case["boundary_recall"][k].as_f64().unwrap(),
            );
        }
    }
    eprintln!("largest difference from the reference: {worst:e}");
}
