//! A prefetching patch loader on worker threads.
//!
//! Sample `i` (0, 1, 2, …) is fully determined by `(seed, i)`: its case is
//! position `i mod n` of epoch `i div n`'s shuffled order, and every random
//! draw of its patch and augmentation comes from `Rng::derive(seed, [i])`.
//! Worker `w` of `W` produces samples `w, w + W, w + 2W, …` into its own
//! bounded channel (capacity `prefetch`), and [`Loader::next`] takes sample
//! `i` from worker `i mod W` — so the stream is identical for any number of
//! workers, the workers run ahead of the consumer by up to `W · prefetch`
//! samples, and a slow sample never reorders the stream.

use super::augment::{cut_patch, Augment};
use super::patch::{ClassIndex, PatchSampler};
use super::rng::Rng;
use super::volume::Volume;
use crate::backend::Backend;
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{anyhow, ensure, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A preprocessed case held in memory: the image (already windowed /
/// normalised) and its label map on the same grid.
pub struct PreparedCase {
    pub id: String,
    pub image: Volume,
    pub label: Option<Volume>,
    pub classes: Option<ClassIndex>,
    /// Image value used outside the volume (e.g. the window's low end).
    pub fill: f32,
}

impl PreparedCase {
    pub fn new(
        id: impl Into<String>,
        image: Volume,
        label: Option<Volume>,
        fill: f32,
    ) -> Result<PreparedCase> {
        if let Some(l) = &label {
            image.check_same_grid(l, 1e-3)?;
        }
        let classes = label.as_ref().map(ClassIndex::new);
        Ok(PreparedCase {
            id: id.into(),
            image,
            label,
            classes,
            fill,
        })
    }
}

/// One training sample: an image patch and its label patch, `[D, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub index: u64,
    pub case: usize,
    pub origin: [i64; 3],
    pub size: [usize; 3],
    pub image: Vec<f32>,
    pub label: Option<Vec<f32>>,
}

impl Sample {
    /// Upload as `[1, D, H, W, 1]` tensors (image in `dtype`, labels f32 ids).
    pub fn to_tensors(&self, b: &dyn Backend, dtype: DType) -> Result<(Tensor, Option<Tensor>)> {
        let [d, h, w] = self.size;
        let shape = Shape::ndhwc(1, d, h, w, 1);
        let img = b.upload(&self.image, shape, dtype)?;
        let lab = match &self.label {
            Some(l) => Some(b.upload(l, shape, DType::F32)?),
            None => None,
        };
        Ok((img, lab))
    }
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub sampler: PatchSampler,
    pub augment: Augment,
    pub seed: u64,
    pub workers: usize,
    /// Samples each worker may have ready ahead of the consumer.
    pub prefetch: usize,
}

/// Produce sample `index` (pure function of the cases, config and index).
pub fn make_sample(cases: &[PreparedCase], cfg: &LoaderConfig, index: u64) -> Sample {
    let n = cases.len() as u64;
    let epoch = index / n;
    let mut order: Vec<usize> = (0..cases.len()).collect();
    Rng::derive(cfg.seed, &[0xE90C, epoch]).shuffle(&mut order);
    let case = order[(index % n) as usize];
    let c = &cases[case];
    let mut rng = Rng::derive(cfg.seed, &[0x5A3B, index]);
    let origin = cfg
        .sampler
        .origin(c.image.dims, c.classes.as_ref(), &mut rng);
    let map = cfg
        .augment
        .spatial_map(c.image.spacing, origin, cfg.sampler.size, &mut rng);
    let (mut image, mut label) = cut_patch(
        &c.image.data,
        c.label.as_ref().map(|l| l.data.as_slice()),
        c.image.dims,
        &map,
        cfg.sampler.size,
        c.fill,
    );
    cfg.augment.intensity(&mut image, &mut rng);
    cfg.augment.fov_cut(
        &mut image,
        label.as_deref_mut(),
        cfg.sampler.size,
        c.fill,
        &mut rng,
    );
    Sample {
        index,
        case,
        origin,
        size: cfg.sampler.size,
        image,
        label,
    }
}

pub struct Loader {
    rx: Vec<Receiver<Sample>>,
    next: u64,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Loader {
    pub fn new(cases: Arc<Vec<PreparedCase>>, cfg: LoaderConfig) -> Result<Loader> {
        Loader::starting_at(cases, cfg, 0)
    }

    /// The stream from sample `start` on (a resumed run continues its stream).
    pub fn starting_at(
        cases: Arc<Vec<PreparedCase>>,
        cfg: LoaderConfig,
        start: u64,
    ) -> Result<Loader> {
        ensure!(!cases.is_empty(), "loader: no cases");
        ensure!(cfg.workers >= 1, "loader: workers must be ≥ 1");
        ensure!(cfg.prefetch >= 1, "loader: prefetch must be ≥ 1");
        let stop = Arc::new(AtomicBool::new(false));
        let mut rx = Vec::new();
        let mut handles = Vec::new();
        for w in 0..cfg.workers {
            let (tx, r) = sync_channel::<Sample>(cfg.prefetch);
            rx.push(r);
            let (cases, cfg, stop) = (cases.clone(), cfg.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name(format!("voxdiff-loader-{w}"))
                .spawn(move || {
                    let mut i = start + w as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let s = make_sample(&cases, &cfg, i);
                        if tx.send(s).is_err() {
                            break;
                        }
                        i += cfg.workers as u64;
                    }
                })?;
            handles.push(h);
        }
        Ok(Loader {
            rx,
            next: start,
            stop,
            handles,
        })
    }

    /// The next sample of the stream (blocks until its worker has it).
    pub fn next_sample(&mut self) -> Result<Sample> {
        let w = (self.next % self.rx.len() as u64) as usize;
        let s = self.rx[w]
            .recv()
            .map_err(|_| anyhow!("loader worker {w} stopped (it panicked?)"))?;
        debug_assert_eq!(s.index, self.next);
        self.next += 1;
        Ok(s)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks workers waiting to send.
        self.rx.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
