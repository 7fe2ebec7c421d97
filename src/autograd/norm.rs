//! The fused group norm + affine + FiLM + residual + activation
//! ([`crate::ops::NormArgs`]); its backward is one `norm_bwd` giving every
//! input's gradient.

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::{Act, NormArgs};
use crate::tensor::Tensor;
use anyhow::Result;

/// Norm options given to [`Graph::norm`] (tensors as Vars).
#[derive(Clone, Copy)]
pub struct NormOpts<'a> {
    pub groups: usize,
    pub eps: f32,
    pub gamma: Option<&'a Var>,
    pub beta: Option<&'a Var>,
    pub film: Option<(&'a Var, &'a Var)>,
    pub residual: Option<&'a Var>,
    pub act: Act,
}

impl Graph<'_> {
    /// Fused group norm + affine + FiLM + residual + activation.
    pub fn norm(&mut self, x: &Var, o: NormOpts) -> Result<Var> {
        Ok(self.norm_with_stats(x, o)?.0)
    }

    /// [`Graph::norm`], also returning its statistics (f32 `[N, G, 2]`:
    /// mean and rstd per sample and group).
    pub fn norm_with_stats(&mut self, x: &Var, o: NormOpts) -> Result<(Var, Tensor)> {
        let args = NormArgs {
            groups: o.groups,
            eps: o.eps,
            gamma: o.gamma.map(|v| &v.t),
            beta: o.beta.map(|v| &v.t),
            film: o.film.map(|(s, h)| (&s.t, &h.t)),
            residual: o.residual.map(|v| &v.t),
            act: o.act,
        };
        let r = self.dev.norm_fwd(&x.t, &args)?;
        let saved = |v: Option<&Var>| v.map(|v| (v.id, v.t.clone()));
        let ids = [
            x.id,
            o.gamma.and_then(|v| v.id),
            o.beta.and_then(|v| v.id),
            o.film.and_then(|(s, _)| s.id),
            o.film.and_then(|(_, h)| h.id),
            o.residual.and_then(|v| v.id),
        ];
        let stats = r.stats;
        let out_stats = stats.clone();
        let y = self.record(r.y, &ids, || Norm {
            x: x.id,
            gamma: saved(o.gamma),
            beta: saved(o.beta),
            film: o
                .film
                .map(|(s, h)| ((s.id, s.t.clone()), (h.id, h.t.clone()))),
            residual: saved(o.residual),
            x_t: x.t.clone(),
            stats,
            groups: o.groups,
            eps: o.eps,
            act: o.act,
        });
        Ok((y, out_stats))
    }
}

/// An optional input of the norm: its id and its value.
type Saved = Option<(Option<VarId>, Tensor)>;

struct Norm {
    x: Option<VarId>,
    gamma: Saved,
    beta: Saved,
    film: Option<((Option<VarId>, Tensor), (Option<VarId>, Tensor))>,
    residual: Saved,
    x_t: Tensor,
    stats: Tensor,
    groups: usize,
    eps: f32,
    act: Act,
}

impl Backward for Norm {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let args = NormArgs {
            groups: self.groups,
            eps: self.eps,
            gamma: value(&self.gamma),
            beta: value(&self.beta),
            film: self.film.as_ref().map(|(s, h)| (&s.1, &h.1)),
            residual: value(&self.residual),
            act: self.act,
        };
        let g = grads.dev.norm_bwd(&dy, &self.x_t, &self.stats, &args)?;
        grads.add(self.x, g.dx)?;
        let id = |s: &Saved| s.as_ref().and_then(|(id, _)| *id);
        if let Some(dg) = g.dgamma {
            grads.add(id(&self.gamma), dg)?;
        }
        if let Some(db) = g.dbeta {
            grads.add(id(&self.beta), db)?;
        }
        if let (Some((s, h)), Some((ds, dh))) = (&self.film, g.dfilm) {
            grads.add(s.0, ds)?;
            grads.add(h.0, dh)?;
        }
        if let Some(dr) = g.dresidual {
            grads.add(id(&self.residual), dr)?;
        }
        Ok(())
    }
}

/// The tensor of an optional input.
fn value(s: &Saved) -> Option<&Tensor> {
    s.as_ref().map(|(_, t)| t)
}
