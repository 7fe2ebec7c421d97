//! Reductions: `reduce_sum` down to a broadcast shape (backward: `expand`
//! of dy back to x's shape and dtype), `expand` (backward: `reduce_sum`),
//! and the softmax over the last dim (backward: `softmax_bwd` from the
//! output).

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::{bcast_of, Bcast};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

impl Graph<'_> {
    /// `Σ x` down to the broadcast shape `to` (f32).
    pub fn reduce_sum(&mut self, x: &Var, to: Bcast) -> Result<Var> {
        let s = self.dev.reduce_sum(&x.t, to)?;
        Ok(self.record(s, &[x.id], || ReduceSum {
            x: x.id,
            shape: x.shape(),
            dtype: x.t.dtype(),
        }))
    }

    /// The f32 `y` of a broadcast shape of `like`, broadcast to `like` in `dtype`.
    pub fn expand(&mut self, y: &Var, like: Shape, dtype: DType) -> Result<Var> {
        let out = self.dev.expand(&y.t, like, dtype)?;
        let to = bcast_of(like, y.shape())?;
        Ok(self.record(out, &[y.id], || Expand { y: y.id, to }))
    }

    /// Softmax over the last dim.
    pub fn softmax(&mut self, x: &Var) -> Result<Var> {
        let p = self.dev.softmax(&x.t)?;
        let p_t = p.clone();
        Ok(self.record(p, &[x.id], || Softmax { x: x.id, p_t }))
    }
}

struct ReduceSum {
    x: Option<VarId>,
    shape: Shape,
    dtype: DType,
}

impl Backward for ReduceSum {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dx = grads.dev.expand(&dy, self.shape, self.dtype)?;
        grads.add(self.x, dx)
    }
}

struct Expand {
    y: Option<VarId>,
    to: Bcast,
}

impl Backward for Expand {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dy_sum = grads.dev.reduce_sum(&dy, self.to)?;
        grads.add(self.y, dy_sum)
    }
}

struct Softmax {
    x: Option<VarId>,
    p_t: Tensor,
}

impl Backward for Softmax {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dx = grads.dev.softmax_bwd(&dy, &self.p_t)?;
        grads.add(self.x, dx)
    }
}
