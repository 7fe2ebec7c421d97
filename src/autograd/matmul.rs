//! Dense layers: `y = x·w + b` on `[M, K]` vectors. Backward: `dx = dy·wᵀ`,
//! `dw = xᵀ·dy`, `db = Σ_m dy`.

use super::{column_sum, Backward, GradAcc, Graph, Var, VarId};
use crate::tensor::Tensor;
use anyhow::Result;

impl Graph<'_> {
    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = self.dev.linear(&x.t, &w.t, b.map(|b| &b.t))?;
        let b_id = b.and_then(|b| b.id);
        Ok(self.record(y, &[x.id, w.id, b_id], || Linear {
            x: x.id,
            w: w.id,
            b: b_id,
            x_t: w.id.map(|_| x.t.clone()),
            w_t: x.id.map(|_| w.t.clone()),
        }))
    }
}

struct Linear {
    x: Option<VarId>,
    w: Option<VarId>,
    b: Option<VarId>,
    x_t: Option<Tensor>,
    w_t: Option<Tensor>,
}

impl Backward for Linear {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dev = grads.dev;
        if let Some(w_t) = &self.w_t {
            grads.add(self.x, dev.linear_dgrad(&dy, w_t)?)?;
        }
        if let Some(x_t) = &self.x_t {
            let (dw, db) = dev.linear_wgrad(x_t, &dy, self.b.is_some())?;
            grads.add(self.w, dw)?;
            if let Some(db) = db {
                grads.add(self.b, db)?;
            }
        } else if self.b.is_some() {
            grads.add(self.b, column_sum(dev, &dy)?)?;
        }
        Ok(())
    }
}
