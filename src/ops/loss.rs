//! The segmentation and loss family: argmax, one-hot,
//! cross-entropy, foreground soft Dice, MSE — each loss with its backward.

use crate::tensor::Tensor;
use anyhow::Result;

/// Class scores, targets and losses. Losses are f32 `[1]`.
pub trait LossOps {
    /// `y[n,…,0] = argmax_c x[n,…,c]` as a float class id (first maximum wins).
    fn argmax_c(&self, x: &Tensor) -> Result<Tensor>;
    /// One-hot of float class ids `[N,D,H,W,1]`: `on` at the class, `off` elsewhere.
    /// An id outside `0..classes` is an error: of this call on the CPU; on a
    /// GPU of the next `download` or `synchronize` (checking at the call
    /// would wait for the device once per training step).
    fn one_hot(&self, labels: &Tensor, classes: usize, on: f32, off: f32) -> Result<Tensor>;
    /// Mean over samples and voxels of `−Σ_c t_c · log softmax(logits)_c`; f32 `[1]`.
    fn cross_entropy(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor>;
    /// `dlogits = dloss · (softmax(logits) − t) / (N · voxels)`; `dloss` f32 `[1]`.
    fn cross_entropy_bwd(&self, logits: &Tensor, target: &Tensor, dloss: &Tensor)
        -> Result<Tensor>;
    /// Foreground soft Dice loss from probabilities `p` and one-hot target `t`:
    /// for each sample n and class c ≥ 1 with `Σ t > 0`,
    /// `l[n,c] = 1 − 2 Σ p·t / Σ (p + t)`; the loss is the mean of those `l`
    /// (0 when there are none). Returns (loss f32 `[1]`, sums f32 `[N, C, 3]`
    /// holding Σp·t, Σp, Σt for the backward).
    fn dice_loss(&self, p: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)>;
    /// Gradient w.r.t. `p` of [`LossOps::dice_loss`].
    fn dice_loss_bwd(
        &self,
        p: &Tensor,
        target: &Tensor,
        sums: &Tensor,
        dloss: &Tensor,
    ) -> Result<Tensor>;
    /// Mean of `(a − b)²` over all elements; f32 `[1]`.
    fn mse(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Gradient w.r.t. `a`: `dloss · 2(a − b) / numel` (w.r.t. `b` it is the negation).
    fn mse_bwd(&self, a: &Tensor, b: &Tensor, dloss: &Tensor) -> Result<Tensor>;
}
