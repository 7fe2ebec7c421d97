//! The one extension point for paper-specific fused kernels: a [`CustomOp`]
//! carries its own contract and one implementation per backend, so the
//! family traits (and `Backend`) stop growing with every paper formula.
//! [`CustomGrad`] adds the backward, usually in terms of family ops or
//! another custom op; `Graph::custom` records it like any other op.
//!
//! A custom op lives next to the code that needs it (e.g.
//! `diffusion::logits::ScaledToLogits`), with its GPU kernel in the `.cu`
//! file of its family. A fused kernel is added this way only where a
//! benchmark shows the composition of family ops is slow.

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// A fused op with one implementation per backend. Outputs: the first is the
/// op's value; any others are saved for its backward.
pub trait CustomOp: Send + Sync {
    /// The name errors use.
    fn name(&self) -> String;
    /// The contract on the inputs (shapes, dtypes), checked once before
    /// either implementation runs.
    fn check(&self, inputs: &[&Tensor]) -> Result<()>;
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>>;
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>>;
}

/// A custom op with a gradient.
pub trait CustomGrad: CustomOp {
    /// The gradient of each input (`None` where it has none) given `dy`, the
    /// gradient of output 0, and the op's inputs and outputs.
    fn backward(
        &self,
        dev: &dyn Backend,
        dy: &Tensor,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>>;
}

/// Run `op` on `dev`: the contract, then the implementation for `dev`'s type.
pub fn run(dev: &dyn Backend, op: &dyn CustomOp, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    op.check(inputs)?;
    let any = dev.as_any();
    let outputs = if let Some(cpu) = any.downcast_ref::<CpuBackend>() {
        op.cpu(cpu, inputs)?
    } else if let Some(gpu) = any.downcast_ref::<GpuBackend>() {
        op.gpu(gpu, inputs)?
    } else {
        bail!(
            "{}: no implementation for the {} backend",
            op.name(),
            dev.name()
        );
    };
    anyhow::ensure!(!outputs.is_empty(), "{}: produced no output", op.name());
    Ok(outputs)
}
