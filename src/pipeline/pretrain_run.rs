//! What a pretraining run (`voxdiff train pretrain`) holds and how other
//! commands read it: the run folder of every training command
//! ([`super::run`]) with a [`PretrainConfig`] as its `config.toml`, and a
//! checkpoint of the [`PretrainNet`]'s parameters:
//!
//! ```text
//! backbone.*   the FPN3d (names of crate::model::fpn3d under "backbone.";
//!              batch norm's running statistics included)
//! head.w/b     the ε head: a 1×1×1 convolution from the finest pyramid
//!              level (c0 channels) to 1 channel, zero-initialised
//! ```
//! A frozen-feature probe builds its own `Fpn3d` under `pp("backbone")` from
//! the run's `model` section and loads it with
//! `checkpoint::load_params_under(ckpt, dev, ps, "backbone.", "backbone.")`
//! ([`load_backbone`] does both).

use super::pretrain_config::PretrainConfig;
use super::run::{CHECKPOINT, CONFIG};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::model::fpn3d::{Fpn3d, FpnConfig, FpnOutput};
use crate::model::fpn3d_block::{NormMode, RunningUpdate};
use crate::nn::{Conv, ParamBuilder, ParamStore};
use crate::ops::ConvSpec;
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The parameter prefix of the backbone in a pretraining checkpoint.
pub const BACKBONE: &str = "backbone";
/// The parameter prefix of the ε head.
pub const HEAD: &str = "head";

/// The network a pretraining run trains: the backbone and its ε head.
pub struct PretrainNet {
    pub backbone: Fpn3d,
    pub head: Conv,
}

impl PretrainNet {
    /// Parameters under `backbone.` and `head.` of `pb`.
    pub fn new(pb: &mut ParamBuilder, cfg: &FpnConfig) -> Result<PretrainNet> {
        let backbone = Fpn3d::new(&mut pb.pp(BACKBONE), cfg.clone())?;
        let head = Conv::zeros(&mut pb.pp(HEAD), cfg.base_channels, 1, ConvSpec::K1, true)?;
        Ok(PretrainNet { backbone, head })
    }

    /// The ε prediction `[N, D, H, W, 1]` for the input `[N, D, H, W, 1 + k]`
    /// (x_t then the coordinates) at time steps `t`, with the batch-norm
    /// statistics of a [`NormMode::Train`] forward.
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &ParamStore,
        x: &Var,
        t: Option<&[f32]>,
        mode: NormMode,
    ) -> Result<(Var, Vec<RunningUpdate>)> {
        let FpnOutput { pyramid, running } = self.backbone.forward(g, ps, x, t, mode)?;
        let eps = self.head.forward(g, ps, &pyramid[0])?;
        Ok((eps, running))
    }
}

/// A pretraining run found on disk.
pub struct PretrainedRun {
    pub cfg: PretrainConfig,
    /// Its `checkpoint.safetensors`.
    pub checkpoint: PathBuf,
}

/// Read the run in `run`: refuses, naming the folder, a folder that is not a
/// run, a run of another command, and a run without a checkpoint.
pub fn load_pretrained(run: &Path) -> Result<PretrainedRun> {
    let cfg_path = run.join(CONFIG);
    if !cfg_path.is_file() {
        bail!(
            "{}: not a run folder (no {CONFIG}); train one with `voxdiff train pretrain`",
            run.display()
        );
    }
    let cfg = PretrainConfig::load(Some(&cfg_path), &[]).with_context(|| {
        format!(
            "{}: not a pretraining run (its {CONFIG} is not a `voxdiff train pretrain` \
             configuration)",
            run.display()
        )
    })?;
    let ckpt = run.join(CHECKPOINT);
    if !ckpt.is_file() {
        bail!(
            "{}: the run has no {CHECKPOINT} (it was never trained, or is still training)",
            run.display()
        );
    }
    Ok(PretrainedRun {
        cfg,
        checkpoint: ckpt,
    })
}

/// Build the backbone of the pretraining run in `run` under `backbone.` of
/// `ps` and load its trained parameters (running statistics included).
pub fn load_backbone(
    dev: &dyn Backend,
    run: &Path,
    ps: &mut ParamStore,
) -> Result<(PretrainedRun, Fpn3d)> {
    let r = load_pretrained(run)?;
    let fpn = Fpn3d::new(
        &mut ParamBuilder::new(ps, dev).pp(BACKBONE),
        r.cfg.model.clone(),
    )?;
    let prefix = format!("{BACKBONE}.");
    checkpoint::load_params_under(&r.checkpoint, dev, ps, &prefix, &prefix)
        .with_context(|| format!("{}: loading the pretrained backbone", run.display()))?;
    Ok((r, fpn))
}
