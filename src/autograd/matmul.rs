//! Matrix products. `c = op(a)·op(b)` (bmm with transpose flags) has the
//! backward `d op(a) = dc·op(b)ᵀ`, `d op(b) = op(a)ᵀ·dc`, each one bmm with the
//! flags that read the saved operand the right way round (table at
//! [`Bmm::backward`]). The dense layer is a composition of bmm and a bias
//! broadcast, so its backward is theirs.

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::Binary;
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};

impl Graph<'_> {
    /// `c[β] = op(a[β])·op(b[β])`, `op(t) = tᵀ` when its flag is set
    /// ([`crate::ops::MatmulOps::bmm`]).
    pub fn bmm(&mut self, a: &Var, b: &Var, ta: bool, tb: bool) -> Result<Var> {
        let c = self.dev.bmm(&a.t, &b.t, ta, tb)?;
        Ok(self.record(c, &[a.id, b.id], || Bmm {
            a: a.id,
            b: b.id,
            a_t: b.id.map(|_| a.t.clone()),
            b_t: a.id.map(|_| b.t.clone()),
            a_shape: a.shape(),
            b_shape: b.shape(),
            ta,
            tb,
        }))
    }

    /// The dense layer `y[M, N] = x[M, K]·w[K, N] + b[N]` on f32 per-sample
    /// vectors, as a composition: [`Graph::bmm`], then the bias added to every
    /// row as a per-channel broadcast (`Bcast::Channel`; its backward sums
    /// dy over the rows).
    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = self.bmm(x, w, false, false)?;
        let Some(b) = b else { return Ok(y) };
        let sh = y.shape();
        ensure!(sh.rank() == 2, "linear: x·w = {sh} is not a matrix");
        let n = sh.dims()[1];
        ensure!(
            b.shape().dims() == [n],
            "linear: the bias must be [{n}] (the columns of x·w = {sh}), got {}",
            b.shape()
        );
        self.binary(Binary::Add, &y, b)
    }
}

struct Bmm {
    a: Option<VarId>,
    b: Option<VarId>,
    /// Saved a (when b needs a gradient).
    a_t: Option<Tensor>,
    /// Saved b (when a needs a gradient).
    b_t: Option<Tensor>,
    a_shape: Shape,
    b_shape: Shape,
    ta: bool,
    tb: bool,
}

impl Backward for Bmm {
    /// | flags  | da                  | db                  |
    /// |--------|---------------------|---------------------|
    /// | ta = 0 | dc·op(b)ᵀ: bmm(dc, b, 0, !tb) | — |
    /// | ta = 1 | op(b)·dcᵀ: bmm(b, dc, tb, 1)  | — |
    /// | tb = 0 | — | op(a)ᵀ·dc: bmm(a, dc, !ta, 0) |
    /// | tb = 1 | — | dcᵀ·op(a): bmm(dc, a, 1, ta)  |
    ///
    /// Each result is reshaped to its operand's shape (a rank-2 operand next
    /// to a rank-3 one of batch 1).
    fn backward(self: Box<Self>, dc: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dev = grads.dev;
        let (ta, tb) = (self.ta, self.tb);
        if let Some(b) = &self.b_t {
            let da = if ta {
                dev.bmm(b, &dc, tb, true)?
            } else {
                dev.bmm(&dc, b, false, !tb)?
            };
            grads.add(self.a, da.reshape(self.a_shape))?;
        }
        if let Some(a) = &self.a_t {
            let db = if tb {
                dev.bmm(&dc, a, true, ta)?
            } else {
                dev.bmm(a, &dc, !ta, false)?
            };
            grads.add(self.b, db.reshape(self.b_shape))?;
        }
        Ok(())
    }
}
