//! `voxdiff evaluate`: score predicted label maps against references.
//! (2D masks go to [`super::evaluate2d`]; a 3D map against a 2D mask is an error.)
//!
//! For one pair of files or two folders paired by file name: both maps are
//! read, checked to lie on the same grid, remapped through the class map (if
//! given), and scored per class ([`crate::metrics`]). A prediction's own class
//! names — `--pred-classes`, or else the sidecar `voxdiff segment` writes next
//! to it (`mask.nii.gz` → `mask.json`) — are matched by name to those of
//! `--classes`. Label maps that disagree in a way that makes the scores
//! meaningless (a predicted class that never overlaps its reference class but
//! lies on another one; classes only one side has) are reported as warnings
//! on stderr and in `summary.json`. Writes
//! `<out>/per_class.csv` (one row per case and class) and
//! `<out>/summary.json` (nan-mean ± sd and counts per class and overall), and
//! prints the per-class means.

use crate::data::overlay::{write_overlay, Overlay};
use crate::data::{labels::present_ids, read_nifti, ClassMap, Volume};
use crate::fsutil::write_atomic;
use crate::metrics::summary::Stat;
use crate::metrics::{label_metrics, ClassMetrics, MetricOptions, SurfaceConvention};
use crate::pipeline::segment::sidecar;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// Predicted label map (.nii / .nii.gz), or a folder of them; or a 2D
    /// mask (.png / .jpg), or a folder of them.
    #[arg(long)]
    pub pred: PathBuf,
    /// Reference label map or 2D mask, or a folder paired with --pred by
    /// file name (2D: by file stem).
    #[arg(long)]
    pub gt: PathBuf,
    /// Class map JSON turning label ids into classes (see docs/data.md);
    /// without it, every non-zero id present is a class of its own.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Class map of the prediction when its ids differ from the reference's;
    /// classes are matched by name to those of --classes, and only classes
    /// both name are scored. Default: the sidecar `voxdiff segment` writes
    /// next to each prediction (`<mask>.json`), when it is there.
    #[arg(long)]
    pub pred_classes: Option<PathBuf>,
    /// NSD tolerances in mm (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub tolerance: Vec<f64>,
    /// How surfaces are measured: deepmind (surfel areas) or voxelcount (ImgX).
    #[arg(long, value_enum, default_value = "deepmind")]
    pub surface: SurfaceConvention,
    /// Output folder for per_class.csv and summary.json.
    #[arg(long, default_value = "evaluation")]
    pub out: PathBuf,
    /// The scan (file, or folder paired by case name, `_0000` allowed): also
    /// write `<out>/overlays/<case>.png`: reference and prediction side by
    /// side on the slice with the most foreground, with a legend of the classes.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Slices (rows) in each overlay.
    #[arg(long, default_value_t = 1)]
    pub overlay_slices: usize,
    /// 2D masks only: boundary F tolerances in pixels (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5")]
    pub boundary_px: Vec<f64>,
}

/// The scan of a case: `image` itself, or `<image>/<case>[_0000].nii[.gz]`.
fn image_for(image: &Path, case: &str) -> Result<PathBuf> {
    if !image.is_dir() {
        return Ok(image.to_path_buf());
    }
    for name in [
        format!("{case}.nii.gz"),
        format!("{case}_0000.nii.gz"),
        format!("{case}.nii"),
        format!("{case}_0000.nii"),
    ] {
        let p = image.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("--image {}: no scan for case {case}", image.display())
}

/// A display window from the 0.5th and 99.5th percentiles of the scan.
fn auto_window(v: &Volume) -> crate::data::intensity::Window {
    let mut s: Vec<f32> = v.data.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return crate::data::intensity::Window::new(0.0, 1.0);
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    crate::data::intensity::Window::new(lo, if hi > lo { hi } else { lo + 1.0 })
}

/// The metric columns, in output order.
fn metric_names(tol: &[f64]) -> Vec<String> {
    let mut v = vec!["dice".to_string(), "iou".to_string()];
    for t in tol {
        v.push(format!("nsd_{}mm", fmt_tol(*t)));
    }
    v.extend(["hd95", "hd100", "assd", "centroid_mm"].map(String::from));
    v
}

fn fmt_tol(t: f64) -> String {
    if t.fract() == 0.0 {
        format!("{}", t as i64)
    } else {
        format!("{t}")
    }
}

fn metric_values(m: &ClassMetrics) -> Vec<f64> {
    let mut v = vec![m.dice, m.iou];
    v.extend(&m.nsd);
    v.extend([m.hd95, m.hd100, m.assd, m.centroid_mm]);
    v
}

fn is_nifti(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

/// Case name of a file: its name without .nii / .nii.gz.
pub fn case_name(p: &Path) -> String {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    n.trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string()
}

/// (case, pred, gt) triples.
fn pair_cases(pred: &Path, gt: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    match (pred.is_dir(), gt.is_dir()) {
        (false, false) => {
            ensure!(pred.is_file(), "--pred {}: no such file", pred.display());
            ensure!(gt.is_file(), "--gt {}: no such file", gt.display());
            Ok(vec![(case_name(gt), pred.to_path_buf(), gt.to_path_buf())])
        }
        (true, true) => {
            let list = |d: &Path| -> Result<BTreeMap<String, PathBuf>> {
                let mut m = BTreeMap::new();
                for e in
                    std::fs::read_dir(d).with_context(|| format!("{}: cannot list", d.display()))?
                {
                    let p = e?.path();
                    if p.is_file() && is_nifti(&p) {
                        m.insert(case_name(&p), p);
                    }
                }
                Ok(m)
            };
            let (ps, gs) = (list(pred)?, list(gt)?);
            ensure!(
                !gs.is_empty(),
                "--gt {}: no .nii / .nii.gz files",
                gt.display()
            );
            let missing: Vec<&String> = gs.keys().filter(|k| !ps.contains_key(*k)).collect();
            ensure!(
                missing.is_empty(),
                "--pred {}: no prediction for {} reference case(s): {:?}",
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

/// One row of the per-class table.
pub struct Row {
    pub case: String,
    pub class_id: u32,
    pub class: String,
    pub m: ClassMetrics,
}

/// The classes both maps name, in the reference's order: the reference's map
/// and the prediction's, each restricted to them, so class t of both is the
/// same organ (the prediction usually knows fewer classes than the reference).
pub fn align_by_name(pred: &ClassMap, reference: &ClassMap) -> Result<(ClassMap, ClassMap)> {
    let mut names = Vec::new();
    let (mut ref_ids, mut pred_ids) = (Vec::new(), Vec::new());
    for (t, n) in reference.names.iter().enumerate() {
        if let Some(i) = pred.names.iter().position(|p| p == n) {
            names.push(n.clone());
            ref_ids.push(reference.source_ids[t].clone());
            pred_ids.push(pred.source_ids[i].clone());
        }
    }
    ensure!(
        !names.is_empty(),
        "the prediction's classes ({}) share no name with the reference's ({})",
        pred.names.join(", "),
        reference.names.join(", ")
    );
    let restrict = |m: &ClassMap, ids: Vec<Vec<i64>>| ClassMap {
        names: names.clone(),
        source_ids: ids,
        // Ids of classes outside the shared set are background on both sides.
        strict: false,
        path: m.path.clone(),
    };
    Ok((restrict(reference, ref_ids), restrict(pred, pred_ids)))
}

/// The scores of one case, and what looked wrong about its label maps.
pub struct CaseScores {
    /// (class id, name, metrics) per class.
    pub classes: Vec<(u32, String, ClassMetrics)>,
    pub warnings: Vec<String>,
}

/// Score one case. `pred_map` remaps the prediction when its ids differ from
/// the reference's; it must list the classes of `map` in the same order (see
/// [`align_by_name`]).
pub fn evaluate_case(
    pred: &Volume,
    gt: &Volume,
    map: Option<&ClassMap>,
    pred_map: Option<&ClassMap>,
    opt: &MetricOptions,
) -> Result<CaseScores> {
    gt.check_same_grid(pred, 1e-3)?;
    let (gt_c, pred_c, classes): (Volume, Volume, Vec<(u32, String)>) = match map {
        Some(m) => (
            m.remap(gt)?,
            pred_map.unwrap_or(m).remap(pred)?,
            m.names
                .iter()
                .enumerate()
                .map(|(i, n)| (i as u32 + 1, n.clone()))
                .collect(),
        ),
        None => {
            let mut ids: Vec<i64> = present_ids(gt);
            ids.extend(present_ids(pred));
            ids.sort();
            ids.dedup();
            for v in gt.data.iter().chain(&pred.data) {
                ensure!(
                    v.fract() == 0.0 && *v >= 0.0,
                    "label value {v} is not a non-negative integer id ({} / {})",
                    gt.name(),
                    pred.name()
                );
            }
            (
                gt.clone(),
                pred.clone(),
                ids.iter()
                    .map(|&i| (i as u32, format!("label_{i}")))
                    .collect(),
            )
        }
    };
    let ids: Vec<u32> = classes.iter().map(|c| c.0).collect();
    let ms = label_metrics(&gt_c.data, &pred_c.data, gt_c.dims, gt_c.spacing, &ids, opt);
    let scored: Vec<(u32, String, ClassMetrics)> = classes
        .into_iter()
        .zip(ms)
        .map(|((id, n), m)| (id, n, m))
        .collect();
    let warnings = disagreements(&pred_c.data, &gt_c.data, &scored);
    Ok(CaseScores {
        classes: scored,
        warnings,
    })
}

/// What makes the scores of a case suspect: classes only one side has, and
/// predicted classes that never overlap their reference class but lie mostly
/// on another one (the prediction's label ids are not the reference's).
fn disagreements(pred: &[f32], gt: &[f32], scored: &[(u32, String, ClassMetrics)]) -> Vec<String> {
    let mut w = Vec::new();
    let name = |id: u32| {
        scored
            .iter()
            .find(|c| c.0 == id)
            .map_or(format!("id {id}"), |c| c.1.clone())
    };
    let only = |pick: &dyn Fn(&ClassMetrics) -> bool| -> Vec<String> {
        scored
            .iter()
            .filter(|c| pick(&c.2))
            .map(|c| c.1.clone())
            .collect()
    };
    let pred_only = only(&|m| m.pred_voxels > 0 && m.gt_voxels == 0);
    if !pred_only.is_empty() {
        w.push(format!(
            "predicted but absent from the reference: {}",
            pred_only.join(", ")
        ));
    }
    let gt_only = only(&|m| m.gt_voxels > 0 && m.pred_voxels == 0);
    if !gt_only.is_empty() {
        w.push(format!(
            "in the reference but never predicted: {}",
            gt_only.join(", ")
        ));
    }
    // Where the voxels of each predicted class lie in the reference.
    let mut lies_on: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (&p, &g) in pred.iter().zip(gt) {
        if p != 0.0 {
            *lies_on.entry((p as u32, g as u32)).or_default() += 1;
        }
    }
    for (id, n, m) in scored {
        if m.pred_voxels == 0 || m.gt_voxels == 0 || m.dice > 0.0 {
            continue;
        }
        let best = lies_on
            .iter()
            .filter(|((p, g), _)| p == id && *g != 0)
            .max_by_key(|(_, &count)| count);
        w.push(match best {
            Some(((_, g), &count)) => format!(
                "{n}: the prediction never overlaps the reference's {n} (Dice 0), but {:.0} % of \
                 its {} voxels lie on the reference's {}: are the prediction's label ids the \
                 reference's? (give --pred-classes, or keep the mask's .json sidecar next to it)",
                100.0 * count as f64 / m.pred_voxels as f64,
                m.pred_voxels,
                name(*g)
            ),
            None => format!(
                "{n}: the prediction never overlaps the reference's {n} (Dice 0) nor any other \
                 reference class"
            ),
        });
    }
    w
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn num_json(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn stat_json(s: &Stat) -> Value {
    json!({"mean": num_json(s.mean), "sd": num_json(s.sd), "n": s.n, "skipped": s.skipped})
}

pub fn run(args: &EvaluateArgs) -> Result<()> {
    use super::evaluate2d::{kind_of, Kind};
    match (kind_of("--pred", &args.pred)?, kind_of("--gt", &args.gt)?) {
        (Kind::Masks2d, Kind::Masks2d) => return super::evaluate2d::run(args),
        (Kind::Volumes3d, Kind::Volumes3d) => ensure!(
            args.boundary_px == [1.0, 2.0, 3.0, 4.0, 5.0],
            "--boundary-px applies to 2D masks, but --pred and --gt hold 3D label maps"
        ),
        (p, g) => bail!(
            "--pred {} holds {p} but --gt {} holds {g}: compare 2D with 2D or 3D with 3D",
            args.pred.display(),
            args.gt.display()
        ),
    }
    ensure!(
        !args.tolerance.is_empty(),
        "--tolerance: give at least one value"
    );
    for t in &args.tolerance {
        ensure!(
            t.is_finite() && *t >= 0.0,
            "--tolerance {t}: must be a non-negative number of mm"
        );
    }
    let map = args.classes.as_ref().map(ClassMap::read).transpose()?;
    if args.pred_classes.is_some() && map.is_none() {
        bail!("--pred-classes needs --classes (the reference's class map)");
    }
    let opt = MetricOptions {
        tolerances_mm: args.tolerance.clone(),
        convention: args.surface,
    };
    let cases = pair_cases(&args.pred, &args.gt)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut warn = |case: &str, msg: String| {
        let line = format!("case {case}: {msg}");
        eprintln!("warning: {line}");
        warnings.push(line);
    };
    for (case, p, g) in &cases {
        let pred = read_nifti(p)?;
        let gt = read_nifti(g)?;
        // The prediction's class names: given, or the sidecar of `segment`.
        let side = sidecar(p);
        let pred_names = match &args.pred_classes {
            Some(pc) => Some(pc.clone()),
            None => side.is_file().then_some(side),
        };
        let (case_map, pred_map) = match (&pred_names, &map) {
            (Some(pn), Some(m)) => {
                let (gt_map, pred_map) = align_by_name(&ClassMap::read(pn)?, m)
                    .with_context(|| format!("case {case}: {}", pn.display()))?;
                (Some(gt_map), Some(pred_map))
            }
            (Some(pn), None) => {
                warn(
                    case,
                    format!(
                        "{} names the prediction's classes, but without --classes (the \
                         reference's class map) they cannot be matched: scoring raw label ids",
                        pn.display()
                    ),
                );
                (None, None)
            }
            (None, m) => (m.clone(), None),
        };
        let res = evaluate_case(&pred, &gt, case_map.as_ref(), pred_map.as_ref(), &opt)
            .with_context(|| format!("case {case}"))?;
        for w in res.warnings {
            warn(case, w);
        }
        if let Some(img) = &args.image {
            let scan = read_nifti(image_for(img, case)?)?;
            let remap = |m: Option<&ClassMap>, v: &Volume| match m {
                Some(m) => m.remap(v),
                None => Ok(v.clone()),
            };
            let shown_pred = remap(pred_map.as_ref().or(case_map.as_ref()), &pred)?;
            let shown_gt = remap(case_map.as_ref(), &gt)?;
            let names: Vec<String> = std::iter::once("background".to_string())
                .chain(case_map.iter().flat_map(|m| m.names.iter().cloned()))
                .collect();
            write_overlay(
                &Overlay {
                    image: &scan,
                    labels: vec![("reference", &shown_gt), ("prediction", &shown_pred)],
                    names: &names,
                    window: auto_window(&scan),
                    slices: args.overlay_slices,
                },
                args.out.join("overlays").join(format!("{case}.png")),
            )
            .with_context(|| format!("case {case}"))?;
        }
        for (class_id, class, m) in res.classes {
            rows.push(Row {
                case: case.clone(),
                class_id,
                class,
                m,
            });
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    let names = metric_names(&args.tolerance);

    // per_class.csv
    let mut csv = String::new();
    csv.push_str("case,class_id,class,gt_voxels,pred_voxels,");
    csv.push_str(&names.join(","));
    csv.push('\n');
    for r in &rows {
        let vals: Vec<String> = metric_values(&r.m).into_iter().map(fmt_num).collect();
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.case,
            r.class_id,
            r.class,
            r.m.gt_voxels,
            r.m.pred_voxels,
            vals.join(",")
        ));
    }
    let csv_path = args.out.join("per_class.csv");
    write_atomic(&csv_path, csv.as_bytes())?;

    // summary.json: per class (in class order) and overall.
    let mut order: Vec<(u32, String)> = Vec::new();
    for r in &rows {
        if !order.iter().any(|(_, n)| n == &r.class) {
            order.push((r.class_id, r.class.clone()));
        }
    }
    let mut per_class = Map::new();
    for (id, name) in &order {
        let mine: Vec<&Row> = rows.iter().filter(|r| &r.class == name).collect();
        let mut entry = Map::new();
        entry.insert("class_id".into(), json!(id));
        for (k, metric) in names.iter().enumerate() {
            let vals: Vec<f64> = mine.iter().map(|r| metric_values(&r.m)[k]).collect();
            entry.insert(metric.clone(), stat_json(&Stat::of(&vals)));
        }
        per_class.insert(name.clone(), Value::Object(entry));
    }
    let mut overall = Map::new();
    for (k, metric) in names.iter().enumerate() {
        let vals: Vec<f64> = rows.iter().map(|r| metric_values(&r.m)[k]).collect();
        overall.insert(metric.clone(), stat_json(&Stat::of(&vals)));
    }
    let summary = json!({
        "cases": cases.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        "class_map": args.classes.as_ref().map(|p| p.display().to_string()),
        "pred_class_map": args.pred_classes.as_ref().map(|p| p.display().to_string()),
        "surface_convention": args.surface.name(),
        "tolerances_mm": args.tolerance,
        "metrics": names,
        "class_order": order.iter().map(|o| o.1.clone()).collect::<Vec<_>>(),
        "per_class": per_class,
        "overall": overall,
        "note": "mean and sd (population) over finite values; n counts them, skipped counts NaN (absent or undefined)",
        "warnings": warnings,
    });
    let json_path = args.out.join("summary.json");
    let text = serde_json::to_string_pretty(&summary)?;
    write_atomic(&json_path, text.as_bytes())?;

    // Console table of means.
    println!("{} case(s), surfaces: {}", cases.len(), args.surface.name());
    print!("{:<30}", "class");
    for n in &names {
        print!(" {n:>11}");
    }
    println!();
    let show = |label: &str, stats: &dyn Fn(usize) -> Stat| {
        print!("{label:<30}");
        for k in 0..names.len() {
            let s = stats(k);
            print!(
                " {:>11}",
                if s.n == 0 {
                    "-".to_string()
                } else {
                    format!("{:.4}", s.mean)
                }
            );
        }
        println!();
    };
    for (_, name) in &order {
        let mine: Vec<&Row> = rows.iter().filter(|r| &r.class == name).collect();
        show(name, &|k| {
            Stat::of(
                &mine
                    .iter()
                    .map(|r| metric_values(&r.m)[k])
                    .collect::<Vec<_>>(),
            )
        });
    }
    show("overall", &|k| {
        Stat::of(
            &rows
                .iter()
                .map(|r| metric_values(&r.m)[k])
                .collect::<Vec<_>>(),
        )
    });
    println!("wrote {} and {}", csv_path.display(), json_path.display());
    if !warnings.is_empty() {
        eprintln!(
            "warning: {} problem(s) with the label maps (above, and in {}): the scores may be meaningless",
            warnings.len(),
            json_path.display()
        );
    }
    Ok(())
}
