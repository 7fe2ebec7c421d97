//! The losses. Targets are constants (no gradient flows to them).

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::tensor::Tensor;
use anyhow::Result;

impl Graph<'_> {
    /// Mean cross-entropy of `logits` against a one-hot `target` (no gradient to the target).
    pub fn cross_entropy(&mut self, logits: &Var, target: &Tensor) -> Result<Var> {
        let l = self.dev.cross_entropy(&logits.t, target)?;
        Ok(self.record(l, &[logits.id], || CrossEntropy {
            logits: logits.id,
            logits_t: logits.t.clone(),
            target_t: target.clone(),
        }))
    }

    /// Foreground soft Dice loss of probabilities `p` against a one-hot `target`.
    pub fn dice_loss(&mut self, p: &Var, target: &Tensor) -> Result<Var> {
        let (l, sums) = self.dev.dice_loss(&p.t, target)?;
        Ok(self.record(l, &[p.id], || Dice {
            p: p.id,
            p_t: p.t.clone(),
            target_t: target.clone(),
            sums,
        }))
    }

    pub fn mse(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let l = self.dev.mse(&a.t, &b.t)?;
        Ok(self.record(l, &[a.id, b.id], || Mse {
            a: a.id,
            b: b.id,
            a_t: a.t.clone(),
            b_t: b.t.clone(),
        }))
    }
}

struct CrossEntropy {
    logits: Option<VarId>,
    logits_t: Tensor,
    target_t: Tensor,
}

impl Backward for CrossEntropy {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let g = grads
            .dev
            .cross_entropy_bwd(&self.logits_t, &self.target_t, &dy)?;
        grads.add(self.logits, g)
    }
}

struct Dice {
    p: Option<VarId>,
    p_t: Tensor,
    target_t: Tensor,
    sums: Tensor,
}

impl Backward for Dice {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let g = grads
            .dev
            .dice_loss_bwd(&self.p_t, &self.target_t, &self.sums, &dy)?;
        grads.add(self.p, g)
    }
}

struct Mse {
    a: Option<VarId>,
    b: Option<VarId>,
    a_t: Tensor,
    b_t: Tensor,
}

impl Backward for Mse {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let ga = grads.dev.mse_bwd(&self.a_t, &self.b_t, &dy)?;
        if self.b.is_some() {
            let gb = grads.dev.lincomb(&[(-1.0, &ga)])?;
            grads.add(self.b, gb)?;
        }
        grads.add(self.a, ga)
    }
}
