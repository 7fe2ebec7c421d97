//! Diffusion segmentation (ImgX-DiffSeg): the noised object is the one-hot
//! mask scaled to [−1, 1]; the network sees `concat(image, x_t)` and predicts
//! x_0 logits (or ε). Training recycles the network's own prediction; sampling
//! runs DDPM or DDIM over the (possibly respaced) schedule.

use super::schedule::{even_indices, BetaSchedule, Schedule, Variance};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Logits of x_0; x̂_0 = softmax(logits)·2 − 1.
    X0,
    /// The noise ε; x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂.
    Eps,
}

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

/// DDPM (ancestral) or DDIM (η = 0, deterministic) sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    Ddpm,
    Ddim,
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
    pub output: Output,
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
            output: Output::X0,
            variance: Variance::FixedLarge,
            recycle: Recycle::Xt,
            mse_weight: 0.1,
            ce_weight: 1.0,
            dice_weight: 1.0,
        }
    }
}

/// A network that maps `concat(image, x_t)` and time steps to logits or ε.
pub trait Denoiser {
    fn denoise(&self, g: &mut Graph, input: &Var, t: &[f32]) -> Result<Var>;
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

/// Which random stream a draw comes from (noise never repeats across uses).
#[derive(Clone, Copy)]
enum Stream {
    Recycle = 1,
    Train = 2,
    SampleInit = 3,
    SampleStep = 4,
}

fn stream_seed(seed: u64, stream: Stream, index: u64) -> u64 {
    let mut z = seed ^ ((stream as u64) << 56) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 29)
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

    /// x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.
    pub fn q_sample(
        &self,
        g: &mut Graph,
        x0: &Var,
        noise: &Var,
        sched: &Schedule,
        t: usize,
    ) -> Result<Var> {
        let (a, s) = sched.q_coefs(t);
        g.lincomb(&[(a as f32, x0), (s as f32, noise)])
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
            Output::X0 => {
                let p = g.softmax(out)?;
                g.lincomb(&[(2.0, &p), (-1.0, ones)])
            }
            Output::Eps => {
                let (a, b) = sched.x0_from_eps_coefs(t);
                g.lincomb(&[(a as f32, x_t), (-(b as f32), out)])
            }
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
                let x_tp = self.q_sample(&mut ng, &x0_true, &noise, sched, t_prev)?;
                let input = ng.concat_c(&[&img, &x_tp])?;
                let out = model.denoise(&mut ng, &input, &vec![t_prev as f32; sh.n()])?;
                let x0 = self.x0_hat(&mut ng, &out, &x_tp, sched, t_prev, &ones)?;
                g.constant(x0.t)
            }
        };
        let noise =
            g.constant(b.randn(sh, b.act_dtype(), stream_seed(seed, Stream::Train, step), 0)?);
        let x_t = self.q_sample(g, &x_start, &noise, sched, t)?;
        let input = g.concat_c(&[&img, &x_t])?;
        let out = model.denoise(g, &input, &vec![t as f32; sh.n()])?;
        match self.cfg.output {
            Output::X0 => seg_loss(
                g,
                &out,
                mask,
                self.cfg.ce_weight as f32,
                self.cfg.dice_weight as f32,
            ),
            Output::Eps => {
                // ε mode: MSE on ε plus the segmentation loss on x̂_0, whose
                // probabilities (x̂_0 + 1)/2 are mapped to logits by ln(clamp(·, ε, 1)).
                let mse = g.mse(&out, &noise)?;
                let x0 = self.x0_hat(g, &out, &x_t, sched, t, &ones)?;
                let logits = g.scaled_to_logits(&x0)?;
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
        let tt = self.steps();
        let k = steps.unwrap_or(tt);
        ensure!(k >= 1 && k <= tt, "sampling steps {k} must be in 1..={tt}");
        if k == tt {
            return Ok((self.schedule.clone(), (0..tt).collect()));
        }
        let idx = even_indices(tt, k);
        Ok((self.schedule.respaced(&idx)?, idx))
    }

    /// Sample a mask for `image` (`[N,D,H,W,Ci]`) with `classes` classes:
    /// x_T ~ N(0, I), then DDPM or DDIM steps down to t = 0. Returns the final
    /// x̂_0 (in [−1, 1]; argmax over channels is the mask); `on_step(k, x̂_0)` sees
    /// each step's prediction (for `--save-steps`).
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        b: &dyn Backend,
        model: &dyn Denoiser,
        image: &Tensor,
        classes: usize,
        sampler: Sampler,
        steps: Option<usize>,
        seed: u64,
        mut on_step: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (sched, model_t) = self.sampling_schedule(steps)?;
        let sh = image.shape().with_c(classes);
        let mut g = Graph::inference(b);
        let ones = g.constant(full(b, sh, 1.0)?);
        let img = g.constant(image.clone());
        let mut x = g.constant(b.randn(
            sh,
            b.act_dtype(),
            stream_seed(seed, Stream::SampleInit, 0),
            0,
        )?);
        let mut x0_last = None;
        for k in (0..sched.len()).rev() {
            let t_net = model_t[k] as f32;
            let input = g.concat_c(&[&img, &x])?;
            let out = model.denoise(&mut g, &input, &vec![t_net; sh.n()])?;
            let x0 = self.x0_hat(&mut g, &out, &x, &sched, k, &ones)?;
            on_step(k, &x0.t)?;
            if k > 0 {
                x = match sampler {
                    Sampler::Ddpm => {
                        let cs = sched.posterior_coef_start[k] as f32;
                        let ct = sched.posterior_coef_t[k] as f32;
                        let sd = sched.sampling_variance(self.cfg.variance, k).sqrt() as f32;
                        let z = g.constant(b.randn(
                            sh,
                            b.act_dtype(),
                            stream_seed(seed, Stream::SampleStep, k as u64),
                            0,
                        )?);
                        g.lincomb(&[(cs, &x0), (ct, &x), (sd, &z)])?
                    }
                    Sampler::Ddim => {
                        // ε̂ = (a x_t − x̂_0)/b; x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1}) ε̂.
                        let (a, bb) = sched.x0_from_eps_coefs(k);
                        let ap = sched.alphas_cumprod_prev[k];
                        let c_eps = (1.0 - ap).sqrt() / bb;
                        g.lincomb(&[((ap.sqrt() - c_eps) as f32, &x0), ((c_eps * a) as f32, &x)])?
                    }
                };
            }
            x0_last = Some(x0);
        }
        Ok(x0_last.expect("at least one sampling step").t)
    }
}

/// A tensor of `shape` filled with `value`, in the backend's activation dtype.
fn full(b: &dyn Backend, shape: Shape, value: f32) -> Result<Tensor> {
    let t = b.zeros(shape, b.act_dtype())?;
    b.fill(&t, value)?;
    Ok(t)
}

/// Convert a float tensor of any dtype to the backend's activation dtype.
pub fn to_act(b: &dyn Backend, t: &Tensor) -> Result<Tensor> {
    if t.dtype() == b.act_dtype() {
        Ok(t.clone())
    } else {
        b.cast(t, b.act_dtype())
    }
}
