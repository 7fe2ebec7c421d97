//! The layout family: channel concat and slice, spatial crop and pad,
//! nearest-neighbour upsampling, max pooling (ceil mode) — each with the op
//! its backward needs.

use crate::tensor::Tensor;
use anyhow::Result;

/// Moving data without arithmetic (beyond max and sums of copies).
pub trait LayoutOps {
    /// Concatenate NDHWC tensors of equal N, D, H, W along channels.
    fn concat_c(&self, xs: &[&Tensor]) -> Result<Tensor>;
    /// Channels `[start, start + len)` of x.
    fn slice_c(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor>;
    /// The spatial box `[origin, origin + size)` of x.
    fn crop(&self, x: &Tensor, origin: [usize; 3], size: [usize; 3]) -> Result<Tensor>;
    /// Zeros of spatial extents `full`, with x placed at `origin` (the backward of `crop`).
    fn pad(&self, x: &Tensor, origin: [usize; 3], full: [usize; 3]) -> Result<Tensor>;
    /// Nearest-neighbour upsampling by an integer factor per spatial dim.
    fn upsample(&self, x: &Tensor, factor: [usize; 3]) -> Result<Tensor>;
    /// Backward of `upsample`: sums each block of `factor` voxels.
    fn upsample_bwd(&self, dy: &Tensor, factor: [usize; 3]) -> Result<Tensor>;
    /// Max pooling with window = stride = `window`, ceil mode
    /// (`out = ceil(in / window)`, windows clipped at the edge).
    fn maxpool(&self, x: &Tensor, window: [usize; 3]) -> Result<Tensor>;
    /// Backward of `maxpool`: each output's gradient goes to the first voxel
    /// (in D, H, W scan order) of its window that equals the maximum.
    fn maxpool_bwd(&self, dy: &Tensor, x: &Tensor, window: [usize; 3]) -> Result<Tensor>;
}
