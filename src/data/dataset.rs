//! Datasets: cases from a folder pair or an MSD `dataset.json`, and
//! deterministic train/validation/test splits.

use super::rng::Rng;
use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One case: an image and (for training data) its label map.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

fn nifti_stem(p: &Path) -> Option<String> {
    let n = p.file_name()?.to_string_lossy().to_string();
    if let Some(s) = n.strip_suffix(".nii.gz") {
        Some(s.to_string())
    } else {
        n.strip_suffix(".nii").map(|s| s.to_string())
    }
}

fn list_nifti(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut m = BTreeMap::new();
    for e in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list folder", dir.display()))?
    {
        let p = e?.path();
        if p.is_file() {
            if let Some(s) = nifti_stem(&p) {
                m.insert(s, p);
            }
        }
    }
    Ok(m)
}

/// The case id of an image file name: its stem without a trailing
/// nnU-Net channel suffix `_0000`.
pub fn case_id(stem: &str) -> String {
    match stem.rsplit_once('_') {
        Some((base, ch)) if ch.len() == 4 && ch.chars().all(|c| c.is_ascii_digit()) => {
            base.to_string()
        }
        _ => stem.to_string(),
    }
}

/// Pair `images/` with `labels/` by case id (images may carry `_0000`).
/// Every image needs a label when a label folder is given; labels without an
/// image are an error too (a misnamed file should not silently drop a case).
pub fn pair_folder(images: &Path, labels: Option<&Path>) -> Result<Vec<Case>> {
    let imgs = list_nifti(images)?;
    ensure!(
        !imgs.is_empty(),
        "{}: no .nii / .nii.gz images",
        images.display()
    );
    let labs = match labels {
        Some(l) => Some(list_nifti(l)?),
        None => None,
    };
    let mut cases = Vec::new();
    for (stem, path) in &imgs {
        let id = case_id(stem);
        let label = match &labs {
            Some(l) => Some(l.get(&id).or_else(|| l.get(stem)).cloned().ok_or_else(|| {
                anyhow!(
                    "{}: no label for image {} (case {id})",
                    labels.unwrap().display(),
                    path.display()
                )
            })?),
            None => None,
        };
        cases.push(Case {
            id,
            image: path.clone(),
            label,
        });
    }
    if let Some(l) = &labs {
        let ids: Vec<&String> = cases.iter().map(|c| &c.id).collect();
        let stray: Vec<&String> = l.keys().filter(|k| !ids.contains(k)).collect();
        ensure!(
            stray.is_empty(),
            "{}: labels without an image: {stray:?}",
            labels.unwrap().display()
        );
    }
    Ok(cases)
}

/// An MSD-style dataset description.
#[derive(Clone, Debug)]
pub struct MsdDataset {
    pub name: String,
    /// Label id → name ("labels" of dataset.json).
    pub labels: BTreeMap<i64, String>,
    pub training: Vec<Case>,
    pub test: Vec<Case>,
}

/// Read an MSD `dataset.json`: `"training": [{"image": ..., "label": ...}]`,
/// `"test": [path | {"image": ...}]`, `"labels": {"0": "background", ...}`.
/// Paths are relative to the file's folder; every listed file must exist.
pub fn read_msd(path: &Path) -> Result<MsdDataset> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let root = path.parent().unwrap_or(Path::new("."));
    let resolve = |s: &str, what: &str| -> Result<PathBuf> {
        let p = root.join(s.trim_start_matches("./"));
        ensure!(
            p.is_file(),
            "{}: {what} {} does not exist",
            path.display(),
            p.display()
        );
        Ok(p)
    };
    let mut training = Vec::new();
    for (i, e) in v
        .get("training")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let img = e
            .get("image")
            .and_then(|x| x.as_str())
            .ok_or_else(|| anyhow!("{}: training[{i}] has no \"image\"", path.display()))?;
        let image = resolve(img, &format!("training[{i}].image"))?;
        let label = match e.get("label").and_then(|x| x.as_str()) {
            Some(l) => Some(resolve(l, &format!("training[{i}].label"))?),
            None => None,
        };
        let id = case_id(&nifti_stem(&image).unwrap_or_else(|| format!("case{i}")));
        training.push(Case { id, image, label });
    }
    let mut test = Vec::new();
    for (i, e) in v
        .get("test")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let img = e
            .as_str()
            .or_else(|| e.get("image").and_then(|x| x.as_str()))
            .ok_or_else(|| {
                anyhow!(
                    "{}: test[{i}] is neither a path nor {{\"image\": ...}}",
                    path.display()
                )
            })?;
        let image = resolve(img, &format!("test[{i}]"))?;
        let id = case_id(&nifti_stem(&image).unwrap_or_else(|| format!("test{i}")));
        test.push(Case {
            id,
            image,
            label: None,
        });
    }
    let mut labels = BTreeMap::new();
    if let Some(l) = v.get("labels").and_then(|l| l.as_object()) {
        for (k, name) in l {
            let id: i64 = k
                .parse()
                .map_err(|_| anyhow!("{}: labels key {k:?} is not an integer", path.display()))?;
            labels.insert(id, name.as_str().unwrap_or_default().to_string());
        }
    }
    ensure!(
        !training.is_empty() || !test.is_empty(),
        "{}: no training or test cases",
        path.display()
    );
    Ok(MsdDataset {
        name: v
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string(),
        labels,
        training,
        test,
    })
}

/// Indices of the cases in each part of a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// Deterministic k-fold split of `n` cases: shuffle `0..n` with `seed`
/// (Fisher–Yates), hold out the first `round(n · test_fraction)` as test,
/// cut the rest into `k` contiguous folds whose sizes differ by at most one;
/// fold `fold` validates, the others train. Each index is sorted.
pub fn kfold(n: usize, k: usize, fold: usize, seed: u64, test_fraction: f64) -> Result<Split> {
    ensure!(k >= 2, "k-fold needs k ≥ 2, got {k}");
    ensure!(fold < k, "fold {fold} is not in 0..{k}");
    ensure!(
        (0.0..1.0).contains(&test_fraction),
        "test fraction {test_fraction} not in [0, 1)"
    );
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(seed, &[0x5b11]).shuffle(&mut order);
    let n_test = (n as f64 * test_fraction).round() as usize;
    let (test, rest) = order.split_at(n_test);
    ensure!(
        rest.len() >= k,
        "{} cases left after the test split cannot make {k} folds",
        rest.len()
    );
    let (base, extra) = (rest.len() / k, rest.len() % k);
    let start = fold * base + fold.min(extra);
    let len = base + usize::from(fold < extra);
    let mut val = rest[start..start + len].to_vec();
    let mut train: Vec<usize> = rest[..start]
        .iter()
        .chain(&rest[start + len..])
        .copied()
        .collect();
    let mut test = test.to_vec();
    train.sort();
    val.sort();
    test.sort();
    Ok(Split { train, val, test })
}
