//! Reverse-mode autograd over a tape.
//!
//! A [`Graph`] wraps a backend. Every op called through it computes its output
//! with the backend and, when the graph records and some input is tracked,
//! appends a [`Record`]: the output's id and a [`Backward`] object holding the
//! input ids and exactly the tensors the op's backward reads. Each op family
//! has one file here (`conv.rs`, `norm.rs`, `pointwise.rs`, …) in which an op's
//! `Graph` method and its `Backward` impl sit side by side.
//! [`Graph::backward`] walks the tape in reverse and accumulates gradients.
//! There are no closures over host data: the tape is the same list of ops
//! every step for fixed shapes.
//!
//! Values live in [`Var`]s (a tensor plus an id), not in the graph, so a graph
//! that does not record (inference, the no-gradient pass of recycling) frees
//! each activation as soon as the model code drops it.

mod conv;
mod custom;
mod layout;
mod loss;
mod matmul;
mod norm;
mod pointwise;
mod reduce;

pub use norm::NormOpts;

use crate::backend::Backend;
use crate::tensor::{DType, Shape, Tensor};
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
    pub fn id(&self) -> Option<VarId> {
        self.id
    }
}

/// The backward of one recorded op: given the gradient of its output, add
/// the gradients of its tracked inputs into `grads`. Accumulation rule:
/// input gradients are added to whatever the slot holds (`GradAcc::add`);
/// nothing else is written.
pub(crate) trait Backward {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()>;
}

/// One entry of the tape.
struct Record {
    out: VarId,
    op: Box<dyn Backward>,
}

/// Gradients by value id during a backward pass.
pub(crate) struct GradAcc<'a> {
    pub dev: &'a dyn Backend,
    slots: Vec<Option<Tensor>>,
}

impl GradAcc<'_> {
    /// Add `g` into the gradient of `id` (nothing when `id` is None: an
    /// untracked input).
    pub fn add(&mut self, id: Option<VarId>, g: Tensor) -> Result<()> {
        let Some(id) = id else { return Ok(()) };
        self.slots[id] = Some(match self.slots[id].take() {
            None => g,
            Some(prev) => self.dev.lincomb(&[(1.0, &prev), (1.0, &g)])?,
        });
        Ok(())
    }
}

/// The gradients of one backward pass, by parameter index.
pub struct Grads {
    pub by_param: Vec<Option<Tensor>>,
}

/// A computation on one backend, recording a tape when asked to.
pub struct Graph<'d> {
    pub dev: &'d dyn Backend,
    record: bool,
    tape: Vec<Record>,
    /// For each VarId: the parameter it stands for, if any.
    param_of: Vec<Option<usize>>,
}

impl<'d> Graph<'d> {
    /// A graph that records a tape for [`Graph::backward`].
    pub fn train(dev: &'d dyn Backend) -> Graph<'d> {
        Graph {
            dev,
            record: true,
            tape: Vec::new(),
            param_of: Vec::new(),
        }
    }
    /// A graph that records nothing (inference; no gradients anywhere).
    pub fn inference(dev: &'d dyn Backend) -> Graph<'d> {
        Graph {
            dev,
            record: false,
            tape: Vec::new(),
            param_of: Vec::new(),
        }
    }
    fn new_id(&mut self, param: Option<usize>) -> VarId {
        self.param_of.push(param);
        self.param_of.len() - 1
    }

    /// The output `y` of an op whose inputs have the ids `inputs`: tracked
    /// when the graph records and some input is tracked, and then `backward()`
    /// (which captures what the op's backward needs) goes on the tape. Every
    /// op of every family records through here.
    pub(crate) fn record<B: Backward + 'static>(
        &mut self,
        y: Tensor,
        inputs: &[Option<VarId>],
        backward: impl FnOnce() -> B,
    ) -> Var {
        if !self.record || inputs.iter().all(Option::is_none) {
            return Var { t: y, id: None };
        }
        let out = self.new_id(None);
        self.tape.push(Record {
            out,
            op: Box::new(backward()),
        });
        Var {
            t: y,
            id: Some(out),
        }
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
        let mut acc = GradAcc {
            dev: self.dev,
            slots: vec![None; self.param_of.len()],
        };
        acc.slots[lid] = Some(self.dev.upload(&[1.0], Shape::scalar(), DType::F32)?);
        for rec in tape.into_iter().rev() {
            // An output nobody used downstream of the loss has no gradient.
            if let Some(dy) = acc.slots[rec.out].take() {
                rec.op.backward(dy, &mut acc)?;
            }
        }
        let mut by_param = GradAcc {
            dev: self.dev,
            slots: vec![None; num_params],
        };
        for (id, g) in acc.slots.into_iter().enumerate() {
            if let (Some(p), Some(g)) = (self.param_of[id], g) {
                ensure!(p < num_params, "parameter index {p} out of range");
                by_param.add(Some(p), g)?;
            }
        }
        Ok(Grads {
            by_param: by_param.slots,
        })
    }
}
