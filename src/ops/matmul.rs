//! The matrix family: dense layers on per-sample f32 vectors `[M, K]`.

use crate::tensor::Tensor;
use anyhow::Result;

/// Dense products.
pub trait MatmulOps {
    /// `y[M,N] = x[M,K] · w[K,N] + b[N]`, all f32 (per-sample vectors).
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor>;
    /// `dx[M,K] = dy · wᵀ`.
    fn linear_dgrad(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor>;
    /// `dw[K,N] = xᵀ · dy`, `db[N] = Σ_m dy` (if `with_bias`).
    fn linear_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;
}
