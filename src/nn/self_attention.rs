//! Multi-head self-attention over the voxels of an NDHWC tensor: the q, k, v
//! projections as one 1×1×1 convolution sliced along channels, reshape and
//! permute into heads `[N·heads, T, d]`, then the fused softmax attention
//! `softmax(q kᵀ / √d) v` ([`super::flash_attention::FlashAttention`], one op
//! that never writes the T × T scores, with its own backward), permute back,
//! the output projection as a 1×1×1 convolution ([`attend`]).
//! [`attend_composed`] computes the same from the generic primitives only
//! (the scores as a bmm with b transposed, the 1/√d scaling as a lincomb, the
//! row softmax, the weighted values as a bmm) and is the reference the fused
//! op is tested against. `tests/attention_composed.rs` checks both against an
//! f64 quadratic reference on every backend and their gradients against
//! finite differences; `tests/attention_fused.rs` checks the fused op alone.
//!
//! Channel layout of the qkv projection: `[q | k | v]`, each `heads × d`
//! channels with head `h` at `h·d .. (h+1)·d`.

use super::flash_attention::{FlashAttention, MAX_D};
use super::layers::{Conv, Norm, NormEpilogue};
use super::params::{ParamBuilder, ParamStore};
use crate::autograd::{Graph, Var};
use crate::ops::ConvSpec;
use crate::tensor::Shape;
use anyhow::{ensure, Result};
use std::sync::Arc;

/// `[N, D, H, W, heads·d]` → `[N·heads, T, d]` (T = D·H·W).
fn split_heads(g: &mut Graph, t: &Var, heads: usize) -> Result<Var> {
    let s = t.shape();
    let (n, tokens, d) = (s.n(), s.voxels(), s.c() / heads);
    let t = g.reshape(t, Shape::new(&[n, tokens, heads, d]))?;
    let t = g.permute(&t, &[0, 2, 1, 3])?;
    g.reshape(&t, Shape::new(&[n * heads, tokens, d]))
}

/// How [`attend_with`] computes `softmax(q kᵀ / √d) v` per head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Core {
    /// One fused op ([`FlashAttention`]).
    Fused,
    /// bmm, lincomb, softmax, bmm.
    Composed,
}

/// `y = proj_o(concat_h softmax(q_h k_hᵀ / √d) v_h)` with
/// `[q, k, v] = proj_qkv(x)`: `w_qkv` is a 1×1×1 convolution weight
/// `C → 3·heads·d`, `w_o` one of `heads·d → C'`; biases optional. The output
/// has x's spatial extents and `C'` channels. The core is the fused op
/// (composed for heads wider than [`MAX_D`] channels).
pub fn attend(
    g: &mut Graph,
    x: &Var,
    w_qkv: &Var,
    b_qkv: Option<&Var>,
    w_o: &Var,
    b_o: Option<&Var>,
    heads: usize,
) -> Result<Var> {
    attend_with(g, x, w_qkv, b_qkv, w_o, b_o, heads, Core::Fused)
}

/// [`attend`] with the core composed from primitives (the reference).
pub fn attend_composed(
    g: &mut Graph,
    x: &Var,
    w_qkv: &Var,
    b_qkv: Option<&Var>,
    w_o: &Var,
    b_o: Option<&Var>,
    heads: usize,
) -> Result<Var> {
    attend_with(g, x, w_qkv, b_qkv, w_o, b_o, heads, Core::Composed)
}

/// [`attend`] with the core chosen by `core`.
#[allow(clippy::too_many_arguments)]
pub fn attend_with(
    g: &mut Graph,
    x: &Var,
    w_qkv: &Var,
    b_qkv: Option<&Var>,
    w_o: &Var,
    b_o: Option<&Var>,
    heads: usize,
    core: Core,
) -> Result<Var> {
    let qkv = g.conv3d(x, w_qkv, b_qkv, ConvSpec::K1)?;
    let width = qkv.shape().c();
    ensure!(
        heads >= 1 && width % (3 * heads) == 0,
        "attention: {width} qkv channels do not split into q, k, v of {heads} heads"
    );
    let hd = width / 3;
    let d = hd / heads;
    let q = g.slice_c(&qkv, 0, hd)?;
    let k = g.slice_c(&qkv, hd, hd)?;
    let v = g.slice_c(&qkv, 2 * hd, hd)?;
    let (q, k, v) = (
        split_heads(g, &q, heads)?,
        split_heads(g, &k, heads)?,
        split_heads(g, &v, heads)?,
    );
    let s = x.shape();
    let (n, tokens) = (s.n(), s.voxels());
    let o = softmax_attention(g, &q, &k, &v, core)?;
    let o = g.reshape(&o, Shape::new(&[n, heads, tokens, d]))?;
    let o = g.permute(&o, &[0, 2, 1, 3])?;
    let [sd, sh, sw] = s.spatial();
    let o = g.reshape(&o, Shape::ndhwc(n, sd, sh, sw, hd))?;
    g.conv3d(&o, w_o, b_o, ConvSpec::K1)
}

/// `softmax(q kᵀ / √d) v` of q, k, v `[BH, T, d]` (d = their width),
/// fused or composed (heads wider than [`MAX_D`] channels stay composed).
pub fn softmax_attention(g: &mut Graph, q: &Var, k: &Var, v: &Var, core: Core) -> Result<Var> {
    let s = q.shape();
    ensure!(s.rank() == 3, "attention: q must be [BH, T, d], got {s}");
    let (bh, tokens, d) = (s.dims()[0], s.dims()[1], s.dims()[2]);
    let scale = 1.0 / (d as f32).sqrt();
    let core = if d > MAX_D { Core::Composed } else { core };
    match core {
        Core::Fused => g.custom(Arc::new(FlashAttention { scale }), &[q, k, v]),
        Core::Composed => {
            let scores = g.bmm(q, k, false, true)?;
            let scores = g.lincomb(&[(scale, &scores)])?;
            // Softmax over each row of T scores (the channel softmax of a [rows, T] view).
            let rows = g.reshape(&scores, Shape::ndhwc(bh, 1, 1, tokens, tokens))?;
            let p = g.softmax(&rows)?;
            let p = g.reshape(&p, Shape::new(&[bh, tokens, tokens]))?;
            g.bmm(&p, v, false, false)
        }
    }
}

/// The attention block of the guided-diffusion UNet:
/// `x + proj_o(attention(qkv(GroupNorm(x))))`, `heads` heads of `C / heads`
/// channels, the output projection zero-initialised (the block starts as the
/// identity).
pub struct SelfAttention {
    pub norm: Norm,
    pub qkv: Conv,
    pub proj: Conv,
    pub heads: usize,
}

impl SelfAttention {
    pub fn new(
        pb: &mut ParamBuilder,
        channels: usize,
        heads: usize,
        groups: usize,
    ) -> Result<SelfAttention> {
        ensure!(
            heads >= 1 && channels % heads == 0,
            "attention: {channels} channels do not split into {heads} heads"
        );
        Ok(SelfAttention {
            norm: Norm::group(&mut pb.pp("norm"), channels, groups)?,
            qkv: Conv::new(
                &mut pb.pp("qkv"),
                channels,
                3 * channels,
                ConvSpec::K1,
                true,
            )?,
            proj: Conv::zeros(&mut pb.pp("proj"), channels, channels, ConvSpec::K1, true)?,
            heads,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let h = self.norm.forward(g, ps, x, NormEpilogue::default())?;
        let w_qkv = ps.var(g, self.qkv.w);
        let b_qkv = self.qkv.b.map(|id| ps.var(g, id));
        let w_o = ps.var(g, self.proj.w);
        let b_o = self.proj.b.map(|id| ps.var(g, id));
        let y = attend(
            g,
            &h,
            &w_qkv,
            b_qkv.as_ref(),
            &w_o,
            b_o.as_ref(),
            self.heads,
        )?;
        g.add(x, &y)
    }
}
