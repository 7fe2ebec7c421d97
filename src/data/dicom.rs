//! DICOM series input: a folder holding the files of one image series (one
//! slice per file, as CT and MR scanners write them) read into a [`Volume`]
//! with its geometry, and [`read_scan`], the one entry point for scans (a
//! NIfTI file or a DICOM folder).
//!
//! Files are parsed by `dicom-object`; pixel data is decoded by
//! `dicom-pixeldata`, which handles the uncompressed transfer syntaxes
//! (implicit and explicit VR, either byte order), deflate, JPEG (baseline,
//! extended, lossless), JPEG 2000 and RLE in pure Rust (the tests write
//! explicit VR, deflated and RLE series with their own encoder). Any other
//! transfer syntax (JPEG-LS, JPEG XL, HTJ2K, MPEG video …) is an error naming
//! the file and the syntax.
//!
//! Geometry, exactly as the standard defines it (PS3.3 C.7.6.2):
//!
//! - every file must share SeriesInstanceUID (a folder of several series is
//!   refused with their UIDs listed), Rows, Columns, PixelSpacing and
//!   ImageOrientationPatient;
//! - slices are ordered by ImagePositionPatient projected on the slice
//!   normal `n = row direction × column direction` (never by file name or
//!   InstanceNumber); two slices at one position are refused;
//! - the slice spacing is the distance between consecutive projections and
//!   must be uniform, and the positions must move along the normal only — a
//!   series with missing slices, variable spacing or gantry tilt is refused
//!   (not resampled), with the numbers in the message;
//! - voxel (i, j, k) = (column, row, slice) lies at
//!   `IPP₀ + i·Δc·r + j·Δr·c + k·s·n` in the patient's LPS frame, Δr and Δc
//!   being PixelSpacing's row and column spacing; the affine is turned into
//!   voxdiff's RAS frame by negating x and y;
//! - values are `stored · RescaleSlope + RescaleIntercept` (1 and 0 when
//!   absent).

use super::affine::{Affine, Quatern};
use super::nifti_io::read_nifti;
use super::volume::{DataType, Source, Volume};
use anyhow::{anyhow, bail, ensure, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, Tag};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Read a scan: a NIfTI file (.nii, .nii.gz), or a folder holding one DICOM
/// series.
pub fn read_scan(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    if path.is_dir() {
        read_dicom_series(path)
    } else {
        read_nifti(path)
    }
}

/// One file of a series: its geometry and its decoded, rescaled pixels.
struct Slice {
    path: PathBuf,
    series: String,
    rows: usize,
    cols: usize,
    /// PixelSpacing: (row spacing Δr, column spacing Δc), mm.
    pixel_spacing: [f64; 2],
    /// ImageOrientationPatient: row direction, column direction (LPS).
    orientation: [f64; 6],
    /// ImagePositionPatient (LPS, mm): the centre of the first pixel.
    position: [f64; 3],
    /// Rows × Columns values, row-major, rescaled.
    values: Vec<f32>,
    /// Every stored value is an integer and slope and intercept are integers.
    integral: bool,
}

/// Read every DICOM file directly inside `dir` (hidden files and a DICOMDIR
/// index are skipped) as one volume.
pub fn read_dicom_series(dir: &Path) -> Result<Volume> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the DICOM folder", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{}: cannot list the DICOM folder", dir.display()))?;
    files.retain(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        p.is_file() && !name.starts_with('.') && !name.eq_ignore_ascii_case("DICOMDIR")
    });
    files.sort();
    ensure!(
        !files.is_empty(),
        "{}: the folder holds no files (a DICOM series folder holds one file per slice)",
        dir.display()
    );
    let slices: Vec<Slice> = files.iter().map(|p| read_slice(p)).collect::<Result<_>>()?;
    assemble(dir, slices)
}

/// The transfer syntax of a file, checked to be one whose pixel data can be
/// decoded, read from the file meta group before the data set is parsed.
fn check_transfer_syntax(path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).context("cannot open")?;
    let mut head = [0u8; 132];
    f.read_exact(&mut head).map_err(|_| {
        anyhow!("not a DICOM file: shorter than the 128-byte preamble and \"DICM\"")
    })?;
    ensure!(
        &head[128..132] == b"DICM",
        "not a DICOM file: no \"DICM\" marker after the 128-byte preamble"
    );
    // The meta table's reader checks "DICM" itself.
    f.seek(SeekFrom::Start(128)).context("cannot seek")?;
    let meta = dicom_object::FileMetaTable::from_reader(std::io::BufReader::new(f))
        .map_err(|e| anyhow!("file meta information is unreadable ({e}): truncated or corrupt"))?;
    let uid = meta.transfer_syntax();
    let ts = TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| anyhow!("transfer syntax {uid} is not one the DICOM reader knows"))?;
    ensure!(
        ts.can_decode_all(),
        "transfer syntax {uid} ({}) cannot be decoded: voxdiff decodes the uncompressed \
         syntaxes, deflate, JPEG (baseline, extended, lossless), JPEG 2000 and RLE; \
         convert the series to one of them first",
        ts.name()
    );
    Ok(())
}

fn read_slice(path: &Path) -> Result<Slice> {
    let inner = || -> Result<Slice> {
        check_transfer_syntax(path)?;
        let obj = dicom_object::open_file(path)
            .map_err(|e| anyhow!("cannot parse: {e} (truncated or corrupt file?)"))?;
        slice_of(path, &obj)
    };
    inner().with_context(|| format!("{}", path.display()))
}

fn missing(name: &str, tag: Tag) -> anyhow::Error {
    anyhow!("{name} {tag} is missing (not an image of a series, or a truncated file)")
}

/// A required numeric attribute with exactly `n` values.
fn floats(obj: &DefaultDicomObject, tag: Tag, name: &str, n: usize) -> Result<Vec<f64>> {
    let e = obj
        .element_opt(tag)
        .ok()
        .flatten()
        .ok_or_else(|| missing(name, tag))?;
    let v = e
        .to_multi_float64()
        .map_err(|err| anyhow!("{name} {tag} is not numeric ({err})"))?;
    ensure!(
        v.len() == n && v.iter().all(|x| x.is_finite()),
        "{name} {tag} = {v:?}: expected {n} finite numbers"
    );
    Ok(v)
}

/// An optional single number (`default` when absent or empty).
fn float_or(obj: &DefaultDicomObject, tag: Tag, name: &str, default: f64) -> Result<f64> {
    match obj.element_opt(tag).ok().flatten() {
        None => Ok(default),
        Some(e) if e.to_str().is_ok_and(|s| s.trim().is_empty()) => Ok(default),
        Some(e) => {
            let v = e
                .to_float64()
                .map_err(|err| anyhow!("{name} {tag} is not a number ({err})"))?;
            ensure!(v.is_finite(), "{name} {tag} = {v} is not finite");
            Ok(v)
        }
    }
}

fn uint(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<usize> {
    let e = obj
        .element_opt(tag)
        .ok()
        .flatten()
        .ok_or_else(|| missing(name, tag))?;
    e.to_int::<u32>()
        .map(|v| v as usize)
        .map_err(|err| anyhow!("{name} {tag} is not a whole number ({err})"))
}

fn slice_of(path: &Path, obj: &DefaultDicomObject) -> Result<Slice> {
    let series = obj
        .element_opt(tags::SERIES_INSTANCE_UID)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .ok_or_else(|| missing("SeriesInstanceUID", tags::SERIES_INSTANCE_UID))?;
    let rows = uint(obj, tags::ROWS, "Rows")?;
    let cols = uint(obj, tags::COLUMNS, "Columns")?;
    ensure!(
        rows > 0 && cols > 0,
        "Rows × Columns = {rows} × {cols}: an empty image"
    );
    let frames = match obj.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
        Some(e) => e.to_int::<u32>().map_err(|err| {
            anyhow!(
                "NumberOfFrames {} is not a whole number ({err})",
                tags::NUMBER_OF_FRAMES
            )
        })?,
        None => 1,
    };
    ensure!(
        frames == 1,
        "NumberOfFrames = {frames}: a multi-frame (enhanced) object; only series of \
         single-frame files are read"
    );
    let samples = match obj.element_opt(tags::SAMPLES_PER_PIXEL).ok().flatten() {
        Some(e) => e.to_int::<u32>().unwrap_or(0),
        None => 1,
    };
    ensure!(
        samples == 1,
        "SamplesPerPixel = {samples}: a colour image, not a scan of one value per voxel"
    );
    let ps = floats(obj, tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    ensure!(
        ps.iter().all(|&v| v > 0.0),
        "PixelSpacing {} = {ps:?} must be positive",
        tags::PIXEL_SPACING
    );
    let iop = floats(
        obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
        6,
    )?;
    let ipp = floats(obj, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
    let (r, c) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    ensure!(
        (norm(r) - 1.0).abs() < 1e-3 && (norm(c) - 1.0).abs() < 1e-3 && dot(r, c).abs() < 1e-3,
        "ImageOrientationPatient {} = {iop:?}: the row and column directions must be \
         orthogonal unit vectors",
        tags::IMAGE_ORIENTATION_PATIENT
    );
    let slope = float_or(obj, tags::RESCALE_SLOPE, "RescaleSlope", 1.0)?;
    let intercept = float_or(obj, tags::RESCALE_INTERCEPT, "RescaleIntercept", 0.0)?;
    ensure!(slope != 0.0, "RescaleSlope {} = 0", tags::RESCALE_SLOPE);
    ensure!(
        obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_some(),
        "no PixelData {}: not an image",
        tags::PIXEL_DATA
    );
    let decoded = obj
        .decode_pixel_data()
        .map_err(|e| anyhow!("pixel data cannot be decoded ({e})"))?;
    // Stored values; the rescale is applied here, in f64.
    let raw: Vec<f64> = decoded
        .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .map_err(|e| anyhow!("pixel data cannot be converted ({e})"))?;
    ensure!(
        raw.len() == rows * cols,
        "PixelData holds {} values, Rows × Columns = {rows} × {cols} needs {}",
        raw.len(),
        rows * cols
    );
    let integral = slope.fract() == 0.0 && intercept.fract() == 0.0;
    let values = raw
        .iter()
        .map(|&v| (v * slope + intercept) as f32)
        .collect();
    Ok(Slice {
        path: path.to_path_buf(),
        series,
        rows,
        cols,
        pixel_spacing: [ps[0], ps[1]],
        orientation: [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
        position: [ipp[0], ipp[1], ipp[2]],
        values,
        integral,
    })
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Slice positions closer than this (mm) along the normal are one position;
/// spacings and in-plane drift within it of each other count as equal.
const POSITION_TOL_MM: f64 = 1e-3;

/// Stack the slices of one series into a volume.
fn assemble(dir: &Path, mut slices: Vec<Slice>) -> Result<Volume> {
    let name = |s: &Slice| s.path.display().to_string();
    // One series.
    let mut series: Vec<(&str, usize, &Path)> = Vec::new();
    for s in &slices {
        match series.iter_mut().find(|(uid, _, _)| *uid == s.series) {
            Some(e) => e.1 += 1,
            None => series.push((&s.series, 1, &s.path)),
        }
    }
    if series.len() > 1 {
        let list: Vec<String> = series
            .iter()
            .map(|(uid, n, p)| format!("{uid} ({n} files, e.g. {})", p.display()))
            .collect();
        bail!(
            "{}: the folder holds {} DICOM series; give a folder with one series. \
             SeriesInstanceUIDs: {}",
            dir.display(),
            series.len(),
            list.join("; ")
        );
    }
    // One grid in the plane.
    let first = &slices[0];
    for s in &slices[1..] {
        ensure!(
            (s.rows, s.cols) == (first.rows, first.cols),
            "{}: Rows × Columns = {} × {}, but {} has {} × {}",
            name(s),
            s.rows,
            s.cols,
            name(first),
            first.rows,
            first.cols
        );
        ensure!(
            s.pixel_spacing
                .iter()
                .zip(first.pixel_spacing)
                .all(|(a, b)| (a - b).abs() <= 1e-6 * b.max(1.0)),
            "{}: PixelSpacing = {:?}, but {} has {:?}",
            name(s),
            s.pixel_spacing,
            name(first),
            first.pixel_spacing
        );
        ensure!(
            s.orientation
                .iter()
                .zip(first.orientation)
                .all(|(a, b)| (a - b).abs() <= 1e-4),
            "{}: ImageOrientationPatient = {:?}, but {} has {:?}; a series must keep one orientation",
            name(s),
            s.orientation,
            name(first),
            first.orientation
        );
    }
    let o = first.orientation;
    let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let n = cross(r, c);
    let n = {
        let l = norm(n);
        [n[0] / l, n[1] / l, n[2] / l]
    };
    // Order along the normal.
    slices.sort_by(|a, b| dot(a.position, n).total_cmp(&dot(b.position, n)));
    let along: Vec<f64> = slices.iter().map(|s| dot(s.position, n)).collect();
    let (rows, cols) = (slices[0].rows, slices[0].cols);
    let [dr, dc] = slices[0].pixel_spacing;
    let depth = slices.len();
    let step = if depth > 1 {
        for w in 0..depth - 1 {
            ensure!(
                along[w + 1] - along[w] > POSITION_TOL_MM,
                "{} and {} lie at the same position along the slice normal ({:.4} mm): \
                 duplicate slices or two acquisitions in one series",
                name(&slices[w]),
                name(&slices[w + 1]),
                along[w]
            );
        }
        let step = (along[depth - 1] - along[0]) / (depth - 1) as f64;
        let gaps: Vec<f64> = along.windows(2).map(|w| w[1] - w[0]).collect();
        let (lo, hi) = gaps
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &g| (a.min(g), b.max(g)));
        let tol = POSITION_TOL_MM.max(1e-4 * step);
        if hi - lo > tol {
            // The gap furthest from the median one.
            let mut sorted = gaps.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            let at = (0..gaps.len())
                .max_by(|&a, &b| {
                    (gaps[a] - median)
                        .abs()
                        .total_cmp(&(gaps[b] - median).abs())
                })
                .unwrap_or(0);
            bail!(
                "{}: slice spacing is not uniform: from {lo:.4} to {hi:.4} mm along the \
                 normal (most irregular: {:.4} mm between {} and {}); missing slices \
                 or a variable-spacing acquisition — voxdiff does not resample a series",
                dir.display(),
                gaps[at],
                name(&slices[at]),
                name(&slices[at + 1])
            );
        }
        // Positions must move along the normal only (no gantry tilt / shear).
        let (p0, p1) = (slices[0].position, slices[depth - 1].position);
        let d = [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]];
        let a = dot(d, n);
        let drift = norm([d[0] - a * n[0], d[1] - a * n[1], d[2] - a * n[2]]);
        ensure!(
            drift <= POSITION_TOL_MM * depth as f64,
            "{}: the slice positions move {drift:.3} mm within the image plane from {} to {} \
             (gantry tilt or a sheared stack): not a rectilinear grid, and voxdiff does not \
             resample a series",
            dir.display(),
            name(&slices[0]),
            name(&slices[depth - 1])
        );
        step
    } else {
        1.0
    };
    let p = slices[0].position;
    // LPS affine columns: i along r·Δc, j along c·Δr, k along n·step.
    let mut m = [[0.0f64; 4]; 4];
    for a in 0..3 {
        m[a][0] = r[a] * dc;
        m[a][1] = c[a] * dr;
        m[a][2] = n[a] * step;
        m[a][3] = p[a];
    }
    m[3][3] = 1.0;
    // LPS → RAS: x and y change sign.
    for row in m.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    let affine = Affine(m);
    let mut data = Vec::with_capacity(depth * rows * cols);
    for s in &slices {
        data.extend_from_slice(&s.values);
    }
    let integral = slices.iter().all(|s| s.integral);
    let datatype = storage_type(&data, integral);
    let spacing = [step, dr, dc];
    Ok(Volume {
        data,
        dims: [depth, rows, cols],
        spacing,
        affine,
        source: Some(Source {
            path: dir.to_path_buf(),
            datatype,
            scl_slope: 1.0,
            scl_inter: 0.0,
            header: nifti_header(&affine, [dc, dr, step], [cols, rows, depth], datatype),
        }),
    })
}

/// The smallest NIfTI type that holds every value exactly: int16 or int32
/// for integral values in range, else float32.
fn storage_type(data: &[f32], integral: bool) -> DataType {
    let fits = |t: DataType| {
        let (lo, hi) = t.range();
        data.iter()
            .all(|&v| v.fract() == 0.0 && (v as f64) >= lo && (v as f64) <= hi)
    };
    if integral && fits(DataType::I16) {
        DataType::I16
    } else if integral && fits(DataType::I32) {
        DataType::I32
    } else {
        DataType::F32
    }
}

/// The NIfTI header a volume read from DICOM is written back with (a mask on
/// its grid): sform and qform in scanner coordinates (code 1), spacing.
fn nifti_header(
    affine: &Affine,
    spacing_ijk: [f64; 3],
    ext_ijk: [usize; 3],
    datatype: DataType,
) -> nifti::NiftiHeader {
    let q = Quatern::from_affine(affine);
    let row = |r: usize| {
        let m = &affine.0;
        [
            m[r][0] as f32,
            m[r][1] as f32,
            m[r][2] as f32,
            m[r][3] as f32,
        ]
    };
    let mut h = nifti::NiftiHeader {
        xyzt_units: 2 | 8, // mm, s
        ..nifti::NiftiHeader::default()
    };
    h.dim = [
        3,
        ext_ijk[0] as u16,
        ext_ijk[1] as u16,
        ext_ijk[2] as u16,
        1,
        1,
        1,
        1,
    ];
    h.pixdim = [
        q.qfac as f32,
        spacing_ijk[0] as f32,
        spacing_ijk[1] as f32,
        spacing_ijk[2] as f32,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    h.datatype = datatype.code();
    h.bitpix = (datatype.size() * 8) as i16;
    h.qform_code = 1;
    h.sform_code = 1;
    h.quatern_b = q.b as f32;
    h.quatern_c = q.c as f32;
    h.quatern_d = q.d as f32;
    h.quatern_x = q.offset[0] as f32;
    h.quatern_y = q.offset[1] as f32;
    h.quatern_z = q.offset[2] as f32;
    h.srow_x = row(0);
    h.srow_y = row(1);
    h.srow_z = row(2);
    h
}
