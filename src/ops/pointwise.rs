//! The pointwise family: unary maps ([`Unary`]) and their derivative, binary
//! ops with a broadcast second operand ([`Binary`], [`Bcast`]), linear
//! combinations of equally shaped tensors. The binary ops have no backward
//! op of their own: their gradients are binary ops and `reduce_sum`s
//! (autograd/pointwise.rs).

use super::bcast::{bcast_of, Bcast};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// The activation fused into the norm's epilogue ([`super::NormArgs`]).
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

impl Act {
    /// The same map as a [`Unary`] (none for the identity).
    pub fn unary(self) -> Option<Unary> {
        match self {
            Act::Identity => None,
            Act::Relu => Some(Unary::Relu),
            Act::Silu => Some(Unary::Silu),
            Act::Gelu => Some(Unary::Gelu),
        }
    }
}

/// An elementwise map `y = f(x)`, with its parameter where it has one.
///
/// The derivative (`unary_bwd`) follows PyTorch where f has none: ReLU 0 at
/// 0, LeakyReLU α at 0, |x| and smooth L1 0 at 0; √x gives +∞ at 0, ln x
/// gives 1/x. NaN in gives NaN out, for f and for `dy·f'`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// max(x, 0)
    Relu,
    /// x for x > 0, α·x otherwise (α finite).
    LeakyRelu(f32),
    /// σ(x) = 1 / (1 + e^-x)
    Sigmoid,
    /// x·σ(x)
    Silu,
    /// Tanh form, as [`Act::Gelu`].
    Gelu,
    Tanh,
    Exp,
    /// ln x (NaN below 0).
    Log,
    /// ln(1 + e^x), computed as max(x, 0) + ln(1 + e^-|x|).
    Softplus,
    Square,
    /// √x (NaN below 0).
    Sqrt,
    Abs,
    /// 0.5·x²/β for |x| < β, else |x| − 0.5·β (PyTorch's smooth L1 with
    /// beta = β ≥ 0; β = 0 is |x|).
    SmoothL1(f32),
}

impl Unary {
    /// Every map, with sample parameters (for tests and benchmarks).
    pub const ALL: [Unary; 13] = [
        Unary::Relu,
        Unary::LeakyRelu(0.1),
        Unary::Sigmoid,
        Unary::Silu,
        Unary::Gelu,
        Unary::Tanh,
        Unary::Exp,
        Unary::Log,
        Unary::Softplus,
        Unary::Square,
        Unary::Sqrt,
        Unary::Abs,
        Unary::SmoothL1(0.5),
    ];
}

/// The contract of `unary(x, op)`: any x; the parameter of `op` finite (and
/// β ≥ 0 for smooth L1).
pub fn check_unary(op: Unary) -> Result<()> {
    match op {
        Unary::LeakyRelu(alpha) => ensure!(
            alpha.is_finite(),
            "unary: leaky ReLU slope must be finite, got {alpha}"
        ),
        Unary::SmoothL1(beta) => ensure!(
            beta.is_finite() && beta >= 0.0,
            "unary: smooth L1 beta must be finite and ≥ 0, got {beta}"
        ),
        _ => {}
    }
    Ok(())
}

/// The contract of `unary_bwd(dy, x, op)`: that of `unary`, and dy of x's
/// shape and dtype.
pub fn check_unary_bwd(dy: &Tensor, x: &Tensor, op: Unary) -> Result<()> {
    check_unary(op)?;
    ensure!(
        dy.shape() == x.shape() && dy.dtype() == x.dtype(),
        "unary_bwd: dy is {} {} but x is {} {} (one shape and dtype expected)",
        dy.dtype().name(),
        dy.shape(),
        x.dtype().name(),
        x.shape()
    );
    Ok(())
}

/// A binary elementwise op `x ∘ y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    pub const ALL: [Binary; 4] = [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div];
}

/// The contract of `binary(op, x, y)`: x any shape and dtype; y's shape one
/// of x's broadcast shapes ([`bcast_of`]) — a Full y in x's dtype, any other
/// in f32. Returns the broadcast.
pub fn check_binary(x: &Tensor, y: &Tensor) -> Result<Bcast> {
    let b = bcast_of(x.shape(), y.shape()).map_err(|e| e.context("binary: y"))?;
    let want = if b == Bcast::Full {
        x.dtype()
    } else {
        DType::F32
    };
    ensure!(
        y.dtype() == want,
        "binary: a {b:?} y must be {} (x is {}), got {}",
        want.name(),
        x.dtype().name(),
        y.dtype().name()
    );
    Ok(b)
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
    /// `y = f(x)` elementwise (any shape), in x's dtype.
    fn unary(&self, x: &Tensor, op: Unary) -> Result<Tensor>;
    /// `dx = dy · f'(x)` (see [`Unary`] for the points where f has no derivative).
    fn unary_bwd(&self, dy: &Tensor, x: &Tensor, op: Unary) -> Result<Tensor>;
    /// `Σ_i coef_i · x_i` over tensors of one shape (≤ 4 terms); the output has
    /// the dtype of the first term. Covers add, scale, q_sample and posteriors.
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor>;
    /// `out = x ∘ y` elementwise, y broadcast over x as its shape says
    /// ([`Bcast`]: of x's shape, per row, per (sample, channel), per channel,
    /// or one value); out has x's shape and dtype, computed in f32.
    fn binary(&self, op: Binary, x: &Tensor, y: &Tensor) -> Result<Tensor>;
}
