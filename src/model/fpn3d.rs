//! The pretraining backbone: vox2vec's FPN3d (a 3D UNet that returns its
//! whole decoder pyramid), with an optional sinusoidal time embedding and
//! optional attention blocks.
//!
//! ```text
//! first_conv: conv k3 (bias), in → c0                                   [c0]
//! level i < L−1 (c = c0·2^i):
//!   left.i:  2 ResBlock3d(c) → [position attention]      → skip source
//!   down.i:  maxpool 2 (ceil mode) → conv k1 (bias) c → 2c
//! bottom:    2 ResBlock3d(c0·2^(L−1)) → [channel attention]      → pyramid L−1
//! level i = L−2 … 0:
//!   up.i:    conv k1 (bias) 2c → c → nearest upsample ×2 → crop to the skip
//!   skip.i:  conv k1 (bias) c → c on the skip source, added
//!   right.i: 2 ResBlock3d(c) → [position attention]              → pyramid i
//! ```
//! ResBlock3d is pre-activation: `x + conv(relu(norm(conv(relu(norm(x))))))`
//! with bias-free 3×3×3 convolutions ([`super::fpn3d_block`]). The pyramid
//! is returned finest first: level i has `c0·2^i` channels and extents
//! ⌈s/2^i⌉ per axis (ceil-mode pooling keeps odd extents' last voxel).
//!
//! Time (`time = true`): `e = Linear(SiLU(Linear(sinusoidal(t, c0))))`,
//! width 4·c0; every ResBlock3d applies `z·(1 + s) + b` with `(s, b)` two
//! zero-initialised dense layers of SiLU(e), after its second norm and
//! before the ReLU (the scale-shift norm of improved DDPM).
//!
//! Attention (both gated, `x + γ·out` with γ = 0 at init, so optional
//! blocks start as the identity): position linear attention after the
//! ResBlocks of every level but the deepest (levels 0–4 of 6), on both the
//! encoder (left) and decoder (right) sides; channel attention
//! (ChannelLinearAttention or DANet CAM) after the deepest level's blocks.
//! See [`crate::nn::attention`].

use super::fpn3d_block::{Ctx, NormKind, NormMode, ResBlock3d, RunningUpdate};
use crate::autograd::{Graph, Var};
use crate::nn::attention::{AttentionImpl, ChannelAttention, ChannelKind, PositionLinearAttention};
use crate::nn::{time, Conv, Linear, ParamBuilder, ParamStore};
use crate::ops::{ConvSpec, Unary};
use crate::tensor::{DType, Shape};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

fn default_groups() -> usize {
    8
}

/// Network shape and options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FpnConfig {
    /// 1 (the image, or x_t) + k coordinate channels.
    pub in_channels: usize,
    /// Channels of the finest level (16 in vox2vec).
    pub base_channels: usize,
    /// Pyramid levels (6 in vox2vec).
    pub num_scales: usize,
    /// ResBlocks per stack (2 in vox2vec).
    #[serde(default = "default_blocks")]
    pub blocks: usize,
    pub norm: NormKind,
    /// Groups of [`NormKind::Group`] (must divide every level's channels).
    #[serde(default = "default_groups")]
    pub groups: usize,
    /// Sinusoidal time embedding and per-block scale-shift.
    pub time: bool,
    /// Position linear attention on levels 0..L−1, and how it is computed.
    #[serde(default)]
    pub position_attention: Option<AttentionImpl>,
    /// Channel attention at the deepest level, computed fused when the
    /// position attention is (else composed).
    #[serde(default)]
    pub channel_attention: Option<ChannelKind>,
}

fn default_blocks() -> usize {
    2
}

impl FpnConfig {
    /// vox2vec's FPN3d as published: batch norm, no time, no attention,
    /// `in_channels` inputs.
    pub fn vox2vec(in_channels: usize) -> FpnConfig {
        FpnConfig {
            in_channels,
            base_channels: 16,
            num_scales: 6,
            blocks: 2,
            norm: NormKind::Batch,
            groups: default_groups(),
            time: false,
            position_attention: None,
            channel_attention: None,
        }
    }

    /// The diffusion pretraining backbone: vox2vec's FPN3d on `[x_t, k
    /// coordinate channels]` with time, position linear attention (fused)
    /// and ChannelLinearAttention.
    pub fn pretrain(coord_channels: usize) -> FpnConfig {
        FpnConfig {
            time: true,
            position_attention: Some(AttentionImpl::Fused),
            channel_attention: Some(ChannelKind::Linear),
            ..FpnConfig::vox2vec(1 + coord_channels)
        }
    }

    /// Channels of level `i`.
    pub fn channels(&self, i: usize) -> usize {
        self.base_channels << i
    }

    /// Width of the time embedding (4 × the base channels).
    pub fn time_dim(&self) -> usize {
        4 * self.base_channels
    }

    /// The pyramid's `[D, H, W, C]` per level, finest first, for an input
    /// of spatial extents `dhw`: extents halve per level, rounding up.
    pub fn pyramid_shapes(&self, dhw: [usize; 3]) -> Vec<[usize; 4]> {
        let mut s = dhw;
        (0..self.num_scales)
            .map(|i| {
                let out = [s[0], s[1], s[2], self.channels(i)];
                s = s.map(|e| e.div_ceil(2));
                out
            })
            .collect()
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.in_channels > 0, "FPN: in_channels must be > 0");
        ensure!(self.base_channels > 0, "FPN: base_channels must be > 0");
        ensure!(
            (1..=12).contains(&self.num_scales),
            "FPN: num_scales must be in 1..=12, got {}",
            self.num_scales
        );
        ensure!(self.blocks > 0, "FPN: blocks must be > 0");
        Ok(())
    }
}

/// The sinusoidal embedding's MLP (`time.0`, `time.1`).
struct TimeMlp {
    l0: Linear,
    l1: Linear,
    sin_dim: usize,
}

/// One stack of ResBlocks and the attention after it.
struct Stack {
    blocks: Vec<ResBlock3d>,
    position: Option<PositionLinearAttention>,
    channel: Option<ChannelAttention>,
}

impl Stack {
    fn new(pb: &mut ParamBuilder, c: usize, cfg: &FpnConfig, deepest: bool) -> Result<Stack> {
        let td = cfg.time.then(|| cfg.time_dim());
        let blocks = (0..cfg.blocks)
            .map(|j| ResBlock3d::new(&mut pb.pp(j), c, cfg.norm, cfg.groups, td))
            .collect::<Result<Vec<_>>>()?;
        let (mut position, mut channel) = (None, None);
        if deepest {
            if let Some(kind) = cfg.channel_attention {
                // Fused wherever the position attention is fused.
                let how = cfg.position_attention.unwrap_or(AttentionImpl::Composed);
                channel = Some(ChannelAttention::new(&mut pb.pp("attn"), kind, how)?);
            }
        } else if let Some(how) = cfg.position_attention {
            position = Some(PositionLinearAttention::new(&mut pb.pp("attn"), c, how)?);
        }
        Ok(Stack {
            blocks,
            position,
            channel,
        })
    }

    fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward(g, ps, &h, ctx)?;
        }
        if let Some(a) = &self.position {
            h = a.forward(g, ps, &h)?;
        }
        if let Some(a) = &self.channel {
            h = a.forward(g, ps, &h)?;
        }
        Ok(h)
    }
}

/// The pyramid of one forward and, in [`NormMode::Train`] with batch norm,
/// the statistics to fold into the running ones
/// ([`super::fpn3d_block::apply_running`]).
pub struct FpnOutput {
    /// Finest first, `[N, D_i, H_i, W_i, c0·2^i]`.
    pub pyramid: Vec<Var>,
    pub running: Vec<RunningUpdate>,
}

/// Parameter names: `first_conv`, `left.{i}.{j}`, `left.{i}.attn`,
/// `down.{i}`, `bottom.{j}`, `bottom.attn`, `up.{i}`, `skip.{i}`,
/// `right.{i}.{j}`, `right.{i}.attn`, `time.{0,1}` (i the level, j the
/// block).
pub struct Fpn3d {
    pub cfg: FpnConfig,
    first_conv: Conv,
    time: Option<TimeMlp>,
    left: Vec<Stack>,
    down: Vec<Conv>,
    bottom: Stack,
    up: Vec<Conv>,
    skip: Vec<Conv>,
    right: Vec<Stack>,
}

impl Fpn3d {
    pub fn new(pb: &mut ParamBuilder, cfg: FpnConfig) -> Result<Fpn3d> {
        cfg.validate()?;
        let c0 = cfg.base_channels;
        let first_conv = Conv::new(
            &mut pb.pp("first_conv"),
            cfg.in_channels,
            c0,
            ConvSpec::K3,
            true,
        )?;
        let time = if cfg.time {
            let mut t = pb.pp("time");
            let e = cfg.time_dim();
            Some(TimeMlp {
                l0: Linear::new(&mut t.pp(0), c0, e)?,
                l1: Linear::new(&mut t.pp(1), e, e)?,
                sin_dim: c0,
            })
        } else {
            None
        };
        let last = cfg.num_scales - 1;
        let (mut left, mut down, mut up, mut skip, mut right) =
            (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..last {
            let c = cfg.channels(i);
            left.push(Stack::new(&mut pb.pp("left").pp(i), c, &cfg, false)?);
            down.push(Conv::new(
                &mut pb.pp("down").pp(i),
                c,
                2 * c,
                ConvSpec::K1,
                true,
            )?);
        }
        let bottom = Stack::new(&mut pb.pp("bottom"), cfg.channels(last), &cfg, true)?;
        for i in 0..last {
            let c = cfg.channels(i);
            up.push(Conv::new(
                &mut pb.pp("up").pp(i),
                2 * c,
                c,
                ConvSpec::K1,
                true,
            )?);
            skip.push(Conv::new(
                &mut pb.pp("skip").pp(i),
                c,
                c,
                ConvSpec::K1,
                true,
            )?);
            right.push(Stack::new(&mut pb.pp("right").pp(i), c, &cfg, false)?);
        }
        Ok(Fpn3d {
            cfg,
            first_conv,
            time,
            left,
            down,
            bottom,
            up,
            skip,
            right,
        })
    }

    /// Multiply-adds of the convolutions of one forward on a `[1, spatial]`
    /// input, layer by layer as [`Fpn3d::forward`] runs them: the first
    /// conv, two 3×3×3 convs per ResBlock, the 1×1×1 down / up / skip convs
    /// and the q, k, v projections (1×1×1) of position attention. Not
    /// counted: norms, activations, the time MLP and its scale-shift layers,
    /// and the attention's own products (see
    /// [`crate::nn::linear_attention::Dims`]).
    pub fn conv_macs(&self, spatial: [usize; 3]) -> u64 {
        let cfg = &self.cfg;
        let at = |sp: [usize; 3], c: usize| Shape::ndhwc(1, sp[0], sp[1], sp[2], c);
        let k3 = |sp: [usize; 3], cin: usize, cout: usize| ConvSpec::K3.macs(at(sp, cin), cout);
        let k1 = |sp: [usize; 3], cin: usize, cout: usize| ConvSpec::K1.macs(at(sp, cin), cout);
        // A stack: `blocks` ResBlocks of two convs, then the attention's projections.
        let stack = |sp: [usize; 3], c: usize, deepest: bool| {
            let mut m = 2 * cfg.blocks as u64 * k3(sp, c, c);
            if !deepest && cfg.position_attention.is_some() {
                let ck = (c / 8).max(1);
                m += 2 * k1(sp, c, ck) + k1(sp, c, c);
            }
            m
        };
        let shapes = cfg.pyramid_shapes(spatial);
        let sp = |i: usize| [shapes[i][0], shapes[i][1], shapes[i][2]];
        let last = cfg.num_scales - 1;
        let mut macs = k3(spatial, cfg.in_channels, cfg.base_channels);
        for i in 0..last {
            let c = cfg.channels(i);
            // left stack; down: pool, then 1×1×1 c → 2c on level i + 1;
            // up: 1×1×1 2c → c on level i + 1; skip: 1×1×1 c → c; right stack.
            macs += 2 * stack(sp(i), c, false) + k1(sp(i + 1), c, 2 * c);
            macs += k1(sp(i + 1), 2 * c, c) + k1(sp(i), c, c);
        }
        macs + stack(sp(last), cfg.channels(last), true)
    }

    /// The pyramid of `x` `[N, D, H, W, in_channels]` at time steps `t` (one
    /// per sample; required iff the config has time).
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x: &Var,
        t: Option<&[f32]>,
        mode: NormMode,
    ) -> Result<FpnOutput> {
        let sh = x.shape();
        ensure!(
            sh.rank() == 5 && sh.c() == self.cfg.in_channels,
            "FPN input must be NDHWC with {} channels, got {sh}",
            self.cfg.in_channels
        );
        let t_act = match (&self.time, t) {
            (None, _) => None,
            (Some(mlp), Some(ts)) => {
                ensure!(
                    ts.len() == sh.n(),
                    "{} time steps for a batch of {}",
                    ts.len(),
                    sh.n()
                );
                let emb = time::sinusoidal(ts, mlp.sin_dim, 10_000.0);
                let e = g
                    .dev
                    .upload(&emb, Shape::new(&[ts.len(), mlp.sin_dim]), DType::F32)?;
                let e = g.constant(e);
                let e = mlp.l0.forward(g, ps, &e)?;
                let e = g.unary(&e, Unary::Silu)?;
                let e = mlp.l1.forward(g, ps, &e)?;
                Some(g.unary(&e, Unary::Silu)?)
            }
            (Some(_), None) => {
                anyhow::bail!("this FPN is time-conditioned: a time step is required")
            }
        };
        let mut running = Vec::new();
        let mut ctx = Ctx {
            mode,
            t_act: t_act.as_ref(),
            running: &mut running,
        };
        let mut h = self.first_conv.forward(g, ps, x)?;
        let mut skips = Vec::with_capacity(self.left.len());
        for (left, down) in self.left.iter().zip(&self.down) {
            h = left.forward(g, ps, &h, &mut ctx)?;
            skips.push(h.clone());
            let p = g.maxpool(&h, [2, 2, 2])?;
            h = down.forward(g, ps, &p)?;
        }
        h = self.bottom.forward(g, ps, &h, &mut ctx)?;
        let mut pyramid = vec![h.clone()];
        for i in (0..self.left.len()).rev() {
            let fmap = &skips[i];
            let u = self.up[i].forward(g, ps, &h)?;
            let u = g.upsample(&u, [2, 2, 2])?;
            let u = g.crop_to(&u, fmap.shape().spatial())?;
            let s = self.skip[i].forward(g, ps, fmap)?;
            let u = g.add(&u, &s)?;
            h = self.right[i].forward(g, ps, &u, &mut ctx)?;
            pyramid.push(h.clone());
        }
        pyramid.reverse();
        Ok(FpnOutput { pyramid, running })
    }
}
