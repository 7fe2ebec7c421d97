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
//! Writing lives in [`super::nifti_write`] (re-exported here).

use super::affine::{Affine, Quatern};
use super::volume::{DataType, Source, Volume};
use anyhow::{anyhow, bail, ensure, Context, Result};
use nifti::{Endianness, NiftiHeader};
use std::io::Read;
use std::path::Path;

pub use super::nifti_write::{encode, write_nifti, write_nifti_with, WriteOptions};

pub(crate) const HEADER_BYTES: usize = 348;
/// Header plus the 4-byte extension flag: where voxels start in files we write.
pub(crate) const DATA_OFFSET: usize = 352;

/// Read a NIfTI-1 file (.nii or .nii.gz) into a [`Volume`].
pub fn read_nifti(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    let mut v = decode(&bytes, path, false).with_context(|| format!("{}", path.display()))?;
    Ok(v.remove(0))
}

/// Read a 4D/5D NIfTI (e.g. a k-channel coordinate map) as one volume per
/// channel, in file order; a 3D file gives one. See [`interleave_channels`].
pub fn read_nifti_channels(path: impl AsRef<Path>) -> Result<Vec<Volume>> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    decode(&bytes, path, true).with_context(|| format!("{}", path.display()))
}

/// Channels on one grid as a `[D, H, W, C]` array (one NDHWC sample).
pub fn interleave_channels(vols: &[Volume]) -> Result<Vec<f32>> {
    ensure!(!vols.is_empty(), "interleave_channels: no volumes");
    for v in &vols[1..] {
        vols[0].check_same_grid(v, 0.0)?;
    }
    let c = vols.len();
    let mut out = vec![0f32; vols[0].numel() * c];
    for (k, v) in vols.iter().enumerate() {
        for (i, &x) in v.data.iter().enumerate() {
            out[i * c + k] = x;
        }
    }
    Ok(out)
}

/// Only the header (for listing and checks). Reads and gunzips the whole file.
pub fn read_header(path: impl AsRef<Path>) -> Result<NiftiHeader> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    parse_header(&bytes).with_context(|| format!("{}", path.display()))
}

/// The file's bytes, gunzipped when they start with the gzip magic.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        gunzip(&raw).with_context(|| format!("{}", path.display()))
    } else {
        Ok(raw)
    }
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

/// Decode a file into its 3D volumes: one, or (with `allow_channels`) one
/// per entry of dims 4..=7 (time points or vector components, in file order).
fn decode(bytes: &[u8], path: &Path, allow_channels: bool) -> Result<Vec<Volume>> {
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
    let mut channels = 1usize;
    for a in 3..ndim {
        let v = h.dim[a + 1] as i16;
        ensure!(v > 0, "header dim[{}] = {v} must be positive", a + 1);
        ensure!(
            v == 1 || allow_channels,
            "header dim[{}] = {v}: only single 3D volumes are supported (dims {:?}); \
             read several with read_nifti_channels",
            a + 1,
            &h.dim[1..=ndim]
        );
        channels *= v as usize;
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
    let need = n * channels * dt.size();
    let avail = bytes.len().saturating_sub(vox_offset);
    if avail < need {
        let slice = ext[0] * ext[1] * dt.size();
        bail!(
            "header dim[1..=3] = {:?}{} ({}) needs {need} bytes of voxels after vox_offset {vox_offset}, \
             the file holds {avail}: header dim[3]={} but file holds {} slices",
            ext,
            if channels > 1 { format!(" × {channels} volumes") } else { String::new() },
            dt.name(),
            ext[2] * channels,
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
    let source = Source {
        path: path.to_path_buf(),
        datatype: dt,
        scl_slope: slope,
        scl_inter: inter,
        header: h,
    };
    Ok(data
        .chunks_exact(n)
        .map(|c| Volume {
            data: c.to_vec(),
            dims: [ext[2], ext[1], ext[0]],
            spacing: [spacing_ijk[2], spacing_ijk[1], spacing_ijk[0]],
            affine,
            source: Some(source.clone()),
        })
        .collect())
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
