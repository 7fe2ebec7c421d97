//! The guided-diffusion UNet blocks SegDiff's E and D are made of (improved
//! diffusion's `ResBlock`, `Downsample`, `Upsample`), 2D as depth-1 3D.

use crate::autograd::{Graph, Var};
use crate::nn::dropout::{dropout, layer_seed};
use crate::nn::{Conv, Linear, Norm, NormEpilogue, ParamBuilder, ParamStore, SelfAttention};
use crate::ops::{Act, Binary, ConvSpec};
use anyhow::Result;

/// Stride-2 1×3×3 convolution (halves H and W, rounding up).
pub const DOWN: ConvSpec = ConvSpec {
    kernel: [1, 3, 3],
    stride: [1, 2, 2],
    transposed: false,
};
/// Nearest-neighbour upsampling factor of the decoder.
pub const UP: [usize; 3] = [1, 2, 2];

/// How a residual block receives the time embedding.
enum TimeIn {
    /// `h + Linear(SiLU(emb))` before the second norm.
    Add(Linear),
    /// `GN(h)·(1 + scale) + shift`, scale and shift `Linear(SiLU(emb))`.
    ScaleShift { scale: Linear, shift: Linear },
}

/// `skip(x) + conv2(drop(SiLU(GN2(conv1(SiLU(GN1(x))) ⊕ emb))))`, conv2
/// zero-initialised; skip is the identity when the channels stay, else a
/// 1×1 convolution; `drop` drops with probability `dropout` when the pass
/// has a dropout seed (training) and is the identity otherwise.
pub struct ResBlock {
    norm1: Norm,
    conv1: Conv,
    time: TimeIn,
    norm2: Norm,
    conv2: Conv,
    skip: Option<Conv>,
    dropout: f32,
}

/// The dropout of one forward pass: none (inference), or the pass's seed and
/// a counter that gives each residual block its own mask.
pub struct DropKey {
    seed: Option<u64>,
    next_layer: u64,
}

impl DropKey {
    /// No dropout (inference, or a network configured with dropout 0).
    pub fn none() -> DropKey {
        DropKey {
            seed: None,
            next_layer: 0,
        }
    }
    /// Dropout masks drawn from `seed` (a training step's key).
    pub fn train(seed: u64) -> DropKey {
        DropKey {
            seed: Some(seed),
            next_layer: 0,
        }
    }
    /// The next layer's mask seed, or None without dropout.
    fn next(&mut self) -> Option<u64> {
        let s = self.seed.map(|s| layer_seed(s, self.next_layer));
        self.next_layer += 1;
        s
    }
}

impl ResBlock {
    pub fn new(
        pb: &mut ParamBuilder,
        cin: usize,
        cout: usize,
        emb_dim: usize,
        groups: usize,
        scale_shift: bool,
        dropout: f32,
    ) -> Result<ResBlock> {
        let k = ConvSpec::K133;
        let norm1 = Norm::group(&mut pb.pp("norm1"), cin, groups)?;
        let conv1 = Conv::new(&mut pb.pp("conv1"), cin, cout, k, true)?;
        let time = if scale_shift {
            TimeIn::ScaleShift {
                scale: Linear::new(&mut pb.pp("emb_scale"), emb_dim, cout)?,
                shift: Linear::new(&mut pb.pp("emb_shift"), emb_dim, cout)?,
            }
        } else {
            TimeIn::Add(Linear::new(&mut pb.pp("emb"), emb_dim, cout)?)
        };
        let norm2 = Norm::group(&mut pb.pp("norm2"), cout, groups)?;
        let conv2 = Conv::zeros(&mut pb.pp("conv2"), cout, cout, k, true)?;
        let skip = if cin == cout {
            None
        } else {
            Some(Conv::new(
                &mut pb.pp("skip"),
                cin,
                cout,
                ConvSpec::K1,
                true,
            )?)
        };
        Ok(ResBlock {
            norm1,
            conv1,
            time,
            norm2,
            conv2,
            skip,
            dropout,
        })
    }

    /// Multiply-adds of one sample's pass at `spatial` with a time
    /// embedding of `emb_dim`: the convolutions and the embedding's linear
    /// map(s).
    pub fn macs(&self, spatial: [usize; 3], emb_dim: usize) -> u64 {
        let time = match &self.time {
            TimeIn::Add(_) => emb_dim * self.conv1.cout,
            TimeIn::ScaleShift { .. } => 2 * emb_dim * self.conv1.cout,
        } as u64;
        conv_macs(&self.conv1, spatial)
            + time
            + conv_macs(&self.conv2, spatial)
            + self.skip.as_ref().map_or(0, |c| conv_macs(c, spatial))
    }

    /// `emb_act` is SiLU(time embedding) `[N, emb_dim]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x: &Var,
        emb_act: &Var,
        drop: &mut DropKey,
    ) -> Result<Var> {
        let silu = NormEpilogue {
            act: Some(Act::Silu),
            ..Default::default()
        };
        let h = self.norm1.forward(g, ps, x, silu)?;
        let h = self.conv1.forward(g, ps, &h)?;
        let h = match &self.time {
            TimeIn::Add(lin) => {
                let e = lin.forward(g, ps, emb_act)?;
                let h = g.binary(Binary::Add, &h, &e)?;
                self.norm2.forward(
                    g,
                    ps,
                    &h,
                    NormEpilogue {
                        act: Some(Act::Silu),
                        ..Default::default()
                    },
                )?
            }
            TimeIn::ScaleShift { scale, shift } => {
                let s = scale.forward(g, ps, emb_act)?;
                let b = shift.forward(g, ps, emb_act)?;
                self.norm2.forward(
                    g,
                    ps,
                    &h,
                    NormEpilogue {
                        film: Some((&s, &b)),
                        act: Some(Act::Silu),
                        ..Default::default()
                    },
                )?
            }
        };
        let h = match drop.next() {
            Some(seed) if self.dropout > 0.0 => dropout(g, &h, self.dropout, seed)?,
            _ => h,
        };
        let h = self.conv2.forward(g, ps, &h)?;
        let skip = match &self.skip {
            Some(c) => c.forward(g, ps, x)?,
            None => x.clone(),
        };
        g.add(&skip, &h)
    }
}

/// Multiply-adds of convolution `c` on one sample of extents `spatial`.
pub fn conv_macs(c: &Conv, spatial: [usize; 3]) -> u64 {
    c.spec.macs(
        crate::tensor::Shape::ndhwc(1, spatial[0], spatial[1], spatial[2], c.cin),
        c.cout,
    )
}

/// Multiply-adds of self-attention over the T voxels of one sample of
/// extents `spatial` with C channels: the qkv and output projections
/// (3C² + C² per voxel) and, summed over the heads, the scores q kᵀ and
/// the weighted values (T²·C each).
pub fn attention_macs(a: &SelfAttention, spatial: [usize; 3]) -> u64 {
    let t = (spatial[0] * spatial[1] * spatial[2]) as u64;
    conv_macs(&a.qkv, spatial) + conv_macs(&a.proj, spatial) + 2 * t * t * a.proj.cout as u64
}

/// One entry of the encoder or decoder: a residual block (optionally with
/// attention after it), or a resampling step.
pub enum Layer {
    Res(ResBlock, Option<SelfAttention>),
    Down(Conv),
    /// Nearest ×2, then a 1×3×3 convolution.
    Up(Conv),
}

impl Layer {
    /// Multiply-adds of one sample's pass at input extents `spatial`, and
    /// the output extents.
    pub fn macs(&self, spatial: [usize; 3], emb_dim: usize) -> (u64, [usize; 3]) {
        match self {
            Layer::Res(block, attn) => (
                block.macs(spatial, emb_dim)
                    + attn.as_ref().map_or(0, |a| attention_macs(a, spatial)),
                spatial,
            ),
            Layer::Down(conv) => (conv_macs(conv, spatial), DOWN.out_spatial(spatial)),
            Layer::Up(conv) => {
                let up = [spatial[0] * UP[0], spatial[1] * UP[1], spatial[2] * UP[2]];
                (conv_macs(conv, up), up)
            }
        }
    }

    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x: &Var,
        emb_act: &Var,
        drop: &mut DropKey,
    ) -> Result<Var> {
        match self {
            Layer::Res(block, attn) => {
                let h = block.forward(g, ps, x, emb_act, drop)?;
                match attn {
                    Some(a) => a.forward(g, ps, &h),
                    None => Ok(h),
                }
            }
            Layer::Down(conv) => conv.forward(g, ps, x),
            Layer::Up(conv) => {
                let u = g.upsample(x, UP)?;
                conv.forward(g, ps, &u)
            }
        }
    }
}
