//! voxdiff: diffusion models for 3D medical image segmentation on hand-written
//! CUDA kernels, with a tuned CPU backend and a CPU emulation of the CUDA
//! execution model. `docs/architecture.md` is the map; data flows top to
//! bottom:
//!
//! - [`pipeline`]: whole jobs (training loops, sliding-window inference, evaluation)
//! - [`model`]: the exact networks
//! - [`nn`]: layers
//! - [`diffusion`]: schedules, q_sample, posteriors, samplers, objectives
//! - [`autograd`]: the tape
//! - [`ops`]: the op families (argument types, contracts, the family traits)
//! - [`backend`]: `Backend`, the sum of the family traits, and its implementations
//! - [`data`], [`metrics`], [`train`]: I/O and preprocessing, scores, optimisation
//! - [`draw`]: figures and overlays as PNG

pub mod autograd;
pub mod backend;
pub mod data;
pub mod diffusion;
pub mod draw;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod pipeline;
pub mod plan;
pub mod tensor;
pub mod train;
