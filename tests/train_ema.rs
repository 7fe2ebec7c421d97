//! The moving average of the weights (`train.ema`): updated after every
//! optimiser step by the generic loop, saved in the checkpoint, restored on
//! resume — a run killed and resumed ends with the raw and the EMA weights
//! of the uninterrupted run, bit for bit — and chosen at inference
//! (`checkpoint::load_weights`: EMA by default when present, raw on request,
//! an error naming the file when asked for EMA weights a run never kept).

use std::path::{Path, PathBuf};
use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::Backend;
use voxdiff::nn::{Init, ParamStore};
use voxdiff::pipeline::train_loop::{
    train, BatchSource, StepKey, StepLoss, TrainConfig, Trainable,
};
use voxdiff::tensor::{DType, Shape};
use voxdiff::train::checkpoint::{load_weights, Weights};

/// `mse(w ⊙ x, x·0.5 + 0.25)` for x drawn from the step key: w → 0.5 + 0.25/x.
struct Toy {
    ps: ParamStore,
}

const SHAPE: [usize; 2] = [3, 5];

impl Toy {
    fn new(dev: &dyn Backend) -> Toy {
        let mut ps = ParamStore::new(1);
        ps.add(
            dev,
            "w",
            Shape::new(&SHAPE),
            Init::TruncatedNormal { std: 1.0 },
        )
        .unwrap();
        ps.add(dev, "b", Shape::new(&SHAPE), Init::Zeros).unwrap();
        Toy { ps }
    }
}

impl Trainable for Toy {
    type Batch = u64;
    fn params(&self) -> &ParamStore {
        &self.ps
    }
    fn loss(&self, g: &mut Graph, batch: &u64, key: StepKey) -> anyhow::Result<StepLoss> {
        let dev = g.dev;
        let shape = Shape::new(&SHAPE);
        let x = dev.randn(shape, DType::F32, key.seed ^ key.step ^ (batch << 20), 0)?;
        let xv = dev.download(&x)?;
        let target: Vec<f32> = xv.iter().map(|v| v * 0.5 + 0.25).collect();
        let x = g.constant(x);
        let target = g.constant(dev.upload(&target, shape, DType::F32)?);
        let w = self.ps.var(g, self.ps.find("w").unwrap());
        let b = self.ps.var(g, self.ps.find("b").unwrap());
        let y = g.binary(voxdiff::ops::Binary::Mul, &x, &w)?;
        let y = g.add(&y, &b)?;
        Ok(StepLoss {
            loss: g.mse(&y, &target)?,
            log: vec![],
        })
    }
}

struct Counter(u64);
impl BatchSource for Counter {
    type Batch = u64;
    fn next_batch(&mut self) -> anyhow::Result<u64> {
        self.0 += 1;
        Ok(self.0)
    }
    fn position(&self) -> u64 {
        self.0
    }
    fn seek(&mut self, n: u64) -> anyhow::Result<()> {
        self.0 = n;
        Ok(())
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg(steps: u64, ema: f32) -> TrainConfig {
    TrainConfig {
        steps,
        ema,
        log_every: 1,
        checkpoint_every: 3,
        ..TrainConfig::default()
    }
}

/// The weights `which` of the run in `dir`, loaded into a fresh model.
fn weights(dev: &dyn Backend, dir: &Path, which: Option<Weights>) -> (Weights, Vec<Vec<f32>>) {
    let toy = Toy::new(dev);
    let w = load_weights(&dir.join("checkpoint.safetensors"), dev, &toy.ps, which).unwrap();
    let v = toy
        .ps
        .entries
        .iter()
        .map(|e| dev.download(&e.t).unwrap())
        .collect();
    (w, v)
}

#[test]
fn a_resumed_run_keeps_the_ema_of_the_uninterrupted_one() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let whole = tmp("ema_whole");
    let toy = Toy::new(dev);
    train(
        dev,
        &toy,
        &cfg(7, 0.9),
        &mut Counter(0),
        &whole,
        false,
        false,
    )
    .unwrap();

    let split = tmp("ema_split");
    let toy = Toy::new(dev);
    train(
        dev,
        &toy,
        &cfg(3, 0.9),
        &mut Counter(0),
        &split,
        false,
        false,
    )
    .unwrap();
    let toy = Toy::new(dev);
    let s = train(
        dev,
        &toy,
        &cfg(7, 0.9),
        &mut Counter(0),
        &split,
        true,
        false,
    )
    .unwrap();
    assert_eq!(s.steps_done, 4);

    for which in [Weights::Raw, Weights::Ema] {
        let (_, a) = weights(dev, &whole, Some(which));
        let (_, b) = weights(dev, &split, Some(which));
        assert_eq!(a, b, "{which:?} weights after a resume");
    }
    // The average differs from the weights it follows, and is the default.
    let (_, raw) = weights(dev, &whole, Some(Weights::Raw));
    let (w, ema) = weights(dev, &whole, None);
    assert_eq!(w, Weights::Ema);
    assert_ne!(raw, ema);
}

#[test]
fn one_step_of_the_average_is_rate_old_plus_one_minus_rate_new() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let dir = tmp("ema_one");
    let toy = Toy::new(dev);
    let init: Vec<f32> = dev.download(&toy.ps.entries[0].t).unwrap();
    train(
        dev,
        &toy,
        &cfg(1, 0.75),
        &mut Counter(0),
        &dir,
        false,
        false,
    )
    .unwrap();
    let (_, raw) = weights(dev, &dir, Some(Weights::Raw));
    let (_, ema) = weights(dev, &dir, Some(Weights::Ema));
    assert_ne!(raw[0], init, "the step moved w");
    for ((e, r), i) in ema[0].iter().zip(&raw[0]).zip(&init) {
        let want = 0.75 * i + 0.25 * r;
        assert!(
            (e - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{e} vs {want}"
        );
    }
}

#[test]
fn a_run_without_an_average_loads_raw_weights_and_refuses_ema() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let dir = tmp("ema_none");
    let toy = Toy::new(dev);
    train(dev, &toy, &cfg(2, 0.0), &mut Counter(0), &dir, false, false).unwrap();
    let (w, _) = weights(dev, &dir, None);
    assert_eq!(w, Weights::Raw);
    let toy = Toy::new(dev);
    let e = load_weights(
        &dir.join("checkpoint.safetensors"),
        dev,
        &toy.ps,
        Some(Weights::Ema),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("checkpoint.safetensors") && msg.contains("no EMA weights"),
        "{msg}"
    );
    // A rate outside (0, 1) is refused naming the key.
    let e = train(
        dev,
        &toy,
        &cfg(2, 1.5),
        &mut Counter(0),
        &tmp("ema_bad"),
        false,
        false,
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("train.ema"), "{e:#}");
}
