//! The op families. Each file is one family: its argument types, its one
//! contract check (shared by every backend), and the `Backend` sub-trait it
//! defines. [`crate::backend::Backend`] is the sum of these traits, so
//! `&dyn Backend` reaches every op; code holding a concrete backend imports
//! [`crate::backend::prelude`] to call them.
//!
//! Conventions every implementation follows:
//! - Activations are NDHWC in [`MemoryOps::act_dtype`] (f32 on the CPU, bf16 on
//!   GPUs by default). Their gradients have the same dtype.
//! - Parameters, their gradients, optimiser state, per-sample vectors `[N, C]`,
//!   norm statistics and scalars (`[1]`, losses) are f32 everywhere.
//! - Reductions accumulate in f32 (or wider).
//! - Ops allocate their outputs. Only [`OptimOps::adamw_step`],
//!   [`MemoryOps::fill`] and [`MemoryOps::write`] modify existing tensors.
//! - Bad arguments (mismatched shapes, wrong dtypes) are errors, not panics.

pub mod bcast;
pub mod conv;
pub mod custom;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod memory;
pub mod norm;
pub mod optim;
pub mod pointwise;
pub mod rand;
pub mod reduce;

pub use bcast::{bcast_of, Bcast};
pub use conv::{ConvOps, ConvSpec};
pub use layout::LayoutOps;
pub use loss::LossOps;
pub use matmul::MatmulOps;
pub use memory::MemoryOps;
pub use norm::{NormArgs, NormGrads, NormOps, NormOut};
pub use optim::{AdamW, OptimOps, ParamSlot};
pub use pointwise::{Act, Binary, PointwiseOps, Unary};
pub use rand::RandOps;
pub use reduce::ReduceOps;
