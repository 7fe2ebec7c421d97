//! Diffusion segmentation (ImgX-DiffSeg), the objective on top of the
//! Gaussian process of [`super::gaussian`]: the noised object is the one-hot
//! mask scaled to [−1, 1]; the network sees the image (the condition) and
//! x_t and predicts x₀ logits (or ε). Training recycles the network's own
//! prediction; the loss is CE + foreground soft Dice; sampling maps each
//! prediction to x̂₀ and runs the Gaussian reverse process.

use super::gaussian::{self, stream_seed, Prediction, SampleSpec, Sampler, Stream};
use super::schedule::{BetaSchedule, Schedule, Variance};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Recycling: where the network's own x̂_0, used as the training target's
/// stand-in, comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recycle {
    /// Noise the true mask to t' = min(t + 1, T − 1) and predict (the paper's).
    #[serde(rename = "xt")]
    Xt,
    /// Noise the true mask to t' = T − 1 (almost pure noise) and predict.
    #[serde(rename = "xT")]
    XT,
    /// Plain denoising training on the true mask.
    #[serde(rename = "off")]
    Off,
}

/// Diffusion settings; the defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    pub beta_schedule: BetaSchedule,
    /// Steps of the defining β schedule.
    pub num_timesteps_beta: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Training steps T (ᾱ resampled from the defining schedule).
    pub num_timesteps: usize,
    /// What the network predicts: x₀ logits (x̂₀ = softmax·2 − 1) or ε.
    pub output: Prediction,
    pub variance: Variance,
    pub recycle: Recycle,
    /// Weight of the ε MSE in ε mode.
    pub mse_weight: f64,
    pub ce_weight: f64,
    pub dice_weight: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            beta_schedule: BetaSchedule::Linear,
            num_timesteps_beta: 1001,
            beta_start: 1e-4,
            beta_end: 0.02,
            num_timesteps: 5,
            output: Prediction::X0,
            variance: Variance::FixedLarge,
            recycle: Recycle::Xt,
            mse_weight: 0.1,
            ce_weight: 1.0,
            dice_weight: 1.0,
        }
    }
}

/// A denoising network: the condition (here the image) and x_t in, x₀
/// logits or ε out. How the condition enters (concatenation, a feature sum,
/// extra clean channels) is the network's choice.
pub trait Denoiser {
    fn denoise(&self, g: &mut Graph, cond: &Var, x_t: &Var, t: &[f32]) -> Result<Var>;
}

/// The segmentation loss of the papers: `ce·CE(logits) + dice·Dice(softmax(logits))`
/// against a one-hot target.
pub fn seg_loss(g: &mut Graph, logits: &Var, target: &Tensor, ce: f32, dice: f32) -> Result<Var> {
    let l_ce = g.cross_entropy(logits, target)?;
    let p = g.softmax(logits)?;
    let l_dice = g.dice_loss(&p, target)?;
    g.lincomb(&[(ce, &l_ce), (dice, &l_dice)])
}

/// Diffusion segmentation: schedule + training objective + samplers.
pub struct SegDiffusion {
    pub cfg: DiffusionConfig,
    pub schedule: Schedule,
}

impl SegDiffusion {
    pub fn new(cfg: DiffusionConfig) -> Result<SegDiffusion> {
        let schedule = Schedule::new(
            cfg.beta_schedule,
            cfg.num_timesteps_beta,
            cfg.beta_start,
            cfg.beta_end,
            cfg.num_timesteps,
        )?;
        Ok(SegDiffusion { cfg, schedule })
    }

    /// Number of training steps T.
    pub fn steps(&self) -> usize {
        self.schedule.len()
    }

    /// x̂_0 in [−1, 1] space from the network output at step t.
    fn x0_hat(
        &self,
        g: &mut Graph,
        out: &Var,
        x_t: &Var,
        sched: &Schedule,
        t: usize,
        ones: &Var,
    ) -> Result<Var> {
        match self.cfg.output {
            Prediction::X0 => {
                let p = g.softmax(out)?;
                g.lincomb(&[(2.0, &p), (-1.0, ones)])
            }
            Prediction::Eps => gaussian::x0_from_eps(g, sched, x_t, out, t),
        }
    }

    /// The training loss for one (image, mask) pair at time step `t`,
    /// recorded on `g` (which must record). `image` is `[N,D,H,W,Ci]`,
    /// `mask` the one-hot target `[N,D,H,W,K]` (0/1). `seed`/`step` select the
    /// noise. Returns the scalar loss.
    pub fn loss(
        &self,
        g: &mut Graph,
        model: &dyn Denoiser,
        image: &Tensor,
        mask: &Tensor,
        t: usize,
        seed: u64,
        step: u64,
    ) -> Result<Var> {
        let b = g.dev;
        let tt = self.steps();
        ensure!(t < tt, "time step {t} outside 0..{tt}");
        ensure!(
            image.shape().rank() == 5
                && mask.shape().rank() == 5
                && image.shape().spatial() == mask.shape().spatial(),
            "image {} and mask {} must be NDHWC on one grid",
            image.shape(),
            mask.shape()
        );
        let sh = mask.shape();
        let ones = g.constant(full(b, sh, 1.0)?);
        let mask_v = g.constant(mask.clone());
        // x_0 of the true mask, in [−1, 1].
        let x0_true = g.lincomb(&[(2.0, &mask_v), (-1.0, &ones)])?;
        let img = g.constant(image.clone());
        let sched = &self.schedule;

        let x_start = match self.cfg.recycle {
            Recycle::Off => x0_true.clone(),
            Recycle::Xt | Recycle::XT => {
                let t_prev = if self.cfg.recycle == Recycle::Xt {
                    (t + 1).min(tt - 1)
                } else {
                    tt - 1
                };
                // A pass without a tape: its prediction is a constant for the loss.
                let mut ng = Graph::inference(b);
                let noise = ng.constant(b.randn(
                    sh,
                    b.act_dtype(),
                    stream_seed(seed, Stream::Recycle, step),
                    0,
                )?);
                let x_tp = gaussian::q_sample(&mut ng, sched, &x0_true, &noise, t_prev)?;
                let out = model.denoise(&mut ng, &img, &x_tp, &vec![t_prev as f32; sh.n()])?;
                let x0 = self.x0_hat(&mut ng, &out, &x_tp, sched, t_prev, &ones)?;
                g.constant(x0.t)
            }
        };
        let noise =
            g.constant(b.randn(sh, b.act_dtype(), stream_seed(seed, Stream::Train, step), 0)?);
        let x_t = gaussian::q_sample(g, sched, &x_start, &noise, t)?;
        let out = model.denoise(g, &img, &x_t, &vec![t as f32; sh.n()])?;
        match self.cfg.output {
            Prediction::X0 => seg_loss(
                g,
                &out,
                mask,
                self.cfg.ce_weight as f32,
                self.cfg.dice_weight as f32,
            ),
            Prediction::Eps => {
                // ε mode: MSE on ε plus the segmentation loss on x̂_0, whose
                // probabilities (x̂_0 + 1)/2 are mapped to logits by ln(clamp(·, ε, 1)).
                let mse = g.mse(&out, &noise)?;
                let x0 = self.x0_hat(g, &out, &x_t, sched, t, &ones)?;
                let logits = super::logits::scaled_to_logits(g, &x0)?;
                let seg = seg_loss(
                    g,
                    &logits,
                    mask,
                    self.cfg.ce_weight as f32,
                    self.cfg.dice_weight as f32,
                )?;
                g.lincomb(&[(self.cfg.mse_weight as f32, &mse), (1.0, &seg)])
            }
        }
    }

    /// The schedule used to sample with `steps` steps (≤ T) and, for each of
    /// its steps, the training time index the network is called with.
    pub fn sampling_schedule(&self, steps: Option<usize>) -> Result<(Schedule, Vec<usize>)> {
        gaussian::sampling_schedule(&self.schedule, steps)
    }

    /// Sample a mask for `image` (`[N,D,H,W,Ci]`) with `classes` classes by
    /// the Gaussian reverse process ([`gaussian::sample`]) with the fixed-large
    /// (or configured) variance. Returns the final x̂₀ (in [−1, 1]; argmax over
    /// channels is the mask); `on_step(k, x̂₀)` sees each step's prediction.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        dev: &dyn Backend,
        model: &dyn Denoiser,
        image: &Tensor,
        classes: usize,
        sampler: Sampler,
        steps: Option<usize>,
        seed: u64,
        on_step: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let sh = image.shape().with_c(classes);
        let (sched, _) = self.sampling_schedule(steps)?;
        let ones = full(dev, sh, 1.0)?;
        let spec = SampleSpec {
            sampler,
            variance: self.cfg.variance,
            steps,
            seed,
        };
        let mut k = sched.len();
        gaussian::sample(
            dev,
            &self.schedule,
            spec,
            sh,
            |g, x, t_net| {
                k -= 1;
                let img = g.constant(image.clone());
                let ones = g.constant(ones.clone());
                let out = model.denoise(g, &img, x, &vec![t_net; sh.n()])?;
                self.x0_hat(g, &out, x, &sched, k, &ones)
            },
            on_step,
        )
    }
}

/// A tensor of `shape` filled with `value`, in the backend's activation dtype.
fn full(b: &dyn Backend, shape: Shape, value: f32) -> Result<Tensor> {
    let t = b.zeros(shape, b.act_dtype())?;
    b.fill(&t, value)?;
    Ok(t)
}
