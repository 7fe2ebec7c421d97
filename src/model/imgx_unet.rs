//! The ImgX-DiffSeg (v0.1.0) 3D UNet, with and without time conditioning.
//!
//! ```text
//! stem:    conv k3 (no bias) → instance norm → GELU → time-residual block        [C0]
//! encoder: for each c in channels: conv k2 s2 (no bias) → instance norm
//!          → time-residual block                                                [c]
//! decoder: for c in [C0, C0, C1, C2] (reversed): transposed conv k2 s2 (bias)
//!          → crop to the skip's extents → + skip → time-residual block          [c]
//! head:    conv k1 (bias) → K logits
//! ```
//! The time-residual block is `conv k3 → IN → GELU → conv k3 → (+ t) → IN →
//! GELU(· + x)` with `t = Linear(GELU(sinusoidal(t)))`, embedding width 4·C0.
//!
//! `time_conditioning`:
//! - `Faithful`: the reference's block — the per-channel time vector is added
//!   *before* the instance norm, which subtracts every per-channel constant,
//!   so the time signal is erased (its gradient is exactly zero). Kept to
//!   reproduce the paper's network and its parameter count (6.795 M for
//!   in = 17, K = 16).
//! - `Film` (default): the second norm is followed by FiLM,
//!   `z·(1 + scale) + shift` with scale and shift from two Linear layers of
//!   the embedding, so the network actually sees t (+0.099 M parameters for
//!   the 32/64/128/256 network).
//! - `None`: no time input — the supervised (non-diffusion) baseline UNet.
//!
//! 2D data is a depth-1 volume: with `dims2d` the kernels are 1×3×3 and the
//! resampling 1×2×2, the same code path.

use crate::autograd::{Graph, Var};
use crate::nn::{time, Conv, Linear, Norm, NormEpilogue, ParamBuilder, ParamStore};
use crate::ops::{Act, Binary, ConvSpec, Unary};
use crate::tensor::{DType, Shape};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// How the diffusion time step enters the network (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeConditioning {
    Faithful,
    Film,
    None,
}

/// Network shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels per level, e.g. [32, 64, 128, 256].
    pub channels: Vec<usize>,
    pub time_conditioning: TimeConditioning,
    /// Depth-1 (2D) data: 1×3×3 kernels, 1×2×2 resampling.
    #[serde(default)]
    pub dims2d: bool,
}

impl UnetConfig {
    /// The paper's network for `classes` classes (input: image + noisy mask).
    pub fn imgx(classes: usize, time_conditioning: TimeConditioning) -> UnetConfig {
        let diffusion = time_conditioning != TimeConditioning::None;
        UnetConfig {
            in_channels: 1 + if diffusion { classes } else { 0 },
            out_channels: classes,
            channels: vec![32, 64, 128, 256],
            time_conditioning,
            dims2d: false,
        }
    }
    pub fn k3(&self) -> ConvSpec {
        if self.dims2d {
            ConvSpec::K133
        } else {
            ConvSpec::K3
        }
    }
    fn down(&self) -> ConvSpec {
        if self.dims2d {
            ConvSpec::new([1, 2, 2], [1, 2, 2], false)
        } else {
            ConvSpec::DOWN2
        }
    }
    fn up(&self) -> ConvSpec {
        if self.dims2d {
            ConvSpec::new([1, 2, 2], [1, 2, 2], true)
        } else {
            ConvSpec::UP2
        }
    }
    /// Width of the time embedding (4 × the first level's channels).
    pub fn time_dim(&self) -> usize {
        4 * self.channels[0]
    }
}

/// How a residual block receives the time embedding.
enum TimeInput {
    None,
    /// Added before the second norm (erased by it).
    Add(Linear),
    /// FiLM after the second norm.
    Film {
        scale: Linear,
        shift: Linear,
    },
}

/// conv → IN → GELU → conv → [time] → IN → GELU(· + x).
struct ResBlock {
    conv1: Conv,
    norm1: Norm,
    conv2: Conv,
    norm2: Norm,
    time: TimeInput,
}

impl ResBlock {
    fn new(pb: &mut ParamBuilder, c: usize, cfg: &UnetConfig) -> Result<ResBlock> {
        let k3 = cfg.k3();
        let conv1 = Conv::new(&mut pb.pp("conv1"), c, c, k3, false)?;
        let norm1 = Norm::instance(&mut pb.pp("norm1"), c)?;
        let conv2 = Conv::new(&mut pb.pp("conv2"), c, c, k3, false)?;
        let time = match cfg.time_conditioning {
            TimeConditioning::None => TimeInput::None,
            TimeConditioning::Faithful => {
                TimeInput::Add(Linear::new(&mut pb.pp("time"), cfg.time_dim(), c)?)
            }
            // Zero-initialised: the modulation starts as the identity.
            TimeConditioning::Film => TimeInput::Film {
                scale: Linear::zeros(&mut pb.pp("time_scale"), cfg.time_dim(), c)?,
                shift: Linear::zeros(&mut pb.pp("time_shift"), cfg.time_dim(), c)?,
            },
        };
        let norm2 = Norm::instance(&mut pb.pp("norm2"), c)?;
        Ok(ResBlock {
            conv1,
            norm1,
            conv2,
            norm2,
            time,
        })
    }

    /// `t_act` is GELU(embedding) `[N, time_dim]` (shared by all blocks).
    fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var, t_act: Option<&Var>) -> Result<Var> {
        let h = self.conv1.forward(g, ps, x)?;
        let h = self.norm1.forward(
            g,
            ps,
            &h,
            NormEpilogue {
                act: Some(Act::Gelu),
                ..Default::default()
            },
        )?;
        let mut h = self.conv2.forward(g, ps, &h)?;
        let mut film = None;
        match (&self.time, t_act) {
            (TimeInput::None, _) => {}
            (TimeInput::Add(lin), Some(t)) => {
                let v = lin.forward(g, ps, t)?;
                h = g.binary(Binary::Add, &h, &v)?;
            }
            (TimeInput::Film { scale, shift }, Some(t)) => {
                film = Some((scale.forward(g, ps, t)?, shift.forward(g, ps, t)?));
            }
            (_, None) => anyhow::bail!("this UNet is time-conditioned: a time step is required"),
        }
        self.norm2.forward(
            g,
            ps,
            &h,
            NormEpilogue {
                film: film.as_ref().map(|(s, h)| (s, h)),
                residual: Some(x),
                act: Some(Act::Gelu),
            },
        )
    }
}

/// The ImgX UNet.
pub struct ImgxUnet {
    pub cfg: UnetConfig,
    stem_conv: Conv,
    stem_norm: Norm,
    stem_block: ResBlock,
    down: Vec<(Conv, Norm, ResBlock)>,
    up: Vec<(Conv, ResBlock)>,
    head: Conv,
}

impl ImgxUnet {
    /// Build the network, creating its parameters through `pb`.
    pub fn new(pb: &mut ParamBuilder, cfg: UnetConfig) -> Result<ImgxUnet> {
        ensure!(
            !cfg.channels.is_empty(),
            "the UNet needs at least one level"
        );
        ensure!(
            cfg.in_channels > 0 && cfg.out_channels > 0,
            "empty input or output channels"
        );
        let c0 = cfg.channels[0];
        let mut stem = pb.pp("stem");
        let stem_conv = Conv::new(&mut stem.pp("conv"), cfg.in_channels, c0, cfg.k3(), false)?;
        let stem_norm = Norm::instance(&mut stem.pp("norm"), c0)?;
        let stem_block = ResBlock::new(&mut stem.pp("block"), c0, &cfg)?;
        let mut down = Vec::new();
        let mut prev = c0;
        for (i, &c) in cfg.channels.iter().enumerate() {
            let mut level = pb.pp("down");
            let mut level = level.pp(i);
            let conv = Conv::new(&mut level.pp("conv"), prev, c, cfg.down(), false)?;
            let norm = Norm::instance(&mut level.pp("norm"), c)?;
            let block = ResBlock::new(&mut level.pp("block"), c, &cfg)?;
            down.push((conv, norm, block));
            prev = c;
        }
        // Decoder channels: [C0, C0, C1, …, C_{L-2}], walked from the deepest.
        let mut dec: Vec<usize> = vec![c0];
        dec.extend_from_slice(&cfg.channels[..cfg.channels.len() - 1]);
        let mut up = Vec::new();
        for (i, &c) in dec.iter().rev().enumerate() {
            let mut level = pb.pp("up");
            let mut level = level.pp(i);
            let conv = Conv::new(&mut level.pp("deconv"), prev, c, cfg.up(), true)?;
            let block = ResBlock::new(&mut level.pp("block"), c, &cfg)?;
            up.push((conv, block));
            prev = c;
        }
        let head = Conv::new(&mut pb.pp("head"), c0, cfg.out_channels, ConvSpec::K1, true)?;
        Ok(ImgxUnet {
            cfg,
            stem_conv,
            stem_norm,
            stem_block,
            down,
            up,
            head,
        })
    }

    /// Multiply-adds of the convolutions of one forward on a `[1, spatial]`
    /// input: the layers of [`ImgxUnet::forward`], shape by shape (the norms,
    /// activations and the time MLP are not counted).
    pub fn conv_macs(&self, spatial: [usize; 3]) -> u64 {
        let at = |sp: [usize; 3], c: usize| Shape::ndhwc(1, sp[0], sp[1], sp[2], c);
        let c0 = self.cfg.channels[0];
        let block = |sp: [usize; 3], c: usize| 2 * self.cfg.k3().macs(at(sp, c), c);
        let mut macs =
            self.cfg.k3().macs(at(spatial, self.cfg.in_channels), c0) + block(spatial, c0);
        let mut sp = spatial;
        let mut skips = vec![sp];
        let mut prev = c0;
        for (conv, _, _) in &self.down {
            macs += conv.spec.macs(at(sp, prev), conv.cout);
            sp = conv.spec.out_spatial(sp);
            macs += block(sp, conv.cout);
            prev = conv.cout;
            skips.push(sp);
        }
        skips.pop();
        for (deconv, _) in &self.up {
            macs += deconv.spec.macs(at(sp, prev), deconv.cout);
            sp = skips.pop().expect("one skip per decoder level");
            macs += block(sp, deconv.cout);
            prev = deconv.cout;
        }
        macs + self.head.spec.macs(at(sp, prev), self.head.cout)
    }

    /// Logits `[N, D, H, W, K]` for input `x` `[N, D, H, W, in_channels]` and
    /// time steps `t` (one per sample; ignored when not time-conditioned).
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x: &Var,
        t: Option<&[f32]>,
    ) -> Result<Var> {
        let sh = x.shape();
        ensure!(
            sh.rank() == 5 && sh.c() == self.cfg.in_channels,
            "UNet input must be NDHWC with {} channels, got {}",
            self.cfg.in_channels,
            sh
        );
        let t_act = match (self.cfg.time_conditioning, t) {
            (TimeConditioning::None, _) => None,
            (_, Some(ts)) => {
                ensure!(
                    ts.len() == sh.n(),
                    "{} time steps for a batch of {}",
                    ts.len(),
                    sh.n()
                );
                let dim = self.cfg.time_dim();
                let emb = time::sinusoidal(ts, dim, 10_000.0);
                let e = g
                    .dev
                    .upload(&emb, Shape::new(&[ts.len(), dim]), DType::F32)?;
                let e = g.constant(e);
                Some(g.unary(&e, Unary::Gelu)?)
            }
            (_, None) => anyhow::bail!("this UNet is time-conditioned: a time step is required"),
        };
        let t_act = t_act.as_ref();

        let h = self.stem_conv.forward(g, ps, x)?;
        let h = self.stem_norm.forward(
            g,
            ps,
            &h,
            NormEpilogue {
                act: Some(Act::Gelu),
                ..Default::default()
            },
        )?;
        let mut h = self.stem_block.forward(g, ps, &h, t_act)?;
        let mut skips = vec![h.clone()];
        for (conv, norm, block) in &self.down {
            let d = conv.forward(g, ps, &h)?;
            let d = norm.forward(g, ps, &d, NormEpilogue::default())?;
            h = block.forward(g, ps, &d, t_act)?;
            skips.push(h.clone());
        }
        skips.pop(); // the deepest level is h itself
        for (deconv, block) in &self.up {
            let skip = skips.pop().expect("one skip per decoder level");
            let u = deconv.forward(g, ps, &h)?;
            let u = g.crop_to(&u, skip.shape().spatial())?;
            let u = g.add(&u, &skip)?;
            h = block.forward(g, ps, &u, t_act)?;
        }
        self.head.forward(g, ps, &h)
    }
}
