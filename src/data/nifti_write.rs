//! NIfTI-1 writing: header serialised here (the `nifti` crate's writer
//! resets `scl_slope`/`scl_inter` and writes in place), voxels little-endian,
//! gzip when the name ends in `.gz`, through a temporary file in the
//! destination folder that is renamed over the destination.
//!
//! A volume read from a file is written with that file's header as the
//! template, so qform/sform codes and parameters survive byte for byte when
//! its affine and spacing are unchanged; otherwise sform (exact) and qform
//! (nearest rotation) are both set from the affine.

use super::affine::Quatern;
use super::nifti_io::{header_affine, DATA_OFFSET, HEADER_BYTES};
use super::volume::{DataType, Volume};
use anyhow::{ensure, Context, Result};
use nifti::{Endianness, NiftiHeader};
use std::io::Write;
use std::path::Path;

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
    crate::fsutil::write_atomic_with(path, |f| {
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
