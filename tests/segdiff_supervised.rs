//! The supervised 2D baseline (`objective = "supervised"`): SegDiff's
//! network at x_t = 0, t = 0, trained with CE + Dice. Its loss at
//! initialisation (zero output, σ = ½) equals the hand-computed value; a
//! tiny network learns a synthetic mask the image shows; segmenting is one
//! deterministic forward pass whatever the sampling settings.

mod common;

use common::Rng;
use std::path::PathBuf;
use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::Backend;
use voxdiff::pipeline::segdiff_config::{Objective, SegDiffConfig, SegDiffInfer};
use voxdiff::pipeline::segdiff_model::{Batch2d, SegDiffModel};
use voxdiff::pipeline::train_loop::{train, BatchSource, StepKey};
use voxdiff::train::LrSchedule;

const S: usize = 16;

fn config(extra: &[&str]) -> SegDiffConfig {
    let mut o: Vec<String> = [
        "objective=\"supervised\"",
        "model.channels=8",
        "model.norm_groups=4",
        "model.channel_mult=[1,2]",
        "model.heads=2",
        "model.attention_ds=[2]",
        "model.rrdb_features=8",
        "model.rrdb_growth=4",
        "data.size=16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.extend(extra.iter().map(|s| s.to_string()));
    SegDiffConfig::load(None, &o).unwrap()
}

/// Two images whose foreground (a rectangle) is bright in every channel,
/// with noise, and their masks.
fn synthetic() -> Batch2d {
    let mut rng = Rng::new(8);
    let mut images = Vec::new();
    let mut masks = Vec::new();
    for (y0, y1, x0, x1) in [(3, 11, 4, 13), (6, 15, 1, 8)] {
        for y in 0..S {
            for x in 0..S {
                let fg = (y0..y1).contains(&y) && (x0..x1).contains(&x);
                masks.push(fg as u8 as f32);
                for _ in 0..3 {
                    images.push(if fg { 1.0 } else { -1.0 } + rng.uniform(-0.3, 0.3));
                }
            }
        }
    }
    Batch2d {
        size: S,
        images,
        masks,
    }
}

struct Repeat(Batch2d, u64);
impl BatchSource for Repeat {
    type Batch = Batch2d;
    fn next_batch(&mut self) -> anyhow::Result<Batch2d> {
        self.1 += 1;
        Ok(Batch2d {
            size: self.0.size,
            images: self.0.images.clone(),
            masks: self.0.masks.clone(),
        })
    }
    fn position(&self) -> u64 {
        self.1
    }
    fn seek(&mut self, n: u64) -> anyhow::Result<()> {
        self.1 = n;
        Ok(())
    }
}

#[test]
fn the_loss_at_initialisation_is_ln2_plus_the_dice_of_one_half() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let cfg = config(&[]);
    assert_eq!(cfg.objective, Objective::Supervised);
    let model = SegDiffModel::new(dev, &cfg).unwrap();
    let batch = synthetic();
    let mut g = Graph::inference(dev);
    let l = model
        .supervised_loss(&mut g, &batch, StepKey { seed: 0, step: 0 })
        .unwrap();
    let got = dev.download(&l.t).unwrap()[0] as f64;
    // σ(0) = ½ everywhere: CE = ln 2; per image Dice 1 − Σt / (½·S² + Σt).
    let dice: f64 = batch
        .masks
        .chunks(S * S)
        .map(|m| {
            let t: f64 = m.iter().map(|&v| v as f64).sum();
            1.0 - t / (0.5 * (S * S) as f64 + t)
        })
        .sum::<f64>()
        / 2.0;
    let want = std::f64::consts::LN_2 + dice;
    assert!((got - want).abs() < 1e-5, "loss {got}, want {want}");
}

#[test]
fn a_tiny_supervised_network_learns_a_synthetic_mask_in_one_pass() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let mut cfg = config(&["train.steps=40", "train.checkpoint_every=40"]);
    cfg.train.lr = LrSchedule {
        init: 1e-3,
        peak: 3e-3,
        end: 1e-3,
        warmup_steps: 5,
        decay_steps: 40,
    };
    let model = SegDiffModel::new(dev, &cfg).unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("segdiff_supervised");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let batch = synthetic();
    let mut source = Repeat(synthetic(), 0);
    let s = train(dev, &model, &cfg.train, &mut source, &dir, false, false).unwrap();
    let (first, last) = (s.first_loss.unwrap(), s.last_loss.unwrap());
    assert!(last < 0.3 * first, "loss {first} → {last}");
    for (k, truth) in batch.masks.chunks(S * S).enumerate() {
        let image = &batch.images[k * S * S * 3..(k + 1) * S * S * 3];
        let infer = |samples, seed| SegDiffInfer {
            samples,
            seed,
            ..SegDiffInfer::default()
        };
        let a = model.sample_ensemble(dev, image, S, &infer(9, 0)).unwrap();
        let b = model.sample_ensemble(dev, image, S, &infer(1, 5)).unwrap();
        assert_eq!(a.len(), 1, "one forward pass, not an ensemble");
        assert_eq!(a, b, "the sampling settings do not matter");
        let (mut inter, mut union) = (0, 0);
        for (&p, &t) in a[0].iter().zip(truth) {
            let (p, t) = (p > 0.5, t > 0.5);
            inter += (p && t) as usize;
            union += (p || t) as usize;
        }
        let iou = inter as f64 / union as f64;
        assert!(iou > 0.9, "image {k}: IoU {iou}");
    }
}
