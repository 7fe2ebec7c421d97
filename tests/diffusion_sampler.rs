//! Samplers with an oracle network: when the network returns the true x_0,
//! DDPM and DDIM (at any number of steps) recover the mask exactly; the
//! forward process has the moments it should.

mod common;

use common::{cpu, Rng};
use voxdiff::autograd::{Graph, Var};
use voxdiff::backend::prelude::*;
use voxdiff::diffusion::gaussian;
use voxdiff::diffusion::seg::{Denoiser, DiffusionConfig, SegDiffusion};
use voxdiff::diffusion::{Prediction, Sampler};
use voxdiff::tensor::{DType, Shape, Tensor};

/// Returns logits that put the true class far ahead (x_0 mode), or the ε that
/// maps x_t back onto the true x_0 (ε mode).
struct Oracle<'a> {
    mask: &'a Tensor,
    diff: &'a SegDiffusion,
    steps_of_t: Vec<usize>,
}

impl Denoiser for Oracle<'_> {
    fn denoise(&self, g: &mut Graph, _cond: &Var, x_t: &Var, t: &[f32]) -> anyhow::Result<Var> {
        let b = g.dev;
        let m = g.constant(self.mask.clone());
        match self.diff.cfg.output {
            Prediction::X0 => g.lincomb(&[(40.0, &m)]),
            Prediction::Eps => {
                // The ε that maps x_t back onto the true x_0 at the training step t.
                let k = t[0] as usize;
                assert!(self.steps_of_t.contains(&k));
                let ones = b.zeros(self.mask.shape(), DType::F32)?;
                b.fill(&ones, 1.0)?;
                let ones = g.constant(ones);
                let x0 = g.lincomb(&[(2.0, &m), (-1.0, &ones)])?;
                gaussian::eps_from_x0(g, &self.diff.schedule, x_t, &x0, k)
            }
        }
    }
}

#[test]
fn oracle_sampling_recovers_the_mask() {
    let b = cpu();
    let classes = 4;
    let (d, h, w) = (3, 5, 7);
    let mut rng = Rng::new(3);
    let labels: Vec<f32> = (0..d * h * w).map(|_| rng.below(classes) as f32).collect();
    let lab = b
        .upload(&labels, Shape::ndhwc(1, d, h, w, 1), DType::F32)
        .unwrap();
    let mask = b.one_hot(&lab, classes, 1.0, 0.0).unwrap();
    let image = b
        .randn(Shape::ndhwc(1, d, h, w, 1), DType::F32, 9, 0)
        .unwrap();
    for output in [Prediction::X0, Prediction::Eps] {
        let diff = SegDiffusion::new(DiffusionConfig {
            output,
            ..Default::default()
        })
        .unwrap();
        for sampler in [Sampler::Ddpm, Sampler::Ddim] {
            for steps in [5, 3, 1] {
                let (_, ts) = diff.sampling_schedule(Some(steps)).unwrap();
                let oracle = Oracle {
                    mask: &mask,
                    diff: &diff,
                    steps_of_t: ts,
                };
                let mut seen = Vec::new();
                let x0 = diff
                    .sample(
                        &b,
                        &oracle,
                        &image,
                        classes,
                        sampler,
                        Some(steps),
                        5,
                        |k, _| {
                            seen.push(k);
                            Ok(())
                        },
                    )
                    .unwrap();
                assert_eq!(seen, (0..steps).rev().collect::<Vec<_>>());
                let got = b.download(&b.argmax_c(&x0).unwrap()).unwrap();
                assert_eq!(got, labels, "{output:?} {sampler:?} {steps} steps");
            }
        }
    }
}

#[test]
fn q_sample_has_the_forward_moments() {
    let b = cpu();
    let diff = SegDiffusion::new(DiffusionConfig::default()).unwrap();
    let n = 1 << 16;
    let sh = Shape::new(&[n]);
    let x0 = b.upload(&vec![0.8; n], sh, DType::F32).unwrap();
    let eps = b.randn(sh, DType::F32, 1, 0).unwrap();
    let mut g = Graph::inference(&b);
    let x0v = g.constant(x0);
    let ev = g.constant(eps);
    for t in 0..5 {
        let xt = gaussian::q_sample(&mut g, &diff.schedule, &x0v, &ev, t).unwrap();
        let v = b.download(&xt.t).unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let a = diff.schedule.alphas_cumprod[t];
        assert!((mean - 0.8 * a.sqrt()).abs() < 0.02, "t={t} mean {mean}");
        assert!(
            (var - (1.0 - a)).abs() < 0.02 + 0.02 * (1.0 - a),
            "t={t} var {var}"
        );
    }
}

/// Records the time steps the network is given.
struct Recording<'a> {
    oracle: Oracle<'a>,
    steps: std::cell::RefCell<Vec<Vec<f32>>>,
}

impl Denoiser for Recording<'_> {
    fn denoise(&self, g: &mut Graph, cond: &Var, x_t: &Var, t: &[f32]) -> anyhow::Result<Var> {
        self.steps.borrow_mut().push(t.to_vec());
        self.oracle.denoise(g, cond, x_t, t)
    }
}

#[test]
fn recycling_gives_every_example_of_a_batch_its_steps() {
    let b = cpu();
    let (classes, batch) = (3, 2);
    let mut rng = Rng::new(8);
    let n = batch * 3 * 4 * 5;
    let labels: Vec<f32> = (0..n).map(|_| rng.below(classes) as f32).collect();
    let lab = b
        .upload(&labels, Shape::ndhwc(batch, 3, 4, 5, 1), DType::F32)
        .unwrap();
    let mask = b.one_hot(&lab, classes, 1.0, 0.0).unwrap();
    let image = b
        .randn(Shape::ndhwc(batch, 3, 4, 5, 1), DType::F32, 2, 0)
        .unwrap();
    let diff = SegDiffusion::new(DiffusionConfig::default()).unwrap();
    let net = Recording {
        oracle: Oracle {
            mask: &mask,
            diff: &diff,
            steps_of_t: vec![],
        },
        steps: Default::default(),
    };
    let mut g = Graph::train(&b);
    let loss = diff.loss(&mut g, &net, &image, &mask, 2, 5, 0).unwrap();
    // Recycling: a pass at t' = t + 1 without a tape, then the pass at t.
    assert_eq!(
        *net.steps.borrow(),
        vec![vec![3.0; batch], vec![2.0; batch]]
    );
    // The oracle predicts the mask, so CE + Dice vanish.
    let l = b.download(&loss.t).unwrap()[0];
    assert!((0.0..1e-4).contains(&l), "loss {l}");
}
