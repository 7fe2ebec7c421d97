//! Multi-head self-attention over the voxels of an NDHWC tensor, composed
//! from the generic primitives (no attention kernel): the q, k, v
//! projections as one 1×1×1 convolution sliced along channels, reshape and
//! permute into heads, the scores as a bmm with b transposed, the 1/√d
//! scaling as a lincomb, the row softmax, the weighted values as a bmm,
//! permute back, the output projection as a 1×1×1 convolution. Its backward
//! is the composition's. `tests/attention_composed.rs` checks [`attend`]
//! against an f64 quadratic reference on every backend and its gradients
//! against finite differences.
//!
//! Channel layout of the qkv projection: `[q | k | v]`, each `heads × d`
//! channels with head `h` at `h·d .. (h+1)·d`.

use super::layers::{Conv, Norm, NormEpilogue};
use super::params::{ParamBuilder, ParamStore};
use crate::autograd::{Graph, Var};
use crate::ops::ConvSpec;
use crate::tensor::Shape;
use anyhow::{ensure, Result};

/// `[N, D, H, W, heads·d]` → `[N·heads, T, d]` (T = D·H·W).
fn split_heads(g: &mut Graph, t: &Var, heads: usize) -> Result<Var> {
    let s = t.shape();
    let (n, tokens, d) = (s.n(), s.voxels(), s.c() / heads);
    let t = g.reshape(t, Shape::new(&[n, tokens, heads, d]))?;
    let t = g.permute(&t, &[0, 2, 1, 3])?;
    g.reshape(&t, Shape::new(&[n * heads, tokens, d]))
}

/// `y = proj_o(concat_h softmax(q_h k_hᵀ / √d) v_h)` with
/// `[q, k, v] = proj_qkv(x)`: `w_qkv` is a 1×1×1 convolution weight
/// `C → 3·heads·d`, `w_o` one of `heads·d → C'`; biases optional. The output
/// has x's spatial extents and `C'` channels.
pub fn attend(
    g: &mut Graph,
    x: &Var,
    w_qkv: &Var,
    b_qkv: Option<&Var>,
    w_o: &Var,
    b_o: Option<&Var>,
    heads: usize,
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
    let scores = g.bmm(&q, &k, false, true)?;
    let scores = g.lincomb(&[(1.0 / (d as f32).sqrt(), &scores)])?;
    // Softmax over each row of T scores (the channel softmax of a [rows, T] view).
    let rows = g.reshape(&scores, Shape::ndhwc(n * heads, 1, 1, tokens, tokens))?;
    let p = g.softmax(&rows)?;
    let p = g.reshape(&p, Shape::new(&[n * heads, tokens, tokens]))?;
    let o = g.bmm(&p, &v, false, false)?;
    let o = g.reshape(&o, Shape::new(&[n, heads, tokens, d]))?;
    let o = g.permute(&o, &[0, 2, 1, 3])?;
    let [sd, sh, sw] = s.spatial();
    let o = g.reshape(&o, Shape::ndhwc(n, sd, sh, sw, hd))?;
    g.conv3d(&o, w_o, b_o, ConvSpec::K1)
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
