//! Gaussian diffusion, apart from any training objective: the forward
//! process `q(x_t | x_0)`, the conversions between the network's two
//! parameterisations (x₀ and ε), the posterior, and the reverse process
//! (DDPM ancestral and DDIM η = 0 steps, over the training schedule or a
//! respaced one). Every objective — segmentation masks (`seg.rs`), image
//! denoising for pretraining, SegDiff's ε-MSE — builds on these unchanged.
//!
//! All coefficients come from a [`Schedule`] (f64) and enter the graph as
//! scalars of `lincomb`, so each step is one elementwise op per formula.

use super::schedule::{even_indices, Schedule, Variance};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::ops::{Binary, Unary};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// What a denoising network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The clean sample x₀ (for segmentation: its logits).
    X0,
    /// The noise ε.
    Eps,
}

/// DDPM (ancestral) or DDIM (η = 0, deterministic) sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    Ddpm,
    Ddim,
}

/// The random streams of diffusion: noise never repeats across uses.
#[derive(Clone, Copy)]
pub enum Stream {
    /// The no-gradient pass of recycling.
    Recycle = 1,
    /// The training noise of a step.
    Train = 2,
    /// x_T of a sample.
    SampleInit = 3,
    /// The noise of reverse step k.
    SampleStep = 4,
    /// The dropout masks of a training step.
    Dropout = 5,
}

/// The Philox seed of draw `index` of `stream` under the run's `seed`.
pub fn stream_seed(seed: u64, stream: Stream, index: u64) -> u64 {
    let mut z = seed ^ ((stream as u64) << 56) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 29)
}

/// x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε.
pub fn q_sample(g: &mut Graph, s: &Schedule, x0: &Var, noise: &Var, t: usize) -> Result<Var> {
    let (a, b) = s.q_coefs(t);
    g.lincomb(&[(a as f32, x0), (b as f32, noise)])
}

/// x₀ = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε.
pub fn x0_from_eps(g: &mut Graph, s: &Schedule, x_t: &Var, eps: &Var, t: usize) -> Result<Var> {
    let (a, b) = s.x0_from_eps_coefs(t);
    g.lincomb(&[(a as f32, x_t), (-(b as f32), eps)])
}

/// x clamped to [lo, hi] as `hi − relu(hi − lo − relu(x − lo))`:
/// improved diffusion's "clip denoised", which keeps a sampler's x̂₀ in the
/// data's range. Without it the ε-network's error at large t enters x̂₀
/// scaled by √(1/ᾱ_t) (≈ 150 at t = T − 1 of T = 100) and can carry the whole
/// trajectory out of the data's range (docs/segdiff.md). This form is exact
/// outside the range (both bounds come out as written, whatever the
/// rounding of the intermediate values) and never leaves it.
pub fn clamp(g: &mut Graph, x: &Var, lo: f32, hi: f32) -> Result<Var> {
    ensure!(lo < hi, "clamp range [{lo}, {hi}] is empty");
    let scalar = |g: &mut Graph, v: f32| -> Result<Var> {
        Ok(g.constant(g.dev.upload(&[v], Shape::scalar(), DType::F32)?))
    };
    // c − v as (−v) + c.
    let minus = |g: &mut Graph, c: f32, v: &Var| -> Result<Var> {
        let neg = g.lincomb(&[(-1.0, v)])?;
        let c = scalar(g, c)?;
        g.binary(Binary::Add, &neg, &c)
    };
    let l = scalar(g, lo)?;
    let above = g.binary(Binary::Sub, x, &l)?;
    let above = g.unary(&above, Unary::Relu)?;
    let below_hi = minus(g, hi - lo, &above)?;
    let below_hi = g.unary(&below_hi, Unary::Relu)?;
    minus(g, hi, &below_hi)
}

/// ε = (√(1/ᾱ_t) x_t − x₀) / √(1/ᾱ_t − 1).
pub fn eps_from_x0(g: &mut Graph, s: &Schedule, x_t: &Var, x0: &Var, t: usize) -> Result<Var> {
    let (a, b) = s.x0_from_eps_coefs(t);
    g.lincomb(&[((a / b) as f32, x_t), (-(1.0 / b) as f32, x0)])
}

/// One reverse step from x_t (t ≥ 1) given the prediction x̂₀:
/// DDPM `x_{t−1} = μ̃(x̂₀, x_t) + σ_t z` with the posterior mean
/// `μ̃ = c₀ x̂₀ + c_t x_t` and σ_t² of `variance` (`z` is required);
/// DDIM (η = 0) `x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1}) ε̂`,
/// ε̂ from (x_t, x̂₀) (`z` unused).
#[allow(clippy::too_many_arguments)]
pub fn reverse_step(
    g: &mut Graph,
    s: &Schedule,
    sampler: Sampler,
    variance: Variance,
    x0: &Var,
    x_t: &Var,
    t: usize,
    z: Option<&Var>,
) -> Result<Var> {
    ensure!(
        t >= 1 && t < s.len(),
        "reverse step from t = {t} of {}",
        s.len()
    );
    match sampler {
        Sampler::Ddpm => {
            let z = z.ok_or_else(|| anyhow::anyhow!("a DDPM step needs its noise"))?;
            let cs = s.posterior_coef_start[t] as f32;
            let ct = s.posterior_coef_t[t] as f32;
            let sd = s.sampling_variance(variance, t).sqrt() as f32;
            g.lincomb(&[(cs, x0), (ct, x_t), (sd, z)])
        }
        Sampler::Ddim => {
            // ε̂ = (a x_t − x̂₀)/b; x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1}) ε̂.
            let (a, b) = s.x0_from_eps_coefs(t);
            let ap = s.alphas_cumprod_prev[t];
            let c_eps = (1.0 - ap).sqrt() / b;
            g.lincomb(&[((ap.sqrt() - c_eps) as f32, x0), ((c_eps * a) as f32, x_t)])
        }
    }
}

/// The schedule to sample with `steps` steps (≤ T; all when `None`) and, for
/// each of its steps, the training time index the network is called with.
pub fn sampling_schedule(train: &Schedule, steps: Option<usize>) -> Result<(Schedule, Vec<usize>)> {
    let tt = train.len();
    let k = steps.unwrap_or(tt);
    ensure!(k >= 1 && k <= tt, "sampling steps {k} must be in 1..={tt}");
    if k == tt {
        return Ok((train.clone(), (0..tt).collect()));
    }
    let idx = even_indices(tt, k);
    Ok((train.respaced(&idx)?, idx))
}

/// How a reverse process runs.
#[derive(Clone, Copy, Debug)]
pub struct SampleSpec {
    pub sampler: Sampler,
    pub variance: Variance,
    /// Steps (≤ T; all when `None`).
    pub steps: Option<usize>,
    pub seed: u64,
}

/// The reverse process: x_T ~ N(0, I) of `shape` (in the backend's
/// activation dtype), then for k = K−1 … 0: `x̂₀ = predict_x0(g, x_k, t_net)`
/// (t_net the training index of step k), `on_step(k, x̂₀)`, and a
/// [`reverse_step`] to x_{k−1}. Returns the last x̂₀. Runs without a tape.
pub fn sample(
    dev: &dyn Backend,
    train: &Schedule,
    spec: SampleSpec,
    shape: Shape,
    mut predict_x0: impl FnMut(&mut Graph, &Var, f32) -> Result<Var>,
    mut on_step: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<Tensor> {
    let (sched, model_t) = sampling_schedule(train, spec.steps)?;
    let noise = |stream: Stream, index: u64| {
        dev.randn(
            shape,
            dev.act_dtype(),
            stream_seed(spec.seed, stream, index),
            0,
        )
    };
    let mut g = Graph::inference(dev);
    let mut x = g.constant(noise(Stream::SampleInit, 0)?);
    let mut x0_last = None;
    for k in (0..sched.len()).rev() {
        let x0 = predict_x0(&mut g, &x, model_t[k] as f32)?;
        on_step(k, &x0.t)?;
        if k > 0 {
            let z = match spec.sampler {
                Sampler::Ddpm => Some(g.constant(noise(Stream::SampleStep, k as u64)?)),
                Sampler::Ddim => None,
            };
            x = reverse_step(
                &mut g,
                &sched,
                spec.sampler,
                spec.variance,
                &x0,
                &x,
                k,
                z.as_ref(),
            )?;
        }
        x0_last = Some(x0);
    }
    Ok(x0_last.expect("at least one sampling step").t)
}
