//! Pictures for a person: RGB buffers drawn with `plotters` (its bitmap
//! backend, text through `ab_glyph` with DejaVu Sans embedded in the binary, so
//! nothing depends on system fonts, fontconfig or freetype) and written as
//! PNG atomically (temporary sibling, then rename).

use anyhow::{anyhow, Context, Result};
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// The font family every figure uses (registered by [`fonts`]).
pub const FONT: &str = "sans-serif";

/// Register the embedded font with plotters (once per process). Call before
/// drawing any text.
pub fn fonts() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font shipped by the `dejavu` crate.
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            if plotters::style::register_font(FONT, style, bytes).is_err() {
                panic!("the embedded DejaVu Sans font does not parse");
            }
        }
    });
}

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Clone)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub px: Vec<u8>,
}

impl Rgb {
    /// A `width` × `height` image filled with `colour`.
    pub fn filled(width: usize, height: usize, colour: [u8; 3]) -> Rgb {
        let mut px = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            px.extend_from_slice(&colour);
        }
        Rgb { width, height, px }
    }

    /// The pixel at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> [u8; 3] {
        let o = (y * self.width + x) * 3;
        [self.px[o], self.px[o + 1], self.px[o + 2]]
    }

    pub fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        let o = (y * self.width + x) * 3;
        self.px[o..o + 3].copy_from_slice(&c);
    }

    /// Write as an 8-bit RGB PNG (temporary file, then rename).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic_with(path, |f| {
            let mut enc = png::Encoder::new(f, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::High);
            let mut wr = enc.write_header()?;
            wr.write_image_data(&self.px)?;
            wr.finish()?;
            Ok(())
        })
        .with_context(|| format!("{}: PNG", path.display()))
    }
}

/// A plotters error (its types borrow the backend) as an anyhow error.
pub fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}
