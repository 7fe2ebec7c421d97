//! The one training loop of every system: draw a batch, compute the loss on
//! a recording graph, backpropagate, apply AdamW, log, checkpoint — with
//! resume, divergence guards and progress written once. A system plugs in
//! through two seams: [`Trainable`] (its parameters and the loss of a batch
//! under a step's random key) and [`BatchSource`] (an endless, seeded,
//! seekable supply of batches). Resumable: the checkpoint holds parameters,
//! moments, the EMA of the weights (with `ema` > 0), the step and the data
//! position, so a killed run continues where
//! its last checkpoint left it.

use super::config::Checks;
use super::run::{CHECKPOINT, LOG};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::nn::ParamStore;
use crate::ops::AdamW;
use crate::train::{checkpoint, LrSchedule, Optimizer, RunLog};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The random key of one optimiser step: every draw of the step (noise, time
/// steps, masks) derives from (run seed, step), so a resumed run repeats the
/// uninterrupted one exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepKey {
    pub seed: u64,
    pub step: u64,
}

/// A step's scalar loss and the values to log beside it (e.g. the diffusion
/// time step drawn).
pub struct StepLoss {
    pub loss: Var,
    pub log: Vec<(&'static str, serde_json::Value)>,
}

/// A model the loop can train.
pub trait Trainable {
    /// What one step trains on, as host data (the loss uploads it).
    type Batch;
    /// Every parameter (frozen ones are left alone by the optimiser).
    fn params(&self) -> &ParamStore;
    /// The loss of `batch` recorded on `g` (which records), with every random
    /// draw derived from `key`.
    fn loss(&self, g: &mut Graph, batch: &Self::Batch, key: StepKey) -> Result<StepLoss>;
    /// Scores of the current weights on held-out data, by name (e.g. the
    /// validation Dice of each class), every `train.validate_every` steps;
    /// empty when the model has no held-out data (the default).
    fn validate(&self, _dev: &dyn Backend) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// An endless, seeded supply of batches. `position` / `seek` let a resumed
/// run continue the same sequence.
pub trait BatchSource {
    type Batch;
    fn next_batch(&mut self) -> Result<Self::Batch>;
    /// Batches drawn so far.
    fn position(&self) -> u64;
    /// Continue as if `n` batches had been drawn.
    fn seek(&mut self, n: u64) -> Result<()>;
}

/// Optimisation settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser updates of the whole run.
    pub steps: u64,
    /// Stop early after this many minutes (checkpointing first); 0 = no limit.
    pub max_minutes: f64,
    /// With `max_minutes`: the learning-rate schedule also advances with the
    /// time spent (`LrSchedule::at_progress`), so a run its time limit stops
    /// still ends annealed. The rate then depends on the machine's speed, so
    /// such a run is not reproducible step for step.
    pub lr_follows_time: bool,
    pub lr: LrSchedule,
    pub adamw: AdamW,
    /// Decay of the moving average of the weights kept beside them
    /// (`crate::train::Ema`, saved in the checkpoint; improved diffusion's
    /// 0.9999); 0 keeps none.
    pub ema: f32,
    /// Seed of the noise and time-step draws.
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Score the held-out data (`Trainable::validate`) every this many steps
    /// and at the end; 0 = never.
    pub validate_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            max_minutes: 0.0,
            lr_follows_time: false,
            lr: LrSchedule::default(),
            adamw: AdamW {
                weight_decay: 1e-8,
                ..AdamW::default()
            },
            ema: 0.0,
            seed: 0,
            log_every: 10,
            checkpoint_every: 100,
            validate_every: 0,
        }
    }
}

impl TrainConfig {
    /// Range checks of every training setting, each naming its `train.` key.
    pub fn check(&self, c: &mut Checks) {
        c.at_least("train.steps", self.steps, 1);
        c.non_negative("train.max_minutes", self.max_minutes);
        c.non_negative("train.lr.init", self.lr.init as f64);
        c.positive("train.lr.peak", self.lr.peak as f64);
        c.non_negative("train.lr.end", self.lr.end as f64);
        let a = &self.adamw;
        c.fraction("train.adamw.beta1", a.beta1 as f64, false);
        c.fraction("train.adamw.beta2", a.beta2 as f64, false);
        c.positive("train.adamw.eps", a.eps as f64);
        c.non_negative("train.adamw.weight_decay", a.weight_decay as f64);
        if let Some(g) = a.max_grad_norm {
            c.positive("train.adamw.max_grad_norm", g as f64);
        }
        c.fraction("train.ema", self.ema as f64, false);
        c.at_least("train.log_every", self.log_every, 1);
        c.at_least("train.checkpoint_every", self.checkpoint_every, 1);
    }
}

/// What a finished (or time-limited) run did.
pub struct TrainSummary {
    pub steps_done: u64,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub seconds: f64,
}

/// The error of a run whose loss or gradient norm `l`, `n` at step `done`
/// is not finite, saying whether (and at which step) a checkpoint exists.
fn check_finite(
    l: f32,
    n: f32,
    done: u64,
    saved_step: Option<u64>,
    cfg: &TrainConfig,
    run_dir: &Path,
) -> Result<()> {
    if l.is_finite() && n.is_finite() {
        return Ok(());
    }
    let ckpt = match saved_step {
        Some(s) => format!(
            "the checkpoint of step {s} in {} is intact",
            run_dir.display()
        ),
        None => format!(
            "no checkpoint was written: the run diverged before its first one \
             (train.checkpoint_every = {})",
            cfg.checkpoint_every
        ),
    };
    bail!("training diverged at step {done}: loss {l}, gradient norm {n} ({ckpt})")
}

/// Train `model` in `run_dir` (which must exist). With `resume`, continue
/// from the run's checkpoint. `progress` shows a progress bar on stderr.
pub fn train<M: Trainable>(
    dev: &dyn Backend,
    model: &M,
    cfg: &TrainConfig,
    source: &mut dyn BatchSource<Batch = M::Batch>,
    run_dir: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    let ps = model.params();
    let mut opt = Optimizer::new(dev, ps, cfg.adamw)?
        .with_ema(dev, ps, cfg.ema)
        .context("train.ema")?;
    let ckpt_path = run_dir.join(CHECKPOINT);
    // The step of the checkpoint on disk, if there is one.
    let mut saved_step = None;
    if resume {
        let ck = checkpoint::load(&ckpt_path, dev, ps, Some(&mut opt))
            .with_context(|| format!("resuming from {}", ckpt_path.display()))?;
        let pos = ck
            .extra
            .get("data_position")
            .and_then(|v| v.as_u64())
            .unwrap_or(ck.step);
        source.seek(pos)?;
        saved_step = Some(ck.step);
    }
    let mut log = RunLog::open(&run_dir.join(LOG))?;
    let start_step = opt.step;
    let bar = progress.then(|| {
        let pb = indicatif::ProgressBar::new(cfg.steps);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_position(start_step);
        pb
    });
    let save = |opt: &Optimizer, position: u64| -> Result<()> {
        let extra = serde_json::json!({ "data_position": position });
        checkpoint::save(&ckpt_path, dev, ps, Some(opt), &extra)
    };
    let t0 = Instant::now();
    // Wall time spent validating, logged so the time per step leaves it out.
    let mut validating = 0.0f64;
    let validate = |step: u64, validating: &mut f64, log: &mut RunLog| -> Result<()> {
        // Validation is no part of a training step: the step arena of a GPU
        // device passes it through rather than checking it against the plan.
        crate::backend::gpu::end_step(dev)?;
        let tv = Instant::now();
        let scores = model.validate(dev)?;
        *validating += tv.elapsed().as_secs_f64();
        if scores.is_empty() {
            return Ok(());
        }
        // Pairs, so the classes keep their order.
        let v: Vec<serde_json::Value> = scores
            .into_iter()
            .map(|(name, score)| serde_json::json!([name, score]))
            .collect();
        log.write(&serde_json::json!({
            "step": step, "validation": v,
            "seconds": t0.elapsed().as_secs_f64(), "seconds_validating": *validating,
        }))
    };
    let (mut first_loss, mut last_loss) = (None, None);
    // The last step whose loss was checked, and the last step's loss and norm.
    let mut checked = opt.step;
    let mut last = None;
    while opt.step < cfg.steps {
        if cfg.max_minutes > 0.0 && t0.elapsed().as_secs_f64() > cfg.max_minutes * 60.0 {
            break;
        }
        // The previous step's buffers go before this one begins, so a gpu
        // device can serve the step from the arena it planned (step_arena).
        drop(last.take());
        crate::backend::gpu::begin_step(dev)?;
        let step = opt.step;
        let batch = source.next_batch()?;
        let mut g = Graph::train(dev);
        let key = StepKey {
            seed: cfg.seed,
            step,
        };
        let StepLoss { loss, log: fields } = model.loss(&mut g, &batch, key)?;
        let grads = g.backward(&loss, ps.len())?;
        let lr = if cfg.lr_follows_time && cfg.max_minutes > 0.0 {
            cfg.lr
                .at_progress(step, t0.elapsed().as_secs_f64() / (cfg.max_minutes * 60.0))
        } else {
            cfg.lr.at(step)
        };
        let norm = opt.update(dev, ps, &grads, lr)?;
        let done = opt.step;
        let log_now =
            done % cfg.log_every.max(1) == 0 || done == cfg.steps || done == start_step + 1;
        let checkpoint_now = done % cfg.checkpoint_every.max(1) == 0;
        // Checked at every logged step and before every checkpoint, so a
        // checkpoint never holds a diverged model.
        if log_now || checkpoint_now {
            let l = dev.download(&loss.t)?[0];
            let n = dev.download(&norm)?[0];
            check_finite(l, n, done, saved_step, cfg, run_dir)?;
            if log_now {
                first_loss.get_or_insert(l);
                last_loss = Some(l);
                let mut record = serde_json::json!({
                    "step": done, "loss": l, "grad_norm": n, "lr": lr,
                    "seconds": t0.elapsed().as_secs_f64(), "seconds_validating": validating,
                });
                for (k, v) in fields {
                    record[k] = v;
                }
                log.write(&record)?;
                if let Some(pb) = &bar {
                    pb.set_message(format!("loss {l:.4}"));
                }
            }
            checked = done;
        }
        if let Some(pb) = &bar {
            pb.set_position(done);
        }
        if checkpoint_now {
            save(&opt, source.position())?;
            saved_step = Some(done);
        }
        last = Some((loss.t.clone(), norm));
        if cfg.validate_every > 0 && done % cfg.validate_every == 0 {
            validate(done, &mut validating, &mut log)?;
        }
    }
    // A run stopped by its time limit may end on a step not checked yet.
    if let Some((loss, norm)) = last.filter(|_| checked != opt.step) {
        let (l, n) = (dev.download(&loss)?[0], dev.download(&norm)?[0]);
        check_finite(l, n, opt.step, saved_step, cfg, run_dir)?;
    }
    // The final weights are scored too, unless that step just was.
    if cfg.validate_every > 0 && opt.step > start_step && opt.step % cfg.validate_every != 0 {
        validate(opt.step, &mut validating, &mut log)?;
    }
    save(&opt, source.position())?;
    if let Some(pb) = bar {
        pb.finish();
    }
    Ok(TrainSummary {
        steps_done: opt.step - start_step,
        first_loss,
        last_loss,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
