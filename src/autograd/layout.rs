//! Layout ops and their backward: concat ↔ slice, crop ↔ pad, upsample ↔ its
//! block sum, max pool ↔ routing to the first maximum, reshape ↔ reshape back,
//! permute ↔ the inverse permutation.

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};

impl Graph<'_> {
    /// The same values in another shape of equal element count (no copy).
    pub fn reshape(&mut self, x: &Var, shape: Shape) -> Result<Var> {
        ensure!(
            shape.numel() == x.shape().numel(),
            "reshape: {} has {} elements, {shape} has {}",
            x.shape(),
            x.shape().numel(),
            shape.numel()
        );
        let y = x.t.reshape(shape);
        Ok(self.record(y, &[x.id], || Reshape {
            x: x.id,
            shape: x.shape(),
        }))
    }

    /// Output dim k is x's dim `perm[k]` ([`crate::ops::LayoutOps::permute`]).
    pub fn permute(&mut self, x: &Var, perm: &[usize]) -> Result<Var> {
        let y = self.dev.permute(&x.t, perm)?;
        Ok(self.record(y, &[x.id], || {
            // dx = permute(dy, inverse): x's dim perm[k] is dy's dim k.
            let mut inverse = vec![0; perm.len()];
            for (k, &p) in perm.iter().enumerate() {
                inverse[p] = k;
            }
            Permute { x: x.id, inverse }
        }))
    }

    pub fn concat_c(&mut self, xs: &[&Var]) -> Result<Var> {
        let ts: Vec<&Tensor> = xs.iter().map(|v| &v.t).collect();
        let y = self.dev.concat_c(&ts)?;
        let ids: Vec<Option<VarId>> = xs.iter().map(|v| v.id).collect();
        Ok(self.record(y, &ids, || Concat {
            parts: xs.iter().map(|v| (v.id, v.shape().c())).collect(),
        }))
    }

    pub fn slice_c(&mut self, x: &Var, start: usize, len: usize) -> Result<Var> {
        let y = self.dev.slice_c(&x.t, start, len)?;
        Ok(self.record(y, &[x.id], || SliceC {
            x: x.id,
            start,
            c_in: x.shape().c(),
        }))
    }

    /// The leading spatial corner of extents `size` (a no-op when equal).
    pub fn crop_to(&mut self, x: &Var, size: [usize; 3]) -> Result<Var> {
        if x.shape().spatial() == size {
            return Ok(x.clone());
        }
        self.crop(x, [0, 0, 0], size)
    }

    pub fn crop(&mut self, x: &Var, origin: [usize; 3], size: [usize; 3]) -> Result<Var> {
        let y = self.dev.crop(&x.t, origin, size)?;
        Ok(self.record(y, &[x.id], || Crop {
            x: x.id,
            origin,
            full: x.shape().spatial(),
        }))
    }

    pub fn upsample(&mut self, x: &Var, factor: [usize; 3]) -> Result<Var> {
        let y = self.dev.upsample(&x.t, factor)?;
        Ok(self.record(y, &[x.id], || Upsample { x: x.id, factor }))
    }

    pub fn maxpool(&mut self, x: &Var, window: [usize; 3]) -> Result<Var> {
        let y = self.dev.maxpool(&x.t, window)?;
        Ok(self.record(y, &[x.id], || MaxPool {
            x: x.id,
            x_t: x.t.clone(),
            window,
        }))
    }
}

struct Reshape {
    x: Option<VarId>,
    shape: Shape,
}

impl Backward for Reshape {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        grads.add(self.x, dy.reshape(self.shape))
    }
}

struct Permute {
    x: Option<VarId>,
    inverse: Vec<usize>,
}

impl Backward for Permute {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dx = grads.dev.permute(&dy, &self.inverse)?;
        grads.add(self.x, dx)
    }
}

struct Concat {
    /// Each part's id and channel count, in order.
    parts: Vec<(Option<VarId>, usize)>,
}

impl Backward for Concat {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let mut start = 0;
        for (id, c) in self.parts {
            if id.is_some() {
                let g = grads.dev.slice_c(&dy, start, c)?;
                grads.add(id, g)?;
            }
            start += c;
        }
        Ok(())
    }
}

struct SliceC {
    x: Option<VarId>,
    start: usize,
    c_in: usize,
}

impl Backward for SliceC {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        // Scatter back: zeros around the slice, built by concatenation.
        let dev = grads.dev;
        let sh = dy.shape();
        let mut parts: Vec<Tensor> = Vec::new();
        if self.start > 0 {
            parts.push(dev.zeros(sh.with_c(self.start), dy.dtype())?);
        }
        parts.push(dy.clone());
        let after = self.c_in - self.start - sh.c();
        if after > 0 {
            parts.push(dev.zeros(sh.with_c(after), dy.dtype())?);
        }
        let dx = if parts.len() == 1 {
            dy
        } else {
            dev.concat_c(&parts.iter().collect::<Vec<_>>())?
        };
        grads.add(self.x, dx)
    }
}

struct Crop {
    x: Option<VarId>,
    origin: [usize; 3],
    full: [usize; 3],
}

impl Backward for Crop {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dx = grads.dev.pad(&dy, self.origin, self.full)?;
        grads.add(self.x, dx)
    }
}

struct Upsample {
    x: Option<VarId>,
    factor: [usize; 3],
}

impl Backward for Upsample {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dx = grads.dev.upsample_bwd(&dy, self.factor)?;
        grads.add(self.x, dx)
    }
}

struct MaxPool {
    x: Option<VarId>,
    x_t: Tensor,
    window: [usize; 3],
}

impl Backward for MaxPool {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dx = grads.dev.maxpool_bwd(&dy, &self.x_t, self.window)?;
        grads.add(self.x, dx)
    }
}
