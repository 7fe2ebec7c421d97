//! Image and mask folders: listing, pairing by file stem, and the report of
//! what a folder run skipped.
//!
//! Files are images when their extension is `.png`, `.jpg` or `.jpeg` (any
//! case); other files (a `LICENSE.md`, a `Thumbs.db`) and hidden files are
//! not images and are passed over. `images/<id>.jpg` pairs with
//! `masks/<id>.png` (or `.jpg`, `.jpeg`): the stem is the name without its
//! last extension.

use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file a folder run did not use, and why (the reason names the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.reason)
    }
}

/// A photo and its mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub id: String,
    pub image: PathBuf,
    pub mask: PathBuf,
}

/// Whether `p`'s extension is one of the 2D image formats.
pub fn is_image_file(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .map(|n| n.to_string_lossy().starts_with('.'))
        .unwrap_or(true);
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    !hidden && matches!(ext.as_str(), "png" | "jpg" | "jpeg")
}

/// The stem of an image file: its name without the last extension.
pub fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The image files of a folder by stem. Two files with one stem (`a.jpg` and
/// `a.png`) are both skipped: which one is meant cannot be known. A folder
/// with no image file is an error.
pub fn list_images(dir: &Path) -> Result<(BTreeMap<String, PathBuf>, Vec<Skipped>)> {
    ensure!(dir.is_dir(), "{}: not a folder", dir.display());
    let mut by_stem: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let p = e
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        if p.is_file() && is_image_file(&p) {
            by_stem.entry(stem(&p)).or_default().push(p);
        }
    }
    ensure!(
        !by_stem.is_empty(),
        "{}: the folder holds no .png / .jpg / .jpeg image",
        dir.display()
    );
    let mut files = BTreeMap::new();
    let mut skipped = Vec::new();
    for (s, mut ps) in by_stem {
        if ps.len() == 1 {
            files.insert(s, ps.remove(0));
        } else {
            ps.sort();
            let names: Vec<String> = ps.iter().map(|p| p.display().to_string()).collect();
            for p in &ps {
                skipped.push(Skipped {
                    path: p.clone(),
                    reason: format!(
                        "{}: several files share the name {s:?} ({}); rename all but one",
                        p.display(),
                        names.join(", ")
                    ),
                });
            }
        }
    }
    Ok((files, skipped))
}

/// Pair `images/` with `masks/` by stem. An image without a mask and a mask
/// without an image are skipped and reported; an empty folder, or no pair
/// at all, is an error.
pub fn pair_folders(images: &Path, masks: &Path) -> Result<(Vec<Pair>, Vec<Skipped>)> {
    let (imgs, mut skipped) = list_images(images)?;
    let (msks, more) = list_images(masks)?;
    skipped.extend(more);
    let mut pairs = Vec::new();
    for (id, image) in &imgs {
        match msks.get(id) {
            Some(mask) => pairs.push(Pair {
                id: id.clone(),
                image: image.clone(),
                mask: mask.clone(),
            }),
            None => skipped.push(Skipped {
                path: image.clone(),
                reason: format!(
                    "{}: no mask {}/{id}.png (or .jpg, .jpeg)",
                    image.display(),
                    masks.display()
                ),
            }),
        }
    }
    for (id, mask) in &msks {
        if !imgs.contains_key(id) {
            skipped.push(Skipped {
                path: mask.clone(),
                reason: format!(
                    "{}: no image {}/{id}.* for this mask",
                    mask.display(),
                    images.display()
                ),
            });
        }
    }
    ensure!(
        !pairs.is_empty(),
        "{} and {}: no image has a mask of the same name{}",
        images.display(),
        masks.display(),
        first_reasons(&skipped)
    );
    Ok((pairs, skipped))
}

/// "; e.g. <the first three reasons>" for an error message.
pub fn first_reasons(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = skipped.iter().take(3).map(|s| s.reason.as_str()).collect();
    format!(
        " ({} file(s) skipped; e.g. {})",
        skipped.len(),
        shown.join("; ")
    )
}
