//! File-system helpers: atomic writes (temp file in the same folder, then
//! rename), the cleanup of temp files a killed process left behind, and the
//! check that an output location is writable before any work is done.
//!
//! A temp file is named `.<name>.tmp<pid>` next to its destination `<name>`:
//! the pid lets [`remove_stale_temps`] tell a dead writer's leftovers from a
//! write in progress.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

const TEMP_TAG: &str = ".tmp";

/// The temporary sibling a write goes to before its rename.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMP_TAG}{}", std::process::id()))
}

/// The pid of the writer of a temp file named `.<name>.tmp<pid>`, if `name`
/// is one.
fn temp_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(TEMP_TAG)?;
    let pid = &rest[at + TEMP_TAG.len()..];
    if at == 0 || pid.is_empty() || !pid.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` is running (Linux/Unix: signal 0 probes it).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Delete the temp files in `dir` whose writer is no longer running (e.g. a
/// partial checkpoint of a killed training run); returns what was removed.
/// Temp files of running processes (this one included) are left alone.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_writer(&name) else {
            continue;
        };
        if process_alive(pid) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let p = e.path();
        std::fs::remove_file(&p)
            .with_context(|| format!("{}: cannot remove a stale temp file", p.display()))?;
        removed.push(p);
    }
    Ok(removed)
}

/// Check, before any work, that a file can be written at `path`: it is not a
/// folder, and its folder exists and takes a new file, or can be created
/// (the nearest existing ancestor is a writable folder). Creates nothing.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{}: is a folder, not a file name", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dir = parent.as_path();
    while !dir.exists() {
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => dir = p,
            _ => {
                dir = Path::new(".");
                break;
            }
        }
    }
    if !dir.is_dir() {
        bail!(
            "{}: cannot create folder {}: {} is not a folder",
            path.display(),
            parent.display(),
            dir.display()
        );
    }
    // Probe with a temp file (the same kind a write makes), then remove it.
    let probe = temp_path(
        &dir.join(
            path.file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "probe".into()),
        ),
    );
    std::fs::File::create(&probe)
        .with_context(|| format!("{}: cannot write in {}", path.display(), dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Write `bytes` to `path` so that readers see either the old file or the
/// complete new one, never a partial write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`], with the contents produced by `fill`. On every
/// failure the temp file is removed and the destination left as it was.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot move the new file into place", path.display()))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!(
            "{}: write failed (the previous file, if any, is untouched)",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_writer() {
        assert_eq!(temp_writer(".checkpoint.safetensors.tmp4242"), Some(4242));
        assert_eq!(temp_writer(".a.tmp.tmp7"), Some(7));
        for not in [
            "checkpoint.safetensors",
            ".tmp12",
            ".x.tmp",
            ".x.tmp12a",
            "x.tmp12",
        ] {
            assert_eq!(temp_writer(not), None, "{not}");
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("voxdiff_fsutil_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn temps_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| temp_writer(n).is_some())
            .collect()
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_file_intact() {
        let dir = scratch("fail");
        // The rename fails: the destination is a folder that is not empty.
        let dest = dir.join("out.bin");
        std::fs::create_dir_all(dest.join("inner")).unwrap();
        assert!(write_atomic(&dest, b"new").is_err());
        assert_eq!(temps_in(&dir), Vec::<String>::new());
        // The contents cannot be produced.
        let old = dir.join("old.bin");
        std::fs::write(&old, b"old").unwrap();
        let err = write_atomic_with(&old, |w| {
            w.write_all(b"partial")?;
            bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(temps_in(&dir), Vec::<String>::new());
        assert_eq!(std::fs::read(&old).unwrap(), b"old");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_temps_of_dead_writers_are_removed_live_ones_kept() {
        let dir = scratch("stale");
        // A pid that has exited: a child we waited for.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.join(format!(".checkpoint.safetensors{TEMP_TAG}{dead}"));
        let live = dir.join(format!(".log.jsonl{TEMP_TAG}{}", std::process::id()));
        let other = dir.join("checkpoint.safetensors");
        for p in [&stale, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(&dir).unwrap(), vec![stale.clone()]);
        assert!(!stale.exists() && live.exists() && other.exists());
        assert!(remove_stale_temps(&dir.join("absent")).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writability_is_checked_without_creating_anything() {
        let dir = scratch("writable");
        check_writable(&dir.join("a.nii.gz")).unwrap();
        check_writable(&dir.join("new/sub/a.nii.gz")).unwrap();
        assert!(!dir.join("new").exists());
        let err = format!("{:#}", check_writable(&dir).unwrap_err());
        assert!(err.contains("is a folder"), "{err}");
        std::fs::write(dir.join("file"), b"x").unwrap();
        let err = format!(
            "{:#}",
            check_writable(&dir.join("file/a.nii.gz")).unwrap_err()
        );
        assert!(err.contains("is not a folder"), "{err}");
        assert_eq!(temps_in(&dir), Vec::<String>::new());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
