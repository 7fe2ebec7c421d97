//! The one seam between model code and hardware.
//!
//! [`Backend`] is the sum of the op-family traits of [`crate::ops`] (memory,
//! convolution, matrices, normalisation, pointwise maps, reductions, layout,
//! losses, the optimiser, noise): every type that implements them all is a
//! backend, and `&dyn Backend` reaches every op. Model, nn, diffusion and
//! autograd code call only this trait and never learn which backend runs them.
//! Implementations, each family in the family's own file:
//! - [`cpu::CpuBackend`]: pure Rust, f32, rayon-parallel; the fast path for
//!   machines without a GPU and the independent reference for every kernel.
//! - [`gpu::GpuBackend`] over a device (`Cuda` or `Emu`): the CUDA kernels.
//!
//! [`select`] opens one by name. The conventions every implementation follows
//! are in [`crate::ops`].

pub mod cpu;
pub mod gpu;
pub mod philox;
mod select;

pub use select::select;

use crate::ops::{
    ConvOps, LayoutOps, LossOps, MatmulOps, MemoryOps, NormOps, OptimOps, PointwiseOps, RandOps,
    ReduceOps,
};

/// A backend: every op family. Implemented for any type that implements them all.
pub trait Backend:
    MemoryOps
    + ConvOps
    + MatmulOps
    + NormOps
    + PointwiseOps
    + LayoutOps
    + LossOps
    + OptimOps
    + RandOps
    + ReduceOps
    + Send
    + Sync
{
}

impl<T> Backend for T where
    T: MemoryOps
        + ConvOps
        + MatmulOps
        + NormOps
        + PointwiseOps
        + LayoutOps
        + LossOps
        + OptimOps
        + RandOps
        + ReduceOps
        + Send
        + Sync
{
}

/// The family traits, imported anonymously: `use voxdiff::backend::prelude::*`
/// lets code holding a concrete backend (`CpuBackend`, `GpuBackend`) call
/// every op, as `&dyn Backend` can.
pub mod prelude {
    pub use super::Backend;
    pub use crate::ops::{
        ConvOps as _, LayoutOps as _, LossOps as _, MatmulOps as _, MemoryOps as _, NormOps as _,
        OptimOps as _, PointwiseOps as _, RandOps as _, ReduceOps as _,
    };
}
