//! Custom ops ([`crate::ops::custom`]): recorded with all their inputs and
//! outputs; the backward is the op's own.

use super::{Backward, GradAcc, Graph, Var, VarId};
use crate::ops::custom::{self, CustomGrad};
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
use std::sync::Arc;

impl Graph<'_> {
    /// Output 0 of `op` on `inputs`.
    pub fn custom(&mut self, op: Arc<dyn CustomGrad>, inputs: &[&Var]) -> Result<Var> {
        let ts: Vec<&Tensor> = inputs.iter().map(|v| &v.t).collect();
        let outputs = custom::run(self.dev, op.as_ref(), &ts)?;
        let ids: Vec<Option<VarId>> = inputs.iter().map(|v| v.id).collect();
        let y = outputs[0].clone();
        Ok(self.record(y, &ids, || Custom {
            op,
            ids: ids.clone(),
            inputs: inputs.iter().map(|v| v.t.clone()).collect(),
            outputs,
        }))
    }
}

struct Custom {
    op: Arc<dyn CustomGrad>,
    ids: Vec<Option<VarId>>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

impl Backward for Custom {
    fn backward(self: Box<Self>, dy: Tensor, grads: &mut GradAcc) -> Result<()> {
        let dxs = self
            .op
            .backward(grads.dev, &dy, &self.inputs, &self.outputs)?;
        ensure!(
            dxs.len() == self.ids.len(),
            "{}: backward gave {} gradients for {} inputs",
            self.op.name(),
            dxs.len(),
            self.ids.len()
        );
        for (id, dx) in self.ids.into_iter().zip(dxs) {
            if let Some(dx) = dx {
                grads.add(id, dx)?;
            }
        }
        Ok(())
    }
}
