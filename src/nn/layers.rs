//! Convolution, dense and normalisation layers. Each creates its parameters
//! through a [`ParamBuilder`] at the level the model code gives it (`w`, `b`
//! for weights and biases, `scale`, `offset` for norm affines).

use super::params::{Init, ParamBuilder, ParamId, ParamStore};
use crate::autograd::{Graph, NormOpts, Var};
use crate::ops::{Act, ConvSpec};
use crate::tensor::Shape;
use anyhow::Result;

/// A convolution layer (regular or transposed, see [`ConvSpec`]).
pub struct Conv {
    pub w: ParamId,
    pub b: Option<ParamId>,
    pub spec: ConvSpec,
    pub cin: usize,
    pub cout: usize,
}

impl Conv {
    /// Weights `[kd,kh,kw,cin,cout]` with Haiku's Conv initialisation
    /// (fan-in truncated normal); the bias, if any, starts at zero.
    pub fn new(
        pb: &mut ParamBuilder,
        cin: usize,
        cout: usize,
        spec: ConvSpec,
        bias: bool,
    ) -> Result<Conv> {
        let fan_in = spec.taps() * cin;
        let w = pb.add(
            "w",
            spec.weight_shape(cin, cout),
            Init::FanIn { fan_in, scale: 1.0 },
        )?;
        let b = if bias {
            Some(pb.add("b", Shape::new(&[cout]), Init::Zeros)?)
        } else {
            None
        };
        Ok(Conv {
            w,
            b,
            spec,
            cin,
            cout,
        })
    }

    /// Weights (and bias) start at zero: the layer outputs 0 until it
    /// learns (guided diffusion's `zero_module`).
    pub fn zeros(
        pb: &mut ParamBuilder,
        cin: usize,
        cout: usize,
        spec: ConvSpec,
        bias: bool,
    ) -> Result<Conv> {
        let w = pb.add("w", spec.weight_shape(cin, cout), Init::Zeros)?;
        pb.set_decay(w, true);
        let b = if bias {
            Some(pb.add("b", Shape::new(&[cout]), Init::Zeros)?)
        } else {
            None
        };
        Ok(Conv {
            w,
            b,
            spec,
            cin,
            cout,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let w = ps.var(g, self.w);
        let b = self.b.map(|id| ps.var(g, id));
        g.conv3d(x, &w, b.as_ref(), self.spec)
    }
}

/// A dense layer on `[N, in]` vectors.
pub struct Linear {
    pub w: ParamId,
    pub b: ParamId,
}

impl Linear {
    /// Weights `[in, out]` ~ truncated normal with σ = 1/sqrt(in) (Haiku's
    /// Linear default); bias zero.
    pub fn new(pb: &mut ParamBuilder, din: usize, dout: usize) -> Result<Linear> {
        let w = pb.add(
            "w",
            Shape::new(&[din, dout]),
            Init::TruncatedNormal {
                std: 1.0 / (din as f32).sqrt(),
            },
        )?;
        let b = pb.add("b", Shape::new(&[dout]), Init::Zeros)?;
        Ok(Linear { w, b })
    }

    /// Weights and bias start at zero: the layer outputs 0 until it learns
    /// (FiLM projections start as the identity modulation).
    pub fn zeros(pb: &mut ParamBuilder, din: usize, dout: usize) -> Result<Linear> {
        let w = pb.add("w", Shape::new(&[din, dout]), Init::Zeros)?;
        pb.set_decay(w, true);
        let b = pb.add("b", Shape::new(&[dout]), Init::Zeros)?;
        Ok(Linear { w, b })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let w = ps.var(g, self.w);
        let b = ps.var(g, self.b);
        g.linear(x, &w, Some(&b))
    }
}

/// Group normalisation with a learned per-channel scale and offset
/// (instance norm when `groups == channels`), fused with what follows it.
pub struct Norm {
    pub gamma: ParamId,
    pub beta: ParamId,
    pub groups: usize,
    pub eps: f32,
}

/// What a [`Norm`] fuses after normalising.
#[derive(Default)]
pub struct NormEpilogue<'a> {
    /// FiLM (scale, shift), each `[N, C]`.
    pub film: Option<(&'a Var, &'a Var)>,
    /// Added before the activation.
    pub residual: Option<&'a Var>,
    pub act: Option<Act>,
}

impl Norm {
    /// Instance norm over `channels` (Haiku's `InstanceNorm`, eps 1e-5).
    pub fn instance(pb: &mut ParamBuilder, channels: usize) -> Result<Norm> {
        Norm::group(pb, channels, channels)
    }

    pub fn group(pb: &mut ParamBuilder, channels: usize, groups: usize) -> Result<Norm> {
        let gamma = pb.add("scale", Shape::new(&[channels]), Init::Ones)?;
        let beta = pb.add("offset", Shape::new(&[channels]), Init::Zeros)?;
        Ok(Norm {
            gamma,
            beta,
            groups,
            eps: 1e-5,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var, e: NormEpilogue) -> Result<Var> {
        let gamma = ps.var(g, self.gamma);
        let beta = ps.var(g, self.beta);
        g.norm(
            x,
            NormOpts {
                groups: self.groups,
                eps: self.eps,
                gamma: Some(&gamma),
                beta: Some(&beta),
                film: e.film,
                residual: e.residual,
                act: e.act.unwrap_or(Act::Identity),
            },
        )
    }
}
