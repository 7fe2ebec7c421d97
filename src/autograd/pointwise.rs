//! Pointwise ops: unary maps (`dx = dy·f'(x)`), linear combinations
//! (`dx_i = c_i·dy`), the per-(sample, channel) broadcast add
//! (`dv = Σ_voxels dy`, `reduce_sum` to SampleChannel).

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::{Bcast, Unary};
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

    /// `x[n,…,c] + v[n,c]`.
    pub fn add_nc(&mut self, x: &Var, v: &Var) -> Result<Var> {
        let y = self.dev.add_nc(&x.t, &v.t)?;
        Ok(self.record(y, &[x.id, v.id], || AddNc { x: x.id, v: v.id }))
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

struct AddNc {
    x: Option<VarId>,
    v: Option<VarId>,
}

impl Backward for AddNc {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        if self.v.is_some() {
            let dv = grads.dev.reduce_sum(&dy, Bcast::SampleChannel)?;
            grads.add(self.v, dv)?;
        }
        grads.add(self.x, dy)
    }
}
