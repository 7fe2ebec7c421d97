//! Attention blocks of the pretraining backbone, over the voxels of an NDHWC
//! tensor: position linear attention and two kinds of channel attention
//! (Rui Li et al., "Linear Attention Mechanism: An Efficient Attention for
//! Semantic Segmentation", and DANet's channel attention module). Every block
//! is a gated residual `y = x + γ·out` with a learned scalar γ that starts at
//! 0, so a fresh block is the identity.
//!
//! # Position linear attention
//! Per sample, over its N voxels: `q = W_q x`, `k = W_k x`, `v = W_v x`
//! (1×1×1 convolutions; q and k have C/8 channels, v has C), q̂ and k̂
//! L2-normalised over channels at each voxel (no floor: a zero q or k row is
//! a division by zero, as in the reference), then
//!
//! ```text
//! out_n = [Σ_j v_j + q̂_nᵀ Σ_j k̂_j v_jᵀ] / [N + q̂_nᵀ (Σ_j k̂_j + ε)]
//! ```
//!
//! — the first-order Taylor form of softmax attention,
//! `Σ_j (1 + q̂_n·k̂_j) v_j / Σ_j (1 + q̂_n·k̂_j)`, with ε added to every
//! component of `Σ k̂` (ε·Σ_i q̂_ni in the denominator). The sums are per
//! sample, so the cost is O(N·C_k·C) instead of O(N²·C). Every weight
//! 1 + q̂_n·k̂_j lies in [0, 2], so the denominator lies in [0, 2N] (plus the
//! ε term) and is 0 only when every k̂_j = −q̂_n.
//!
//! [`linear_attention_composed`] builds `out` from the primitives (bmm,
//! reduce_sum, binary, unary), its backward free; the fused custom op
//! [`super::linear_attention::LinearAttention`] computes it in two passes
//! (per-sample sums, then the output) and its backward in three; the two
//! are checked against each other on every backend
//! (tests/linear_attention.rs). [`AttentionImpl`] chooses.
//!
//! # Channel attention
//! - [`ChannelKind::Linear`] (the reference's `ChannelLinearAttention`):
//!   q = k = v = x, x̂ = x L2-normalised over channels at each voxel, and with
//!   X, X̂ the `[N, C]` matrices of a sample, `s_n = Σ_c x̂_nc`:
//!   `out_nc = [Σ_c' x_nc' + Σ_m (Xᵀ X̂)_cm x̂_nm] / [N + Σ_n' x̂_n'c (s_n' + ε)]`
//!   (the reference's formula, transcribed as it is).
//! - [`ChannelKind::Cam`] (DANet's CAM): `E = XᵀX` (`[C, C]`),
//!   `A = softmax_rows(max_row(E) − E)`, `out = X Aᵀ`. The row max is a
//!   per-row constant, which the softmax cancels: `A = softmax_rows(−E)`,
//!   and the softmax subtracts its own row max for range.
//!
//! [`channel_linear_attention`] and [`channel_attention_cam`] compose them
//! from primitives; the fused custom ops of [`super::channel_attention`]
//! compute each in two passes over the tokens (per-sample C × C sums, then
//! the output) and the backward in two more; [`channel_attention`] chooses
//! by [`AttentionImpl`] (tests/channel_attention.rs checks one against the
//! other on every backend).

use super::channel_attention::{Cam, ChannelLinear};
use super::linear_attention::LinearAttention;
use super::params::{Init, ParamBuilder, ParamId, ParamStore};
use super::Conv;
use crate::autograd::{Graph, Var};
use crate::ops::{Bcast, Binary, ConvSpec, Unary};
use crate::tensor::{DType, Shape};
use anyhow::{ensure, Result};
use std::sync::Arc;

/// ε of the denominators (the reference's default).
pub const LINEAR_ATTENTION_EPS: f32 = 1e-6;

/// Which implementation computes an attention (position or channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionImpl {
    /// The custom ops ([`LinearAttention`], [`ChannelLinear`], [`Cam`]):
    /// two passes forward, three back.
    Fused,
    /// The composition of primitives ([`linear_attention_composed`],
    /// [`channel_linear_attention`], [`channel_attention_cam`]).
    Composed,
}

/// Which channel attention ([module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Linear,
    Cam,
}

/// A `[f32]` scalar constant on the graph's backend.
fn scalar(g: &Graph, v: f32) -> Result<Var> {
    Ok(g.constant(g.dev.upload(&[v], Shape::scalar(), DType::F32)?))
}

/// `x / ‖x‖` over the last dim (channels) of every row.
pub fn l2_normalize_rows(g: &mut Graph, x: &Var) -> Result<Var> {
    let sq = g.unary(x, Unary::Square)?;
    let ss = g.reduce_sum(&sq, Bcast::Row)?;
    let norm = g.unary(&ss, Unary::Sqrt)?;
    g.binary(Binary::Div, x, &norm)
}

/// `(samples, voxels)` of an NDHWC tensor.
fn tokens(x: &Var, what: &str) -> Result<(usize, usize)> {
    let sh = x.shape();
    ensure!(
        sh.rank() == 5,
        "{what}: expected an NDHWC tensor, got shape {sh}"
    );
    Ok((sh.n(), sh.voxels()))
}

/// The position linear attention `out` (module docs) from q, k `[B, D, H,
/// W, C_k]` and v `[B, D, H, W, C]`, composed from primitives; out has v's
/// shape and dtype.
pub fn linear_attention_composed(
    g: &mut Graph,
    q: &Var,
    k: &Var,
    v: &Var,
    eps: f32,
) -> Result<Var> {
    let (b, n) = tokens(v, "linear attention: v")?;
    let (ck, c) = (q.shape().c(), v.shape().c());
    ensure!(
        q.shape() == k.shape() && q.shape().with_c(c) == v.shape(),
        "linear attention: q {}, k {}, v {} must share [B, D, H, W] (q and k one shape)",
        q.shape(),
        k.shape(),
        v.shape()
    );
    let qh = l2_normalize_rows(g, q)?;
    let kh = l2_normalize_rows(g, k)?;
    let ksum = g.reduce_sum(&kh, Bcast::SampleChannel)?; // [B, C_k]
    let vsum = g.reduce_sum(v, Bcast::SampleChannel)?; // [B, C]
    let qh = g.reshape(&qh, Shape::new(&[b, n, ck]))?;
    let kh = g.reshape(&kh, Shape::new(&[b, n, ck]))?;
    let vr = g.reshape(v, Shape::new(&[b, n, c]))?;
    let kv = g.bmm(&kh, &vr, true, false)?; // [B, C_k, C] = Σ k̂ vᵀ
    let num = g.bmm(&qh, &kv, false, false)?; // [B, N, C]
    let num = g.binary(Binary::Add, &num, &vsum)?;
    let eps = scalar(g, eps)?;
    let kse = g.binary(Binary::Add, &ksum, &eps)?;
    let qk = g.binary(Binary::Mul, &qh, &kse)?; // [B, N, C_k]
    let den = g.reduce_sum(&qk, Bcast::Row)?; // [B, N, 1]
    let big_n = scalar(g, n as f32)?;
    let den = g.binary(Binary::Add, &den, &big_n)?;
    let out = g.binary(Binary::Div, &num, &den)?;
    g.reshape(&out, v.shape())
}

/// The position linear attention `out` by `how`.
pub fn linear_attention(
    g: &mut Graph,
    q: &Var,
    k: &Var,
    v: &Var,
    eps: f32,
    how: AttentionImpl,
) -> Result<Var> {
    match how {
        AttentionImpl::Composed => linear_attention_composed(g, q, k, v, eps),
        AttentionImpl::Fused => g.custom(Arc::new(LinearAttention { eps }), &[q, k, v]),
    }
}

/// `x + γ·out` with γ a `[1]` f32 scalar.
pub fn gated_residual(g: &mut Graph, x: &Var, gamma: &Var, out: &Var) -> Result<Var> {
    let scaled = g.binary(Binary::Mul, out, gamma)?;
    g.add(x, &scaled)
}

/// The reference's channel linear attention `out` (module docs) of x `[B,
/// D, H, W, C]`, composed from primitives.
pub fn channel_linear_attention(g: &mut Graph, x: &Var, eps: f32) -> Result<Var> {
    let (b, n) = tokens(x, "channel linear attention: x")?;
    let c = x.shape().c();
    let xh = l2_normalize_rows(g, x)?;
    let s = g.reduce_sum(&xh, Bcast::Row)?; // [B, D, H, W, 1]
    let eps = scalar(g, eps)?;
    let s = g.binary(Binary::Add, &s, &eps)?;
    let ws = g.binary(Binary::Mul, &xh, &s)?;
    let den = g.reduce_sum(&ws, Bcast::SampleChannel)?; // [B, C]
    let big_n = scalar(g, n as f32)?;
    let den = g.binary(Binary::Add, &den, &big_n)?;
    let vsum = g.reduce_sum(x, Bcast::Row)?; // Σ_c' x_nc', [B, D, H, W, 1]
    let xr = g.reshape(x, Shape::new(&[b, n, c]))?;
    let xhr = g.reshape(&xh, Shape::new(&[b, n, c]))?;
    let m = g.bmm(&xr, &xhr, true, false)?; // [B, C, C] = Xᵀ X̂
    let t = g.bmm(&xhr, &m, false, true)?; // [B, N, C] = X̂ Mᵀ
    let t = g.reshape(&t, x.shape())?;
    let num = g.binary(Binary::Add, &t, &vsum)?;
    g.binary(Binary::Div, &num, &den)
}

/// DANet's channel attention `out = X·softmax_rows(−XᵀX)ᵀ` of x `[B, D, H,
/// W, C]` (module docs), composed from primitives.
pub fn channel_attention_cam(g: &mut Graph, x: &Var) -> Result<Var> {
    let (b, n) = tokens(x, "channel attention (CAM): x")?;
    let c = x.shape().c();
    let xr = g.reshape(x, Shape::new(&[b, n, c]))?;
    let e = g.bmm(&xr, &xr, true, false)?; // [B, C, C]
    let neg = g.lincomb(&[(-1.0, &e)])?;
    let a = g.softmax(&neg)?;
    let out = g.bmm(&xr, &a, false, true)?; // [B, N, C]
    g.reshape(&out, x.shape())
}

/// The channel attention `out` of `kind` (module docs) of x `[B, D, H, W,
/// C]` by `how`.
pub fn channel_attention(
    g: &mut Graph,
    x: &Var,
    kind: ChannelKind,
    eps: f32,
    how: AttentionImpl,
) -> Result<Var> {
    match (kind, how) {
        (ChannelKind::Linear, AttentionImpl::Composed) => channel_linear_attention(g, x, eps),
        (ChannelKind::Cam, AttentionImpl::Composed) => channel_attention_cam(g, x),
        (ChannelKind::Linear, AttentionImpl::Fused) => {
            g.custom(Arc::new(ChannelLinear { eps }), &[x])
        }
        (ChannelKind::Cam, AttentionImpl::Fused) => g.custom(Arc::new(Cam), &[x]),
    }
}

/// The position linear attention block: q, k, v projections (1×1×1
/// convolutions with bias, C/8 channels for q and k, at least 1), the
/// attention, and the gate `y = x + γ·out`, γ starting at 0. Parameters:
/// `q.{w,b}`, `k.{w,b}`, `v.{w,b}`, `gamma`.
pub struct PositionLinearAttention {
    pub q: Conv,
    pub k: Conv,
    pub v: Conv,
    pub gamma: ParamId,
    pub eps: f32,
    pub how: AttentionImpl,
}

impl PositionLinearAttention {
    pub fn new(
        pb: &mut ParamBuilder,
        channels: usize,
        how: AttentionImpl,
    ) -> Result<PositionLinearAttention> {
        let ck = (channels / 8).max(1);
        Ok(PositionLinearAttention {
            q: Conv::new(&mut pb.pp("q"), channels, ck, ConvSpec::K1, true)?,
            k: Conv::new(&mut pb.pp("k"), channels, ck, ConvSpec::K1, true)?,
            v: Conv::new(&mut pb.pp("v"), channels, channels, ConvSpec::K1, true)?,
            gamma: pb.add("gamma", Shape::scalar(), Init::Zeros)?,
            eps: LINEAR_ATTENTION_EPS,
            how,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let q = self.q.forward(g, ps, x)?;
        let k = self.k.forward(g, ps, x)?;
        let v = self.v.forward(g, ps, x)?;
        let out = linear_attention(g, &q, &k, &v, self.eps, self.how)?;
        let gamma = ps.var(g, self.gamma);
        gated_residual(g, x, &gamma, &out)
    }
}

/// The channel attention block `y = x + γ·out` of [`ChannelKind`], γ
/// starting at 0, computed by `how`. Parameter: `gamma`.
pub struct ChannelAttention {
    pub kind: ChannelKind,
    pub gamma: ParamId,
    pub eps: f32,
    pub how: AttentionImpl,
}

impl ChannelAttention {
    pub fn new(
        pb: &mut ParamBuilder,
        kind: ChannelKind,
        how: AttentionImpl,
    ) -> Result<ChannelAttention> {
        Ok(ChannelAttention {
            kind,
            gamma: pb.add("gamma", Shape::scalar(), Init::Zeros)?,
            eps: LINEAR_ATTENTION_EPS,
            how,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let out = channel_attention(g, x, self.kind, self.eps, self.how)?;
        let gamma = ps.var(g, self.gamma);
        gated_residual(g, x, &gamma, &out)
    }
}
