//! `voxdiff evaluate` on 2D masks: PNG (or JPEG) files, or folders of them
//! paired by file stem. Per image: IoU and F1 as scikit-learn computes them,
//! WCov, and the DAVIS boundary F at each `--boundary-px` tolerance and their
//! mean ([`crate::metrics::mask2d`]). Writes `<out>/per_image.csv` and
//! `<out>/summary.json` (mean ± sd over images) and prints the means; with
//! `--image`, `<out>/overlays/<case>.png` (reference and prediction outlines
//! over the photo).
//!
//! Unlike a training folder run, evaluation does not skip bad files: a
//! reference without a prediction, an unreadable mask or a size mismatch is
//! an error, because leaving a case out would change the means.

use super::evaluate::EvaluateArgs;
use crate::data::image2d::folder::{is_image_file, list_images, stem};
use crate::data::image2d::picture::{PREDICTION_COLOUR, REFERENCE_COLOUR};
use crate::data::image2d::{read_mask, read_photo, write_overlay_png, Mask};
use crate::fsutil::write_atomic;
use crate::metrics::boundary::tolerance_px;
use crate::metrics::mask2d::{score_masks, ImageScores};
use crate::metrics::summary::Stat;
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// What a path given to `evaluate` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 2D masks (PNG / JPEG).
    Masks2d,
    /// 3D label maps (NIfTI).
    Volumes3d,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Masks2d => "2D masks (.png/.jpg)",
            Kind::Volumes3d => "3D label maps (.nii/.nii.gz)",
        })
    }
}

fn is_nifti_name(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

/// Whether `path` (a file, or a folder by the files it holds) is 2D or 3D.
pub fn kind_of(what: &str, path: &Path) -> Result<Kind> {
    if path.is_dir() {
        let (mut n2, mut n3) = (0usize, 0usize);
        for e in std::fs::read_dir(path)
            .with_context(|| format!("{what} {}: cannot list", path.display()))?
        {
            let p = e?.path();
            if p.is_file() {
                n2 += usize::from(is_image_file(&p));
                n3 += usize::from(is_nifti_name(&p));
            }
        }
        return match (n2 > 0, n3 > 0) {
            (true, false) => Ok(Kind::Masks2d),
            (false, true) => Ok(Kind::Volumes3d),
            (true, true) => bail!(
                "{what} {}: the folder mixes {n2} 2D image(s) and {n3} NIfTI volume(s); \
                 keep 2D masks and 3D label maps in separate folders",
                path.display()
            ),
            (false, false) => bail!(
                "{what} {}: the folder holds no .nii / .nii.gz label map and no .png / .jpg mask",
                path.display()
            ),
        };
    }
    ensure!(path.is_file(), "{what} {}: no such file", path.display());
    if is_nifti_name(path) {
        Ok(Kind::Volumes3d)
    } else if is_image_file(path) {
        Ok(Kind::Masks2d)
    } else {
        bail!(
            "{what} {}: neither a NIfTI label map (.nii, .nii.gz) nor a 2D mask (.png, .jpg, .jpeg)",
            path.display()
        )
    }
}

/// (case, prediction, reference) triples, by stem.
fn pair_cases(pred: &Path, gt: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    match (pred.is_dir(), gt.is_dir()) {
        (false, false) => Ok(vec![(stem(gt), pred.to_path_buf(), gt.to_path_buf())]),
        (true, true) => {
            let listed = |d: &Path, what: &str| {
                let (files, dup) = list_images(d).with_context(|| what.to_string())?;
                if let Some(s) = dup.first() {
                    bail!("{what}: {}", s.reason);
                }
                Ok(files)
            };
            let ps = listed(pred, "--pred")?;
            let gs = listed(gt, "--gt")?;
            let missing: Vec<&String> = gs.keys().filter(|k| !ps.contains_key(*k)).collect();
            ensure!(
                missing.is_empty(),
                "--pred {}: no prediction for {} reference mask(s): {:?}",
                pred.display(),
                missing.len(),
                missing
            );
            Ok(gs
                .into_iter()
                .map(|(k, g)| (k.clone(), ps[&k].clone(), g))
                .collect())
        }
        _ => bail!(
            "--pred {} and --gt {} must both be files or both be folders",
            pred.display(),
            gt.display()
        ),
    }
}

/// The photo of a case: `image` itself, or `<image>/<case>.{jpg,jpeg,png}`.
fn photo_for(image: &Path, case: &str) -> Result<PathBuf> {
    if !image.is_dir() {
        return Ok(image.to_path_buf());
    }
    let (files, _) = list_images(image).context("--image")?;
    files
        .get(case)
        .cloned()
        .with_context(|| format!("--image {}: no photo for case {case}", image.display()))
}

/// Score one pair of mask files.
pub fn score_files(pred: &Path, gt: &Path, boundary_px: &[f64]) -> Result<(Mask, ImageScores)> {
    let g = read_mask(gt)?;
    let p = read_mask(pred)?;
    ensure!(
        (p.width, p.height) == (g.width, g.height),
        "{}: the prediction is {}×{} but the reference {} is {}×{}",
        pred.display(),
        p.width,
        p.height,
        gt.display(),
        g.width,
        g.height
    );
    let s = score_masks(&g.to_bools(), &p.to_bools(), g.width, g.height, boundary_px);
    Ok((p, s))
}

/// The metric columns, in output order.
pub fn metric_names(boundary_px: &[f64]) -> Vec<String> {
    let mut v: Vec<String> = ["iou", "f1", "wcov"].map(String::from).to_vec();
    for t in boundary_px {
        v.push(format!("boundary_f_{t}px"));
    }
    v.push("boundary_f_mean".into());
    v
}

fn metric_values(s: &ImageScores) -> Vec<f64> {
    let mut v = vec![s.iou, s.f1, s.wcov];
    v.extend(s.boundary.iter().map(|b| b.f));
    v.push(s.boundary_f_mean());
    v
}

/// The options that only mean something for 3D label maps must be left at
/// their defaults.
fn refuse_3d_options(args: &EvaluateArgs) -> Result<()> {
    let flag = if args.classes.is_some() {
        Some("--classes")
    } else if args.pred_classes.is_some() {
        Some("--pred-classes")
    } else if args.tolerance != [1.0, 3.0] {
        Some("--tolerance (NSD, mm; the 2D boundary tolerance is --boundary-px)")
    } else if args.surface != crate::metrics::SurfaceConvention::DeepMind {
        Some("--surface")
    } else if args.overlay_slices != 1 {
        Some("--overlay-slices")
    } else {
        None
    };
    match flag {
        Some(f) => bail!("{f} applies to 3D label maps, but --pred and --gt hold 2D masks"),
        None => Ok(()),
    }
}

pub fn run(args: &EvaluateArgs) -> Result<()> {
    refuse_3d_options(args)?;
    let tol = &args.boundary_px;
    ensure!(!tol.is_empty(), "--boundary-px: give at least one value");
    for &t in tol {
        ensure!(
            t >= 1.0 && tolerance_px(t, 1, 1).is_some(),
            "--boundary-px {t}: a whole number of pixels ≥ 1"
        );
    }
    let cases = pair_cases(&args.pred, &args.gt)?;
    let scored: Vec<(String, Mask, ImageScores)> = cases
        .par_iter()
        .map(|(case, p, g)| {
            let (m, s) = score_files(p, g, tol).with_context(|| format!("case {case}"))?;
            Ok((case.clone(), m, s))
        })
        .collect::<Result<_>>()?;
    if let Some(img) = &args.image {
        for ((case, _, g), (_, pred, _)) in cases.iter().zip(&scored) {
            let path = photo_for(img, case)?;
            let photo = read_photo(&path)?;
            let gt = read_mask(g)?;
            ensure!(
                (photo.width, photo.height) == (gt.width, gt.height),
                "{}: the photo is {}×{} but the reference {} is {}×{}",
                path.display(),
                photo.width,
                photo.height,
                g.display(),
                gt.width,
                gt.height
            );
            write_overlay_png(
                &photo,
                &[(&gt, REFERENCE_COLOUR), (pred, PREDICTION_COLOUR)],
                &args.out.join("overlays").join(format!("{case}.png")),
            )?;
        }
    }
    let names = metric_names(tol);
    let csv_path = args.out.join("per_image.csv");
    let json_path = args.out.join("summary.json");
    write_atomic(&csv_path, per_image_csv(&names, &scored).as_bytes())?;
    let summary = summary_json(args, &names, &scored);
    write_atomic(
        &json_path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    print_means(&names, &scored);
    println!("wrote {} and {}", csv_path.display(), json_path.display());
    Ok(())
}

fn per_image_csv(names: &[String], scored: &[(String, Mask, ImageScores)]) -> String {
    let mut csv = format!(
        "case,width,height,gt_pixels,pred_pixels,{}\n",
        names.join(",")
    );
    for (case, m, s) in scored {
        let vals: Vec<String> = metric_values(s).iter().map(|v| format!("{v}")).collect();
        csv.push_str(&format!(
            "{case},{},{},{},{},{}\n",
            m.width,
            m.height,
            s.gt_pixels,
            s.pred_pixels,
            vals.join(",")
        ));
    }
    csv
}

fn column(scored: &[(String, Mask, ImageScores)], k: usize) -> Stat {
    Stat::of(
        &scored
            .iter()
            .map(|(_, _, s)| metric_values(s)[k])
            .collect::<Vec<_>>(),
    )
}

fn summary_json(
    args: &EvaluateArgs,
    names: &[String],
    scored: &[(String, Mask, ImageScores)],
) -> Value {
    let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    let mut overall = Map::new();
    for (k, metric) in names.iter().enumerate() {
        let s = column(scored, k);
        overall.insert(
            metric.clone(),
            json!({"mean": num(s.mean), "sd": num(s.sd), "n": s.n, "skipped": s.skipped}),
        );
    }
    json!({
        "kind": "2d",
        "pred": args.pred.display().to_string(),
        "gt": args.gt.display().to_string(),
        "cases": scored.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        "boundary_px": args.boundary_px,
        "metrics": names,
        "overall": overall,
        "note": "iou and f1 as scikit-learn's jaccard_score and f1_score on the flattened masks \
                 (0/0 → 0, zero_division's default); wcov: Arbeláez et al. 2011 covering of the \
                 reference's 8-connected regions; boundary_f: DAVIS f_measure; mean and \
                 population sd over images",
    })
}

fn print_means(names: &[String], scored: &[(String, Mask, ImageScores)]) {
    println!("{} image(s)", scored.len());
    for (k, n) in names.iter().enumerate() {
        let s = column(scored, k);
        println!("  {n:<18} {:.4} ± {:.4}", s.mean, s.sd);
    }
}
