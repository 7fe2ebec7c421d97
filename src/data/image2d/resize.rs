//! Resizing 2D images, masks and predictions.
//!
//! One filter for everything: the triangle (bilinear) kernel, widened by the
//! scale factor when shrinking so every source pixel contributes (an area
//! average, no aliasing) — the convention of PIL's `Image.resize(...,
//! BILINEAR)` and of torchvision's `Resize(antialias=True)`. Pixel centres
//! are aligned (`align_corners = False`): output pixel `o` of an axis of `n`
//! pixels resized to `m` sits at source coordinate `(o + ½)·n/m − ½`. The two
//! axes are resized one after the other (horizontal first), each output value
//! a normalised weighted sum of the source pixels under the kernel.
//!
//! Masks are resized as a 0/1 field with the same filter and thresholded at
//! ½ ([`resize_mask`]): when shrinking, a pixel is foreground when at least
//! half of the area under its kernel is; when enlarging, the outline follows
//! the bilinear interpolation of the mask rather than nearest-neighbour
//! blocks. Predictions (a probability per pixel) go back to their image's
//! own size the same way ([`probability_to_mask`]).

use super::read::Mask;
use rayon::prelude::*;

/// For each output index of an axis: the first source index and the weights
/// of the source pixels from there on.
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n_in as f64 / n_out as f64;
    let widen = scale.max(1.0);
    let support = widen;
    (0..n_out)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(n_in);
            let mut w: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 + 0.5 - centre) / widen).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Resize interleaved `channels`-channel data of `width` × `height` to
/// `out_w` × `out_h` (row-major, channels fastest).
pub fn resize(
    src: &[f32],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), width * height * channels, "resize: data size");
    assert!(out_w > 0 && out_h > 0, "resize: empty output");
    let c = channels;
    // Horizontal: height rows of out_w.
    let tx = taps(width, out_w);
    let mut mid = vec![0f32; height * out_w * c];
    mid.par_chunks_mut(out_w * c)
        .enumerate()
        .for_each(|(y, row)| {
            let s = &src[y * width * c..(y + 1) * width * c];
            for (x, (lo, w)) in tx.iter().enumerate() {
                for ch in 0..c {
                    let mut acc = 0f32;
                    for (k, wk) in w.iter().enumerate() {
                        acc += wk * s[(lo + k) * c + ch];
                    }
                    row[x * c + ch] = acc;
                }
            }
        });
    // Vertical.
    let ty = taps(height, out_h);
    let stride = out_w * c;
    let mut out = vec![0f32; out_h * stride];
    out.par_chunks_mut(stride).enumerate().for_each(|(y, row)| {
        let (lo, w) = &ty[y];
        for (k, wk) in w.iter().enumerate() {
            let s = &mid[(lo + k) * stride..(lo + k + 1) * stride];
            for (o, v) in row.iter_mut().zip(s) {
                *o += wk * v;
            }
        }
    });
    out
}

/// Resize 8-bit data (rounded to the nearest level, clamped to 0..=255).
pub fn resize_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let f: Vec<f32> = src.iter().map(|&v| v as f32).collect();
    resize(&f, width, height, channels, out_w, out_h)
        .into_iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// A per-pixel probability of `width` × `height` resized to `out_w` ×
/// `out_h` and thresholded: foreground where the resized value is ≥ ½.
pub fn probability_to_mask(
    prob: &[f32],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
) -> Mask {
    let px = if (width, height) == (out_w, out_h) {
        prob.iter().map(|&p| u8::from(p >= 0.5)).collect()
    } else {
        resize(prob, width, height, 1, out_w, out_h)
            .into_iter()
            .map(|p| u8::from(p >= 0.5))
            .collect()
    };
    Mask {
        width: out_w,
        height: out_h,
        px,
    }
}

/// Resize a mask (0/1 field, same filter, threshold ½).
pub fn resize_mask(mask: &Mask, out_w: usize, out_h: usize) -> Mask {
    let f: Vec<f32> = mask.px.iter().map(|&v| f32::from(v != 0)).collect();
    probability_to_mask(&f, mask.width, mask.height, out_w, out_h)
}
