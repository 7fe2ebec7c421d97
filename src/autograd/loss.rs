//! The losses. Targets are constants (no gradient flows to them).

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::{Bcast, Binary, Unary};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

/// A loss target: the prediction's shape and dtype.
fn check_target(op: &str, x: &Tensor, target: &Tensor) -> Result<()> {
    anyhow::ensure!(
        target.shape() == x.shape() && target.dtype() == x.dtype(),
        "{op}: target {} {} differs from the prediction {} {}",
        target.dtype().name(),
        target.shape(),
        x.dtype().name(),
        x.shape()
    );
    Ok(())
}

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

    /// Mean over all elements of the binary cross-entropy of `logits` z
    /// against a target y in [0, 1] of z's shape and dtype:
    /// `softplus(z) − z·y` (= −y ln σ(z) − (1 − y) ln(1 − σ(z)), finite for
    /// every z). A composition: its backward is `(σ(z) − y) / numel`.
    pub fn bce_with_logits(&mut self, logits: &Var, target: &Tensor) -> Result<Var> {
        check_target("bce_with_logits", &logits.t, target)?;
        let y = self.constant(target.clone());
        let sp = self.unary(logits, Unary::Softplus)?;
        let zy = self.binary(Binary::Mul, logits, &y)?;
        let l = self.lincomb(&[(1.0, &sp), (-1.0, &zy)])?;
        let s = self.reduce_sum(&l, Bcast::Scalar)?;
        self.lincomb(&[(1.0 / logits.t.numel() as f32, &s)])
    }

    /// vox2vec's soft Dice loss with squared sums, per (sample, channel)
    /// over the voxels of probabilities p `[N, D, H, W, C]` and a target y
    /// of p's shape and dtype: `1 − 2 Σ p·y / (Σ p² + Σ y²)`, averaged over
    /// samples and channels (every channel counts, empty ones too). A
    /// composition of primitives.
    pub fn dice_loss_squared(&mut self, p: &Var, target: &Tensor) -> Result<Var> {
        check_target("dice_loss_squared", &p.t, target)?;
        let sh = p.shape();
        anyhow::ensure!(
            sh.rank() == 5,
            "dice_loss_squared: p must be NDHWC, got shape {sh}"
        );
        let y = self.constant(target.clone());
        let py = self.binary(Binary::Mul, p, &y)?;
        let inter = self.reduce_sum(&py, Bcast::SampleChannel)?;
        let pp = self.unary(p, Unary::Square)?;
        let sp = self.reduce_sum(&pp, Bcast::SampleChannel)?;
        let yy = self.unary(&y, Unary::Square)?;
        let sy = self.reduce_sum(&yy, Bcast::SampleChannel)?;
        let den = self.add(&sp, &sy)?;
        let ratio = self.binary(Binary::Div, &inter, &den)?;
        let s = self.reduce_sum(&ratio, Bcast::Scalar)?;
        let pairs = (sh.n() * sh.c()) as f32;
        let scaled = self.lincomb(&[(-2.0 / pairs, &s)])?;
        let one = self.constant(self.dev.upload(&[1.0], Shape::scalar(), DType::F32)?);
        self.binary(Binary::Add, &scaled, &one)
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
