//! Memory: what a backend is, where its tensors live, and moving data
//! between it and the host.

use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

/// Storage and copies.
pub trait MemoryOps {
    /// Human-readable name, e.g. "cpu (2 threads)" or "emu".
    fn name(&self) -> String;
    /// The dtype activations are stored in on this backend.
    fn act_dtype(&self) -> DType;
    /// The implementation behind the seam, for [`crate::ops::custom`] ops
    /// that carry their own kernel per backend.
    fn as_any(&self) -> &dyn std::any::Any;
    /// Uninitialised storage (implementations may poison it).
    fn alloc(&self, shape: Shape, dtype: DType) -> Result<Tensor>;
    fn zeros(&self, shape: Shape, dtype: DType) -> Result<Tensor>;
    /// Copy host data (converted to `dtype`) into a new tensor.
    fn upload(&self, data: &[f32], shape: Shape, dtype: DType) -> Result<Tensor>;
    /// Copy a tensor to the host as f32.
    fn download(&self, t: &Tensor) -> Result<Vec<f32>>;
    /// Overwrite a tensor's contents with host data (in place).
    fn write(&self, t: &Tensor, data: &[f32]) -> Result<()>;
    /// Set every element to `value` (in place).
    fn fill(&self, t: &Tensor, value: f32) -> Result<()>;
    /// A converted copy (also a plain copy when the dtype is unchanged).
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
    /// Wait until all queued work is done (a no-op on synchronous backends).
    fn synchronize(&self) -> Result<()>;
}
