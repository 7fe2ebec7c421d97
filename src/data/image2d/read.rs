//! Reading 2D photos and masks: 8-bit PNG and JPEG, grey or colour.
//!
//! The format is recognised by its signature, not by the file name, so a
//! NIfTI volume or a DICOM file given where a 2D image is expected gets an
//! error saying what it is. Decoders: the `png` crate and `zune-jpeg` (both
//! pure Rust). Pixels are taken as stored: no EXIF rotation and no colour
//! management (as PIL's `Image.open` does).
//!
//! | input | photo ([`read_photo`]) | mask ([`read_mask`]) |
//! | --- | --- | --- |
//! | grey (PNG or JPEG) | replicated to R = G = B | value > 0 → 1 (PNG), ≥ 128 → 1 (JPEG) |
//! | RGB / YCbCr | as is | any channel > 0 → 1 (PNG), max channel ≥ 128 → 1 (JPEG) |
//! | alpha channel (PNG) | dropped | dropped |
//! | palette or 1/2/4-bit PNG | expanded to 8-bit RGB / grey | the same, then the rule above |
//! | 16-bit PNG | refused | refused |
//! | CMYK / YCCK JPEG | refused | refused |
//! | truncated or corrupt file | refused | refused |
//!
//! 16-bit PNGs are refused rather than converted: their 16-bit range rarely
//! means "0..65535 linear" (12-bit sensors, depth maps, medical exports), so
//! any fixed conversion would silently change what the model sees; convert
//! such files to 8 bits with a window chosen for the data. JPEG masks are
//! thresholded at half range because lossy compression leaves small non-zero
//! values around every edge (the "> 0" rule would grow each mask by a ring of
//! artefacts); PNG masks are exact, so any non-zero value is foreground.

use crate::draw::Rgb;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// A binary mask: `px[y·width + x]` is 0 or 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub px: Vec<u8>,
}

impl Mask {
    /// An all-background mask.
    pub fn empty(width: usize, height: usize) -> Mask {
        Mask {
            width,
            height,
            px: vec![0; width * height],
        }
    }
    /// Foreground pixels.
    pub fn count(&self) -> usize {
        self.px.iter().filter(|&&v| v != 0).count()
    }
    /// As booleans, row-major.
    pub fn to_bools(&self) -> Vec<bool> {
        self.px.iter().map(|&v| v != 0).collect()
    }
}

/// The two formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
}

/// Decoded 8-bit pixels, 1 (grey) or 3 (RGB) channels, row-major interleaved.
struct Decoded {
    width: usize,
    height: usize,
    channels: usize,
    px: Vec<u8>,
    format: Format,
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// The format of `bytes` by its signature, or an error saying what the file
/// is when it is something else voxdiff knows (a NIfTI volume, DICOM).
pub fn sniff(bytes: &[u8]) -> Result<Format> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        return Ok(Format::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if bytes.starts_with(&[0x1F, 0x8B]) {
        bail!("gzip data (a .nii.gz volume?), not a 2D PNG or JPEG image");
    }
    if bytes.len() >= 348 && (&bytes[344..348] == b"n+1\0" || &bytes[344..348] == b"ni1\0") {
        bail!("a NIfTI volume, not a 2D PNG or JPEG image");
    }
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        bail!("a DICOM file, not a 2D PNG or JPEG image");
    }
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    bail!("not a PNG or JPEG image (starts with {})", head.join(" "))
}

fn decode_png(bytes: &[u8]) -> Result<Decoded> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palette → RGB(A), grey below 8 bits → 8 bits, tRNS → alpha.
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec
        .read_info()
        .map_err(|e| anyhow!("truncated or corrupt PNG: {e}"))?;
    let info = reader.info();
    if info.bit_depth == png::BitDepth::Sixteen {
        bail!(
            "16-bit PNG ({:?}, {}×{}): only 8-bit images are read; convert it to 8 bits with a \
             window chosen for the data",
            info.color_type,
            info.width,
            info.height
        );
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| anyhow!("PNG dimensions overflow"))?;
    let mut buf = vec![0u8; size];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| anyhow!("truncated or corrupt PNG: {e}"))?;
    // The image must end properly (IEND), or the file was cut.
    reader
        .finish()
        .map_err(|e| anyhow!("truncated or corrupt PNG: {e}"))?;
    let (w, h) = (out.width as usize, out.height as usize);
    let src_channels = out.color_type.samples();
    if out.bit_depth != png::BitDepth::Eight {
        bail!("PNG decodes to {:?} samples, expected 8-bit", out.bit_depth);
    }
    let channels = if src_channels >= 3 { 3 } else { 1 };
    let mut px = Vec::with_capacity(w * h * channels);
    for row in buf[..out.buffer_size()].chunks(out.line_size) {
        for p in row[..w * src_channels].chunks(src_channels) {
            px.extend_from_slice(&p[..channels]);
        }
    }
    Ok(Decoded {
        width: w,
        height: h,
        channels,
        px,
        format: Format::Png,
    })
}

fn decode_jpeg(bytes: &[u8]) -> Result<Decoded> {
    let opts = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(bytes), opts);
    dec.decode_headers()
        .map_err(|e| anyhow!("truncated or corrupt JPEG: {e}"))?;
    let input = dec
        .input_colorspace()
        .ok_or_else(|| anyhow!("JPEG headers could not be read"))?;
    let (out, channels) = match input {
        ColorSpace::Luma => (ColorSpace::Luma, 1),
        ColorSpace::YCbCr | ColorSpace::RGB => (ColorSpace::RGB, 3),
        ColorSpace::CMYK | ColorSpace::YCCK => bail!(
            "a {input:?} JPEG (4 ink channels): only grey and RGB/YCbCr JPEGs are read; \
             convert it to RGB first"
        ),
        other => bail!("a JPEG in colour space {other:?}: only grey and RGB/YCbCr are read"),
    };
    dec.set_options(opts.jpeg_set_out_colorspace(out));
    let px = dec
        .decode()
        .map_err(|e| anyhow!("truncated or corrupt JPEG: {e}"))?;
    let info = dec
        .info()
        .ok_or_else(|| anyhow!("JPEG headers could not be read"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    if px.len() != w * h * channels {
        bail!(
            "JPEG decoded to {} bytes, expected {w}×{h}×{channels}",
            px.len()
        );
    }
    Ok(Decoded {
        width: w,
        height: h,
        channels,
        px,
        format: Format::Jpeg,
    })
}

fn decode(bytes: &[u8]) -> Result<Decoded> {
    let d = match sniff(bytes)? {
        Format::Png => decode_png(bytes)?,
        Format::Jpeg => decode_jpeg(bytes)?,
    };
    if d.width == 0 || d.height == 0 {
        bail!("the image is empty ({}×{})", d.width, d.height);
    }
    Ok(d)
}

fn read_decoded(path: &Path) -> Result<Decoded> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// Read a photo as 8-bit RGB (grey replicated to three channels).
pub fn read_photo(path: &Path) -> Result<Rgb> {
    let d = read_decoded(path)?;
    let px = if d.channels == 3 {
        d.px
    } else {
        d.px.iter().flat_map(|&g| [g, g, g]).collect()
    };
    Ok(Rgb {
        width: d.width,
        height: d.height,
        px,
    })
}

/// Read a mask as 0/1 (see the module table for the rule per format).
pub fn read_mask(path: &Path) -> Result<Mask> {
    let d = read_decoded(path)?;
    let threshold = match d.format {
        Format::Png => 1,
        Format::Jpeg => 128,
    };
    let px =
        d.px.chunks(d.channels)
            .map(|p| u8::from(p.iter().copied().max().unwrap_or(0) >= threshold))
            .collect();
    Ok(Mask {
        width: d.width,
        height: d.height,
        px,
    })
}
