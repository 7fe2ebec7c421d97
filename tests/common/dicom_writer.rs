//! A minimal DICOM file writer for tests, written from the standard (PS3.5,
//! PS3.10) and independent of the reader voxdiff uses: 128-byte preamble,
//! "DICM", the file meta group in explicit VR little endian, then the data
//! set in explicit VR little endian — optionally deflated (transfer syntax
//! 1.2.840.10008.1.2.1.99) — with 16-bit pixel data, native or RLE
//! compressed (PS3.5 Annex G, literal runs only).
#![allow(dead_code)]

use std::io::Write;

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

/// VRs with a 2-byte reserved field and a 32-bit length.
fn long_vr(vr: &[u8; 2]) -> bool {
    matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN")
}

/// Append one explicit-VR little-endian element; the value is padded to an
/// even length (UI and binary with NUL, text with a space).
pub fn element(buf: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if matches!(vr, b"UI" | b"OB" | b"OW") {
            0
        } else {
            b' '
        });
    }
    buf.extend_from_slice(&group.to_le_bytes());
    buf.extend_from_slice(&elem.to_le_bytes());
    buf.extend_from_slice(vr);
    if long_vr(vr) {
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
    } else {
        buf.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    buf.extend_from_slice(&v);
}

fn us(v: u16) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Decimal strings (DS), backslash-separated, each at most 16 characters.
pub fn ds(vals: &[f64]) -> Vec<u8> {
    vals.iter()
        .map(|v| {
            let s = format!("{v:.6}");
            assert!(s.len() <= 16, "DS value {s} is longer than 16 characters");
            s
        })
        .collect::<Vec<_>>()
        .join("\\")
        .into_bytes()
}

/// RLE Lossless of one frame of 16-bit pixels: a 64-byte header (segment
/// count, offsets) and two segments — the high bytes, then the low bytes —
/// each as PackBits literal runs of at most 128 bytes; padded to even length.
pub fn rle(pixels: &[i16]) -> Vec<u8> {
    let packbits = |plane: Vec<u8>| -> Vec<u8> {
        let mut out = Vec::new();
        for run in plane.chunks(128) {
            out.push((run.len() - 1) as u8);
            out.extend_from_slice(run);
        }
        if out.len() % 2 == 1 {
            out.push(0);
        }
        out
    };
    let hi = packbits(pixels.iter().map(|p| (*p as u16 >> 8) as u8).collect());
    let lo = packbits(pixels.iter().map(|p| *p as u16 as u8).collect());
    let mut header = [0u32; 16];
    header[0] = 2;
    header[1] = 64;
    header[2] = 64 + hi.len() as u32;
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.extend_from_slice(&hi);
    out.extend_from_slice(&lo);
    out
}

/// One CT slice as a DICOM file.
#[derive(Clone, Debug)]
pub struct SliceFile {
    pub transfer_syntax: String,
    pub series_uid: String,
    pub instance: u32,
    pub rows: u16,
    pub cols: u16,
    /// Row spacing, column spacing (mm).
    pub pixel_spacing: [f64; 2],
    pub orientation: [f64; 6],
    pub position: [f64; 3],
    pub slope: f64,
    pub intercept: f64,
    /// Rows × Columns stored values, row-major.
    pub pixels: Vec<i16>,
    /// Leave the PixelData element out.
    pub omit_pixel_data: bool,
}

impl SliceFile {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let sop_uid = format!("{}.{}", self.series_uid, self.instance);
        // The data set, tags ascending.
        let mut ds_buf = Vec::new();
        let d = &mut ds_buf;
        element(d, 0x0008, 0x0016, b"UI", CT_IMAGE_STORAGE.as_bytes());
        element(d, 0x0008, 0x0018, b"UI", sop_uid.as_bytes());
        element(d, 0x0008, 0x0060, b"CS", b"CT");
        element(d, 0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.2.1125.1");
        element(d, 0x0020, 0x000E, b"UI", self.series_uid.as_bytes());
        element(
            d,
            0x0020,
            0x0013,
            b"IS",
            self.instance.to_string().as_bytes(),
        );
        element(d, 0x0020, 0x0032, b"DS", &ds(&self.position));
        element(d, 0x0020, 0x0037, b"DS", &ds(&self.orientation));
        element(d, 0x0028, 0x0002, b"US", &us(1));
        element(d, 0x0028, 0x0004, b"CS", b"MONOCHROME2");
        element(d, 0x0028, 0x0010, b"US", &us(self.rows));
        element(d, 0x0028, 0x0011, b"US", &us(self.cols));
        element(d, 0x0028, 0x0030, b"DS", &ds(&self.pixel_spacing));
        element(d, 0x0028, 0x0100, b"US", &us(16));
        element(d, 0x0028, 0x0101, b"US", &us(16));
        element(d, 0x0028, 0x0102, b"US", &us(15));
        element(d, 0x0028, 0x0103, b"US", &us(1)); // signed
        element(d, 0x0028, 0x1052, b"DS", &ds(&[self.intercept]));
        element(d, 0x0028, 0x1053, b"DS", &ds(&[self.slope]));
        if !self.omit_pixel_data {
            let bytes: Vec<u8> = self.pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
            if self.transfer_syntax == JPEG_LS_LOSSLESS || self.transfer_syntax == RLE_LOSSLESS {
                // Encapsulated: undefined length, an empty offset table, one
                // fragment (JPEG-LS: the raw bytes, never decoded), a sequence delimiter.
                let bytes = if self.transfer_syntax == RLE_LOSSLESS {
                    rle(&self.pixels)
                } else {
                    bytes
                };
                d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
                d.extend_from_slice(b"OB\0\0");
                d.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
                for (len, body) in [(0u32, &[][..]), (bytes.len() as u32, &bytes[..])] {
                    d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
                    d.extend_from_slice(&len.to_le_bytes());
                    d.extend_from_slice(body);
                }
                d.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            } else {
                element(d, 0x7FE0, 0x0010, b"OW", &bytes);
            }
        }
        // The file meta group, preceded by its length.
        let mut meta = Vec::new();
        element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
        element(
            &mut meta,
            0x0002,
            0x0002,
            b"UI",
            CT_IMAGE_STORAGE.as_bytes(),
        );
        element(&mut meta, 0x0002, 0x0003, b"UI", sop_uid.as_bytes());
        element(
            &mut meta,
            0x0002,
            0x0010,
            b"UI",
            self.transfer_syntax.as_bytes(),
        );
        element(
            &mut meta,
            0x0002,
            0x0012,
            b"UI",
            b"1.2.826.0.1.3680043.2.1125.99",
        );
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        element(
            &mut out,
            0x0002,
            0x0000,
            b"UL",
            &(meta.len() as u32).to_le_bytes(),
        );
        out.extend_from_slice(&meta);
        if self.transfer_syntax == DEFLATED_LE {
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&ds_buf).unwrap();
            out.extend_from_slice(&enc.finish().unwrap());
        } else {
            out.extend_from_slice(&ds_buf);
        }
        out
    }
}
