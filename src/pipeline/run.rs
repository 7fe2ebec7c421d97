//! The run folder, the one format every training command writes and every
//! inference command reads:
//!
//! ```text
//! <run>/config.toml             the resolved configuration (defaults written out, data paths absolute)
//! <run>/run.json                where the run folder was created
//! <run>/classes.json            class names by id (MSD "labels" form), for segmenting runs
//! <run>/log.jsonl               one JSON record per logged step
//! <run>/checkpoint.safetensors  parameters, AdamW moments, step, data position, SHA-256
//! <run>/progress.png            loss, learning rate and time per step
//! ```
//! [`prepare`] starts or resumes a run, [`finish`] draws its figure; the
//! class names, the manifest and the file names live here, and how data
//! paths are stored so that a run can be resumed from any working directory
//! and still finds its data after the folder was moved with it:
//!
//! Every data path is resolved once, when a configuration is loaded
//! ([`super::config::load`]): a path written in a config file
//! is relative to that file's folder, a path given with `--set` relative to
//! the working directory, and both become absolute, canonical paths
//! ([`absolute`]: symlinks and `..` resolved). A run's `config.toml` stores
//! those absolute paths, and `run.json` records where the run folder was when
//! the run was created. When a run is loaded from another place (the folder
//! was moved or copied) and an absolute data path no longer exists,
//! [`locate_data`] looks for the file at the same place relative to the run
//! folder — data that moved together with the run — and says which path it
//! took; when neither exists, the error names both.

use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

/// File names inside a run folder.
pub const CONFIG: &str = "config.toml";
pub const CLASSES: &str = "classes.json";
pub const MANIFEST: &str = "run.json";
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const LOG: &str = "log.jsonl";
pub const PROGRESS: &str = "progress.png";
const FORMAT: &str = "voxdiff-run-1";

/// `path` made absolute against `base` (itself made absolute against the
/// working directory), with the longest existing prefix canonicalised
/// (symlinks resolved) and `.`/`..` removed from the rest, so a path names
/// its file the same way whether or not the file exists yet.
pub fn absolute(path: &Path, base: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else if base.is_absolute() {
        base.join(path)
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(base)
            .join(path)
    };
    if let Ok(c) = std::fs::canonicalize(&joined) {
        return c;
    }
    let lexical = normalize(&joined);
    // Canonicalise the longest prefix that exists; keep the rest as written.
    let mut head = lexical.clone();
    let mut tail: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&head) {
            let mut out = c;
            for t in tail.iter().rev() {
                out.push(t);
            }
            return out;
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name);
                head = parent.to_path_buf();
            }
            _ => return lexical,
        }
    }
}

/// Remove `.` and resolve `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `path` relative to the folder `from` (both absolute), by their components.
pub fn relative(path: &Path, from: &Path) -> Option<PathBuf> {
    if !path.is_absolute() || !from.is_absolute() {
        return None;
    }
    let (p, f): (Vec<Component>, Vec<Component>) =
        (path.components().collect(), from.components().collect());
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    Some(out)
}

/// Record in `run/run.json` where the run folder is now (its canonical path).
pub fn write_manifest(run: &Path) -> Result<()> {
    let folder = absolute(run, Path::new("."));
    let m = serde_json::json!({ "format": FORMAT, "folder": folder });
    crate::fsutil::write_atomic(
        &run.join(MANIFEST),
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )
}

/// Where the run folder was when it was created (`None` for runs without a
/// manifest).
fn created_in(run: &Path) -> Result<Option<PathBuf>> {
    let p = run.join(MANIFEST);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", p.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))?;
    Ok(v.get("folder").and_then(|f| f.as_str()).map(PathBuf::from))
}

/// Point every data path of a run's configuration (`slots`: each path with
/// its config key) at an existing file: the stored absolute path, or else the
/// same place relative to the run folder when the run was moved. Returns a
/// note per path that was found at its relative place; an error names each
/// file found at neither.
pub fn locate_data(slots: Vec<(String, &mut PathBuf)>, run: &Path) -> Result<Vec<String>> {
    let origin = created_in(run)?;
    let here = absolute(run, Path::new("."));
    let config = run.join(CONFIG);
    let mut notes = Vec::new();
    let mut missing = Vec::new();
    for (key, p) in slots {
        if p.exists() {
            continue;
        }
        let moved = origin
            .as_deref()
            .filter(|o| *o != here)
            .and_then(|o| relative(p, o))
            .map(|r| absolute(&r, &here));
        match moved {
            Some(m) if m.exists() => {
                notes.push(format!(
                    "{key}: {} does not exist; using {} (the same place relative to the run folder, \
                     which was created in {})",
                    p.display(),
                    m.display(),
                    origin.as_deref().unwrap_or(Path::new("?")).display()
                ));
                *p = m;
            }
            Some(m) => missing.push(format!(
                "{key}: neither {} (as stored) nor {} (relative to the moved run folder) exists",
                p.display(),
                m.display()
            )),
            None => missing.push(format!("{key}: {} does not exist", p.display())),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{}: the run's data cannot be found:\n  {}",
            config.display(),
            missing.join("\n  ")
        );
    }
    Ok(notes)
}

/// Start a run in `run` with the resolved configuration `config_toml`, or
/// resume the one there: a new run refuses a folder that already holds a
/// checkpoint, creates the folder and writes `config.toml` and `run.json`;
/// both remove the temporary files a killed run left (a partial checkpoint).
pub fn prepare(run: &Path, config_toml: &str, resume: bool, verbose: bool) -> Result<()> {
    for p in crate::fsutil::remove_stale_temps(run)? {
        if verbose {
            eprintln!("removed {} (left by an interrupted run)", p.display());
        }
    }
    if resume {
        return Ok(());
    }
    if run.join(CHECKPOINT).exists() {
        bail!(
            "{}: already holds a trained run (use --resume to continue it, or another --run folder)",
            run.display()
        );
    }
    std::fs::create_dir_all(run)
        .with_context(|| format!("{}: cannot create run folder", run.display()))?;
    crate::fsutil::write_atomic(&run.join(CONFIG), config_toml.as_bytes())?;
    write_manifest(run)
}

/// The `config.toml` of the run in `run`, which `--resume` continues.
pub fn config_to_resume(run: &Path) -> Result<PathBuf> {
    let p = run.join(CONFIG);
    if !p.exists() {
        bail!("{}: no run to resume (config.toml missing)", run.display());
    }
    Ok(p)
}

/// Draw the run's progress figure from its log.
pub fn finish(run: &Path) -> Result<()> {
    super::plot::progress_figure(&run.join(LOG), &run.join(PROGRESS))
}

/// The MSD-style `{"labels": {"0": "background", …}}` description of classes.
pub fn classes_json(names: &[String]) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), n.clone().into()))
        .collect();
    serde_json::json!({ "labels": labels })
}

/// Write the class names of the run in `run`.
pub fn write_classes(run: &Path, names: &[String]) -> Result<()> {
    crate::fsutil::write_atomic(
        &run.join(CLASSES),
        serde_json::to_string_pretty(&classes_json(names))?.as_bytes(),
    )
}

/// Read the class names of a run folder.
pub fn read_classes(run: &Path) -> Result<Vec<String>> {
    let p = run.join(CLASSES);
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?,
    )
    .with_context(|| format!("{}: invalid JSON", p.display()))?;
    let labels = v
        .get("labels")
        .and_then(|l| l.as_object())
        .with_context(|| format!("{}: no \"labels\"", p.display()))?;
    let mut names = vec![String::new(); labels.len()];
    for (k, n) in labels {
        let i: usize = k
            .parse()
            .with_context(|| format!("{}: label key {k:?} is not an id", p.display()))?;
        anyhow::ensure!(
            i < names.len(),
            "{}: label ids must be 0..{}",
            p.display(),
            names.len()
        );
        names[i] = n.as_str().unwrap_or_default().to_string();
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_absolute_ones() {
        let r = |p: &str, f: &str| relative(Path::new(p), Path::new(f)).unwrap();
        assert_eq!(r("/a/b/c.nii", "/a/b"), PathBuf::from("c.nii"));
        assert_eq!(
            r("/a/data/c.nii", "/a/runs/x"),
            PathBuf::from("../../data/c.nii")
        );
        assert_eq!(r("/d/c.nii", "/a/b"), PathBuf::from("../../d/c.nii"));
        assert!(relative(Path::new("a/b"), Path::new("/a")).is_none());
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(
            absolute(Path::new("x/../y.nii"), Path::new("/nonexistent-base")),
            PathBuf::from("/nonexistent-base/y.nii")
        );
    }
}
