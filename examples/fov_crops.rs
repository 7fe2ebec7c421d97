//! Crops of a scan and its label map — other fields of view of the same
//! patient, each voxel keeping its world position — to measure how a model
//! does on fields of view it was not trained on (docs/training.md):
//!
//! ```text
//! cargo run --release --example fov_crops -- CT LABELS CLASS_MAP OUT_DIR
//! ```
//!
//! writes `OUT_DIR/<crop>_ct.nii.gz` and `OUT_DIR/<crop>_seg.nii.gz` for
//! - `half`: the upper half of the slices (the superior half, RAS scans);
//! - `spleen`: a 130 mm box centred on the spleen's centre of mass;
//! - `kidneys`: the bounding box of both kidneys plus 15 mm on every side;
//!
//! and prints each box. Class names are those of CLASS_MAP (`spleen`,
//! `kidney_right`, `kidney_left`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use voxdiff::data::crop::{bounding_box, extract};
use voxdiff::data::{read_nifti, write_nifti, ClassMap, Volume};

/// The voxels of the classes named `names`.
fn mask_of(classes: &Volume, map: &ClassMap, names: &[&str]) -> Result<Vec<bool>> {
    let ids: Vec<f32> = names
        .iter()
        .map(|n| {
            map.names
                .iter()
                .position(|m| m == n)
                .map(|i| (i + 1) as f32)
                .with_context(|| format!("class {n} is not in the class map"))
        })
        .collect::<Result<_>>()?;
    Ok(classes.data.iter().map(|v| ids.contains(v)).collect())
}

/// A box (origin, size) clamped to the volume.
fn clamp_box(dims: [usize; 3], lo: [i64; 3], hi: [i64; 3]) -> ([i64; 3], [usize; 3]) {
    let o = [0, 1, 2].map(|a| lo[a].clamp(0, dims[a] as i64));
    let e = [0, 1, 2].map(|a| hi[a].clamp(0, dims[a] as i64));
    (o, [0, 1, 2].map(|a| (e[a] - o[a]).max(0) as usize))
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [ct_path, seg_path, map_path, out] = args.as_slice() else {
        bail!("usage: fov_crops CT LABELS CLASS_MAP OUT_DIR");
    };
    let ct = read_nifti(ct_path)?;
    let seg = read_nifti(seg_path)?;
    ct.check_same_grid(&seg, 1e-3)?;
    let map = ClassMap::read(map_path)?;
    let classes = map.remap(&seg)?;
    let dims = ct.dims;
    let sp = ct.spacing;
    let mut boxes = Vec::new();

    // The superior half of the slices (D is the slowest axis, k).
    let half = dims[0] / 2;
    boxes.push((
        "half",
        [half as i64, 0, 0],
        [dims[0] - half, dims[1], dims[2]],
    ));

    // A 130 mm box centred on the spleen's centre of mass.
    let spleen = mask_of(&classes, &map, &["spleen"])?;
    let com = voxdiff::metrics::centre_of_mass(&spleen, dims).context("no spleen voxel")?;
    let half_mm = 65.0;
    let lo = [0, 1, 2].map(|a| (com[a] - half_mm / sp[a]).round() as i64);
    let hi = [0, 1, 2].map(|a| (com[a] + half_mm / sp[a]).round() as i64);
    let (o, s) = clamp_box(dims, lo, hi);
    boxes.push(("spleen", o, s));

    // Both kidneys plus 15 mm.
    let kidneys = mask_of(&classes, &map, &["kidney_right", "kidney_left"])?;
    let (bl, bh) = bounding_box(&kidneys, dims).context("no kidney voxel")?;
    let lo = [0, 1, 2].map(|a| bl[a] as i64 - (15.0 / sp[a]).ceil() as i64);
    let hi = [0, 1, 2].map(|a| bh[a] as i64 + (15.0 / sp[a]).ceil() as i64);
    let (o, s) = clamp_box(dims, lo, hi);
    boxes.push(("kidneys", o, s));

    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    for (name, origin, size) in boxes {
        write_nifti(
            &extract(&ct, origin, size, 0.0),
            out.join(format!("{name}_ct.nii.gz")),
        )?;
        write_nifti(
            &extract(&seg, origin, size, 0.0),
            out.join(format!("{name}_seg.nii.gz")),
        )?;
        println!(
            "{name}: voxels {origin:?} + {size:?} (D, H, W) of {dims:?}, {:.0}×{:.0}×{:.0} mm",
            size[0] as f64 * sp[0],
            size[1] as f64 * sp[1],
            size[2] as f64 * sp[2]
        );
    }
    Ok(())
}
