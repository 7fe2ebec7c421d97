//! The reduce family: sums down to a broadcast shape ([`Bcast`]) and their
//! adjoint, the broadcast up; softmax over the last dim, with its backward.

use super::bcast::{bcast_of, Bcast};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// The contract of `reduce_sum(x, to)`: x of any shape and dtype, `to` a
/// broadcast x has (SampleChannel needs rank ≥ 3). Returns the output shape.
pub fn check_reduce(x: &Tensor, to: Bcast) -> Result<Shape> {
    to.shape(x.shape())
        .map_err(|e| e.context(format!("reduce_sum to {to:?}")))
}

/// The contract of `expand(y, like, dtype)`: y f32 of a broadcast shape of
/// `like`. Returns that broadcast.
pub fn check_expand(y: &Tensor, like: Shape) -> Result<Bcast> {
    ensure!(
        y.dtype() == DType::F32,
        "expand: y must be f32, got {}",
        y.dtype().name()
    );
    bcast_of(like, y.shape()).map_err(|e| e.context("expand"))
}

/// The contract of `softmax(x)`: any shape with a non-empty last dim.
/// Returns (rows, row length).
pub fn check_softmax(x: &Tensor) -> Result<(usize, usize)> {
    let len = x.shape().c();
    ensure!(len >= 1, "softmax: x {} has an empty last dim", x.shape());
    Ok((x.numel() / len, len))
}

/// The contract of `softmax_bwd(dp, p)`: dp and p of one shape and dtype, as
/// [`check_softmax`]. Returns (rows, row length).
pub fn check_softmax_bwd(dp: &Tensor, p: &Tensor) -> Result<(usize, usize)> {
    ensure!(
        dp.shape() == p.shape() && dp.dtype() == p.dtype(),
        "softmax_bwd: dp is {} {} but p is {} {} (one shape and dtype expected)",
        dp.dtype().name(),
        dp.shape(),
        p.dtype().name(),
        p.shape()
    );
    check_softmax(p).map_err(|e| e.context("softmax_bwd"))
}

/// Reductions and the row softmax. Outputs of sums are f32.
pub trait ReduceOps {
    /// `s = Σ x` down to the shape of the broadcast `to` (see [`Bcast`]), f32,
    /// accumulated in f32 or wider in a fixed order (the same bits every
    /// run): Row sums each row (the last dim), SampleChannel all but the
    /// first and last dims, Channel all but the last, Scalar everything; Full
    /// is a cast to f32.
    fn reduce_sum(&self, x: &Tensor, to: Bcast) -> Result<Tensor>;
    /// The adjoint of `reduce_sum`: the f32 `y` of a broadcast shape of
    /// `like`, broadcast to `like` in `dtype`.
    fn expand(&self, y: &Tensor, like: Shape, dtype: DType) -> Result<Tensor>;
    /// Softmax over the last dim, any rank: per row,
    /// `p = e^{x − max} / Σ e^{x − max}`; output in x's dtype.
    fn softmax(&self, x: &Tensor) -> Result<Tensor>;
    /// `dx = p ⊙ (dp − Σ_row dp·p)` from the softmax output `p`.
    fn softmax_bwd(&self, dp: &Tensor, p: &Tensor) -> Result<Tensor>;
}
