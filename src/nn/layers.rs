//! Convolution, dense and normalisation layers.

use super::params::{Init, ParamId, ParamStore};
use crate::autograd::{Graph, NormOpts, Var};
use crate::backend::Backend;
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
        ps: &mut ParamStore,
        b: &dyn Backend,
        name: &str,
        cin: usize,
        cout: usize,
        spec: ConvSpec,
        bias: bool,
    ) -> Result<Conv> {
        let fan_in = spec.taps() * cin;
        let w = ps.add(
            b,
            &format!("{name}.w"),
            spec.weight_shape(cin, cout),
            Init::FanIn { fan_in, scale: 1.0 },
        )?;
        let bias = if bias {
            Some(ps.add(b, &format!("{name}.b"), Shape::new(&[cout]), Init::Zeros)?)
        } else {
            None
        };
        Ok(Conv {
            w,
            b: bias,
            spec,
            cin,
            cout,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let w = g.param(self.w.0, ps.get(self.w));
        let b = self.b.map(|id| g.param(id.0, ps.get(id)));
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
    pub fn new(
        ps: &mut ParamStore,
        b: &dyn Backend,
        name: &str,
        din: usize,
        dout: usize,
    ) -> Result<Linear> {
        let w = ps.add(
            b,
            &format!("{name}.w"),
            Shape::new(&[din, dout]),
            Init::TruncatedNormal {
                std: 1.0 / (din as f32).sqrt(),
            },
        )?;
        let bias = ps.add(b, &format!("{name}.b"), Shape::new(&[dout]), Init::Zeros)?;
        Ok(Linear { w, b: bias })
    }

    /// Weights and bias start at zero: the layer outputs 0 until it learns
    /// (FiLM projections start as the identity modulation).
    pub fn zeros(
        ps: &mut ParamStore,
        b: &dyn Backend,
        name: &str,
        din: usize,
        dout: usize,
    ) -> Result<Linear> {
        let w = ps.add(
            b,
            &format!("{name}.w"),
            Shape::new(&[din, dout]),
            Init::Zeros,
        )?;
        ps.entries[w.0].decay = true;
        let bias = ps.add(b, &format!("{name}.b"), Shape::new(&[dout]), Init::Zeros)?;
        Ok(Linear { w, b: bias })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var) -> Result<Var> {
        let w = g.param(self.w.0, ps.get(self.w));
        let b = g.param(self.b.0, ps.get(self.b));
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
    pub fn instance(
        ps: &mut ParamStore,
        b: &dyn Backend,
        name: &str,
        channels: usize,
    ) -> Result<Norm> {
        Norm::group(ps, b, name, channels, channels)
    }

    pub fn group(
        ps: &mut ParamStore,
        b: &dyn Backend,
        name: &str,
        channels: usize,
        groups: usize,
    ) -> Result<Norm> {
        let gamma = ps.add(
            b,
            &format!("{name}.scale"),
            Shape::new(&[channels]),
            Init::Ones,
        )?;
        let beta = ps.add(
            b,
            &format!("{name}.offset"),
            Shape::new(&[channels]),
            Init::Zeros,
        )?;
        Ok(Norm {
            gamma,
            beta,
            groups,
            eps: 1e-5,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var, e: NormEpilogue) -> Result<Var> {
        let gamma = g.param(self.gamma.0, ps.get(self.gamma));
        let beta = g.param(self.beta.0, ps.get(self.beta));
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
