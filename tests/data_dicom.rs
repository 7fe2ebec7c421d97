//! DICOM series input against the NIfTI of the same scan: series are written
//! from a volume by the test's own encoder (tests/common/dicom_writer.rs,
//! independent of the reader), in shuffled file order, with scrambled
//! InstanceNumbers, in orientations that flip and permute the NIfTI's axes,
//! and read back with `read_scan`; voxels and world geometry must match. Then
//! the malformed series a user can have, each refused with the file named.

mod common;
#[path = "common/dicom_writer.rs"]
mod dicom_writer;

use common::{data_dir, tmp, Rng};
use dicom_writer::{SliceFile, DEFLATED_LE, EXPLICIT_LE, JPEG_LS_LOSSLESS, RLE_LOSSLESS};
use std::path::{Path, PathBuf};
use voxdiff::data::orient::to_canonical;
use voxdiff::data::phantom::{generate, PhantomConfig};
use voxdiff::data::{read_nifti, read_scan, Volume};

/// How the DICOM grid runs through the NIfTI's voxel axes: for the columns
/// (a), rows (b) and slices (s) of the series, the NIfTI axis (0 = i, 1 = j,
/// 2 = k) and whether it runs backwards.
#[derive(Clone, Copy)]
struct Layout {
    cols: (usize, bool),
    rows: (usize, bool),
    slices: (usize, bool),
}

/// Stored = (HU − intercept) / slope: exercises the rescale.
const SLOPE: f64 = 0.5;
const INTERCEPT: f64 = -1024.0;

fn lps(ras: [f64; 3]) -> [f64; 3] {
    [-ras[0], -ras[1], ras[2]]
}

/// The slices of `vol` laid out as `lay`, in slice order.
fn slices_of(vol: &Volume, lay: Layout, ts: &str, series: &str) -> Vec<SliceFile> {
    let ext = [vol.dims[2], vol.dims[1], vol.dims[0]]; // i, j, k
    let step = |(axis, back): (usize, bool)| {
        let mut u = [0i64; 3];
        u[axis] = if back { -1 } else { 1 };
        u
    };
    let (u, v, w) = (step(lay.cols), step(lay.rows), step(lay.slices));
    let mut start = [0i64; 3];
    for (axis, back) in [lay.cols, lay.rows, lay.slices] {
        start[axis] = if back { ext[axis] as i64 - 1 } else { 0 };
    }
    let (nc, nr, ns) = (ext[lay.cols.0], ext[lay.rows.0], ext[lay.slices.0]);
    // World direction (LPS, unit) and length of one step along u and v.
    let world = |p: [i64; 3]| vol.affine.apply([p[0] as f64, p[1] as f64, p[2] as f64]);
    let dir = |d: [i64; 3]| {
        let (a, b) = (world(d), world([0, 0, 0]));
        let diff = lps([a[0] - b[0], a[1] - b[1], a[2] - b[2]]);
        let n = (diff[0].powi(2) + diff[1].powi(2) + diff[2].powi(2)).sqrt();
        ([diff[0] / n, diff[1] / n, diff[2] / n], n)
    };
    let ((r, dc), (c, dr)) = (dir(u), dir(v));
    (0..ns)
        .map(|s| {
            let mut pixels = Vec::with_capacity(nr * nc);
            for b in 0..nr {
                for a in 0..nc {
                    let p: Vec<i64> = (0..3)
                        .map(|x| start[x] + a as i64 * u[x] + b as i64 * v[x] + s as i64 * w[x])
                        .collect();
                    let hu = vol.at(p[2] as usize, p[1] as usize, p[0] as usize) as f64;
                    let stored = (hu - INTERCEPT) / SLOPE;
                    assert_eq!(stored.fract(), 0.0);
                    pixels.push(stored as i16);
                }
            }
            let p0: Vec<i64> = (0..3).map(|x| start[x] + s as i64 * w[x]).collect();
            SliceFile {
                transfer_syntax: ts.to_string(),
                series_uid: series.to_string(),
                instance: s as u32 + 1,
                rows: nr as u16,
                cols: nc as u16,
                pixel_spacing: [dr, dc],
                orientation: [r[0], r[1], r[2], c[0], c[1], c[2]],
                position: lps(world([p0[0], p0[1], p0[2]])),
                slope: SLOPE,
                intercept: INTERCEPT,
                pixels,
                omit_pixel_data: false,
            }
        })
        .collect()
}

/// Write `slices` into a fresh folder under shuffled file names, with
/// InstanceNumbers scrambled too (so neither gives the slice order).
fn write_series(name: &str, mut slices: Vec<SliceFile>, seed: u64) -> PathBuf {
    let dir = tmp(name);
    let n = slices.len();
    let mut rng = Rng::new(seed);
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    for (s, f) in slices.iter_mut().enumerate() {
        f.instance = (perm[(s + 1) % n] + 1) as u32;
        std::fs::write(dir.join(format!("IM{:04}", perm[s])), f.encode()).unwrap();
    }
    dir
}

/// Same scan: both volumes in RAS carry the same voxels and the same affine.
fn assert_same_scan(dicom: &Volume, nifti: &Volume) {
    let (a, b) = (to_canonical(dicom).0, to_canonical(nifti).0);
    assert_eq!(a.dims, b.dims);
    assert!(a.data == b.data, "voxels differ");
    let d = a.affine.max_abs_diff(&b.affine);
    assert!(
        d < 1e-4,
        "affines differ by {d} mm:\n{:?}\n{:?}",
        a.affine.0,
        b.affine.0
    );
    for x in 0..3 {
        assert!((a.spacing[x] - b.spacing[x]).abs() < 1e-6);
    }
}

fn err_of(dir: &Path) -> String {
    let e = format!("{:#}", read_scan(dir).unwrap_err());
    eprintln!("{e}");
    e
}

/// A small phantom CT in whole HU on a non-trivial grid (spacing differs
/// per axis).
fn phantom_ct() -> Volume {
    let cfg = PhantomConfig {
        dims: [10, 14, 12],
        spacing: [4.0, 3.0, 2.5],
        noise_hu: 10.0,
    };
    let ct = generate(&cfg, 5).0;
    let whole = ct.data.iter().map(|v| v.round()).collect();
    ct.with_data(whole)
}

const AXIAL_LPS: Layout = Layout {
    cols: (0, true),
    rows: (1, true),
    slices: (2, false),
};

/// Columns along A (j), rows along I (k backwards), slices along i: the
/// normal (row × column in LPS) points left, against the file order.
const SAGITTAL: Layout = Layout {
    cols: (1, false),
    rows: (2, true),
    slices: (0, false),
};

#[test]
fn the_real_ct_as_an_axial_lps_series_reads_as_its_nifti() {
    let Some(data) = data_dir() else { return };
    let ct = read_nifti(data.join("ct_abdomen/example_ct.nii.gz")).unwrap();
    let dir = write_series(
        "ct_axial",
        slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.4"),
        1,
    );
    let v = read_scan(&dir).unwrap();
    // The standard axial layout flips i and j of the RAS NIfTI.
    assert_eq!(v.dims, ct.dims);
    assert_eq!(v.affine.orientation_code(), "LPS");
    let [d, h, w] = ct.dims;
    for k in [0, d / 2, d - 1] {
        for j in [0, h / 3, h - 1] {
            for i in [0, w / 2, w - 1] {
                assert_eq!(v.at(k, h - 1 - j, w - 1 - i), ct.at(k, j, i));
            }
        }
    }
    assert_same_scan(&v, &ct);
    // Values came back in HU (stored values were (HU + 1024) · 2).
    assert_eq!(v.min_max(), ct.min_max());
}

#[test]
fn the_real_ct_as_a_deflated_sagittal_series_reads_as_its_nifti() {
    let Some(data) = data_dir() else { return };
    let ct = read_nifti(data.join("ct_abdomen/example_ct.nii.gz")).unwrap();
    let dir = write_series(
        "ct_sagittal",
        slices_of(&ct, SAGITTAL, DEFLATED_LE, "1.2.3.5"),
        2,
    );
    let v = read_scan(&dir).unwrap();
    // Slices are ordered along the normal (patient left), so the series'
    // slice axis runs from the NIfTI's last i to its first.
    assert_eq!(v.dims, [ct.dims[2], ct.dims[0], ct.dims[1]]);
    assert_eq!(v.affine.orientation_code(), "AIL");
    assert_same_scan(&v, &ct);
}

#[test]
fn phantom_series_in_every_layout_read_as_the_volume() {
    let ct = phantom_ct();
    let layouts = [
        AXIAL_LPS,
        SAGITTAL,
        Layout {
            cols: (2, false),
            rows: (0, true),
            slices: (1, true),
        },
        Layout {
            cols: (0, false),
            rows: (1, false),
            slices: (2, true),
        },
    ];
    for (n, lay) in layouts.into_iter().enumerate() {
        for ts in [EXPLICIT_LE, DEFLATED_LE, RLE_LOSSLESS] {
            let dir = write_series("layouts", slices_of(&ct, lay, ts, "1.2.3.6"), n as u64);
            let v = read_scan(&dir).unwrap_or_else(|e| panic!("layout {n}, {ts}: {e:#}"));
            assert_same_scan(&v, &ct);
        }
    }
}

#[test]
fn mixed_series_are_refused_with_their_uids() {
    let ct = phantom_ct();
    let mut slices = slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.840.99.1");
    for s in slices.iter_mut().skip(6) {
        s.series_uid = "1.2.840.99.2".into();
    }
    let dir = write_series("mixed", slices, 3);
    let e = err_of(&dir);
    assert!(
        e.contains("2 DICOM series")
            && e.contains("1.2.840.99.1 (6 files")
            && e.contains("1.2.840.99.2 (4 files"),
        "{e}"
    );
}

#[test]
fn a_truncated_file_is_named() {
    let ct = phantom_ct();
    let dir = write_series(
        "truncated",
        slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.7"),
        4,
    );
    let victim = dir.join("IM0003");
    let bytes = std::fs::read(&victim).unwrap();
    for cut in [bytes.len() - 100, 400, 200, 100] {
        std::fs::write(&victim, &bytes[..cut]).unwrap();
        let e = err_of(&dir);
        assert!(e.contains("IM0003"), "cut at {cut}: {e}");
        assert!(
            e.contains("truncated") || e.contains("not a DICOM file") || e.contains("unreadable"),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn a_file_without_pixel_data_is_named() {
    let ct = phantom_ct();
    let mut slices = slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.8");
    slices[2].omit_pixel_data = true;
    let dir = write_series("no_pixels", slices, 5);
    let e = err_of(&dir);
    assert!(e.contains("no PixelData (7FE0,0010)"), "{e}");
    assert_eq!(e.matches("IM").count(), 1, "one file named: {e}");
}

#[test]
fn an_undecodable_transfer_syntax_is_named() {
    let ct = phantom_ct();
    let mut slices = slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.9");
    slices[4].transfer_syntax = JPEG_LS_LOSSLESS.into();
    let dir = write_series("jpeg_ls", slices, 6);
    let e = err_of(&dir);
    assert!(
        e.contains("IM") && e.contains("1.2.840.10008.1.2.4.80") && e.contains("cannot be decoded"),
        "{e}"
    );
}

#[test]
fn a_missing_slice_is_refused_as_non_uniform_spacing() {
    let ct = phantom_ct();
    let mut slices = slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.10");
    slices.remove(4);
    let dir = write_series("gap", slices, 7);
    let e = err_of(&dir);
    assert!(
        e.contains("slice spacing is not uniform")
            && e.contains("from 4.0000 to 8.0000 mm")
            && e.contains("most irregular: 8.0000 mm"),
        "{e}"
    );
}

#[test]
fn gantry_tilt_is_refused() {
    let ct = phantom_ct();
    let mut slices = slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.11");
    // Each slice 0.5 mm further posterior: positions leave the normal.
    for (s, f) in slices.iter_mut().enumerate() {
        f.position[1] += 0.5 * s as f64;
    }
    let dir = write_series("tilt", slices, 8);
    let e = err_of(&dir);
    assert!(e.contains("gantry tilt") && e.contains("4.500 mm"), "{e}");
}

#[test]
fn duplicate_positions_and_mixed_orientations_are_refused() {
    let ct = phantom_ct();
    let mut slices = slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.12");
    slices[3].position = slices[2].position;
    let dir = write_series("duplicate", slices, 9);
    assert!(
        err_of(&dir).contains("at the same position"),
        "{}",
        err_of(&dir)
    );

    let mut slices = slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.13");
    slices[5].orientation = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let dir = write_series("orientations", slices, 10);
    let e = err_of(&dir);
    assert!(
        e.contains("ImageOrientationPatient") && e.contains("one orientation"),
        "{e}"
    );
}

#[test]
fn a_folder_with_a_stray_file_or_nothing_is_refused() {
    let ct = phantom_ct();
    let dir = write_series(
        "stray",
        slices_of(&ct, AXIAL_LPS, EXPLICIT_LE, "1.2.3.14"),
        11,
    );
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let e = err_of(&dir);
    assert!(
        e.contains("notes.txt") && e.contains("not a DICOM file"),
        "{e}"
    );
    let empty = tmp("empty_series");
    assert!(err_of(&empty).contains("holds no files"));
}

/// Run the voxdiff binary; its stdout, or a panic with its output.
fn voxdiff(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "voxdiff {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn segment_and_train_take_a_dicom_series_folder() {
    use voxdiff::data::{write_nifti_with, DataType, WriteOptions};
    let dir = tmp("cli");
    // A tiny phantom, as NIfTI and as an axial LPS DICOM series.
    let cfg = PhantomConfig {
        dims: [12, 20, 20],
        spacing: [16.0, 14.0, 14.0],
        noise_hu: 10.0,
    };
    let (scan, labels) = generate(&cfg, 7);
    let scan = scan.with_data(scan.data.iter().map(|v| v.round()).collect());
    let nii = dir.join("scan.nii.gz");
    write_nifti_with(&scan, &nii, WriteOptions::plain(DataType::I16)).unwrap();
    let series = write_series(
        "cli_series",
        slices_of(&scan, AXIAL_LPS, EXPLICIT_LE, "1.2.3.20"),
        12,
    );

    // A run trained for two steps on phantoms.
    let run = dir.join("run");
    let tiny = [
        "data.phantom_cases=2",
        "data.phantom.dims=[12,20,20]",
        "data.phantom.spacing=[16.0,14.0,14.0]",
        "model.channels=[4,8]",
    ];
    let mut args: Vec<std::ffi::OsString> =
        ["train", "seg", "--quiet", "--device", "cpu", "--steps", "2"]
            .iter()
            .map(Into::into)
            .collect();
    args.extend(["--run".into(), run.clone().into_os_string()]);
    for s in tiny {
        args.extend(["--set".into(), s.into()]);
    }
    voxdiff(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());

    // Segmenting the folder and the NIfTI gives the same mask, each on its input's grid.
    let seg = |input: &Path, out: &Path| {
        voxdiff(&[
            "segment".as_ref(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--run".as_ref(),
            run.as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ])
    };
    seg(&series, &dir.join("from_dicom.nii.gz"));
    seg(&nii, &dir.join("from_nifti.nii.gz"));
    let from_dicom = read_nifti(dir.join("from_dicom.nii.gz")).unwrap();
    let from_nifti = read_nifti(dir.join("from_nifti.nii.gz")).unwrap();
    let series_vol = read_scan(&series).unwrap();
    assert_eq!(from_dicom.dims, series_vol.dims);
    assert!(from_dicom.affine.max_abs_diff(&series_vol.affine) < 1e-4);
    assert_eq!(from_dicom.affine.orientation_code(), "LPS");
    let (a, b) = (to_canonical(&from_dicom).0, to_canonical(&from_nifti).0);
    assert!(a.data == b.data, "the two masks differ");
    assert!(a.affine.max_abs_diff(&b.affine) < 1e-4);

    // Training reads the folder as a scan, with a label map on its grid.
    let [d, h, w] = series_vol.dims;
    let mut lab = vec![0f32; series_vol.numel()];
    for k in 0..d {
        for j in 0..h {
            for i in 0..w {
                lab[series_vol.idx(k, j, i)] = labels.at(k, h - 1 - j, w - 1 - i);
            }
        }
    }
    let lab_path = dir.join("labels.nii.gz");
    write_nifti_with(
        &series_vol.with_data(lab),
        &lab_path,
        WriteOptions::plain(DataType::U8),
    )
    .unwrap();
    let map = dir.join("classes.json");
    std::fs::write(
        &map,
        r#"{"classes": [{"name": "spleen", "ids": [1]}, {"name": "liver", "ids": [6]}]}"#,
    )
    .unwrap();
    let config = dir.join("dicom.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\nsource = \"files\"\nimages = [{:?}]\nlabels = [{:?}]\nclass_map = {:?}\n\
             [model]\nchannels = [4, 8]\n",
            series.display().to_string(),
            lab_path.display().to_string(),
            map.display().to_string()
        ),
    )
    .unwrap();
    let run2 = dir.join("run_dicom");
    let out = voxdiff(&[
        "train".as_ref(),
        "seg".as_ref(),
        "--quiet".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--steps".as_ref(),
        "2".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--run".as_ref(),
        run2.as_os_str(),
    ]);
    assert!(out.contains("trained 2 steps"), "{out}");
}
