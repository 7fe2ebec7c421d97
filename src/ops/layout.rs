//! The layout family: channel concat and slice, spatial crop and pad,
//! nearest-neighbour upsampling, max pooling (ceil mode) — each with the op
//! its backward needs — and the permutation of a tensor's dims.

use crate::tensor::{Shape, Tensor, MAX_RANK};
use anyhow::{ensure, Result};

/// How `permute(x, perm)` moves elements, in the fewest dims: the output's
/// dims with runs that are also adjacent (and in order) in x merged, and dims
/// of extent 1 dropped. Output group `g` has extent `dims[g]`; stepping it by
/// one steps x by `src_strides[g]` elements and the output by
/// `dst_strides[g]` (row-major over `dims`). Every backend walks this plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermutePlan {
    /// The output shape: `x.dims[perm[i]]`.
    pub out: Shape,
    /// Number of merged groups (1..=5; one group of extent 1 for one element).
    pub rank: usize,
    pub dims: [usize; MAX_RANK],
    pub src_strides: [usize; MAX_RANK],
    pub dst_strides: [usize; MAX_RANK],
}

impl PermutePlan {
    /// True when x's innermost elements stay innermost: the output is a
    /// gather of contiguous runs of `dims[rank - 1]` elements.
    pub fn keeps_last(&self) -> bool {
        self.src_strides[self.rank - 1] == 1
    }
    /// The group that is contiguous in x (stride 1): when the last dim moves,
    /// the output is a transpose of it with the output's last group.
    pub fn contiguous_group(&self) -> usize {
        (0..self.rank)
            .find(|&g| self.src_strides[g] == 1)
            .expect("a permutation plan has a group of stride 1")
    }
}

/// The contract of `permute(x, perm)`: `perm` is a permutation of
/// `0..rank(x)`; returns the plan (any dtype, any shape).
pub fn permute_plan(x: Shape, perm: &[usize]) -> Result<PermutePlan> {
    let rank = x.rank();
    let mut seen = [false; MAX_RANK];
    ensure!(
        perm.len() == rank
            && perm
                .iter()
                .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true)),
        "permute: {perm:?} is not a permutation of the {rank} dims of x ({x})"
    );
    let d = x.dims();
    let mut stride = [1usize; MAX_RANK];
    for i in (0..rank.saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * d[i + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
    let mut plan = PermutePlan {
        out: Shape::new(&out_dims),
        rank: 0,
        dims: [1; MAX_RANK],
        src_strides: [1; MAX_RANK],
        dst_strides: [1; MAX_RANK],
    };
    // Output dims in order; a dim continues the previous group when it is the
    // next dim of x (then the group's stride is this dim's, the inner one).
    let mut last: Option<usize> = None;
    for &p in perm {
        if d[p] == 1 {
            continue;
        }
        match last {
            Some(q) if (q + 1..p).all(|i| d[i] == 1) && q < p => {
                plan.dims[plan.rank - 1] *= d[p];
                plan.src_strides[plan.rank - 1] = stride[p];
            }
            _ => {
                plan.dims[plan.rank] = d[p];
                plan.src_strides[plan.rank] = stride[p];
                plan.rank += 1;
            }
        }
        last = Some(p);
    }
    if plan.rank == 0 {
        plan.rank = 1;
    }
    for g in (0..plan.rank - 1).rev() {
        plan.dst_strides[g] = plan.dst_strides[g + 1] * plan.dims[g + 1];
    }
    Ok(plan)
}

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
    /// `y[i_0, …, i_{r−1}] = x[j]` with `j[perm[k]] = i_k`: the output's dim k
    /// is x's dim `perm[k]` (rank ≤ 5, any dtype; the output has x's dtype).
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor>;
}
