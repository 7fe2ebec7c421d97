//! The random-number family: counter-based Philox noise, the same on every
//! backend for the same (seed, offset).

use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

/// Noise.
pub trait RandOps {
    /// Standard normal noise from counter-based Philox4x32-10
    /// ([`crate::backend::philox`]): element `i` is
    /// `philox::normal(seed, offset + i)`. The same seed and offset give the
    /// same values on every backend (up to float rounding).
    fn randn(&self, shape: Shape, dtype: DType, seed: u64, offset: u64) -> Result<Tensor>;
}
