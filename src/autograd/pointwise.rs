//! Pointwise ops: unary maps (`dx = dy·f'(x)`), linear combinations
//! (`dx_i = c_i·dy`), and binary ops with a broadcast y, whose backward is a
//! composition: binary ops for the full-shape gradients, `reduce_sum` down
//! to y's broadcast shape for y's (see [`BinaryGrad`]).

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::{bcast_of, Bcast, Binary, Unary};
use crate::tensor::Tensor;
use anyhow::Result;

impl Graph<'_> {
    /// `f(x)` elementwise.
    pub fn unary(&mut self, x: &Var, op: Unary) -> Result<Var> {
        let y = self.dev.unary(&x.t, op)?;
        Ok(self.record(y, &[x.id], || UnaryMap {
            x: x.id,
            x_t: x.t.clone(),
            op,
        }))
    }

    /// `Σ coef_i · x_i` (equal shapes).
    pub fn lincomb(&mut self, terms: &[(f32, &Var)]) -> Result<Var> {
        let ts: Vec<(f32, &Tensor)> = terms.iter().map(|(c, v)| (*c, &v.t)).collect();
        let y = self.dev.lincomb(&ts)?;
        let ids: Vec<Option<VarId>> = terms.iter().map(|(_, v)| v.id).collect();
        Ok(self.record(y, &ids, || LinComb {
            terms: terms.iter().map(|(c, v)| (*c, v.id)).collect(),
        }))
    }

    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        self.lincomb(&[(1.0, a), (1.0, b)])
    }

    /// `x ∘ y`, y broadcast over x as its shape says ([`Bcast`]).
    pub fn binary(&mut self, op: Binary, x: &Var, y: &Var) -> Result<Var> {
        let out = self.dev.binary(op, &x.t, &y.t)?;
        let to = bcast_of(x.shape(), y.shape())?;
        let dy = y.id.is_some();
        let keep = |t: &Tensor, needed: bool| needed.then(|| t.clone());
        let x_t = keep(&x.t, op == Binary::Mul && dy);
        let y_t = keep(&y.t, matches!(op, Binary::Mul | Binary::Div));
        let out_t = keep(&out, op == Binary::Div && dy);
        Ok(self.record(out, &[x.id, y.id], || BinaryGrad {
            op,
            to,
            x: x.id,
            y: y.id,
            x_t,
            y_t,
            out_t,
        }))
    }
}

struct UnaryMap {
    x: Option<VarId>,
    x_t: Tensor,
    op: Unary,
}

impl Backward for UnaryMap {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dx = grads.dev.unary_bwd(&dy, &self.x_t, self.op)?;
        grads.add(self.x, dx)
    }
}

struct LinComb {
    terms: Vec<(f32, Option<VarId>)>,
}

impl Backward for LinComb {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        for (c, id) in self.terms {
            if id.is_some() {
                let g = if c == 1.0 {
                    dy.clone()
                } else {
                    grads.dev.lincomb(&[(c, &dy)])?
                };
                grads.add(id, g)?;
            }
        }
        Ok(())
    }
}

/// The gradients of `out = x ∘ y` (y broadcast by `to`), from dout:
/// - Add: dx = dout, dy = Σ dout;       Sub: dx = dout, dy = −Σ dout;
/// - Mul: dx = dout·y, dy = Σ dout·x;
/// - Div: dx = dout / y, dy = −Σ dx·out   (= −Σ dout·x / y²);
///
/// where Σ is `reduce_sum` to y's broadcast shape (nothing for a full y).
/// Saved: x for Mul (when y needs a gradient), y for Mul and Div, out for
/// Div (when y needs a gradient).
struct BinaryGrad {
    op: Binary,
    to: Bcast,
    x: Option<VarId>,
    y: Option<VarId>,
    x_t: Option<Tensor>,
    y_t: Option<Tensor>,
    out_t: Option<Tensor>,
}

impl Backward for BinaryGrad {
    fn backward(self: Box<Self>, dout: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dev = grads.dev;
        let saved = |t: &Option<Tensor>| {
            t.clone()
                .ok_or_else(|| anyhow::anyhow!("binary backward: a tensor was not saved"))
        };
        // Σ down to y's shape (y's dtype: x's for a full y, else f32).
        let sum_to = |g: Tensor| -> Result<Tensor> {
            match self.to {
                Bcast::Full => Ok(g),
                to => dev.reduce_sum(&g, to),
            }
        };
        let neg = |g: Tensor| dev.lincomb(&[(-1.0, &g)]);
        let want_y = self.y.is_some();
        match self.op {
            Binary::Add | Binary::Sub => {
                if want_y {
                    let s = sum_to(dout.clone())?;
                    let dy = if self.op == Binary::Sub { neg(s)? } else { s };
                    grads.add(self.y, dy)?;
                }
                grads.add(self.x, dout)
            }
            Binary::Mul => {
                if want_y {
                    let dy = sum_to(dev.binary(Binary::Mul, &dout, &saved(&self.x_t)?)?)?;
                    grads.add(self.y, dy)?;
                }
                if self.x.is_some() {
                    let dx = dev.binary(Binary::Mul, &dout, &saved(&self.y_t)?)?;
                    grads.add(self.x, dx)?;
                }
                Ok(())
            }
            Binary::Div => {
                let dx = dev.binary(Binary::Div, &dout, &saved(&self.y_t)?)?;
                if want_y {
                    let s = sum_to(dev.binary(Binary::Mul, &dx, &saved(&self.out_t)?)?)?;
                    grads.add(self.y, neg(s)?)?;
                }
                grads.add(self.x, dx)
            }
        }
    }
}
