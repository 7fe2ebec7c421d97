//! The fused normalisation family: group norm (instance norm, layer norm over
//! channels) with affine, FiLM, residual and activation fused in one pass
//! ([`NormArgs`]), its contract ([`NormArgs::check`], [`NormArgs::check_bwd`]),
//! and [`NormOps`].

use super::pointwise::Act;
use crate::tensor::{DType, Tensor};
use anyhow::{ensure, Result};

/// Arguments of the fused normalisation op.
///
/// Group norm over `groups` groups of `C / groups` consecutive channels
/// (instance norm: `groups == C`; layer norm over channels: `groups == 1`),
/// statistics per (sample, group) over all voxels and the group's channels,
/// biased variance, then the fused epilogue:
/// ```text
/// x̂ = (x - mean) · rstd,            rstd = 1 / sqrt(var + eps)
/// z = x̂ · gamma[c] + beta[c]         (gamma = 1, beta = 0 when absent)
/// z = z · (1 + scale[n,c]) + shift[n,c]   (when `film` is given)
/// u = z + residual                    (when `residual` is given; NDHWC like x)
/// y = act(u)
/// ```
#[derive(Clone, Copy)]
pub struct NormArgs<'a> {
    pub groups: usize,
    pub eps: f32,
    pub gamma: Option<&'a Tensor>,
    pub beta: Option<&'a Tensor>,
    /// (scale `[N, C]`, shift `[N, C]`), f32.
    pub film: Option<(&'a Tensor, &'a Tensor)>,
    pub residual: Option<&'a Tensor>,
    pub act: Act,
}

/// Result of [`Backend::norm_fwd`].
pub struct NormOut {
    /// The normalised activation, NDHWC in the activation dtype.
    pub y: Tensor,
    /// `[N, G, 2]` f32: mean and rstd per (sample, group), kept for backward.
    pub stats: Tensor,
}

/// Gradients of [`Backend::norm_bwd`]. An entry is `Some` exactly when the
/// matching input of [`NormArgs`] was given.
pub struct NormGrads {
    pub dx: Tensor,
    pub dgamma: Option<Tensor>,
    pub dbeta: Option<Tensor>,
    /// (dscale `[N, C]`, dshift `[N, C]`).
    pub dfilm: Option<(Tensor, Tensor)>,
    /// Gradient of `u` (what flows into the residual).
    pub dresidual: Option<Tensor>,
}

impl NormArgs<'_> {
    /// The contract of `norm_fwd(x, self)` (and of the inputs `norm_bwd`
    /// shares with it), the same for every backend: x a non-empty NDHWC
    /// tensor, `groups` dividing its channels, a finite `eps ≥ 0`, gamma and
    /// beta f32 `[C]`, FiLM scale and shift f32 `[N, C]`, a residual of x's
    /// shape and dtype. `op` names the caller in the error.
    pub fn check(&self, op: &str, x: &Tensor) -> Result<()> {
        let sh = x.shape();
        ensure!(
            sh.rank() == 5,
            "{op}: x: expected an NDHWC tensor, got shape {sh}"
        );
        let c = sh.c();
        ensure!(
            self.groups >= 1 && c.is_multiple_of(self.groups),
            "{op}: groups = {} must divide the {c} channels of x ({sh})",
            self.groups
        );
        ensure!(
            sh.numel() > 0,
            "{op}: x ({sh}) has no elements to normalise"
        );
        ensure!(
            self.eps >= 0.0 && self.eps.is_finite(),
            "{op}: eps must be finite and non-negative, got {}",
            self.eps
        );
        for (t, name) in [(self.gamma, "gamma"), (self.beta, "beta")] {
            if let Some(t) = t {
                ensure!(
                    t.dtype() == DType::F32 && t.shape().dims() == [c],
                    "{op}: {name}: expected f32 [{c}] (the channels of x), got {} {}",
                    t.dtype().name(),
                    t.shape()
                );
            }
        }
        if let Some((s, h)) = self.film {
            for (t, name) in [(s, "film scale"), (h, "film shift")] {
                ensure!(
                    t.dtype() == DType::F32 && t.shape().dims() == [sh.n(), c],
                    "{op}: {name}: expected f32 [{}, {c}] ([N, C] of {sh}), got {} {}",
                    sh.n(),
                    t.dtype().name(),
                    t.shape()
                );
            }
        }
        if let Some(r) = self.residual {
            ensure!(
                r.shape() == sh && r.dtype() == x.dtype(),
                "{op}: residual: {} {} differs from x ({} {sh})",
                r.dtype().name(),
                r.shape(),
                x.dtype().name()
            );
        }
        Ok(())
    }

    /// The contract of `norm_bwd(dy, x, stats, self)`: [`NormArgs::check`],
    /// `dy` of x's shape and dtype, `stats` f32 `[N, groups, 2]`.
    pub fn check_bwd(&self, dy: &Tensor, x: &Tensor, stats: &Tensor) -> Result<()> {
        self.check("norm_bwd", x)?;
        let sh = x.shape();
        ensure!(
            dy.shape() == sh && dy.dtype() == x.dtype(),
            "norm_bwd: dy: {} {} differs from x ({} {sh})",
            dy.dtype().name(),
            dy.shape(),
            x.dtype().name()
        );
        ensure!(
            stats.dtype() == DType::F32 && stats.shape().dims() == [sh.n(), self.groups, 2],
            "norm_bwd: stats: expected f32 [{}, {}, 2] ([N, groups, 2]), got {} {}",
            sh.n(),
            self.groups,
            stats.dtype().name(),
            stats.shape()
        );
        Ok(())
    }
}

/// The fused normalisation op. Implementations check with
/// [`NormArgs::check`] / [`NormArgs::check_bwd`].
pub trait NormOps {
    /// Fused group norm + affine + FiLM + residual + activation ([`NormArgs`]).
    fn norm_fwd(&self, x: &Tensor, args: &NormArgs) -> Result<NormOut>;
    /// Backward of [`NormOps::norm_fwd`] from the same `x`, `stats` and args.
    fn norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        stats: &Tensor,
        args: &NormArgs,
    ) -> Result<NormGrads>;
}
