//! `voxdiff evaluate` on 2D masks as a user runs it: folders of PNG masks
//! scored per image (CSV + JSON), overlays, and the errors for mixed 2D/3D
//! input, a missing prediction and a size mismatch.

mod common;
use common::{data_set, tmp};

use std::path::Path;
use std::process::{Command, Output};
use voxdiff::data::image2d::{read_mask, write_mask_png, Mask};
use voxdiff::metrics::mask2d::score_masks;

fn evaluate(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .arg("evaluate")
        .args(args)
        .output()
        .unwrap()
}

fn os<P: AsRef<std::ffi::OsStr> + ?Sized>(p: &P) -> &std::ffi::OsStr {
    p.as_ref()
}

/// A copy of `m` moved `dx` pixels right (background enters on the left).
fn shifted(m: &Mask, dx: usize) -> Mask {
    let mut px = vec![0u8; m.px.len()];
    for y in 0..m.height {
        for x in dx..m.width {
            px[y * m.width + x] = m.px[y * m.width + x - dx];
        }
    }
    Mask {
        width: m.width,
        height: m.height,
        px,
    }
}

#[test]
fn evaluate_folders_of_2d_masks() {
    let Some(skin) = data_set("skin_2d") else {
        return;
    };
    let root = tmp("folders");
    let (pred, out) = (root.join("pred"), root.join("eval"));
    let gt_dir = skin.join("masks");
    let mut ids = Vec::new();
    for e in std::fs::read_dir(&gt_dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "png") {
            ids.push(p.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    ids.sort();
    assert_eq!(ids.len(), 5);
    for (k, id) in ids.iter().enumerate() {
        let m = read_mask(&gt_dir.join(format!("{id}.png"))).unwrap();
        write_mask_png(&shifted(&m, 3 * k), &pred.join(format!("{id}.png"))).unwrap();
    }
    let res = evaluate(&[
        os("--pred"),
        pred.as_os_str(),
        os("--gt"),
        gt_dir.as_os_str(),
        os("--out"),
        out.as_os_str(),
        os("--image"),
        skin.join("images").as_os_str(),
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("5 image(s)") && stdout.contains("boundary_f_mean"),
        "{stdout}"
    );

    let csv = std::fs::read_to_string(out.join("per_image.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        header,
        [
            "case",
            "width",
            "height",
            "gt_pixels",
            "pred_pixels",
            "iou",
            "f1",
            "wcov",
            "boundary_f_1px",
            "boundary_f_2px",
            "boundary_f_3px",
            "boundary_f_4px",
            "boundary_f_5px",
            "boundary_f_mean"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 5);
    let mut ious = Vec::new();
    for (k, (row, id)) in rows.iter().zip(&ids).enumerate() {
        assert_eq!(row[0], id);
        // The CLI's numbers are the library's on the same files.
        let g = read_mask(&gt_dir.join(format!("{id}.png"))).unwrap();
        let p = shifted(&g, 3 * k);
        let s = score_masks(
            &g.to_bools(),
            &p.to_bools(),
            g.width,
            g.height,
            &[1.0, 2.0, 3.0, 4.0, 5.0],
        );
        let num = |i: usize| row[i].parse::<f64>().unwrap();
        assert_eq!((row[1], row[2]), ("600", "450"));
        assert_eq!(row[3], s.gt_pixels.to_string());
        assert_eq!(num(5), s.iou);
        assert_eq!(num(6), s.f1);
        assert_eq!(num(7), s.wcov);
        for t in 0..5 {
            assert_eq!(num(8 + t), s.boundary[t].f);
        }
        assert!((num(13) - s.boundary_f_mean()).abs() < 1e-15);
        ious.push(num(5));
    }
    // The unshifted case is perfect and scores fall with the shift.
    assert_eq!(ious[0], 1.0);
    assert!(ious.windows(2).all(|w| w[1] < w[0]), "{ious:?}");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["kind"], "2d");
    assert_eq!(summary["cases"].as_array().unwrap().len(), 5);
    let mean = summary["overall"]["iou"]["mean"].as_f64().unwrap();
    assert!((mean - ious.iter().sum::<f64>() / 5.0).abs() < 1e-12);
    assert_eq!(summary["overall"]["iou"]["n"], 5);
    // Overlays: one per case, the photo's size.
    for id in &ids {
        let o =
            voxdiff::data::image2d::read_photo(&out.join(format!("overlays/{id}.png"))).unwrap();
        assert_eq!((o.width, o.height), (600, 450));
    }

    // Single files work too; a 3D option with 2D masks is refused.
    let one = root.join("one");
    let f = format!("{}.png", ids[1]);
    let res = evaluate(&[
        os("--pred"),
        pred.join(&f).as_os_str(),
        os("--gt"),
        gt_dir.join(&f).as_os_str(),
        os("--out"),
        one.as_os_str(),
        os("--boundary-px"),
        os("2"),
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let csv = std::fs::read_to_string(one.join("per_image.csv")).unwrap();
    assert!(
        csv.starts_with(
            "case,width,height,gt_pixels,pred_pixels,iou,f1,wcov,boundary_f_2px,boundary_f_mean\n"
        ),
        "{csv}"
    );
    let res = evaluate(&[
        os("--pred"),
        pred.as_os_str(),
        os("--gt"),
        gt_dir.as_os_str(),
        os("--tolerance"),
        os("2"),
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("--tolerance (NSD, mm"),
        "{err}"
    );
}

fn write_disk(path: &Path, w: usize, h: usize, r: f64) {
    let px = (0..w * h)
        .map(|i| {
            let (x, y) = (
                (i % w) as f64 - w as f64 / 2.0,
                (i / w) as f64 - h as f64 / 2.0,
            );
            u8::from(x * x + y * y <= r * r)
        })
        .collect();
    write_mask_png(
        &Mask {
            width: w,
            height: h,
            px,
        },
        path,
    )
    .unwrap();
}

#[test]
fn evaluate_2d_errors() {
    let root = tmp("errors");
    let (pred, gt) = (root.join("pred"), root.join("gt"));
    for id in ["a", "b"] {
        write_disk(&gt.join(format!("{id}.png")), 20, 16, 5.0);
    }
    write_disk(&pred.join("a.png"), 20, 16, 6.0);
    let run = |p: &Path, g: &Path| {
        let res = evaluate(&[
            os("--pred"),
            p.as_os_str(),
            os("--gt"),
            g.as_os_str(),
            os("--out"),
            root.join("o").as_os_str(),
        ]);
        assert!(!res.status.success());
        String::from_utf8_lossy(&res.stderr).into_owned()
    };
    // A reference without its prediction.
    let e = run(&pred, &gt);
    assert!(
        e.contains("no prediction for 1 reference mask(s): [\"b\"]"),
        "{e}"
    );
    // A size mismatch names both files.
    write_disk(&pred.join("b.png"), 21, 16, 5.0);
    let e = run(&pred, &gt);
    assert!(
        e.contains("case b")
            && e.contains("b.png: the prediction is 21×16 but the reference")
            && e.contains("is 20×16"),
        "{e}"
    );
    // A 3D label map against 2D masks, both ways, and a mixed folder.
    let nii = root.join("vol.nii.gz");
    let v = voxdiff::data::Volume::new(vec![0.0; 24], [2, 3, 4], [1.0; 3]).unwrap();
    voxdiff::data::write_nifti(&v, &nii).unwrap();
    let e = run(&nii, &gt.join("a.png"));
    assert!(
        e.contains("holds 3D label maps (.nii/.nii.gz) but --gt") && e.contains("holds 2D masks"),
        "{e}"
    );
    let e = run(&gt.join("a.png"), &nii);
    assert!(
        e.contains("--pred")
            && e.contains("holds 2D masks (.png/.jpg) but --gt")
            && e.contains("3D label maps"),
        "{e}"
    );
    std::fs::copy(&nii, gt.join("c.nii.gz")).unwrap();
    let e = run(&pred, &gt);
    assert!(
        e.contains("the folder mixes 2 2D image(s) and 1 NIfTI volume(s)"),
        "{e}"
    );
    // A NIfTI volume named .png is recognised by its content.
    std::fs::remove_file(gt.join("c.nii.gz")).unwrap();
    std::fs::write(
        pred.join("b.png"),
        voxdiff::data::nifti_io::encode(
            &v,
            voxdiff::data::WriteOptions::plain(voxdiff::data::DataType::U8),
        )
        .unwrap(),
    )
    .unwrap();
    let e = run(&pred, &gt);
    assert!(
        e.contains("b.png: a NIfTI volume, not a 2D PNG or JPEG image"),
        "{e}"
    );
    // 2D-only options with 3D maps are refused.
    let res = evaluate(&[
        os("--pred"),
        nii.as_os_str(),
        os("--gt"),
        nii.as_os_str(),
        os("--boundary-px"),
        os("3"),
        os("--out"),
        root.join("o3").as_os_str(),
    ]);
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && e.contains("--boundary-px applies to 2D masks"),
        "{e}"
    );
}
