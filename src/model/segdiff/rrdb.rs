//! The image encoder G of SegDiff: an RRDBNet (ESRGAN's residual-in-residual
//! dense network) at full resolution, all convolutions 1×3×3 with bias:
//!
//! ```text
//! fea   = conv_first(I)                         3 → nf
//! trunk = trunk_conv(RRDB_nb(… RRDB_1(fea)))    nf → nf
//! out   = conv_last(LeakyReLU_0.2(hr_conv(fea + trunk)))   nf → C
//! RRDB(x)  = 0.2 · RDB_3(RDB_2(RDB_1(x))) + x
//! RDB(x)   = 0.2 · conv5([x, x1, x2, x3, x4]) + x,
//!            x_i = LeakyReLU_0.2(conv_i([x, x1, …, x_{i−1}]))   (gc channels each)
//! ```
//! The dense concatenations are channel concatenations (`concat_c`).

use crate::autograd::{Graph, Var};
use crate::nn::{Conv, ParamBuilder, ParamStore};
use crate::ops::{ConvSpec, Unary};
use anyhow::Result;

const SLOPE: f32 = 0.2;
/// The residual scaling of the dense and the residual-in-residual blocks.
const RES_SCALE: f32 = 0.2;

/// ResidualDenseBlock_5C: five convolutions over the growing concatenation.
pub struct DenseBlock {
    convs: Vec<Conv>,
}

impl DenseBlock {
    pub fn new(pb: &mut ParamBuilder, nf: usize, gc: usize) -> Result<DenseBlock> {
        let mut convs = Vec::with_capacity(5);
        for i in 0..5 {
            let cout = if i == 4 { nf } else { gc };
            convs.push(Conv::new(
                &mut pb.pp(format!("conv{}", i + 1)),
                nf + i * gc,
                cout,
                ConvSpec::K133,
                true,
            )?);
        }
        Ok(DenseBlock { convs })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        // The growing concatenation [x, x1, …]: each convolution reads it.
        let mut cat = x.clone();
        let (last, growing) = self.convs.split_last().expect("five convolutions");
        for conv in growing {
            let y = conv.forward(g, ps, &cat)?;
            let y = g.unary(&y, Unary::LeakyRelu(SLOPE))?;
            cat = g.concat_c(&[&cat, &y])?;
        }
        let y = last.forward(g, ps, &cat)?;
        g.lincomb(&[(RES_SCALE, &y), (1.0, x)])
    }
}

/// Residual in residual dense block: three dense blocks, scaled residual.
pub struct Rrdb {
    blocks: [DenseBlock; 3],
}

impl Rrdb {
    pub fn new(pb: &mut ParamBuilder, nf: usize, gc: usize) -> Result<Rrdb> {
        Ok(Rrdb {
            blocks: [
                DenseBlock::new(&mut pb.pp("rdb1"), nf, gc)?,
                DenseBlock::new(&mut pb.pp("rdb2"), nf, gc)?,
                DenseBlock::new(&mut pb.pp("rdb3"), nf, gc)?,
            ],
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward(g, ps, &h)?;
        }
        g.lincomb(&[(RES_SCALE, &h), (1.0, x)])
    }
}

/// RRDBNet: image (`in_c` channels) → `out_c` features at the same size.
pub struct RrdbNet {
    conv_first: Conv,
    trunk: Vec<Rrdb>,
    trunk_conv: Conv,
    hr_conv: Conv,
    conv_last: Conv,
}

impl RrdbNet {
    /// Multiply-adds of one image's pass at extents `spatial` (every
    /// convolution keeps them).
    pub fn macs(&self, spatial: [usize; 3]) -> u64 {
        let m = |c: &Conv| super::unet::conv_macs(c, spatial);
        let dense: u64 = self
            .trunk
            .iter()
            .flat_map(|r| r.blocks.iter())
            .flat_map(|b| b.convs.iter())
            .map(m)
            .sum();
        m(&self.conv_first) + dense + m(&self.trunk_conv) + m(&self.hr_conv) + m(&self.conv_last)
    }

    /// Multiply-adds of the first convolution (on the image) at `spatial`.
    pub fn first_conv_macs(&self, spatial: [usize; 3]) -> u64 {
        super::unet::conv_macs(&self.conv_first, spatial)
    }

    pub fn new(
        pb: &mut ParamBuilder,
        in_c: usize,
        out_c: usize,
        nf: usize,
        gc: usize,
        blocks: usize,
    ) -> Result<RrdbNet> {
        let k = ConvSpec::K133;
        let conv_first = Conv::new(&mut pb.pp("conv_first"), in_c, nf, k, true)?;
        let trunk = (0..blocks)
            .map(|i| Rrdb::new(&mut pb.pp("trunk").pp(i), nf, gc))
            .collect::<Result<Vec<_>>>()?;
        Ok(RrdbNet {
            conv_first,
            trunk,
            trunk_conv: Conv::new(&mut pb.pp("trunk_conv"), nf, nf, k, true)?,
            hr_conv: Conv::new(&mut pb.pp("hr_conv"), nf, nf, k, true)?,
            conv_last: Conv::new(&mut pb.pp("conv_last"), nf, out_c, k, true)?,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, image: &Var) -> Result<Var> {
        let fea = self.conv_first.forward(g, ps, image)?;
        let mut h = fea.clone();
        for b in &self.trunk {
            h = b.forward(g, ps, &h)?;
        }
        let trunk = self.trunk_conv.forward(g, ps, &h)?;
        let fea = g.add(&fea, &trunk)?;
        let h = self.hr_conv.forward(g, ps, &fea)?;
        let h = g.unary(&h, Unary::LeakyRelu(SLOPE))?;
        self.conv_last.forward(g, ps, &h)
    }
}
