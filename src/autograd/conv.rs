//! Convolution: `y = conv(x, w) + b`. Backward: `dx = dgrad(dy, w)` when x is
//! tracked, `(dw, db) = wgrad(x, dy)` when w or b is; the input is saved only
//! if the weight needs a gradient, the weight only if the input does.

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::ConvSpec;
use crate::tensor::{Shape, Tensor};
use anyhow::Result;

impl Graph<'_> {
    pub fn conv3d(&mut self, x: &Var, w: &Var, b: Option<&Var>, spec: ConvSpec) -> Result<Var> {
        let y = self.dev.conv3d(&x.t, &w.t, b.map(|b| &b.t), spec)?;
        let b_id = b.and_then(|b| b.id);
        Ok(self.record(y, &[x.id, w.id, b_id], || Conv3d {
            x: x.id,
            w: w.id,
            b: b_id,
            x_t: w.id.map(|_| x.t.clone()),
            w_t: x.id.map(|_| w.t.clone()),
            x_shape: x.shape(),
            spec,
        }))
    }
}

struct Conv3d {
    x: Option<VarId>,
    w: Option<VarId>,
    b: Option<VarId>,
    /// Saved input (when the weight needs a gradient).
    x_t: Option<Tensor>,
    /// Saved weight (when the input needs a gradient).
    w_t: Option<Tensor>,
    x_shape: Shape,
    spec: ConvSpec,
}

impl Backward for Conv3d {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dev = grads.dev;
        if let Some(w_t) = &self.w_t {
            let dx = dev.conv3d_dgrad(&dy, w_t, self.x_shape, self.spec)?;
            grads.add(self.x, dx)?;
        }
        if let Some(x_t) = &self.x_t {
            let (dw, db) = dev.conv3d_wgrad(x_t, &dy, self.spec, self.b.is_some())?;
            grads.add(self.w, dw)?;
            if let Some(db) = db {
                grads.add(self.b, db)?;
            }
        } else if self.b.is_some() {
            // A tracked bias with an untracked weight only needs Σ dy: the
            // spatial sum of dy viewed as one sample of N·D·H·W voxels.
            let (c, rows) = (dy.shape().c(), dy.numel() / dy.shape().c());
            let db = dev.sum_spatial(&dy.reshape(Shape::ndhwc(1, 1, 1, rows, c)))?;
            grads.add(self.b, db.reshape(Shape::new(&[c])))?;
        }
        Ok(())
    }
}
