//! The blocks of [`super::fpn3d`]: the selectable normalisation (batch,
//! group, instance) with an optional time scale-shift after it, and the
//! pre-activation residual block.

use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::nn::batch_norm::{running_update, BatchNorm, BatchStats};
use crate::nn::{Conv, Linear, Norm, NormEpilogue, ParamBuilder, ParamId, ParamStore};
use crate::ops::{Act, Binary, ConvSpec, Unary};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Which normalisation the blocks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// Batch norm: batch statistics in [`NormMode::Train`], running ones in
    /// [`NormMode::Eval`] (vox2vec's choice).
    Batch,
    /// Group norm with the config's `groups` groups (the fused norm).
    Group,
    /// Instance norm (group norm with one channel per group; the fused norm).
    Instance,
}

/// Which statistics batch norm uses (group and instance norm ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormMode {
    /// Batch statistics, returned as [`RunningUpdate`]s to fold in.
    Train,
    /// Running statistics (inference, frozen features).
    Eval,
}

/// One batch norm's statistics of a training forward, to fold into its
/// running statistics with [`apply_running`].
pub struct RunningUpdate {
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub momentum: f32,
    pub stats: BatchStats,
}

/// Fold every update into its batch norm's running statistics.
pub fn apply_running(dev: &dyn Backend, ps: &mut ParamStore, ups: &[RunningUpdate]) -> Result<()> {
    for u in ups {
        let (mean, var) = running_update(
            dev,
            ps.get(u.running_mean),
            ps.get(u.running_var),
            &u.stats,
            u.momentum,
        )?;
        ps.entries[u.running_mean.0].t = mean;
        ps.entries[u.running_var.0].t = var;
    }
    Ok(())
}

/// As [`apply_running`], writing the new statistics into the stored
/// tensors in place, for a store only borrowed (a training step's loss,
/// which runs the forward whose statistics these are).
pub fn apply_running_in_place(
    dev: &dyn Backend,
    ps: &ParamStore,
    ups: &[RunningUpdate],
) -> Result<()> {
    for u in ups {
        let (mean, var) = running_update(
            dev,
            ps.get(u.running_mean),
            ps.get(u.running_var),
            &u.stats,
            u.momentum,
        )?;
        dev.write(ps.get(u.running_mean), &dev.download(&mean)?)?;
        dev.write(ps.get(u.running_var), &dev.download(&var)?)?;
    }
    Ok(())
}

/// What a forward needs besides the input: the norm mode, the time
/// embedding (SiLU already applied, `[N, E]`) and where batch statistics go.
pub struct Ctx<'a> {
    pub mode: NormMode,
    pub t_act: Option<&'a Var>,
    pub running: &'a mut Vec<RunningUpdate>,
}

/// A normalisation followed by an optional scale-shift `z·(1 + s) + b` and
/// ReLU. Parameters `scale`, `offset` (and `running_mean`, `running_var`
/// for batch norm).
pub enum BlockNorm {
    Batch(BatchNorm),
    Fused(Norm),
}

impl BlockNorm {
    pub fn new(
        pb: &mut ParamBuilder,
        c: usize,
        kind: NormKind,
        groups: usize,
    ) -> Result<BlockNorm> {
        Ok(match kind {
            NormKind::Batch => BlockNorm::Batch(BatchNorm::new(pb, c)?),
            NormKind::Instance => BlockNorm::Fused(Norm::instance(pb, c)?),
            NormKind::Group => {
                ensure!(
                    groups > 0 && c.is_multiple_of(groups),
                    "group norm: {groups} groups do not divide {c} channels"
                );
                BlockNorm::Fused(Norm::group(pb, c, groups)?)
            }
        })
    }

    /// `relu(norm(x)·(1 + s) + b)` with `film = (s, b)`, each `[N, C]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x: &Var,
        film: Option<(&Var, &Var)>,
        ctx: &mut Ctx,
    ) -> Result<Var> {
        match self {
            BlockNorm::Fused(n) => n.forward(
                g,
                ps,
                x,
                NormEpilogue {
                    film,
                    residual: None,
                    act: Some(Act::Relu),
                },
            ),
            BlockNorm::Batch(bn) => {
                let z = match ctx.mode {
                    NormMode::Train => {
                        let (z, stats) = bn.forward_train(g, ps, x)?;
                        ctx.running.push(RunningUpdate {
                            running_mean: bn.running_mean,
                            running_var: bn.running_var,
                            momentum: bn.momentum,
                            stats,
                        });
                        z
                    }
                    NormMode::Eval => bn.forward_eval(g, ps, x)?,
                };
                let z = match film {
                    Some((s, b)) => {
                        let zs = g.binary(Binary::Mul, &z, s)?;
                        let z = g.add(&z, &zs)?;
                        g.binary(Binary::Add, &z, b)?
                    }
                    None => z,
                };
                g.unary(&z, Unary::Relu)
            }
        }
    }
}

/// The time scale and shift of one block: two zero-initialised dense
/// layers of the embedding (parameters `time_scale.{w,b}`,
/// `time_shift.{w,b}`), so a fresh block is unmodulated.
pub struct TimeFilm {
    pub scale: Linear,
    pub shift: Linear,
}

/// Pre-activation residual block, `y = x + conv2(relu(film(norm2(conv1(
/// relu(norm1(x)))))))`, both convolutions 3×3×3 without bias (parameters
/// `norm1`, `conv1`, `norm2`, `conv2`, and `time_scale`, `time_shift` when
/// time-conditioned).
pub struct ResBlock3d {
    norm1: BlockNorm,
    conv1: Conv,
    norm2: BlockNorm,
    conv2: Conv,
    time: Option<TimeFilm>,
}

impl ResBlock3d {
    /// `time_dim`: the embedding width, or `None` without time input.
    pub fn new(
        pb: &mut ParamBuilder,
        c: usize,
        norm: NormKind,
        groups: usize,
        time_dim: Option<usize>,
    ) -> Result<ResBlock3d> {
        let norm1 = BlockNorm::new(&mut pb.pp("norm1"), c, norm, groups)?;
        let conv1 = Conv::new(&mut pb.pp("conv1"), c, c, ConvSpec::K3, false)?;
        let norm2 = BlockNorm::new(&mut pb.pp("norm2"), c, norm, groups)?;
        let conv2 = Conv::new(&mut pb.pp("conv2"), c, c, ConvSpec::K3, false)?;
        let time = match time_dim {
            Some(e) => Some(TimeFilm {
                scale: Linear::zeros(&mut pb.pp("time_scale"), e, c)?,
                shift: Linear::zeros(&mut pb.pp("time_shift"), e, c)?,
            }),
            None => None,
        };
        Ok(ResBlock3d {
            norm1,
            conv1,
            norm2,
            conv2,
            time,
        })
    }

    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let h = self.norm1.forward(g, ps, x, None, ctx)?;
        let h = self.conv1.forward(g, ps, &h)?;
        let film = match (&self.time, ctx.t_act) {
            (Some(tf), Some(t)) => Some((tf.scale.forward(g, ps, t)?, tf.shift.forward(g, ps, t)?)),
            (Some(_), None) => {
                anyhow::bail!("this FPN is time-conditioned: a time step is required")
            }
            (None, _) => None,
        };
        let h = self
            .norm2
            .forward(g, ps, &h, film.as_ref().map(|(s, b)| (s, b)), ctx)?;
        let h = self.conv2.forward(g, ps, &h)?;
        g.add(x, &h)
    }
}
