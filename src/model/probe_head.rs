//! The probe heads of frozen-feature segmentation (vox2vec's
//! `FPNLinearHead` and `FPNNonLinearHead`, Goncharov et al.): a small
//! network on a feature pyramid ([`super::fpn3d`], finest first) that
//! returns one logit per class and voxel of the finest level (sigmoid
//! outputs: the classes are independent, as vox2vec's multi-label probe).
//!
//! The pyramid a head reads may be wider than the backbone's: the frozen
//! features of several diffusion time steps are concatenated per level, so
//! level i carries `m · c0·2^i` channels (m = `in_mult`, the number of time
//! steps).
//!
//! ```text
//! linear:     logits = Σ_i upsample_to_level0(conv1×1_i(level i))
//!             (conv_i: m·c_i → classes, bias only on level 0)
//! non-linear: bottom:  ResBlock(m·c_{L−1} → c_{L−1})            on level L−1
//!             level i = L−2 … 0:
//!               up.i:    conv1×1 (bias) 2c_i → c_i, nearest ×2, crop to level i
//!               skip.i:  conv1×1 (bias) m·c_i → c_i on level i, added
//!               right.i: ResBlock(c_i → c_i)
//!             final: conv1×1 (bias) c0 → classes
//! ResBlock(a → b): relu(bn(x)) → conv1×1 (bias) a → b → relu(bn) →
//!                  conv1×1 (bias) b → b, plus x (a = b) or conv1×1 (bias)
//!                  a → b of x (a ≠ b)
//! ```
//! The reference's ResBlock3d convolutions keep PyTorch's default bias (its
//! figure of ≈0.968 M parameters for the non-linear head counts them; see
//! tests/probe.rs for the count term by term). Batch norm is vox2vec's:
//! batch statistics in training ([`NormMode::Train`], returned as
//! [`RunningUpdate`]s), running statistics in eval.

use super::fpn3d_block::{BlockNorm, Ctx, NormKind, NormMode, RunningUpdate};
use crate::autograd::{Graph, Var};
use crate::nn::{Conv, ParamBuilder, ParamStore};
use crate::ops::ConvSpec;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Which head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// vox2vec's FPNNonLinearHead (1×1×1 ResBlocks and a top-down path).
    Nonlinear,
    /// vox2vec's FPNLinearHead (one 1×1×1 convolution per level, summed).
    Linear,
}

/// The shape of a head: what pyramid it reads and how many classes it
/// predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    pub kind: HeadKind,
    /// c0 of the backbone (16 in vox2vec).
    pub base_channels: usize,
    /// Pyramid levels (6 in vox2vec).
    pub num_scales: usize,
    /// Pyramids concatenated per level (the number of time steps; 1 for one
    /// pyramid).
    pub in_mult: usize,
    /// Output channels, one sigmoid per class (13 in vox2vec's BTCV probe).
    pub classes: usize,
}

impl HeadShape {
    /// Channels of level `i` of the pyramid the head reads.
    pub fn in_channels(&self, i: usize) -> usize {
        self.in_mult * (self.base_channels << i)
    }
}

/// A pre-activation residual block of 1×1×1 convolutions (module docs).
struct HeadResBlock {
    norm1: BlockNorm,
    conv1: Conv,
    norm2: BlockNorm,
    conv2: Conv,
    skip: Option<Conv>,
}

impl HeadResBlock {
    fn new(pb: &mut ParamBuilder, cin: usize, cout: usize) -> Result<HeadResBlock> {
        let norm1 = BlockNorm::new(&mut pb.pp("norm1"), cin, NormKind::Batch, 1)?;
        let conv1 = Conv::new(&mut pb.pp("conv1"), cin, cout, ConvSpec::K1, true)?;
        let norm2 = BlockNorm::new(&mut pb.pp("norm2"), cout, NormKind::Batch, 1)?;
        let conv2 = Conv::new(&mut pb.pp("conv2"), cout, cout, ConvSpec::K1, true)?;
        let skip = if cin != cout {
            Some(Conv::new(
                &mut pb.pp("skip"),
                cin,
                cout,
                ConvSpec::K1,
                true,
            )?)
        } else {
            None
        };
        Ok(HeadResBlock {
            norm1,
            conv1,
            norm2,
            conv2,
            skip,
        })
    }

    fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let h = self.norm1.forward(g, ps, x, None, ctx)?;
        let h = self.conv1.forward(g, ps, &h)?;
        let h = self.norm2.forward(g, ps, &h, None, ctx)?;
        let h = self.conv2.forward(g, ps, &h)?;
        let s = match &self.skip {
            Some(c) => c.forward(g, ps, x)?,
            None => x.clone(),
        };
        g.add(&s, &h)
    }
}

struct NonlinearLayers {
    bottom: HeadResBlock,
    up: Vec<Conv>,
    skip: Vec<Conv>,
    right: Vec<HeadResBlock>,
    last: Conv,
}

enum Layers {
    Linear(Vec<Conv>),
    Nonlinear(Box<NonlinearLayers>),
}

/// A probe head. Parameter names: linear `level.{i}`; non-linear `bottom`,
/// `up.{i}`, `skip.{i}`, `right.{i}` (each ResBlock `norm1`, `conv1`,
/// `norm2`, `conv2`, `skip`), `final`.
pub struct ProbeHead {
    pub shape: HeadShape,
    layers: Layers,
}

impl ProbeHead {
    pub fn new(pb: &mut ParamBuilder, shape: HeadShape) -> Result<ProbeHead> {
        ensure!(
            shape.base_channels > 0 && shape.num_scales > 0 && shape.in_mult > 0,
            "probe head: base channels, scales and input pyramids must be > 0, got {shape:?}"
        );
        ensure!(shape.classes > 0, "probe head: no classes");
        let c = |i: usize| shape.base_channels << i;
        let last = shape.num_scales - 1;
        let layers = match shape.kind {
            HeadKind::Linear => Layers::Linear(
                (0..shape.num_scales)
                    .map(|i| {
                        Conv::new(
                            &mut pb.pp("level").pp(i),
                            shape.in_channels(i),
                            shape.classes,
                            ConvSpec::K1,
                            i == 0,
                        )
                    })
                    .collect::<Result<_>>()?,
            ),
            HeadKind::Nonlinear => {
                let bottom =
                    HeadResBlock::new(&mut pb.pp("bottom"), shape.in_channels(last), c(last))?;
                let (mut up, mut skip, mut right) = (vec![], vec![], vec![]);
                for i in 0..last {
                    up.push(Conv::new(
                        &mut pb.pp("up").pp(i),
                        2 * c(i),
                        c(i),
                        ConvSpec::K1,
                        true,
                    )?);
                    skip.push(Conv::new(
                        &mut pb.pp("skip").pp(i),
                        shape.in_channels(i),
                        c(i),
                        ConvSpec::K1,
                        true,
                    )?);
                    right.push(HeadResBlock::new(&mut pb.pp("right").pp(i), c(i), c(i))?);
                }
                let last = Conv::new(&mut pb.pp("final"), c(0), shape.classes, ConvSpec::K1, true)?;
                Layers::Nonlinear(Box::new(NonlinearLayers {
                    bottom,
                    up,
                    skip,
                    right,
                    last,
                }))
            }
        };
        Ok(ProbeHead { shape, layers })
    }

    /// Logits `[N, D0, H0, W0, classes]` of a pyramid (finest first, level
    /// i `[N, D_i, H_i, W_i, in_channels(i)]`) and, in [`NormMode::Train`],
    /// the batch statistics to fold into the running ones.
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        pyramid: &[Var],
        mode: NormMode,
    ) -> Result<(Var, Vec<RunningUpdate>)> {
        let s = &self.shape;
        ensure!(
            pyramid.len() == s.num_scales,
            "probe head: a pyramid of {} levels for a head of {}",
            pyramid.len(),
            s.num_scales
        );
        for (i, p) in pyramid.iter().enumerate() {
            ensure!(
                p.shape().rank() == 5 && p.shape().c() == s.in_channels(i),
                "probe head: level {i} must be NDHWC with {} channels, got {}",
                s.in_channels(i),
                p.shape()
            );
        }
        let mut running = Vec::new();
        let mut ctx = Ctx {
            mode,
            t_act: None,
            running: &mut running,
        };
        let logits = match &self.layers {
            Layers::Linear(convs) => {
                let mut x = convs[s.num_scales - 1].forward(g, ps, &pyramid[s.num_scales - 1])?;
                for i in (0..s.num_scales - 1).rev() {
                    let f = convs[i].forward(g, ps, &pyramid[i])?;
                    let u = g.upsample(&x, [2, 2, 2])?;
                    let u = g.crop_to(&u, f.shape().spatial())?;
                    x = g.add(&u, &f)?;
                }
                x
            }
            Layers::Nonlinear(n) => {
                let NonlinearLayers {
                    bottom,
                    up,
                    skip,
                    right,
                    last,
                } = n.as_ref();
                let mut x = bottom.forward(g, ps, &pyramid[s.num_scales - 1], &mut ctx)?;
                for i in (0..s.num_scales - 1).rev() {
                    let fmap = &pyramid[i];
                    let u = up[i].forward(g, ps, &x)?;
                    let u = g.upsample(&u, [2, 2, 2])?;
                    let u = g.crop_to(&u, fmap.shape().spatial())?;
                    let k = skip[i].forward(g, ps, fmap)?;
                    let u = g.add(&u, &k)?;
                    x = right[i].forward(g, ps, &u, &mut ctx)?;
                }
                last.forward(g, ps, &x)?
            }
        };
        Ok((logits, running))
    }
}
