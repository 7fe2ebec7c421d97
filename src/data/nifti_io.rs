//! NIfTI-1 read and write (.nii, .nii.gz), with the geometry checked.
//!
//! Reading: the whole file is read (gunzipped when it starts with the gzip
//! magic), the 348-byte header is parsed by the `nifti` crate (which detects
//! the byte order from `dim[0]`), every field voxdiff relies on is validated —
//! a header that lies is an error naming the file and the field — and the
//! voxels are decoded to f32 with `value = raw · scl_slope + scl_inter`
//! (slope 0 means "unscaled", as the standard says).
//!
//! The affine follows the standard's priority: sform when `sform_code > 0`,
//! else qform (quaternion, "method 2") when `qform_code > 0`, else the ANALYZE
//! fallback `diag(pixdim)`.
//!
//! Writing: the header is serialised here (the crate's writer resets
//! `scl_slope`/`scl_inter` and writes in place); a volume read from a file is
//! written with that file's header as the template, so qform/sform codes and
//! parameters survive byte for byte when the affine is unchanged. Files are
//! written to a temporary name in the destination folder and renamed.

use super::affine::{Affine, Quatern};
use super::volume::{DataType, Source, Volume};
use anyhow::{anyhow, bail, ensure, Context, Result};
use nifti::{Endianness, NiftiHeader};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const HEADER_BYTES: usize = 348;
/// Header plus the 4-byte extension flag: where voxels start in files we write.
const DATA_OFFSET: usize = 352;

/// Read a NIfTI-1 file (.nii or .nii.gz) into a [`Volume`].
pub fn read_nifti(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bytes = if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        gunzip(&raw).with_context(|| format!("{}", path.display()))?
    } else {
        raw
    };
    decode(&bytes, path).with_context(|| format!("{}", path.display()))
}

/// Only the header (for listing and checks). Reads and gunzips the whole file.
pub fn read_header(path: impl AsRef<Path>) -> Result<NiftiHeader> {
    let path = path.as_ref();
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bytes = if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        gunzip(&raw).with_context(|| format!("{}", path.display()))?
    } else {
        raw
    };
    parse_header(&bytes).with_context(|| format!("{}", path.display()))
}

fn gunzip(raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(raw)
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("gzip stream is truncated or corrupt ({e})"))?;
    Ok(out)
}

fn parse_header(bytes: &[u8]) -> Result<NiftiHeader> {
    ensure!(
        bytes.len() >= HEADER_BYTES,
        "file holds {} bytes, less than the {HEADER_BYTES}-byte NIfTI-1 header",
        bytes.len()
    );
    let size_le = i32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let size_be = i32::from_be_bytes(bytes[0..4].try_into().unwrap());
    if size_le == 540 || size_be == 540 {
        bail!("header sizeof_hdr = 540: a NIfTI-2 file, only NIfTI-1 is supported");
    }
    ensure!(
        size_le == 348 || size_be == 348,
        "header sizeof_hdr = {size_le} (expected 348): not a NIfTI-1 file"
    );
    let magic = &bytes[344..348];
    if magic == b"ni1\0" {
        bail!("header magic \"ni1\": a .hdr/.img pair, only single-file .nii is supported");
    }
    ensure!(
        magic == b"n+1\0",
        "header magic {:?} is not \"n+1\\0\": not a NIfTI-1 file",
        String::from_utf8_lossy(magic)
    );
    NiftiHeader::from_reader(&bytes[..HEADER_BYTES]).map_err(|e| anyhow!("header: {e}"))
}

/// The affine a header defines (sform, else qform, else pixdim), validated.
pub fn header_affine(h: &NiftiHeader) -> Result<Affine> {
    let aff = if h.sform_code > 0 {
        for (name, row) in [
            ("srow_x", h.srow_x),
            ("srow_y", h.srow_y),
            ("srow_z", h.srow_z),
        ] {
            ensure!(
                row.iter().all(|v| v.is_finite()),
                "header {name} = {row:?} is not finite (sform_code {})",
                h.sform_code
            );
        }
        let r = |v: [f32; 4]| [v[0] as f64, v[1] as f64, v[2] as f64, v[3] as f64];
        Affine([r(h.srow_x), r(h.srow_y), r(h.srow_z), [0.0, 0.0, 0.0, 1.0]])
    } else if h.qform_code > 0 {
        let q = [
            ("quatern_b", h.quatern_b),
            ("quatern_c", h.quatern_c),
            ("quatern_d", h.quatern_d),
            ("qoffset_x", h.quatern_x),
            ("qoffset_y", h.quatern_y),
            ("qoffset_z", h.quatern_z),
        ];
        for (name, v) in q {
            ensure!(
                v.is_finite(),
                "header {name} = {v} is not finite (qform_code {})",
                h.qform_code
            );
        }
        Quatern {
            b: h.quatern_b as f64,
            c: h.quatern_c as f64,
            d: h.quatern_d as f64,
            offset: [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64],
            spacing: [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64],
            qfac: h.pixdim[0] as f64,
        }
        .to_affine()
    } else {
        Affine::diagonal(
            [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64],
            [0.0; 3],
        )
    };
    ensure!(aff.is_finite(), "header affine is not finite: {:?}", aff.0);
    let det = aff.det3();
    ensure!(
        det.abs() > 1e-9,
        "header affine ({}) is singular (det {det:e})",
        if h.sform_code > 0 {
            "sform"
        } else if h.qform_code > 0 {
            "qform"
        } else {
            "pixdim"
        }
    );
    Ok(aff)
}

fn decode(bytes: &[u8], path: &Path) -> Result<Volume> {
    let h = parse_header(bytes)?;
    let ndim = h.dim[0];
    ensure!(
        (1..=7).contains(&ndim),
        "header dim[0] = {ndim} is not a dimensionality in 1..=7"
    );
    let ndim = ndim as usize;
    let mut ext = [1usize; 3]; // i, j, k extents
    for a in 0..ndim.min(3) {
        let v = h.dim[a + 1] as i16; // the field is signed in the standard
        ensure!(v > 0, "header dim[{}] = {v} must be positive", a + 1);
        ext[a] = v as usize;
    }
    for a in 3..ndim {
        let v = h.dim[a + 1] as i16;
        ensure!(
            v == 1,
            "header dim[{}] = {v}: only single 3D volumes are supported (dims {:?})",
            a + 1,
            &h.dim[1..=ndim]
        );
    }
    let dt = DataType::from_code(h.datatype).ok_or_else(|| {
        anyhow!(
            "header datatype = {} is not a supported voxel type \
             (uint8, int8, uint16, int16, uint32, int32, uint64, int64, float32, float64)",
            h.datatype
        )
    })?;
    ensure!(
        h.bitpix as usize == dt.size() * 8,
        "header bitpix = {} does not match datatype {} ({} bits)",
        h.bitpix,
        dt.name(),
        dt.size() * 8
    );
    let mut spacing_ijk = [1.0f64; 3];
    for a in 0..3 {
        let p = h.pixdim[a + 1];
        if a < ndim {
            ensure!(
                p.is_finite() && p > 0.0,
                "header pixdim[{}] = {p}: voxel spacing must be positive and finite",
                a + 1
            );
            spacing_ijk[a] = p as f64;
        } else if p.is_finite() && p > 0.0 {
            spacing_ijk[a] = p as f64;
        }
    }
    let affine = header_affine(&h)?;
    let (slope, inter) = if h.scl_slope == 0.0 {
        (1.0f32, 0.0f32)
    } else {
        ensure!(
            h.scl_slope.is_finite(),
            "header scl_slope = {} is not finite",
            h.scl_slope
        );
        ensure!(
            h.scl_inter.is_finite(),
            "header scl_inter = {} is not finite",
            h.scl_inter
        );
        (h.scl_slope, h.scl_inter)
    };
    let vox_offset = h.vox_offset;
    ensure!(
        vox_offset.is_finite() && vox_offset >= DATA_OFFSET as f32 && vox_offset.fract() == 0.0,
        "header vox_offset = {vox_offset} must be a whole number ≥ {DATA_OFFSET}"
    );
    let vox_offset = vox_offset as usize;
    let n = ext[0] * ext[1] * ext[2];
    let need = n * dt.size();
    let avail = bytes.len().saturating_sub(vox_offset);
    if avail < need {
        let slice = ext[0] * ext[1] * dt.size();
        bail!(
            "header dim[1..=3] = {:?} ({}) needs {need} bytes of voxels after vox_offset {vox_offset}, \
             the file holds {avail}: header dim[3]={} but file holds {} slices",
            ext,
            dt.name(),
            ext[2],
            avail / slice.max(1)
        );
    }
    let payload = &bytes[vox_offset..vox_offset + need];
    let big = h.endianness == Endianness::Big;
    let mut data = decode_voxels(payload, dt, big);
    if slope != 1.0 || inter != 0.0 {
        for v in data.iter_mut() {
            *v = *v * slope + inter;
        }
    }
    Ok(Volume {
        data,
        dims: [ext[2], ext[1], ext[0]],
        spacing: [spacing_ijk[2], spacing_ijk[1], spacing_ijk[0]],
        affine,
        source: Some(Source {
            path: path.to_path_buf(),
            datatype: dt,
            scl_slope: slope,
            scl_inter: inter,
            header: h,
        }),
    })
}

/// Raw voxels (no scaling) to f32.
fn decode_voxels(p: &[u8], dt: DataType, big: bool) -> Vec<f32> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            p.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().unwrap();
                    (if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }) as f32
                })
                .collect()
        };
    }
    match dt {
        DataType::U8 => p.iter().map(|&b| b as f32).collect(),
        DataType::I8 => p.iter().map(|&b| b as i8 as f32).collect(),
        DataType::U16 => conv!(u16, 2),
        DataType::I16 => conv!(i16, 2),
        DataType::U32 => conv!(u32, 4),
        DataType::I32 => conv!(i32, 4),
        DataType::U64 => conv!(u64, 8),
        DataType::I64 => conv!(i64, 8),
        DataType::F32 => conv!(f32, 4),
        DataType::F64 => conv!(f64, 8),
    }
}

/// How to store voxels when writing.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    pub datatype: DataType,
    /// Stored raw = (value − inter) / slope.
    pub scl_slope: f32,
    pub scl_inter: f32,
}

impl WriteOptions {
    /// The representation of the volume's source file, or float32 unscaled.
    pub fn like(vol: &Volume) -> WriteOptions {
        match &vol.source {
            Some(s) => WriteOptions {
                datatype: s.datatype,
                scl_slope: s.scl_slope,
                scl_inter: s.scl_inter,
            },
            None => WriteOptions::plain(DataType::F32),
        }
    }
    /// A datatype without scaling (e.g. uint8 for a label map).
    pub fn plain(datatype: DataType) -> WriteOptions {
        WriteOptions {
            datatype,
            scl_slope: 1.0,
            scl_inter: 0.0,
        }
    }
}

/// Write with the volume's own representation ([`WriteOptions::like`]).
pub fn write_nifti(vol: &Volume, path: impl AsRef<Path>) -> Result<()> {
    write_nifti_with(vol, path, WriteOptions::like(vol))
}

/// Write a volume; `.gz` at the end of the name compresses.
pub fn write_nifti_with(vol: &Volume, path: impl AsRef<Path>, opt: WriteOptions) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode(vol, opt).with_context(|| format!("{}: cannot encode", path.display()))?;
    let gz = path.to_string_lossy().ends_with(".gz");
    atomic_write(path, |f| {
        if gz {
            let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::new(6));
            enc.write_all(&bytes)?;
            enc.finish()?.flush()?;
        } else {
            f.write_all(&bytes)?;
            f.flush()?;
        }
        Ok(())
    })
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write through `fill` into a temporary file in the destination's folder,
/// then rename it over `path` (readers never see a partial file).
pub fn atomic_write(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w).with_context(|| format!("{}: write failed", tmp.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| anyhow!("{}: write failed ({})", tmp.display(), e.error()))?;
        file.sync_all().ok();
        std::fs::rename(&tmp, path).with_context(|| {
            format!(
                "{}: cannot rename {} over it",
                path.display(),
                tmp.display()
            )
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The header to write: the source's when the grid is unchanged, else a
/// fresh one whose sform and qform both encode `vol.affine`.
fn header_for(vol: &Volume, opt: WriteOptions) -> NiftiHeader {
    let [d, h, w] = vol.dims;
    let mut hdr = match &vol.source {
        Some(s) => s.header.clone(),
        None => NiftiHeader {
            xyzt_units: 2 | 8, // mm, s
            ..NiftiHeader::default()
        },
    };
    let same_geometry = vol.source.as_ref().is_some_and(|s| {
        header_affine(&s.header).is_ok_and(|a| a == vol.affine)
            && [s.header.pixdim[3], s.header.pixdim[2], s.header.pixdim[1]]
                .iter()
                .zip(vol.spacing)
                .all(|(&p, s)| p as f64 == s)
    });
    if !same_geometry {
        let q = Quatern::from_affine(&vol.affine);
        hdr.qform_code = if hdr.qform_code > 0 {
            hdr.qform_code
        } else {
            2
        };
        hdr.sform_code = if hdr.sform_code > 0 {
            hdr.sform_code
        } else {
            2
        };
        hdr.quatern_b = q.b as f32;
        hdr.quatern_c = q.c as f32;
        hdr.quatern_d = q.d as f32;
        hdr.quatern_x = q.offset[0] as f32;
        hdr.quatern_y = q.offset[1] as f32;
        hdr.quatern_z = q.offset[2] as f32;
        hdr.pixdim[0] = q.qfac as f32;
        let m = &vol.affine.0;
        let row = |r: usize| {
            [
                m[r][0] as f32,
                m[r][1] as f32,
                m[r][2] as f32,
                m[r][3] as f32,
            ]
        };
        hdr.srow_x = row(0);
        hdr.srow_y = row(1);
        hdr.srow_z = row(2);
        hdr.pixdim[1] = vol.spacing[2] as f32;
        hdr.pixdim[2] = vol.spacing[1] as f32;
        hdr.pixdim[3] = vol.spacing[0] as f32;
    }
    if vol
        .source
        .as_ref()
        .is_some_and(|s| s.datatype != opt.datatype)
    {
        // A display range meant for the source (e.g. a CT window) does not
        // fit another kind of data (e.g. a label map written from it).
        hdr.cal_min = 0.0;
        hdr.cal_max = 0.0;
    }
    hdr.sizeof_hdr = 348;
    hdr.dim = [3, w as u16, h as u16, d as u16, 1, 1, 1, 1];
    hdr.datatype = opt.datatype.code();
    hdr.bitpix = (opt.datatype.size() * 8) as i16;
    hdr.vox_offset = DATA_OFFSET as f32;
    hdr.scl_slope = opt.scl_slope;
    hdr.scl_inter = opt.scl_inter;
    hdr.magic = *b"n+1\0";
    hdr.endianness = Endianness::Little;
    hdr.descrip.resize(80, 0);
    hdr
}

/// The whole uncompressed file: header, empty extension flag, voxels (little-endian).
pub fn encode(vol: &Volume, opt: WriteOptions) -> Result<Vec<u8>> {
    ensure!(
        vol.dims
            .iter()
            .all(|&n| (1..=i16::MAX as usize).contains(&n)),
        "dims {:?} do not fit NIfTI-1 (1..=32767 per axis)",
        vol.dims
    );
    ensure!(
        vol.spacing.iter().all(|s| s.is_finite() && *s > 0.0),
        "spacing {:?} must be positive and finite",
        vol.spacing
    );
    ensure!(
        vol.affine.is_finite(),
        "affine is not finite: {:?}",
        vol.affine.0
    );
    ensure!(
        opt.scl_slope.is_finite() && opt.scl_slope != 0.0 && opt.scl_inter.is_finite(),
        "scaling slope {} / inter {} must be finite with a non-zero slope",
        opt.scl_slope,
        opt.scl_inter
    );
    let hdr = header_for(vol, opt);
    let mut out = Vec::with_capacity(DATA_OFFSET + vol.numel() * opt.datatype.size());
    encode_header(&hdr, &mut out);
    out.extend_from_slice(&[0, 0, 0, 0]);
    encode_voxels(vol, opt, &mut out)?;
    Ok(out)
}

fn encode_voxels(vol: &Volume, opt: WriteOptions, out: &mut Vec<u8>) -> Result<()> {
    let dt = opt.datatype;
    let (lo, hi) = dt.range();
    let (slope, inter) = (opt.scl_slope as f64, opt.scl_inter as f64);
    let scaled = slope != 1.0 || inter != 0.0;
    for (i, &v) in vol.data.iter().enumerate() {
        let mut x = v as f64;
        if scaled {
            x = (x - inter) / slope;
        }
        if !dt.is_float() {
            ensure!(
                x.is_finite(),
                "voxel {i} = {v} cannot be stored as {}",
                dt.name()
            );
            x = x.round();
            ensure!(
                x >= lo && x <= hi,
                "voxel {i} = {v} (raw {x}) is outside the {} range [{lo}, {hi}]",
                dt.name()
            );
        }
        match dt {
            DataType::U8 => out.push(x as u8),
            DataType::I8 => out.push(x as i8 as u8),
            DataType::U16 => out.extend_from_slice(&(x as u16).to_le_bytes()),
            DataType::I16 => out.extend_from_slice(&(x as i16).to_le_bytes()),
            DataType::U32 => out.extend_from_slice(&(x as u32).to_le_bytes()),
            DataType::I32 => out.extend_from_slice(&(x as i32).to_le_bytes()),
            DataType::U64 => out.extend_from_slice(&(x as u64).to_le_bytes()),
            DataType::I64 => out.extend_from_slice(&(x as i64).to_le_bytes()),
            DataType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            DataType::F64 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
    Ok(())
}

/// Serialise the 348-byte NIfTI-1 header little-endian, field by field in
/// the order of nifti1.h.
fn encode_header(h: &NiftiHeader, out: &mut Vec<u8>) {
    let start = out.len();
    let mut fixed = |b: &[u8], n: usize| {
        let mut v = b.to_vec();
        v.resize(n, 0);
        out.extend_from_slice(&v);
    };
    fixed(&h.sizeof_hdr.to_le_bytes(), 4);
    fixed(&h.data_type, 10);
    fixed(&h.db_name, 18);
    fixed(&h.extents.to_le_bytes(), 4);
    fixed(&h.session_error.to_le_bytes(), 2);
    fixed(&[h.regular], 1);
    fixed(&[h.dim_info], 1);
    for v in h.dim {
        fixed(&v.to_le_bytes(), 2);
    }
    for v in [h.intent_p1, h.intent_p2, h.intent_p3] {
        fixed(&v.to_le_bytes(), 4);
    }
    for v in [h.intent_code, h.datatype, h.bitpix, h.slice_start] {
        fixed(&v.to_le_bytes(), 2);
    }
    for v in h.pixdim {
        fixed(&v.to_le_bytes(), 4);
    }
    for v in [h.vox_offset, h.scl_slope, h.scl_inter] {
        fixed(&v.to_le_bytes(), 4);
    }
    fixed(&h.slice_end.to_le_bytes(), 2);
    fixed(&[h.slice_code], 1);
    fixed(&[h.xyzt_units], 1);
    for v in [h.cal_max, h.cal_min, h.slice_duration, h.toffset] {
        fixed(&v.to_le_bytes(), 4);
    }
    for v in [h.glmax, h.glmin] {
        fixed(&v.to_le_bytes(), 4);
    }
    fixed(&h.descrip, 80);
    fixed(&h.aux_file, 24);
    for v in [h.qform_code, h.sform_code] {
        fixed(&v.to_le_bytes(), 2);
    }
    for v in [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ] {
        fixed(&v.to_le_bytes(), 4);
    }
    for row in [h.srow_x, h.srow_y, h.srow_z] {
        for v in row {
            fixed(&v.to_le_bytes(), 4);
        }
    }
    fixed(&h.intent_name, 16);
    fixed(&h.magic, 4);
    debug_assert_eq!(out.len() - start, HEADER_BYTES);
}
