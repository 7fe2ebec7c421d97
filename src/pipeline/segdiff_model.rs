//! SegDiff training objective and ensemble sampling around the network
//! (`crate::model::segdiff`).
//!
//! Training (ε-prediction, improved diffusion's MSE): a batch of B image/mask
//! pairs, masks as x₀ ∈ {−1, +1} (SegDiff) or {0, 1} (concatenation, as
//! MedSegDiff), one t per pair uniform over 0..T, ε ~ N(0, I),
//! `x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε`, loss `mean (ε̂(x_t, I, t) − ε)²`.
//!
//! The supervised baseline ([`Objective::Supervised`]): the same network
//! with x_t = 0 and t = 0 gives a foreground logit z per pixel from the
//! image; the loss is `CE + Dice` of the two-class logits (0, z) (so CE is
//! the binary cross-entropy of z) against the one-hot mask, and segmenting
//! is one forward pass, σ(z) as the probability (an "ensemble" of one).
//!
//! Segmentation: an ensemble of N samples runs as one batch of N — the image
//! repeated N times, its condition G(I) computed once — through the reverse
//! process of `crate::diffusion::gaussian::sample` (DDPM over all T steps
//! with the β_t ("fixed large") variance, or DDIM η = 0 over fewer). Each
//! sample's final x̂₀ becomes a probability ((x+1)/2 for ±1 masks), clamped
//! to [0, 1]; `super::segdiff_fusion` fuses the ensemble (mean or STAPLE)
//! into the probability thresholded at ½ and an uncertainty.

use super::segdiff_config::{Objective, SegDiffConfig, SegDiffInfer};
use super::train_loop::{BatchSource, StepKey, StepLoss, Trainable};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::data::image2d::{Dataset2d, Sample2d};
use crate::diffusion::gaussian::{clamp, sample, stream_seed, x0_from_eps, SampleSpec, Stream};
use crate::diffusion::seg::seg_loss;
use crate::diffusion::{Schedule, Variance};
use crate::model::segdiff::unet::DropKey;
use crate::model::{Conditioning, SegDiffNet};
use crate::nn::{ParamBuilder, ParamStore};
use crate::ops::Binary;
use crate::tensor::{DType, Shape};
use anyhow::{ensure, Result};
use std::sync::Arc;

/// The network, its parameters, the diffusion schedule and the objective
/// of a run.
pub struct SegDiffModel {
    pub net: SegDiffNet,
    pub ps: ParamStore,
    pub schedule: Schedule,
    pub objective: Objective,
}

/// B training pairs as host data.
pub struct Batch2d {
    pub size: usize,
    /// `[B, 1, size, size, 3]`, normalised.
    pub images: Vec<f32>,
    /// `[B, 1, size, size, 1]` in {0, 1}.
    pub masks: Vec<f32>,
}

impl Batch2d {
    pub fn of(samples: &[Sample2d]) -> Batch2d {
        Batch2d {
            size: samples[0].size,
            images: samples
                .iter()
                .flat_map(|s| s.image.iter().copied())
                .collect(),
            masks: samples
                .iter()
                .flat_map(|s| s.mask.iter().copied())
                .collect(),
        }
    }
    pub fn len(&self) -> usize {
        self.masks.len() / (self.size * self.size)
    }
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }
}

/// A mixed 64-bit hash of the words (the time-step draw of a training pair).
fn mix(words: &[u64]) -> u64 {
    let mut z = 0x5851_F42D_4C95_7F2Du64;
    for &w in words {
        z ^= w.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

impl SegDiffModel {
    /// Build the configured network (parameters from `cfg.train.seed`).
    pub fn new(b: &dyn Backend, cfg: &SegDiffConfig) -> Result<SegDiffModel> {
        let mut ps = ParamStore::new(cfg.train.seed);
        let net = SegDiffNet::new(&mut ParamBuilder::new(&mut ps, b), cfg.model.clone())?;
        Ok(SegDiffModel {
            net,
            ps,
            schedule: cfg.diffusion.schedule()?,
            objective: cfg.objective,
        })
    }

    /// A {0, 1} mask as the diffusion's x₀ value.
    fn x0_of(&self, m: f32) -> f32 {
        match self.net.cfg.conditioning {
            Conditioning::Rrdb => 2.0 * m - 1.0,
            Conditioning::Concat => m,
        }
    }

    /// The range of x₀: [−1, 1] (SegDiff) or [0, 1] (concatenation).
    pub fn x0_range(&self) -> (f32, f32) {
        (self.x0_of(0.0), self.x0_of(1.0))
    }

    /// x̂₀ at step `t` from the network's ε̂ for x_t, clamped to
    /// [`Self::x0_range`] when `clip`.
    pub fn predict_x0(
        &self,
        g: &mut Graph,
        x_t: &Var,
        cond: &Var,
        t: f32,
        clip: bool,
    ) -> Result<Var> {
        let n = x_t.shape().n();
        let eps = self.net.forward(g, &self.ps, x_t, cond, &vec![t; n])?;
        let x0 = x0_from_eps(g, &self.schedule, x_t, &eps, t as usize)?;
        if clip {
            let (lo, hi) = self.x0_range();
            clamp(g, &x0, lo, hi)
        } else {
            Ok(x0)
        }
    }

    /// A sampled x̂₀ value as a foreground probability in [0, 1].
    pub fn probability(&self, x: f32) -> f32 {
        let p = match self.net.cfg.conditioning {
            Conditioning::Rrdb => (x + 1.0) / 2.0,
            Conditioning::Concat => x,
        };
        p.clamp(0.0, 1.0)
    }

    /// The time step of pair `i` of training step `key`: uniform over 0..T.
    pub fn draw_t(&self, key: StepKey, i: usize) -> usize {
        (mix(&[key.seed, key.step, i as u64]) % self.schedule.len() as u64) as usize
    }

    /// The ε-MSE of a batch, recorded on `g`; returns it and the time steps.
    pub fn loss_of(
        &self,
        g: &mut Graph,
        batch: &Batch2d,
        key: StepKey,
    ) -> Result<(Var, Vec<usize>)> {
        let dev = g.dev;
        let (n, s) = (batch.len(), batch.size);
        ensure!(n >= 1, "an empty batch");
        let img = dev.upload(
            &batch.images,
            Shape::ndhwc(n, 1, s, s, self.net.cfg.image_channels),
            dev.act_dtype(),
        )?;
        let x_shape = Shape::ndhwc(n, 1, s, s, 1);
        let x0: Vec<f32> = batch.masks.iter().map(|&m| self.x0_of(m)).collect();
        let x0 = g.constant(dev.upload(&x0, x_shape, dev.act_dtype())?);
        let ts: Vec<usize> = (0..n).map(|i| self.draw_t(key, i)).collect();
        let (ca, cb): (Vec<f32>, Vec<f32>) = ts
            .iter()
            .map(|&t| {
                let (a, b) = self.schedule.q_coefs(t);
                (a as f32, b as f32)
            })
            .unzip();
        let ca = g.constant(dev.upload(&ca, Shape::new(&[n, 1]), DType::F32)?);
        let cb = g.constant(dev.upload(&cb, Shape::new(&[n, 1]), DType::F32)?);
        let noise = g.constant(dev.randn(
            x_shape,
            dev.act_dtype(),
            stream_seed(key.seed, Stream::Train, key.step),
            0,
        )?);
        // x_t = a_n x₀ + b_n ε, one (a, b) per pair.
        let sx = g.binary(Binary::Mul, &x0, &ca)?;
        let se = g.binary(Binary::Mul, &noise, &cb)?;
        let x_t = g.add(&sx, &se)?;
        let img = g.constant(img);
        let cond = self.net.condition(g, &self.ps, &img)?;
        let tf: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
        let mut drop = DropKey::train(stream_seed(key.seed, Stream::Dropout, key.step));
        let eps = self
            .net
            .forward_with(g, &self.ps, &x_t, &cond, &tf, &mut drop)?;
        Ok((g.mse(&eps, &noise)?, ts))
    }

    /// The supervised baseline's foreground logits `[N, 1, H, W, 1]` for
    /// normalised images `[N, 1, H, W, image_channels]`: the network at
    /// x_t = 0, t = 0, with dropout from `drop` (training) or none.
    pub fn logits(&self, g: &mut Graph, images: &Var, drop: &mut DropKey) -> Result<Var> {
        let dev = g.dev;
        let s = images.shape();
        let x_shape = Shape::ndhwc(s.n(), 1, s.h(), s.w(), 1);
        let zero = g.constant(dev.upload(&vec![0.0; x_shape.numel()], x_shape, dev.act_dtype())?);
        let cond = self.net.condition(g, &self.ps, images)?;
        self.net
            .forward_with(g, &self.ps, &zero, &cond, &vec![0.0; s.n()], drop)
    }

    /// The supervised baseline's loss of a batch: `CE + Dice` of the
    /// two-class logits (0, z) against the one-hot mask.
    pub fn supervised_loss(&self, g: &mut Graph, batch: &Batch2d, key: StepKey) -> Result<Var> {
        let dev = g.dev;
        let (n, s) = (batch.len(), batch.size);
        ensure!(n >= 1, "an empty batch");
        let img = g.constant(dev.upload(
            &batch.images,
            Shape::ndhwc(n, 1, s, s, self.net.cfg.image_channels),
            dev.act_dtype(),
        )?);
        let mut drop = DropKey::train(stream_seed(key.seed, Stream::Dropout, key.step));
        let z = self.logits(g, &img, &mut drop)?;
        let x_shape = Shape::ndhwc(n, 1, s, s, 1);
        let zero = g.constant(dev.upload(&vec![0.0; x_shape.numel()], x_shape, dev.act_dtype())?);
        let two = g.concat_c(&[&zero, &z])?;
        let labels = dev.upload(&batch.masks, x_shape, dev.act_dtype())?;
        let target = dev.one_hot(&labels, 2, 1.0, 0.0)?;
        seg_loss(g, &two, &target, 1.0, 1.0)
    }

    /// The N sampled probability maps (`size`², each in [0, 1]) of one
    /// normalised image (`size`² × channels), the N samples as one batch;
    /// for the supervised baseline the one map σ(z) of a single pass.
    pub fn sample_ensemble(
        &self,
        dev: &dyn Backend,
        image: &[f32],
        size: usize,
        infer: &SegDiffInfer,
    ) -> Result<Vec<Vec<f32>>> {
        let n = infer.samples;
        ensure!(n >= 1, "at least one sample");
        let c = self.net.cfg.image_channels;
        ensure!(
            image.len() == size * size * c,
            "image holds {} values, not {size}²×{c}",
            image.len()
        );
        if self.objective == Objective::Supervised {
            let mut g = Graph::inference(dev);
            let img = g.constant(dev.upload(
                image,
                Shape::ndhwc(1, 1, size, size, c),
                dev.act_dtype(),
            )?);
            let z = self.logits(&mut g, &img, &mut DropKey::none())?;
            let p = dev.download(&z.t)?;
            return Ok(vec![p.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect()]);
        }
        let mut g0 = Graph::inference(dev);
        let rep: Vec<f32> = (0..n).flat_map(|_| image.iter().copied()).collect();
        let img =
            g0.constant(dev.upload(&rep, Shape::ndhwc(n, 1, size, size, c), dev.act_dtype())?);
        let cond = self.net.condition(&mut g0, &self.ps, &img)?;
        let spec = SampleSpec {
            sampler: infer.sampler,
            variance: Variance::FixedLarge,
            steps: infer.steps,
            seed: infer.seed,
        };
        let x0 = sample(
            dev,
            &self.schedule,
            spec,
            Shape::ndhwc(n, 1, size, size, 1),
            |g, x, t| self.predict_x0(g, x, &cond, t, infer.clip_denoised),
            |_, _| Ok(()),
        )?;
        let v = dev.download(&x0)?;
        Ok(v.chunks(size * size)
            .map(|s| s.iter().map(|&x| self.probability(x)).collect())
            .collect())
    }
}

impl Trainable for SegDiffModel {
    type Batch = Batch2d;
    fn params(&self) -> &ParamStore {
        &self.ps
    }
    fn loss(&self, g: &mut Graph, batch: &Batch2d, key: StepKey) -> Result<StepLoss> {
        if self.objective == Objective::Supervised {
            return Ok(StepLoss {
                loss: self.supervised_loss(g, batch, key)?,
                log: vec![],
            });
        }
        let (loss, ts) = self.loss_of(g, batch, key)?;
        let mean_t = ts.iter().sum::<usize>() as f64 / ts.len() as f64;
        Ok(StepLoss {
            loss,
            log: vec![("t_mean", mean_t.into())],
        })
    }
}

/// Training batches of a 2D data set: batch `k` holds training samples
/// `k·B … k·B + B − 1` of [`Dataset2d::training_sample`] (seeded,
/// augmented), so a resumed run draws the same batches.
pub struct Source2d {
    pub ds: Arc<Dataset2d>,
    pub seed: u64,
    pub batch: usize,
    pub drawn: u64,
}

impl BatchSource for Source2d {
    type Batch = Batch2d;
    fn next_batch(&mut self) -> Result<Batch2d> {
        let b = self.batch as u64;
        let samples: Vec<Sample2d> = (0..b)
            .map(|i| self.ds.training_sample(self.seed, self.drawn * b + i))
            .collect();
        self.drawn += 1;
        Ok(Batch2d::of(&samples))
    }
    fn position(&self) -> u64 {
        self.drawn
    }
    fn seek(&mut self, n: u64) -> Result<()> {
        self.drawn = n;
        Ok(())
    }
}
