//! The pointwise family: activations and their derivative, linear
//! combinations of equally shaped tensors, the per-(sample, channel)
//! broadcast add (its backward is `reduce_sum` to SampleChannel).

use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};

/// Pointwise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    Identity,
    Relu,
    /// x·σ(x)
    Silu,
    /// Tanh form, as `jax.nn.gelu` (approximate = True):
    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    Gelu,
}

/// The contract of `lincomb(terms)`: 1 to 4 terms of one shape (their dtypes
/// may differ; the output takes the first term's). Returns the shape.
pub fn check_lincomb(terms: &[(f32, &Tensor)]) -> Result<Shape> {
    ensure!(
        (1..=4).contains(&terms.len()),
        "lincomb: {} terms (1 to 4 allowed)",
        terms.len()
    );
    let sh = terms[0].1.shape();
    for (i, (_, t)) in terms.iter().enumerate() {
        ensure!(
            t.shape() == sh,
            "lincomb: term {i} has shape {}, term 0 has {sh}",
            t.shape()
        );
    }
    Ok(sh)
}

/// Elementwise maps and broadcasts.
pub trait PointwiseOps {
    /// `y = act(x)` elementwise (any shape).
    fn act(&self, x: &Tensor, act: Act) -> Result<Tensor>;
    /// `dx = dy · act'(x)`.
    fn act_bwd(&self, dy: &Tensor, x: &Tensor, act: Act) -> Result<Tensor>;
    /// `Σ_i coef_i · x_i` over tensors of one shape (≤ 4 terms); the output has
    /// the dtype of the first term. Covers add, scale, q_sample and posteriors.
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor>;
    /// `y[n,…,c] = x[n,…,c] + v[n,c]`, v f32 `[N, C]`.
    fn add_nc(&self, x: &Tensor, v: &Tensor) -> Result<Tensor>;
}
