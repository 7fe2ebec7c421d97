//! Reverse-mode autograd over a tape.
//!
//! A [`Graph`] wraps a backend. Every op called through it computes its output
//! with the backend and, when the graph records, appends a [`Node`] holding the
//! op, the ids of its inputs and exactly the tensors its backward needs.
//! [`Graph::backward`] walks the tape in reverse and accumulates gradients.
//! There are no closures over host data: the tape is a plain list of ops, the
//! same every step for fixed shapes.
//!
//! Values live in [`Var`]s (a tensor plus an id), not in the graph, so a graph
//! that does not record (inference, the no-gradient pass of recycling) frees
//! each activation as soon as the model code drops it.

mod backward;

use crate::backend::Backend;
use crate::ops::{Act, ConvSpec, NormArgs};
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};

/// Identifies a value whose gradient is tracked.
pub type VarId = usize;

/// A value in a graph: a tensor and, when it needs a gradient, its id.
#[derive(Clone, Debug)]
pub struct Var {
    pub t: Tensor,
    id: Option<VarId>,
}

impl Var {
    pub fn shape(&self) -> Shape {
        self.t.shape()
    }
    /// True when gradients flow to this value.
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }
    pub fn id(&self) -> Option<VarId> {
        self.id
    }
}

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

/// One recorded op. Saved tensors are only those its backward reads.
pub(crate) enum Node {
    Conv {
        out: VarId,
        x: Option<VarId>,
        w: Option<VarId>,
        b: Option<VarId>,
        /// Saved input (needed when the weight needs a gradient).
        x_t: Option<Tensor>,
        /// Saved weight (needed when the input needs a gradient).
        w_t: Option<Tensor>,
        x_shape: Shape,
        spec: ConvSpec,
    },
    Linear {
        out: VarId,
        x: Option<VarId>,
        w: Option<VarId>,
        b: Option<VarId>,
        x_t: Option<Tensor>,
        w_t: Option<Tensor>,
    },
    Norm {
        out: VarId,
        x: Option<VarId>,
        gamma: Option<(Option<VarId>, Tensor)>,
        beta: Option<(Option<VarId>, Tensor)>,
        film: Option<(Option<VarId>, Tensor, Option<VarId>, Tensor)>,
        residual: Option<(Option<VarId>, Tensor)>,
        x_t: Tensor,
        stats: Tensor,
        groups: usize,
        eps: f32,
        act: Act,
    },
    Act {
        out: VarId,
        x: VarId,
        x_t: Tensor,
        act: Act,
    },
    LinComb {
        out: VarId,
        terms: Vec<(f32, Option<VarId>)>,
    },
    AddNc {
        out: VarId,
        x: Option<VarId>,
        v: Option<VarId>,
    },
    Concat {
        out: VarId,
        parts: Vec<(Option<VarId>, usize)>,
    },
    SliceC {
        out: VarId,
        x: VarId,
        start: usize,
        c_in: usize,
    },
    Crop {
        out: VarId,
        x: VarId,
        origin: [usize; 3],
        full: [usize; 3],
    },
    Upsample {
        out: VarId,
        x: VarId,
        factor: [usize; 3],
    },
    MaxPool {
        out: VarId,
        x: VarId,
        x_t: Tensor,
        window: [usize; 3],
    },
    Softmax {
        out: VarId,
        x: VarId,
        p_t: Tensor,
    },
    CrossEntropy {
        out: VarId,
        logits: VarId,
        logits_t: Tensor,
        target_t: Tensor,
    },
    Dice {
        out: VarId,
        p: VarId,
        p_t: Tensor,
        target_t: Tensor,
        sums: Tensor,
    },
    Mse {
        out: VarId,
        a: Option<VarId>,
        b: Option<VarId>,
        a_t: Tensor,
        b_t: Tensor,
    },
    ScalarLinComb {
        out: VarId,
        terms: Vec<(f32, Option<VarId>)>,
    },
    ScaledToLogits {
        out: VarId,
        x: VarId,
        x_t: Tensor,
        eps: f32,
    },
}

/// Clamp floor of [`Graph::scaled_to_logits`] (the ImgX reference's `EPS`).
pub const PROB_EPS: f32 = 1e-5;

/// The gradients of one backward pass, by parameter index.
pub struct Grads {
    pub by_param: Vec<Option<Tensor>>,
}

/// A computation on one backend, recording a tape when asked to.
pub struct Graph<'b> {
    pub b: &'b dyn Backend,
    record: bool,
    tape: Vec<Node>,
    /// For each VarId: the parameter it stands for, if any.
    param_of: Vec<Option<usize>>,
}

impl<'b> Graph<'b> {
    /// A graph that records a tape for [`Graph::backward`].
    pub fn train(b: &'b dyn Backend) -> Graph<'b> {
        Graph {
            b,
            record: true,
            tape: Vec::new(),
            param_of: Vec::new(),
        }
    }
    /// A graph that records nothing (inference; no gradients anywhere).
    pub fn inference(b: &'b dyn Backend) -> Graph<'b> {
        Graph {
            b,
            record: false,
            tape: Vec::new(),
            param_of: Vec::new(),
        }
    }
    pub fn is_recording(&self) -> bool {
        self.record
    }
    /// Number of recorded ops.
    pub fn tape_len(&self) -> usize {
        self.tape.len()
    }

    fn new_id(&mut self, param: Option<usize>) -> VarId {
        self.param_of.push(param);
        self.param_of.len() - 1
    }
    /// Output var: tracked when recording and any input is tracked.
    fn output(&mut self, t: Tensor, tracked: bool) -> Var {
        let id = (self.record && tracked).then(|| self.new_id(None));
        Var { t, id }
    }

    /// A value without gradient (data, targets, noise).
    pub fn constant(&self, t: Tensor) -> Var {
        Var { t, id: None }
    }
    /// Parameter `index` of the model's store; tracked when recording.
    pub fn param(&mut self, index: usize, t: &Tensor) -> Var {
        let id = self.record.then(|| self.new_id(Some(index)));
        Var { t: t.clone(), id }
    }
    /// The same value with its gradient cut (stop-gradient).
    pub fn detach(&self, x: &Var) -> Var {
        Var {
            t: x.t.clone(),
            id: None,
        }
    }

    // ------------------------------------------------------------------ ops

    pub fn conv3d(&mut self, x: &Var, w: &Var, b: Option<&Var>, spec: ConvSpec) -> Result<Var> {
        let y = self.b.conv3d(&x.t, &w.t, b.map(|b| &b.t), spec)?;
        let tracked = x.id.is_some() || w.id.is_some() || b.and_then(|b| b.id).is_some();
        let out = self.output(y, tracked);
        if let Some(o) = out.id {
            self.tape.push(Node::Conv {
                out: o,
                x: x.id,
                w: w.id,
                b: b.and_then(|b| b.id),
                x_t: w.id.map(|_| x.t.clone()),
                w_t: x.id.map(|_| w.t.clone()),
                x_shape: x.shape(),
                spec,
            });
        }
        Ok(out)
    }

    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = self.b.linear(&x.t, &w.t, b.map(|b| &b.t))?;
        let tracked = x.id.is_some() || w.id.is_some() || b.and_then(|b| b.id).is_some();
        let out = self.output(y, tracked);
        if let Some(o) = out.id {
            self.tape.push(Node::Linear {
                out: o,
                x: x.id,
                w: w.id,
                b: b.and_then(|b| b.id),
                x_t: w.id.map(|_| x.t.clone()),
                w_t: x.id.map(|_| w.t.clone()),
            });
        }
        Ok(out)
    }

    /// Fused group norm + affine + FiLM + residual + activation.
    pub fn norm(&mut self, x: &Var, o: NormOpts) -> Result<Var> {
        let args = NormArgs {
            groups: o.groups,
            eps: o.eps,
            gamma: o.gamma.map(|v| &v.t),
            beta: o.beta.map(|v| &v.t),
            film: o.film.map(|(s, h)| (&s.t, &h.t)),
            residual: o.residual.map(|v| &v.t),
            act: o.act,
        };
        let r = self.b.norm_fwd(&x.t, &args)?;
        let ids = [
            x.id,
            o.gamma.and_then(|v| v.id),
            o.beta.and_then(|v| v.id),
            o.film.and_then(|(s, _)| s.id),
            o.film.and_then(|(_, h)| h.id),
            o.residual.and_then(|v| v.id),
        ];
        let out = self.output(r.y, ids.iter().any(|i| i.is_some()));
        if let Some(id) = out.id {
            self.tape.push(Node::Norm {
                out: id,
                x: x.id,
                gamma: o.gamma.map(|v| (v.id, v.t.clone())),
                beta: o.beta.map(|v| (v.id, v.t.clone())),
                film: o.film.map(|(s, h)| (s.id, s.t.clone(), h.id, h.t.clone())),
                residual: o.residual.map(|v| (v.id, v.t.clone())),
                x_t: x.t.clone(),
                stats: r.stats,
                groups: o.groups,
                eps: o.eps,
                act: o.act,
            });
        }
        Ok(out)
    }

    pub fn act(&mut self, x: &Var, act: Act) -> Result<Var> {
        if act == Act::Identity {
            return Ok(x.clone());
        }
        let y = self.b.act(&x.t, act)?;
        let out = self.output(y, x.id.is_some());
        if let (Some(o), Some(xi)) = (out.id, x.id) {
            self.tape.push(Node::Act {
                out: o,
                x: xi,
                x_t: x.t.clone(),
                act,
            });
        }
        Ok(out)
    }

    /// `Σ coef_i · x_i` (equal shapes).
    pub fn lincomb(&mut self, terms: &[(f32, &Var)]) -> Result<Var> {
        let ts: Vec<(f32, &Tensor)> = terms.iter().map(|(c, v)| (*c, &v.t)).collect();
        let y = self.b.lincomb(&ts)?;
        let out = self.output(y, terms.iter().any(|(_, v)| v.id.is_some()));
        if let Some(o) = out.id {
            self.tape.push(Node::LinComb {
                out: o,
                terms: terms.iter().map(|(c, v)| (*c, v.id)).collect(),
            });
        }
        Ok(out)
    }

    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        self.lincomb(&[(1.0, a), (1.0, b)])
    }

    /// `x[n,…,c] + v[n,c]`.
    pub fn add_nc(&mut self, x: &Var, v: &Var) -> Result<Var> {
        let y = self.b.add_nc(&x.t, &v.t)?;
        let out = self.output(y, x.id.is_some() || v.id.is_some());
        if let Some(o) = out.id {
            self.tape.push(Node::AddNc {
                out: o,
                x: x.id,
                v: v.id,
            });
        }
        Ok(out)
    }

    pub fn concat_c(&mut self, xs: &[&Var]) -> Result<Var> {
        let ts: Vec<&Tensor> = xs.iter().map(|v| &v.t).collect();
        let y = self.b.concat_c(&ts)?;
        let out = self.output(y, xs.iter().any(|v| v.id.is_some()));
        if let Some(o) = out.id {
            self.tape.push(Node::Concat {
                out: o,
                parts: xs.iter().map(|v| (v.id, v.shape().c())).collect(),
            });
        }
        Ok(out)
    }

    pub fn slice_c(&mut self, x: &Var, start: usize, len: usize) -> Result<Var> {
        let y = self.b.slice_c(&x.t, start, len)?;
        let out = self.output(y, x.id.is_some());
        if let (Some(o), Some(xi)) = (out.id, x.id) {
            self.tape.push(Node::SliceC {
                out: o,
                x: xi,
                start,
                c_in: x.shape().c(),
            });
        }
        Ok(out)
    }

    /// The leading spatial corner of extents `size` (a no-op when equal).
    pub fn crop_to(&mut self, x: &Var, size: [usize; 3]) -> Result<Var> {
        if x.shape().spatial() == size {
            return Ok(x.clone());
        }
        self.crop(x, [0, 0, 0], size)
    }

    pub fn crop(&mut self, x: &Var, origin: [usize; 3], size: [usize; 3]) -> Result<Var> {
        let y = self.b.crop(&x.t, origin, size)?;
        let out = self.output(y, x.id.is_some());
        if let (Some(o), Some(xi)) = (out.id, x.id) {
            self.tape.push(Node::Crop {
                out: o,
                x: xi,
                origin,
                full: x.shape().spatial(),
            });
        }
        Ok(out)
    }

    pub fn upsample(&mut self, x: &Var, factor: [usize; 3]) -> Result<Var> {
        let y = self.b.upsample(&x.t, factor)?;
        let out = self.output(y, x.id.is_some());
        if let (Some(o), Some(xi)) = (out.id, x.id) {
            self.tape.push(Node::Upsample {
                out: o,
                x: xi,
                factor,
            });
        }
        Ok(out)
    }

    pub fn maxpool(&mut self, x: &Var, window: [usize; 3]) -> Result<Var> {
        let y = self.b.maxpool(&x.t, window)?;
        let out = self.output(y, x.id.is_some());
        if let (Some(o), Some(xi)) = (out.id, x.id) {
            self.tape.push(Node::MaxPool {
                out: o,
                x: xi,
                x_t: x.t.clone(),
                window,
            });
        }
        Ok(out)
    }

    pub fn softmax(&mut self, x: &Var) -> Result<Var> {
        let p = self.b.softmax(&x.t)?;
        let out = self.output(p, x.id.is_some());
        if let (Some(o), Some(xi)) = (out.id, x.id) {
            self.tape.push(Node::Softmax {
                out: o,
                x: xi,
                p_t: out.t.clone(),
            });
        }
        Ok(out)
    }

    /// Mean cross-entropy of `logits` against a one-hot `target` (no gradient to the target).
    pub fn cross_entropy(&mut self, logits: &Var, target: &Tensor) -> Result<Var> {
        let l = self.b.cross_entropy(&logits.t, target)?;
        let out = self.output(l, logits.id.is_some());
        if let (Some(o), Some(li)) = (out.id, logits.id) {
            self.tape.push(Node::CrossEntropy {
                out: o,
                logits: li,
                logits_t: logits.t.clone(),
                target_t: target.clone(),
            });
        }
        Ok(out)
    }

    /// Foreground soft Dice loss of probabilities `p` against a one-hot `target`.
    pub fn dice_loss(&mut self, p: &Var, target: &Tensor) -> Result<Var> {
        let (l, sums) = self.b.dice_loss(&p.t, target)?;
        let out = self.output(l, p.id.is_some());
        if let (Some(o), Some(pi)) = (out.id, p.id) {
            self.tape.push(Node::Dice {
                out: o,
                p: pi,
                p_t: p.t.clone(),
                target_t: target.clone(),
                sums,
            });
        }
        Ok(out)
    }

    pub fn mse(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let l = self.b.mse(&a.t, &b.t)?;
        let out = self.output(l, a.id.is_some() || b.id.is_some());
        if let Some(o) = out.id {
            self.tape.push(Node::Mse {
                out: o,
                a: a.id,
                b: b.id,
                a_t: a.t.clone(),
                b_t: b.t.clone(),
            });
        }
        Ok(out)
    }

    /// `Σ coef_i · s_i` over scalars (e.g. weighting losses).
    pub fn scalar_lincomb(&mut self, terms: &[(f32, &Var)]) -> Result<Var> {
        let ts: Vec<(f32, &Tensor)> = terms.iter().map(|(c, v)| (*c, &v.t)).collect();
        let y = self.b.scalar_lincomb(&ts)?;
        let out = self.output(y, terms.iter().any(|(_, v)| v.id.is_some()));
        if let Some(o) = out.id {
            self.tape.push(Node::ScalarLinComb {
                out: o,
                terms: terms.iter().map(|(c, v)| (*c, v.id)).collect(),
            });
        }
        Ok(out)
    }

    /// `ln(clamp((x + 1)/2, PROB_EPS, 1))`: [−1, 1]-space probabilities to logits.
    pub fn scaled_to_logits(&mut self, x: &Var) -> Result<Var> {
        let y = self.b.scaled_to_logits(&x.t, PROB_EPS)?;
        let out = self.output(y, x.id.is_some());
        if let (Some(o), Some(xi)) = (out.id, x.id) {
            self.tape.push(Node::ScaledToLogits {
                out: o,
                x: xi,
                x_t: x.t.clone(),
                eps: PROB_EPS,
            });
        }
        Ok(out)
    }

    /// Gradients of the scalar `loss` w.r.t. every parameter used in this
    /// graph (`num_params` is the size of the model's parameter store). The
    /// tape is consumed.
    pub fn backward(&mut self, loss: &Var, num_params: usize) -> Result<Grads> {
        ensure!(self.record, "backward on a graph that does not record");
        ensure!(
            loss.shape().numel() == 1,
            "backward needs a scalar loss, got shape {}",
            loss.shape()
        );
        let Some(lid) = loss.id else {
            anyhow::bail!("the loss does not depend on any parameter");
        };
        let tape = std::mem::take(&mut self.tape);
        let mut grads: Vec<Option<Tensor>> = vec![None; self.param_of.len()];
        grads[lid] = Some(
            self.b
                .upload(&[1.0], Shape::scalar(), crate::tensor::DType::F32)?,
        );
        for node in tape.into_iter().rev() {
            backward::node(self.b, node, &mut grads)?;
        }
        let mut by_param: Vec<Option<Tensor>> = vec![None; num_params];
        for (id, g) in grads.into_iter().enumerate() {
            if let (Some(p), Some(g)) = (self.param_of[id], g) {
                ensure!(p < num_params, "parameter index {p} out of range");
                backward::acc(self.b, &mut by_param, Some(p), g)?;
            }
        }
        Ok(Grads { by_param })
    }
}
