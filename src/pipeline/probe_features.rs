//! The probe model: a backbone ([`Fpn3d`], parameters under `backbone.`)
//! and a probe head ([`ProbeHead`], under `head.`), with the features the
//! head reads.
//!
//! Frozen features (`pretrained`, `random`): the clean patch x₀ (windowed to
//! [0, 1]) is noised to each time step t of `features.timesteps` with one
//! fixed noise field per patch, `x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε` (the DDPM
//! schedule of the pretraining run's `objective`: T and linear β, paper:
//! 1000, 1e-4 … 0.02), the coordinate channels are appended clean,
//! the backbone runs without a tape with eval-mode norms, and the pyramids
//! of the time steps are concatenated per level along channels (level i:
//! `m · c0·2^i` channels for m time steps). ε is Philox noise of a seed
//! derived from (`features.noise_seed`, the volume, the patch origin), so the
//! same patch always gets the same noise — in training and at inference.
//!
//! From scratch (`none`): the backbone, randomly initialised, is trained with
//! the head on the clean patch and its coordinates (batch norm in training
//! mode, one pyramid) — vox2vec's from-scratch baseline; the time steps are
//! not used.

use super::pretrain_config::Objective;
use super::pretrain_run::{BACKBONE, HEAD};
use super::probe_config::FeatureSource;
use super::probe_data::ProbeBatch;
use crate::autograd::{Graph, Var};
use crate::backend::{philox, Backend};
use crate::diffusion::schedule::{BetaSchedule, Schedule};
use crate::model::fpn3d_block::apply_running_in_place;
use crate::model::{Fpn3d, FpnConfig, HeadKind, HeadShape, NormMode, ProbeHead};
use crate::nn::{ParamBuilder, ParamStore};
use crate::tensor::{Shape, Tensor};
use anyhow::{bail, ensure, Result};

/// A backbone and a head in one parameter store.
pub struct ProbeModel {
    pub ps: ParamStore,
    pub backbone: Fpn3d,
    pub head: ProbeHead,
    pub source: FeatureSource,
    pub timesteps: Vec<usize>,
    pub noise_seed: u64,
    schedule: Schedule,
}

/// The seed of the fixed noise of the patch at `origin` of volume `volume`.
pub fn patch_noise_seed(seed: u64, volume: u64, origin: [usize; 3]) -> u64 {
    let mut r = crate::data::rng::Rng::derive(
        seed,
        &[volume, origin[0] as u64, origin[1] as u64, origin[2] as u64],
    );
    r.next_u64()
}

/// The host input of one backbone forward: `x` (P patches of `vox` voxels)
/// and `k` coordinate channels interleaved per voxel, `[P, D, H, W, 1 + k]`.
fn interleave(x: &[f32], coords: &[f32], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() * (1 + k));
    for (v, &a) in x.iter().enumerate() {
        out.push(a);
        out.extend_from_slice(&coords[v * k..(v + 1) * k]);
    }
    out
}

impl ProbeModel {
    /// A model of `backbone` (under `backbone.`, as in a pretraining
    /// checkpoint) and a head of `kind` for `classes` classes (under
    /// `head.`), every parameter initialised from `seed`; the backbone frozen
    /// unless the source is `none`. The time steps noise with the schedule
    /// of `objective`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: &dyn Backend,
        backbone: FpnConfig,
        objective: &Objective,
        kind: HeadKind,
        classes: usize,
        source: FeatureSource,
        timesteps: Vec<usize>,
        noise_seed: u64,
        seed: u64,
    ) -> Result<ProbeModel> {
        let t_max = objective.timesteps;
        if let Some(t) = timesteps.iter().find(|&&t| t >= t_max) {
            bail!(
                "features.timesteps: t = {t} is not below the pretraining run's \
                 objective.timesteps = {t_max}"
            );
        }
        let mut ps = ParamStore::new(seed);
        let mut pb = ParamBuilder::new(&mut ps, dev);
        let fpn = Fpn3d::new(&mut pb.pp(BACKBONE), backbone)?;
        let in_mult = match source {
            FeatureSource::None => 1,
            _ => timesteps.len(),
        };
        ensure!(in_mult > 0, "frozen features need at least one time step");
        let shape = HeadShape {
            kind,
            base_channels: fpn.cfg.base_channels,
            num_scales: fpn.cfg.num_scales,
            in_mult,
            classes,
        };
        let head = ProbeHead::new(&mut pb.pp(HEAD), shape)?;
        if source != FeatureSource::None {
            ps.freeze(&format!("{BACKBONE}."));
        }
        let schedule = Schedule::new(
            BetaSchedule::Linear,
            t_max,
            objective.beta[0],
            objective.beta[1],
            t_max,
        )?;
        Ok(ProbeModel {
            ps,
            backbone: fpn,
            head,
            source,
            timesteps,
            noise_seed,
            schedule,
        })
    }

    /// Coordinate channels the backbone takes.
    pub fn k(&self) -> usize {
        self.backbone.cfg.in_channels - 1
    }

    /// The concatenated pyramids of `p` patches (`image` `[P, D, H, W]`,
    /// `coords` `[P, D, H, W, k]`, noise `seeds` one per patch) on `g`, with
    /// the backbone in `mode` (the batch statistics of a training-mode
    /// forward folded in place into the running ones). Frozen sources
    /// noise the patch per time step; `none` feeds it clean.
    pub fn pyramid(
        &self,
        g: &mut Graph,
        patch: [usize; 3],
        image: &[f32],
        coords: &[f32],
        seeds: &[u64],
        mode: NormMode,
    ) -> Result<Vec<Var>> {
        let dev = g.dev;
        let k = self.k();
        let p = seeds.len();
        let vox: usize = patch.iter().product();
        ensure!(
            image.len() == p * vox && coords.len() == p * vox * k,
            "probe features: {} image and {} coordinate values for {p} patches of {patch:?} with \
             k = {k}",
            image.len(),
            coords.len()
        );
        let shape = Shape::ndhwc(p, patch[0], patch[1], patch[2], 1 + k);
        let time = self.backbone.cfg.time;
        if self.source == FeatureSource::None {
            let x =
                g.constant(dev.upload(&interleave(image, coords, k), shape, dev.act_dtype())?);
            let ts = vec![0.0f32; p];
            let out = self
                .backbone
                .forward(g, &self.ps, &x, time.then_some(&ts[..]), mode)?;
            apply_running_in_place(dev, &self.ps, &out.running)?;
            return Ok(out.pyramid);
        }
        let mut noise = vec![0.0f32; p * vox];
        for (j, &s) in seeds.iter().enumerate() {
            philox::fill_normal(&mut noise[j * vox..(j + 1) * vox], s, 0);
        }
        let mut levels: Vec<Vec<Var>> = vec![Vec::new(); self.backbone.cfg.num_scales];
        for &t in &self.timesteps {
            let (a, b) = self.schedule.q_coefs(t);
            let xt: Vec<f32> = image
                .iter()
                .zip(&noise)
                .map(|(&x, &e)| (a * x as f64 + b * e as f64) as f32)
                .collect();
            let x = g.constant(dev.upload(&interleave(&xt, coords, k), shape, dev.act_dtype())?);
            let ts = vec![t as f32; p];
            let out = self
                .backbone
                .forward(g, &self.ps, &x, time.then_some(&ts[..]), mode)?;
            apply_running_in_place(dev, &self.ps, &out.running)?;
            for (l, v) in out.pyramid.into_iter().enumerate() {
                levels[l].push(v);
            }
        }
        levels
            .iter()
            .map(|vs| {
                if vs.len() == 1 {
                    Ok(vs[0].clone())
                } else {
                    g.concat_c(&vs.iter().collect::<Vec<_>>())
                }
            })
            .collect()
    }

    /// The frozen features of a batch as tensors (no tape, eval norms), or
    /// `None` for the `none` source (whose backbone runs on the step's tape).
    pub fn frozen_features(
        &self,
        dev: &dyn Backend,
        patch: [usize; 3],
        image: &[f32],
        coords: &[f32],
        seeds: &[u64],
    ) -> Result<Option<Vec<Tensor>>> {
        if self.source == FeatureSource::None {
            return Ok(None);
        }
        let mut g = Graph::inference(dev);
        let pyr = self.pyramid(&mut g, patch, image, coords, seeds, NormMode::Eval)?;
        Ok(Some(pyr.into_iter().map(|v| v.t).collect()))
    }

    /// Logits `[P, D, H, W, K]` of a batch on `g`; `train` selects the
    /// head's (and a from-scratch backbone's) training-mode norms, whose
    /// statistics are folded into the running ones in place.
    pub fn logits(
        &self,
        g: &mut Graph,
        patch: [usize; 3],
        image: &[f32],
        coords: &[f32],
        seeds: &[u64],
        train: bool,
    ) -> Result<Var> {
        let mode = if train {
            NormMode::Train
        } else {
            NormMode::Eval
        };
        let pyramid = match self.frozen_features(g.dev, patch, image, coords, seeds)? {
            Some(ts) => ts.into_iter().map(|t| g.constant(t)).collect(),
            None => self.pyramid(g, patch, image, coords, seeds, mode)?,
        };
        let (logits, running) = self.head.forward(g, &self.ps, &pyramid, mode)?;
        apply_running_in_place(g.dev, &self.ps, &running)?;
        Ok(logits)
    }

    /// The probe loss of a batch: BCE with logits + vox2vec's squared-sum
    /// soft Dice of the sigmoid probabilities, per class.
    pub fn loss(&self, g: &mut Graph, b: &ProbeBatch) -> Result<(Var, Var, Var)> {
        let seeds: Vec<u64> = b
            .origins
            .iter()
            .map(|&o| patch_noise_seed(self.noise_seed, b.volume as u64, o))
            .collect();
        let logits = self.logits(g, b.patch, &b.image, &b.coords, &seeds, true)?;
        let dev = g.dev;
        let target = dev.upload(&b.target, logits.shape(), logits.t.dtype())?;
        let bce = g.bce_with_logits(&logits, &target)?;
        let p = g.unary(&logits, crate::ops::Unary::Sigmoid)?;
        let dice = g.dice_loss_squared(&p, &target)?;
        let total = g.add(&bce, &dice)?;
        Ok((total, bce, dice))
    }
}
