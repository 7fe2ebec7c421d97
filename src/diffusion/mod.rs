//! Diffusion: β schedules and their derived coefficients, q_sample and
//! posteriors, the DDPM and DDIM samplers, and the training objectives.

pub mod logits;
pub mod schedule;
pub mod seg;

pub use schedule::{BetaSchedule, Schedule, Variance};
pub use seg::{Denoiser, DiffusionConfig, Output, Recycle, Sampler, SegDiffusion};
