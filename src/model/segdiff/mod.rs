//! SegDiff (Amit et al. 2021): a denoiser of segmentation masks conditioned
//! on the image, `ε(x_t, I, t) = D(E(F(x_t) + G(I), t), t)`:
//!
//! - F: one 1×3×3 convolution of the noisy mask to C channels (the UNet's
//!   first input block);
//! - G: an RRDBNet of the image to C channels ([`rrdb`]), added after F;
//! - E, D: the guided-diffusion (improved-diffusion) UNet ([`unet`]): for
//!   each level `l` with multiplier `m_l`, `num_res_blocks` residual blocks
//!   to `m_l·C` channels (each followed by multi-head self-attention when
//!   the level's downsampling factor is in `attention_ds`), then a stride-2
//!   convolution (not after the last level); the middle block
//!   Res–Attention–Res; the decoder mirrors it with `num_res_blocks + 1`
//!   blocks per level, each taking the concatenation of the current features
//!   and the matching encoder output, and a nearest ×2 + convolution after
//!   the last block of each level but the first; the output
//!   GroupNorm → SiLU → zero-initialised convolution to 1 channel.
//! - The time embedding: sinusoid of C → Linear(C, 4C) → SiLU →
//!   Linear(4C, 4C); each residual block adds `Linear(SiLU(emb))` before its
//!   second norm, or (with `scale_shift_norm`) modulates it,
//!   `GN(h)·(1 + s) + b`.
//!
//! With [`Conditioning::Concat`] (MedSegDiff-style) there is no G: the image
//! is concatenated with x_t as input channels of F.
//!
//! 2D runs as depth-1 3D: `[N, 1, H, W, C]` tensors, 1×3×3 kernels, 1×2×2
//! resampling — the same layers and kernels as the 3D models. Any H, W
//! work: a stride-2 convolution rounds up, and the decoder crops each
//! upsampled feature map to its skip's extent before concatenating.

pub mod rrdb;
pub mod unet;

use crate::autograd::{Graph, Var};
use crate::nn::{time, Conv, Linear, Norm, NormEpilogue, ParamBuilder, ParamStore, SelfAttention};
use crate::ops::{Act, ConvSpec, Unary};
use crate::tensor::{DType, Shape};
use anyhow::{ensure, Result};
use rrdb::RrdbNet;
use serde::{Deserialize, Serialize};
use unet::{attention_macs, conv_macs, DropKey, Layer, ResBlock, DOWN};

/// How the image enters the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conditioning {
    /// SegDiff: RRDBNet features of the image added after the first convolution.
    Rrdb,
    /// MedSegDiff-style: the image concatenated with x_t as input channels.
    Concat,
}

/// Network shape (the `[model]` table of a SegDiff run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegDiffNetConfig {
    pub conditioning: Conditioning,
    /// Image channels (3 for RGB).
    pub image_channels: usize,
    /// Base channels C.
    pub channels: usize,
    /// Channels of each level as multiples of C.
    pub channel_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Attention heads (each of channels / heads).
    pub heads: usize,
    /// Downsampling factors (1, 2, 4, …) at which residual blocks are
    /// followed by self-attention; the reference's `attention_resolutions`
    /// r at image size S is the factor S / r.
    pub attention_ds: Vec<usize>,
    /// RRDB blocks of G.
    pub rrdb_blocks: usize,
    /// G's feature channels (nf) and dense-block growth (gc).
    pub rrdb_features: usize,
    pub rrdb_growth: usize,
    /// Groups of every group norm (C must be a multiple).
    pub norm_groups: usize,
    /// The time embedding modulates the second norm of each residual block
    /// (scale and shift) instead of being added before it.
    pub scale_shift_norm: bool,
    /// Dropout probability before each residual block's last convolution,
    /// in training only (`crate::nn::dropout`); 0 = none.
    pub dropout: f32,
}

impl Default for SegDiffNetConfig {
    fn default() -> Self {
        SegDiffNetConfig::cpu()
    }
}

impl SegDiffNetConfig {
    /// SegDiff's published MoNuSeg network (`image_train_diff_medical.py`:
    /// 256², `deeper_net`, 3 residual blocks, 12 RRDB blocks, C = 128,
    /// 4 heads, attention at resolutions 16 and 8, no scale-shift norm).
    pub fn monuseg() -> SegDiffNetConfig {
        SegDiffNetConfig {
            conditioning: Conditioning::Rrdb,
            image_channels: 3,
            channels: 128,
            channel_mult: vec![1, 1, 1, 2, 2, 4, 4],
            num_res_blocks: 3,
            heads: 4,
            attention_ds: vec![16, 32],
            rrdb_blocks: 12,
            rrdb_features: 64,
            rrdb_growth: 32,
            norm_groups: 32,
            scale_shift_norm: false,
            dropout: 0.0,
        }
    }

    /// A network a CPU trains in minutes at 64²–128²: C = 32 over three
    /// levels, one residual block each, attention at ¼ resolution, one
    /// narrow RRDB block.
    pub fn cpu() -> SegDiffNetConfig {
        SegDiffNetConfig {
            conditioning: Conditioning::Rrdb,
            image_channels: 3,
            channels: 32,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            heads: 2,
            attention_ds: vec![4],
            rrdb_blocks: 1,
            rrdb_features: 32,
            rrdb_growth: 16,
            norm_groups: 32,
            scale_shift_norm: false,
            dropout: 0.0,
        }
    }

    /// Every setting in range; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let c = self.channels;
        ensure!(c >= 1, "model.channels must be ≥ 1");
        ensure!(
            !self.channel_mult.is_empty() && self.channel_mult.iter().all(|&m| m >= 1),
            "model.channel_mult must be a non-empty list of multipliers ≥ 1, got {:?}",
            self.channel_mult
        );
        ensure!(self.num_res_blocks >= 1, "model.num_res_blocks must be ≥ 1");
        ensure!(
            self.norm_groups >= 1 && c % self.norm_groups == 0,
            "model.channels = {c} must be a multiple of model.norm_groups = {}",
            self.norm_groups
        );
        ensure!(
            self.heads >= 1 && c % self.heads == 0,
            "model.channels = {c} must be a multiple of model.heads = {}",
            self.heads
        );
        ensure!(self.image_channels >= 1, "model.image_channels must be ≥ 1");
        if self.conditioning == Conditioning::Rrdb {
            ensure!(
                self.rrdb_features >= 1 && self.rrdb_growth >= 1,
                "model.rrdb_features and model.rrdb_growth must be ≥ 1"
            );
        }
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "model.dropout = {} must lie in [0, 1)",
            self.dropout
        );
        Ok(())
    }

    /// Width of the time embedding (4C).
    pub fn emb_dim(&self) -> usize {
        4 * self.channels
    }

    /// The factor by which the deepest level is downsampled.
    pub fn max_downsampling(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }
}

/// Multiply-adds of one sample's forward pass, by part (see
/// [`SegDiffNet::macs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegDiffMacs {
    /// G(I), the RRDB encoder (0 with concatenation): once per image.
    pub condition: u64,
    /// The denoiser: the time MLP, F, E, the middle, D and the output — once
    /// per sample and step.
    pub denoise: u64,
    /// The convolutions whose input is a constant (F, G's first) and the
    /// time MLP's first layer (its input the sinusoid): a training step
    /// computes no data gradient for them.
    pub no_data_grad: u64,
}

/// One decoder block: a residual block on [features, skip] (with attention
/// when configured) and, at the end of a level, upsampling.
struct DecoderBlock {
    res: Layer,
    up: Option<Layer>,
}

/// The SegDiff denoiser.
pub struct SegDiffNet {
    pub cfg: SegDiffNetConfig,
    time1: Linear,
    time2: Linear,
    rrdb: Option<RrdbNet>,
    input_conv: Conv,
    encoder: Vec<Layer>,
    middle: (ResBlock, SelfAttention, ResBlock),
    decoder: Vec<DecoderBlock>,
    out_norm: Norm,
    out_conv: Conv,
}

impl SegDiffNet {
    /// Build the network, creating its parameters through `pb`.
    pub fn new(pb: &mut ParamBuilder, cfg: SegDiffNetConfig) -> Result<SegDiffNet> {
        cfg.validate()?;
        let c = cfg.channels;
        let emb = cfg.emb_dim();
        let groups = cfg.norm_groups;
        let ss = cfg.scale_shift_norm;
        let heads = cfg.heads;
        let time1 = Linear::new(&mut pb.pp("time").pp(0), c, emb)?;
        let time2 = Linear::new(&mut pb.pp("time").pp(1), emb, emb)?;
        let (rrdb, in_c) = match cfg.conditioning {
            Conditioning::Rrdb => (
                Some(RrdbNet::new(
                    &mut pb.pp("rrdb"),
                    cfg.image_channels,
                    c,
                    cfg.rrdb_features,
                    cfg.rrdb_growth,
                    cfg.rrdb_blocks,
                )?),
                1,
            ),
            Conditioning::Concat => (None, 1 + cfg.image_channels),
        };
        let input_conv = Conv::new(&mut pb.pp("input"), in_c, c, ConvSpec::K133, true)?;
        let attn = |pb: &mut ParamBuilder, ch: usize, ds: usize| -> Result<Option<SelfAttention>> {
            if cfg.attention_ds.contains(&ds) {
                Ok(Some(SelfAttention::new(
                    &mut pb.pp("attn"),
                    ch,
                    heads,
                    groups,
                )?))
            } else {
                Ok(None)
            }
        };
        let mut skip_ch = vec![c];
        let mut ch = c;
        let mut ds = 1;
        let mut encoder = Vec::new();
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let mut b = pb.pp("enc");
                let mut b = b.pp(encoder.len());
                let res =
                    ResBlock::new(&mut b.pp("res"), ch, mult * c, emb, groups, ss, cfg.dropout)?;
                ch = mult * c;
                let a = attn(&mut b, ch, ds)?;
                encoder.push(Layer::Res(res, a));
                skip_ch.push(ch);
            }
            if level + 1 != levels {
                let mut b = pb.pp("enc");
                let mut b = b.pp(encoder.len());
                encoder.push(Layer::Down(Conv::new(
                    &mut b.pp("down"),
                    ch,
                    ch,
                    DOWN,
                    true,
                )?));
                skip_ch.push(ch);
                ds *= 2;
            }
        }
        let middle = {
            let mut m = pb.pp("middle");
            (
                ResBlock::new(&mut m.pp("res1"), ch, ch, emb, groups, ss, cfg.dropout)?,
                SelfAttention::new(&mut m.pp("attn"), ch, heads, groups)?,
                ResBlock::new(&mut m.pp("res2"), ch, ch, emb, groups, ss, cfg.dropout)?,
            )
        };
        let mut decoder = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                let mut b = pb.pp("dec");
                let mut b = b.pp(decoder.len());
                let skip = skip_ch.pop().expect("one skip per decoder block");
                let res = ResBlock::new(
                    &mut b.pp("res"),
                    ch + skip,
                    mult * c,
                    emb,
                    groups,
                    ss,
                    cfg.dropout,
                )?;
                ch = mult * c;
                let a = attn(&mut b, ch, ds)?;
                let up = if level > 0 && i == cfg.num_res_blocks {
                    ds /= 2;
                    Some(Layer::Up(Conv::new(
                        &mut b.pp("up"),
                        ch,
                        ch,
                        ConvSpec::K133,
                        true,
                    )?))
                } else {
                    None
                };
                decoder.push(DecoderBlock {
                    res: Layer::Res(res, a),
                    up,
                });
            }
        }
        let out_norm = Norm::group(&mut pb.pp("out_norm"), ch, groups)?;
        let out_conv = Conv::zeros(&mut pb.pp("out"), ch, 1, ConvSpec::K133, true)?;
        Ok(SegDiffNet {
            cfg,
            time1,
            time2,
            rrdb,
            input_conv,
            encoder,
            middle,
            decoder,
            out_norm,
            out_conv,
        })
    }

    /// Multiply-adds of one sample's pass at `h`×`w`, counted from the
    /// layers as built (convolutions, linear maps, attention's two batched
    /// products); norms, activations and additions are not counted.
    pub fn macs(&self, h: usize, w: usize) -> SegDiffMacs {
        let c = self.cfg.channels;
        let emb = self.cfg.emb_dim();
        let full = [1, h, w];
        let time1 = (c * emb) as u64;
        let mut denoise = time1 + (emb * emb) as u64 + conv_macs(&self.input_conv, full);
        let mut sp = full;
        let mut skips = vec![sp];
        for layer in &self.encoder {
            let (m, out) = layer.macs(sp, emb);
            denoise += m;
            sp = out;
            skips.push(sp);
        }
        let (r1, a, r2) = &self.middle;
        denoise += r1.macs(sp, emb) + attention_macs(a, sp) + r2.macs(sp, emb);
        for block in &self.decoder {
            // The block runs at its skip's extents (the features cropped to them).
            sp = skips.pop().expect("one skip per decoder block");
            denoise += block.res.macs(sp, emb).0;
            if let Some(up) = &block.up {
                let (m, out) = up.macs(sp, emb);
                denoise += m;
                sp = out;
            }
        }
        denoise += conv_macs(&self.out_conv, sp);
        let (condition, first) = match &self.rrdb {
            Some(r) => (r.macs(full), r.first_conv_macs(full)),
            None => (0, 0),
        };
        SegDiffMacs {
            condition,
            denoise,
            no_data_grad: time1 + conv_macs(&self.input_conv, full) + first,
        }
    }

    /// What the network keeps of the image `[N, 1, H, W, image_channels]`
    /// across denoising steps: G(I) for SegDiff, the image itself for
    /// concatenation. It depends on neither x_t nor t, so a sampler computes
    /// it once.
    pub fn condition(&self, g: &mut Graph, ps: &ParamStore, image: &Var) -> Result<Var> {
        let s = image.shape();
        ensure!(
            s.rank() == 5 && s.d() == 1 && s.c() == self.cfg.image_channels,
            "SegDiff image must be [N, 1, H, W, {}], got {s}",
            self.cfg.image_channels
        );
        match &self.rrdb {
            Some(r) => r.forward(g, ps, image),
            None => Ok(image.clone()),
        }
    }

    /// ε̂ `[N, 1, H, W, 1]` for x_t `[N, 1, H, W, 1]`, the image's
    /// [`Self::condition`] and one time step per sample; no dropout.
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x_t: &Var,
        cond: &Var,
        t: &[f32],
    ) -> Result<Var> {
        self.forward_with(g, ps, x_t, cond, t, &mut DropKey::none())
    }

    /// [`Self::forward`] with the residual blocks' dropout masks drawn
    /// from `drop` (training).
    pub fn forward_with(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x_t: &Var,
        cond: &Var,
        t: &[f32],
        drop: &mut DropKey,
    ) -> Result<Var> {
        let s = x_t.shape();
        ensure!(
            s.rank() == 5 && s.d() == 1 && s.c() == 1,
            "SegDiff x_t must be [N, 1, H, W, 1], got {s}"
        );
        ensure!(
            cond.shape().n() == s.n() && cond.shape().spatial() == s.spatial(),
            "SegDiff condition {} does not match x_t {s}",
            cond.shape()
        );
        ensure!(
            t.len() == s.n(),
            "{} time steps for a batch of {}",
            t.len(),
            s.n()
        );
        let c = self.cfg.channels;
        let sin = time::sinusoidal(t, c, 10_000.0);
        let e = g.dev.upload(&sin, Shape::new(&[t.len(), c]), DType::F32)?;
        let e = g.constant(e);
        let e = self.time1.forward(g, ps, &e)?;
        let e = g.unary(&e, Unary::Silu)?;
        let emb = self.time2.forward(g, ps, &e)?;
        // Every residual block reads SiLU(emb).
        let emb_act = g.unary(&emb, Unary::Silu)?;

        let mut h = match &self.rrdb {
            Some(_) => {
                let f = self.input_conv.forward(g, ps, x_t)?;
                g.add(&f, cond)?
            }
            None => {
                let x = g.concat_c(&[x_t, cond])?;
                self.input_conv.forward(g, ps, &x)?
            }
        };
        let mut skips = vec![h.clone()];
        for layer in &self.encoder {
            h = layer.forward(g, ps, &h, &emb_act, drop)?;
            skips.push(h.clone());
        }
        let (r1, a, r2) = &self.middle;
        h = r1.forward(g, ps, &h, &emb_act, drop)?;
        h = a.forward(g, ps, &h)?;
        h = r2.forward(g, ps, &h, &emb_act, drop)?;
        for block in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder block");
            let u = g.crop_to(&h, skip.shape().spatial())?;
            let cat = g.concat_c(&[&u, &skip])?;
            h = block.res.forward(g, ps, &cat, &emb_act, drop)?;
            if let Some(up) = &block.up {
                h = up.forward(g, ps, &h, &emb_act, drop)?;
            }
        }
        let h = self.out_norm.forward(
            g,
            ps,
            &h,
            NormEpilogue {
                act: Some(Act::Silu),
                ..Default::default()
            },
        )?;
        self.out_conv.forward(g, ps, &h)
    }
}
