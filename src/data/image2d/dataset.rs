//! A 2D data set of photos and masks at the model size, its deterministic
//! train/validation split, per-channel normalisation and seeded samples.
//!
//! Every pair is decoded once, checked (the mask must have its photo's size),
//! resized to `size`² (the photo bilinear with antialiasing and rounded to
//! 8 bits, as PIL's resize; the mask as a 0/1 field with the same filter and
//! thresholded at ½; see [`super::resize`]) and kept in memory (4 bytes per
//! pixel: 600 images at 256² are 157 MB). A pair that cannot be used is
//! skipped and reported in [`Dataset2d::skipped`], not fatal.
//!
//! A sample is `image` `[1, 1, size, size, 3]` (NDHWC, depth 1: 2D runs as
//! depth-1 3D) and `mask` `[1, 1, size, size, 1]` in {0, 1}: the photo in
//! [0, 1], augmented ([`Augment2d`], training samples only), then normalised
//! per channel, `(x − mean_c) / std_c`.

use super::augment::Augment2d;
use super::folder::{first_reasons, pair_folders, Pair, Skipped};
use super::read::{read_mask, read_photo, Mask};
use super::resize::{resize_mask, resize_u8};
use crate::data::rng::Rng;
use crate::draw::Rgb;
use crate::tensor::Shape;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the data are and how they are prepared (a `[data]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Data2dConfig {
    /// Folder of photos (`<id>.jpg` / `.png`).
    pub images: PathBuf,
    /// Folder of masks (`<id>.png`), paired with the photos by stem.
    pub masks: PathBuf,
    /// The model size: photos and masks are resized to `size` × `size`.
    pub size: usize,
    /// Pairs held out for validation (the rest train).
    pub validation: usize,
    /// Seed of the train/validation split.
    pub split_seed: u64,
    /// Per-channel mean of photos in [0, 1] (R, G, B); with `std`, given
    /// instead of computed on the training split.
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub augment: Augment2d,
}

impl Default for Data2dConfig {
    fn default() -> Self {
        Data2dConfig {
            images: PathBuf::new(),
            masks: PathBuf::new(),
            size: 128,
            validation: 100,
            split_seed: 0,
            mean: None,
            std: None,
            augment: Augment2d::segdiff(),
        }
    }
}

/// Per-channel normalisation of photos in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalisation {
    /// Mean and population standard deviation of each channel over every
    /// pixel of the given photos (values / 255); std floored at 1e-6.
    pub fn of(photos: &[&[u8]]) -> Normalisation {
        let (mut s, mut s2, mut n) = ([0f64; 3], [0f64; 3], 0f64);
        for px in photos {
            for p in px.chunks(3) {
                for c in 0..3 {
                    let v = p[c] as f64 / 255.0;
                    s[c] += v;
                    s2[c] += v * v;
                }
            }
            n += (px.len() / 3) as f64;
        }
        let n = n.max(1.0);
        let mean = [0, 1, 2].map(|c| s[c] / n);
        let std = [0, 1, 2].map(|c| (s2[c] / n - mean[c] * mean[c]).max(0.0).sqrt().max(1e-6));
        Normalisation {
            mean: mean.map(|v| v as f32),
            std: std.map(|v| v as f32),
        }
    }

    /// Normalise interleaved RGB in place.
    pub fn apply(&self, rgb: &mut [f32]) {
        for p in rgb.chunks_mut(3) {
            for (c, v) in p.iter_mut().enumerate() {
                *v = (*v - self.mean[c]) / self.std[c];
            }
        }
    }
}

/// One pair at the model size.
#[derive(Clone, Debug)]
pub struct Item2d {
    pub id: String,
    pub image: PathBuf,
    pub mask: PathBuf,
    /// The photo's own size (width, height): predictions go back to it.
    pub original: (usize, usize),
    /// `size`² RGB, 8-bit, interleaved.
    pub rgb: Vec<u8>,
    /// `size`² in {0, 1}.
    pub mask_px: Vec<u8>,
}

/// A photo resized to `size`² and scaled to [0, 1] (interleaved RGB).
pub fn photo_at_size(photo: &Rgb, size: usize) -> Vec<f32> {
    resize_u8(&photo.px, photo.width, photo.height, 3, size, size)
        .into_iter()
        .map(|v| v as f32 / 255.0)
        .collect()
}

/// The model input of a photo: resized, scaled to [0, 1] and normalised;
/// shape [`Sample2d::image_shape`].
pub fn model_input(photo: &Rgb, size: usize, norm: &Normalisation) -> Vec<f32> {
    let mut x = photo_at_size(photo, size);
    norm.apply(&mut x);
    x
}

/// Read a pair, check it and bring it to the model size.
pub fn load_pair(pair: &Pair, size: usize) -> Result<Item2d> {
    let photo = read_photo(&pair.image)?;
    let mask = read_mask(&pair.mask)?;
    ensure!(
        (mask.width, mask.height) == (photo.width, photo.height),
        "{}: the mask is {}×{} but its image {} is {}×{}",
        pair.mask.display(),
        mask.width,
        mask.height,
        pair.image.display(),
        photo.width,
        photo.height
    );
    let rgb = resize_u8(&photo.px, photo.width, photo.height, 3, size, size);
    let mask_px = resize_mask(&mask, size, size).px;
    Ok(Item2d {
        id: pair.id.clone(),
        image: pair.image.clone(),
        mask: pair.mask.clone(),
        original: (photo.width, photo.height),
        rgb,
        mask_px,
    })
}

/// The validation ids of a split: each id gets a rank from a hash of the
/// seed and the id, and the `n_val` lowest ranks validate. So the split
/// depends only on the seed and the set of ids (not on listing order), and
/// adding or losing one pair moves at most one other between the parts.
/// Returns (train, validation) indices into `ids`, each ascending.
pub fn split_ids(ids: &[String], n_val: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    ensure!(
        n_val < ids.len(),
        "validation = {n_val} leaves nothing to train on ({} pairs)",
        ids.len()
    );
    let rank = |id: &str| {
        let words: Vec<u64> = id.bytes().map(u64::from).collect();
        Rng::derive(seed, &words).next_u64()
    };
    let mut order: Vec<(u64, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (rank(id), i))
        .collect();
    order.sort();
    let mut val: Vec<usize> = order[..n_val].iter().map(|o| o.1).collect();
    let mut train: Vec<usize> = order[n_val..].iter().map(|o| o.1).collect();
    val.sort();
    train.sort();
    Ok((train, val))
}

/// A sample: host data in NDHWC with depth 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample2d {
    pub id: String,
    /// Index into [`Dataset2d::items`].
    pub item: usize,
    pub size: usize,
    /// `size`² × 3, normalised.
    pub image: Vec<f32>,
    /// `size`² in {0, 1}.
    pub mask: Vec<f32>,
}

impl Sample2d {
    /// `[1, 1, size, size, 3]`.
    pub fn image_shape(&self) -> Shape {
        Shape::ndhwc(1, 1, self.size, self.size, 3)
    }
    /// `[1, 1, size, size, 1]`.
    pub fn mask_shape(&self) -> Shape {
        Shape::ndhwc(1, 1, self.size, self.size, 1)
    }
}

/// Photos and masks at the model size, split, with their normalisation.
pub struct Dataset2d {
    pub size: usize,
    pub items: Vec<Item2d>,
    /// Indices into `items`.
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub norm: Normalisation,
    pub augment: Augment2d,
    /// Files not used, with the reason (reported, not fatal).
    pub skipped: Vec<Skipped>,
}

impl Dataset2d {
    /// Pair, read and prepare the folders of `cfg` (in parallel; the result
    /// does not depend on the number of threads). The normalisation is
    /// `cfg.mean`/`cfg.std` when given, else computed on the training split.
    pub fn open(cfg: &Data2dConfig) -> Result<Dataset2d> {
        ensure!(cfg.size >= 1, "data.size must be ≥ 1");
        cfg.augment.validate("data.augment")?;
        let (pairs, mut skipped) = pair_folders(&cfg.images, &cfg.masks)?;
        let loaded: Vec<Result<Item2d>> =
            pairs.par_iter().map(|p| load_pair(p, cfg.size)).collect();
        let (mut items, mut failed) = (Vec::new(), Vec::new());
        for (pair, r) in pairs.iter().zip(loaded) {
            match r {
                Ok(it) => items.push(it),
                Err(e) => failed.push(Skipped {
                    path: pair.image.clone(),
                    reason: format!("{e:#}"),
                }),
            }
        }
        // Pairs that failed to load first: they say most about the data.
        failed.append(&mut skipped);
        let skipped = failed;
        ensure!(
            !items.is_empty(),
            "{}: no usable image/mask pair{}",
            cfg.images.display(),
            first_reasons(&skipped)
        );
        let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
        let (train, val) = split_ids(&ids, cfg.validation, cfg.split_seed)?;
        let norm = match (cfg.mean, cfg.std) {
            (Some(mean), Some(std)) => {
                ensure!(
                    std.iter().all(|s| s.is_finite() && *s > 0.0),
                    "data.std = {std:?}: must be positive"
                );
                Normalisation { mean, std }
            }
            (None, None) => {
                let photos: Vec<&[u8]> = train.iter().map(|&i| items[i].rgb.as_slice()).collect();
                Normalisation::of(&photos)
            }
            _ => bail!("data.mean and data.std: give both or neither"),
        };
        Ok(Dataset2d {
            size: cfg.size,
            items,
            train,
            val,
            norm,
            augment: cfg.augment.clone(),
            skipped,
        })
    }

    /// Item `item` as a sample, augmented with draws from `rng` when given.
    pub fn sample(&self, item: usize, rng: Option<&mut Rng>) -> Sample2d {
        let it = &self.items[item];
        let mut image: Vec<f32> = it.rgb.iter().map(|&v| v as f32 / 255.0).collect();
        let mut mask: Vec<f32> = it.mask_px.iter().map(|&v| v as f32).collect();
        if let Some(rng) = rng {
            self.augment.apply(&mut image, &mut mask, self.size, rng);
        }
        self.norm.apply(&mut image);
        Sample2d {
            id: it.id.clone(),
            item,
            size: self.size,
            image,
            mask,
        }
    }

    /// Training sample `index` (0, 1, 2, …), a pure function of `(seed,
    /// index)`: its pair is position `index mod n` of epoch `index div n`'s
    /// shuffled order of the training split, and its augmentation draws come
    /// from `Rng::derive(seed, [index])`.
    pub fn training_sample(&self, seed: u64, index: u64) -> Sample2d {
        let n = self.train.len() as u64;
        let mut order = self.train.clone();
        Rng::derive(seed, &[0xE92D, index / n]).shuffle(&mut order);
        let item = order[(index % n) as usize];
        let mut rng = Rng::derive(seed, &[0x2DA6, index]);
        self.sample(item, Some(&mut rng))
    }

    /// The validation samples, unaugmented, in id order.
    pub fn validation_samples(&self) -> impl Iterator<Item = Sample2d> + '_ {
        self.val.iter().map(|&i| self.sample(i, None))
    }

    /// The reference mask of item `item` at its own size (read again from disk).
    pub fn original_mask(&self, item: usize) -> Result<Mask> {
        read_mask(&self.items[item].mask)
    }

    /// A one-line account of what was loaded and skipped.
    pub fn describe(&self, images: &Path) -> String {
        format!(
            "{}: {} pairs at {}², {} train / {} validation, {} file(s) skipped",
            images.display(),
            self.items.len(),
            self.size,
            self.train.len(),
            self.val.len(),
            self.skipped.len()
        )
    }
}
