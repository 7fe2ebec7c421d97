//! Diffusion: β schedules and their derived coefficients ([`schedule`]),
//! the Gaussian process apart from any objective ([`gaussian`]: q_sample,
//! x₀/ε conversions, posteriors, DDPM and DDIM steps, the reverse-process
//! driver), and the objectives built on it (segmentation: [`seg`]), plus the
//! [`logits`] custom op.

pub mod gaussian;
pub mod logits;
pub mod schedule;
pub mod seg;

pub use gaussian::{Prediction, Sampler};
pub use schedule::{BetaSchedule, Schedule, Variance};
pub use seg::{Denoiser, DiffusionConfig, Recycle, SegDiffusion};
