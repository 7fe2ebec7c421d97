//! Batch normalisation of NDHWC activations, per channel over the N·D·H·W
//! values of the batch, composed from primitives (`reduce_sum` to Channel,
//! broadcast binary ops, `unary`), so its backward — through the batch mean
//! and variance — comes from autograd.
//!
//! ```text
//! train: μ = Σ x / M,  σ² = Σ (x − μ)² / M            (M = N·D·H·W, biased)
//!        y = (x − μ) / √(σ² + eps) · γ + β
//!        running_mean ← (1 − m)·running_mean + m·μ
//!        running_var  ← (1 − m)·running_var  + m·σ²·M/(M − 1)   (unbiased)
//! eval:  y = (x − running_mean) / √(running_var + eps) · γ + β
//! ```
//! eps = 1e-5 and momentum m = 0.1, PyTorch's `BatchNorm3d` defaults. The
//! running statistics are parameters that never train (`running_mean`,
//! `running_var`, created frozen), so checkpoints carry them; the training
//! step applies [`BatchNorm::update_running`] after its forward.
//!
//! Two implementations of the training mode, held to each other on every
//! backend (tests/batch_norm.rs):
//! - [`batch_norm_train_fused`], what [`BatchNorm`] runs: NDHWC is
//!   contiguous, so x `[N, D, H, W, C]` viewed as one sample
//!   `[1, N·D, H, W, C]` has, per channel, exactly the batch's N·D·H·W
//!   values — the fused instance norm of the norm family (`groups = C`,
//!   Welford statistics, affine in the same pass, its fused backward) on
//!   that view *is* batch norm, forward and backward, on the CPU and in the
//!   norm kernels. The batch variance comes back from its rstd as
//!   `1/rstd² − eps`.
//! - [`batch_norm_train`], composed from primitives: seven passes over x
//!   forward (sum, centre, square, sum, divide, scale, shift); the
//!   reference.

use super::params::{Init, ParamBuilder, ParamId, ParamStore};
use crate::autograd::{Graph, NormOpts, Var};
use crate::backend::Backend;
use crate::ops::{Act, Bcast, Binary, Unary};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// The batch statistics of one training forward, per channel, f32 `[C]`.
pub struct BatchStats {
    pub mean: Tensor,
    /// Biased (divided by M).
    pub var: Tensor,
    /// M = N·D·H·W.
    pub count: usize,
}

/// A batch norm layer: `scale` (γ, ones), `offset` (β, zeros), and the
/// frozen `running_mean` (zeros) and `running_var` (ones).
pub struct BatchNorm {
    pub gamma: ParamId,
    pub beta: ParamId,
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub eps: f32,
    pub momentum: f32,
}

fn scalar(g: &Graph, v: f32) -> Result<Var> {
    Ok(g.constant(g.dev.upload(&[v], Shape::scalar(), DType::F32)?))
}

/// `(x − mean) / √(var + eps) · γ + β` with per-channel `[C]` f32 mean, var,
/// γ, β.
fn normalise(
    g: &mut Graph,
    x: &Var,
    mean: &Var,
    var: &Var,
    gamma: &Var,
    beta: &Var,
    eps: f32,
) -> Result<Var> {
    let xc = g.binary(Binary::Sub, x, mean)?;
    let eps = scalar(g, eps)?;
    let ve = g.binary(Binary::Add, var, &eps)?;
    let sd = g.unary(&ve, Unary::Sqrt)?;
    let xh = g.binary(Binary::Div, &xc, &sd)?;
    let y = g.binary(Binary::Mul, &xh, gamma)?;
    g.binary(Binary::Add, &y, beta)
}

fn check_x(x: &Var) -> Result<usize> {
    let sh = x.shape();
    ensure!(
        sh.rank() == 5 && sh.numel() > 0,
        "batch norm: x must be a non-empty NDHWC tensor, got {sh}"
    );
    Ok(sh.numel() / sh.c())
}

/// Training-mode batch norm: y and the batch statistics (module docs).
pub fn batch_norm_train(
    g: &mut Graph,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    eps: f32,
) -> Result<(Var, BatchStats)> {
    let m = check_x(x)?;
    let inv_m = 1.0 / m as f32;
    let s = g.reduce_sum(x, Bcast::Channel)?;
    let mean = g.lincomb(&[(inv_m, &s)])?;
    let xc = g.binary(Binary::Sub, x, &mean)?;
    let sq = g.unary(&xc, Unary::Square)?;
    let ss = g.reduce_sum(&sq, Bcast::Channel)?;
    let var = g.lincomb(&[(inv_m, &ss)])?;
    let y = normalise(g, x, &mean, &var, gamma, beta, eps)?;
    let stats = BatchStats {
        mean: mean.t.clone(),
        var: var.t.clone(),
        count: m,
    };
    Ok((y, stats))
}

/// Training-mode batch norm by the fused instance norm on x viewed as one
/// sample (module docs): y and the batch statistics.
pub fn batch_norm_train_fused(
    g: &mut Graph,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    eps: f32,
) -> Result<(Var, BatchStats)> {
    let m = check_x(x)?;
    let sh = x.shape();
    let c = sh.c();
    let flat = g.reshape(x, Shape::ndhwc(1, sh.n() * sh.d(), sh.h(), sh.w(), c))?;
    let (y, stats) = g.norm_with_stats(
        &flat,
        NormOpts {
            groups: c,
            eps,
            gamma: Some(gamma),
            beta: Some(beta),
            film: None,
            residual: None,
            act: Act::Identity,
        },
    )?;
    let y = g.reshape(&y, sh)?;
    // stats [1, C, 2] = (mean, rstd) per channel; var = 1/rstd² − eps.
    let dev = g.dev;
    let pairs = stats.reshape(Shape::ndhwc(1, 1, 1, c, 2));
    let mean = dev.slice_c(&pairs, 0, 1)?.reshape(Shape::new(&[c]));
    let rstd = dev.slice_c(&pairs, 1, 1)?.reshape(Shape::new(&[c]));
    let r2 = dev.unary(&rstd, Unary::Square)?;
    let ones = dev.upload(&vec![1.0; c], Shape::new(&[c]), DType::F32)?;
    let inv = dev.binary(Binary::Div, &ones, &r2)?;
    let eps_t = dev.upload(&[eps], Shape::scalar(), DType::F32)?;
    let var = dev.binary(Binary::Sub, &inv, &eps_t)?;
    Ok((
        y,
        BatchStats {
            mean,
            var,
            count: m,
        },
    ))
}

/// Eval-mode batch norm with the given `[C]` f32 statistics.
pub fn batch_norm_eval(
    g: &mut Graph,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> Result<Var> {
    check_x(x)?;
    let (mean, var) = (g.constant(mean.clone()), g.constant(var.clone()));
    normalise(g, x, &mean, &var, gamma, beta, eps)
}

/// `(1 − m)·running + m·batch` for both running statistics (the variance
/// made unbiased by M/(M − 1), 1 when M = 1), as new tensors.
pub fn running_update(
    dev: &dyn Backend,
    mean: &Tensor,
    var: &Tensor,
    s: &BatchStats,
    momentum: f32,
) -> Result<(Tensor, Tensor)> {
    let unbias = if s.count > 1 {
        s.count as f32 / (s.count - 1) as f32
    } else {
        1.0
    };
    let new_mean = dev.lincomb(&[(1.0 - momentum, mean), (momentum, &s.mean)])?;
    let new_var = dev.lincomb(&[(1.0 - momentum, var), (momentum * unbias, &s.var)])?;
    Ok((new_mean, new_var))
}

impl BatchNorm {
    pub fn new(pb: &mut ParamBuilder, channels: usize) -> Result<BatchNorm> {
        let c = Shape::new(&[channels]);
        Ok(BatchNorm {
            gamma: pb.add("scale", c, Init::Ones)?,
            beta: pb.add("offset", c, Init::Zeros)?,
            running_mean: pb.add_state("running_mean", c, Init::Zeros)?,
            running_var: pb.add_state("running_var", c, Init::Ones)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Training mode: batch statistics (returned for [`BatchNorm::update_running`]).
    pub fn forward_train(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x: &Var,
    ) -> Result<(Var, BatchStats)> {
        let gamma = ps.var(g, self.gamma);
        let beta = ps.var(g, self.beta);
        batch_norm_train_fused(g, x, &gamma, &beta, self.eps)
    }

    /// Eval mode: the running statistics.
    pub fn forward_eval(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let gamma = ps.var(g, self.gamma);
        let beta = ps.var(g, self.beta);
        let (mean, var) = (ps.get(self.running_mean), ps.get(self.running_var));
        batch_norm_eval(g, x, &gamma, &beta, mean, var, self.eps)
    }

    /// Fold one batch's statistics into the running ones (new tensors
    /// replace the store's entries).
    pub fn update_running(
        &self,
        dev: &dyn Backend,
        ps: &mut ParamStore,
        s: &BatchStats,
    ) -> Result<()> {
        let (mean, var) = running_update(
            dev,
            ps.get(self.running_mean),
            ps.get(self.running_var),
            s,
            self.momentum,
        )?;
        ps.entries[self.running_mean.0].t = mean;
        ps.entries[self.running_var.0].t = var;
        Ok(())
    }
}
