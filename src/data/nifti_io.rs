//! NIfTI-1 read and write (.nii, .nii.gz), with the geometry checked.
//!
//! Reading streams the file (gunzipping it on the fly when it starts with
//! the gzip magic): the 348-byte header is read first and parsed by the
//! `nifti` crate (which detects the byte order from `dim[0]`), and every
//! field voxdiff relies on is validated — a header that lies is an error
//! naming the file and the field — before any voxel is read. A header whose
//! volume exceeds [`MAX_VOXELS`] is refused there, so a small file that
//! decompresses to gigabytes costs nothing. Then exactly the voxels the
//! header describes are read and decoded to f32 chunk by chunk with
//! `value = raw · scl_slope + scl_inter` (slope 0 means "unscaled", as the
//! standard says); a stream shorter or longer than that is refused.
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
use std::io::{BufRead, Read};
use std::path::Path;

pub use super::nifti_write::{encode, write_nifti, write_nifti_with, WriteOptions};

pub(crate) const HEADER_BYTES: usize = 348;
/// Header plus the 4-byte extension flag: where voxels start in files we write.
pub(crate) const DATA_OFFSET: usize = 352;

/// The largest volume read: 2³⁰ voxels (over all channels), 4 GiB as f32 —
/// more than a whole-body CT at full resolution (512×512×2000 is 2⁻¹ of it).
pub const MAX_VOXELS: usize = 1 << 30;

/// Read a NIfTI-1 file (.nii or .nii.gz) into a [`Volume`].
pub fn read_nifti(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    let mut v = read_volumes(path, false).with_context(|| format!("{}", path.display()))?;
    Ok(v.remove(0))
}

/// Read a 4D/5D NIfTI (e.g. a k-channel coordinate map) as one volume per
/// channel, in file order; a 3D file gives one. See [`interleave_channels`].
pub fn read_nifti_channels(path: impl AsRef<Path>) -> Result<Vec<Volume>> {
    let path = path.as_ref();
    read_volumes(path, true).with_context(|| format!("{}", path.display()))
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

/// Only the header (for listing and checks): reads its 348 bytes, nothing more.
pub fn read_header(path: impl AsRef<Path>) -> Result<NiftiHeader> {
    let path = path.as_ref();
    let (mut stream, _) = open(path)?;
    let hdr = read_header_bytes(&mut stream).with_context(|| format!("{}", path.display()))?;
    parse_header(&hdr).with_context(|| format!("{}", path.display()))
}

/// The file's byte stream, gunzipped when it starts with the gzip magic, and
/// the file's length when it is not compressed.
fn open(path: &Path) -> Result<(Stream, Option<u64>)> {
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let len = f.metadata().ok().map(|m| m.len());
    let mut r = std::io::BufReader::with_capacity(1 << 16, f);
    let head = r
        .fill_buf()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        Ok((Stream::Gzip(flate2::bufread::MultiGzDecoder::new(r)), None))
    } else {
        Ok((Stream::Plain(r), len))
    }
}

/// A NIfTI byte stream: the file itself or its gunzipped content.
enum Stream {
    Plain(std::io::BufReader<std::fs::File>),
    Gzip(flate2::bufread::MultiGzDecoder<std::io::BufReader<std::fs::File>>),
}

impl Stream {
    /// Read into `buf` until it is full or the stream ends; the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let r = match self {
                Stream::Plain(f) => f
                    .read(&mut buf[got..])
                    .map_err(|e| anyhow!("cannot read ({e})")),
                Stream::Gzip(g) => g
                    .read(&mut buf[got..])
                    .map_err(|e| anyhow!("gzip stream is truncated or corrupt ({e})")),
            };
            match r {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => {
                    if let Some(io) = e.downcast_ref::<std::io::Error>() {
                        if io.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }
}

/// The first 348 bytes (fewer when the stream ends before).
fn read_header_bytes(stream: &mut Stream) -> Result<Vec<u8>> {
    let mut hdr = vec![0u8; HEADER_BYTES];
    let got = stream.read_full(&mut hdr)?;
    hdr.truncate(got);
    Ok(hdr)
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

/// Read a file's 3D volumes: one, or (with `allow_channels`) one per entry
/// of dims 4..=7 (time points or vector components, in file order). The
/// header is read and checked before any voxel.
fn read_volumes(path: &Path, allow_channels: bool) -> Result<Vec<Volume>> {
    let (mut stream, file_len) = open(path)?;
    let hdr = read_header_bytes(&mut stream)?;
    let h = parse_header(&hdr)?;
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
    let total = n.checked_mul(channels).filter(|&t| t <= MAX_VOXELS);
    let Some(total) = total else {
        bail!(
            "header dim[1..=3] = {:?}{} ({}) describes {} voxels ({:.1} GiB as {}, {:.1} GiB as float32), \
             more than the {} voxels voxdiff reads: refusing it before reading its data",
            ext,
            if channels > 1 { format!(" × {channels} volumes") } else { String::new() },
            dt.name(),
            n as u128 * channels as u128,
            (n as u128 * channels as u128 * dt.size() as u128) as f64 / (1u64 << 30) as f64,
            dt.name(),
            (n as u128 * channels as u128 * 4) as f64 / (1u64 << 30) as f64,
            MAX_VOXELS
        );
    };
    let need = total * dt.size();
    let short = |avail: usize| {
        let slice = ext[0] * ext[1] * dt.size();
        anyhow!(
            "header dim[1..=3] = {:?}{} ({}) needs {need} bytes of voxels after vox_offset {vox_offset}, \
             the file holds {avail}: header dim[3]={} but file holds {} slices",
            ext,
            if channels > 1 { format!(" × {channels} volumes") } else { String::new() },
            dt.name(),
            ext[2] * channels,
            avail / slice.max(1)
        )
    };
    let long = |extra: String| {
        anyhow!(
            "header dim[1..=3] = {:?}{} ({}) needs {need} bytes of voxels after vox_offset {vox_offset}, \
             but the file holds {extra} more: its data does not match its header",
            ext,
            if channels > 1 { format!(" × {channels} volumes") } else { String::new() },
            dt.name(),
        )
    };
    // An uncompressed file's length tells at once.
    if let Some(len) = file_len {
        let avail = (len as usize).saturating_sub(vox_offset);
        if avail < need {
            return Err(short(avail));
        }
        if avail > need {
            return Err(long(format!("{} bytes", avail - need)));
        }
    }
    // Skip the extensions between the header and vox_offset.
    let mut skip = vec![0u8; vox_offset - hdr.len()];
    let got = stream.read_full(&mut skip)?;
    if got < skip.len() {
        return Err(short(0));
    }
    drop(skip);
    // The voxels, decoded chunk by chunk (never the whole raw payload at once).
    let big = h.endianness == Endianness::Big;
    let chunk_voxels = 1 << 16;
    let mut data: Vec<f32> = Vec::with_capacity(total.min(1 << 24));
    let mut buf = vec![0u8; chunk_voxels * dt.size()];
    let mut read = 0usize;
    while read < need {
        let want = (need - read).min(buf.len());
        let got = stream.read_full(&mut buf[..want])?;
        // A partial voxel at the end of a truncated stream is not decoded.
        let whole = got - got % dt.size();
        data.extend(decode_voxels(&buf[..whole], dt, big));
        read += got;
        if got < want {
            return Err(short(read));
        }
    }
    let mut probe = [0u8; 1];
    if stream.read_full(&mut probe)? > 0 {
        return Err(long("at least 1 byte".into()));
    }
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
    let volume = |data: Vec<f32>| Volume {
        data,
        dims: [ext[2], ext[1], ext[0]],
        spacing: [spacing_ijk[2], spacing_ijk[1], spacing_ijk[0]],
        affine,
        source: Some(source.clone()),
    };
    if channels == 1 {
        return Ok(vec![volume(data)]);
    }
    Ok(data.chunks_exact(n).map(|c| volume(c.to_vec())).collect())
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
