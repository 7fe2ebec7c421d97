//! One test body, every backend: the harness of the op-family tests.
//!
//! [`subjects`] lists the backends under test — the CPU (f32), the gpu
//! backend on the emulator with f32 activations and with bf16 activations (or
//! on a real GPU with `VOXDIFF_TEST_DEVICE=cuda[:N]`). A test body computes
//! its reference in f64 from the values each backend actually stores
//! ([`Subject::act`] returns them: bf16-rounded where activations are bf16) and
//! checks every backend's output against it with [`Subject::check`] — so the
//! CPU is held to the f64 reference and the kernels to the same reference as
//! the CPU, element by element, NaN never passing.
//!
//! [`grad_check`] is the finite-difference check of a composition's
//! gradient through the autograd [`Graph`] on the CPU.
//!
//! Include next to `common`, `gpu_support` and `gpu_vs_cpu`.
#![allow(dead_code)]

use crate::common::{assert_close, Rng};
use crate::gpu_vs_cpu;
use std::sync::Arc;
use voxdiff::autograd::{Graph, Var};
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::Backend;
use voxdiff::tensor::{DType, Shape, Tensor};

/// A backend under test and the tolerance of its activation dtype.
pub struct Subject {
    pub dev: Arc<dyn Backend>,
    pub label: String,
    /// Relative tolerance of outputs in the activation dtype (1e-5 for f32,
    /// 1e-2 for bf16), relative to `|want| + rms(want)`.
    pub rtol: f64,
}

/// The CPU, then the device under test with f32 and with bf16 activations.
pub fn subjects() -> Vec<Subject> {
    let mut v = vec![Subject {
        dev: Arc::new(CpuBackend::new()),
        label: "cpu".into(),
        rtol: 1e-5,
    }];
    for dtype in [DType::F32, DType::BF16] {
        let gpu = GpuBackend::with_act_dtype(gpu_vs_cpu::device(), dtype);
        v.push(Subject {
            label: format!("{} ({} activations)", gpu.device().name(), dtype.name()),
            dev: Arc::new(gpu),
            rtol: if dtype == DType::F32 { 1e-5 } else { 1e-2 },
        });
    }
    v
}

impl Subject {
    pub fn dev(&self) -> &dyn Backend {
        self.dev.as_ref()
    }
    /// `data` as an activation (the backend's activation dtype) and the values
    /// the backend stores for it.
    pub fn act(&self, data: &[f32], shape: Shape) -> (Tensor, Vec<f32>) {
        let t = self.dev.upload(data, shape, self.dev.act_dtype()).unwrap();
        let stored = self.dev.download(&t).unwrap();
        (t, stored)
    }
    /// A random activation with values in [lo, hi) and the values stored.
    pub fn rand_act(&self, rng: &mut Rng, shape: Shape, lo: f32, hi: f32) -> (Tensor, Vec<f32>) {
        self.act(&rng.vec(shape.numel(), lo, hi), shape)
    }
    /// An f32 tensor (parameters, per-sample vectors, statistics).
    pub fn f32(&self, data: &[f32], shape: Shape) -> Tensor {
        self.dev.upload(data, shape, DType::F32).unwrap()
    }
    /// Every element of `got` within `rtol · (|want| + rms(want))` of `want`
    /// (the tolerance of [`gpu_vs_cpu::compare`], with `rtol` scaled by
    /// `slack` for ops whose error grows with a reduction's length).
    pub fn check(&self, what: &str, got: &Tensor, want: &[f64], slack: f64) {
        let g = self.dev.download(got).unwrap();
        let rtol = self.rtol * slack;
        let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt();
        assert_close(
            &format!("{what} on {}", self.label),
            &g,
            want,
            rtol,
            rtol * rms.max(1e-30),
        );
    }
}

/// Finite-difference check of `f`'s gradient through the autograd graph on
/// the CPU: each input is a tracked f32 value, the scalar is
/// `L = mse(f(inputs), target)` for a fixed random target, and the analytic
/// gradient of every input (from `Graph::backward`) is compared with central
/// differences of `L` at up to `probes` coordinates per input (step `h`,
/// tolerance `rtol` of the larger value plus `atol`).
pub fn grad_check(
    what: &str,
    inputs: &[(Shape, Vec<f32>)],
    f: impl Fn(&mut Graph, &[Var]) -> anyhow::Result<Var>,
    probes: usize,
    h: f32,
    rtol: f64,
    atol: f64,
) {
    let dev = CpuBackend::new();
    let dev: &dyn Backend = &dev;
    let forward = |xs: &[Vec<f32>]| -> Vec<f32> {
        let mut g = Graph::inference(dev);
        let vars: Vec<Var> = xs
            .iter()
            .zip(inputs)
            .map(|(x, (sh, _))| g.constant(dev.upload(x, *sh, DType::F32).unwrap()))
            .collect();
        dev.download(&f(&mut g, &vars).unwrap().t).unwrap()
    };
    let y0 = forward(&inputs.iter().map(|(_, x)| x.clone()).collect::<Vec<_>>());
    let mut rng = Rng::new(0x6AD ^ y0.len() as u64);
    let target = rng.vec(y0.len(), -1.0, 1.0);
    let loss = |y: &[f32]| -> f64 {
        y.iter()
            .zip(&target)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            / y.len() as f64
    };

    // Analytic: every input a parameter of a recording graph.
    let mut g = Graph::train(dev);
    let vars: Vec<Var> = inputs
        .iter()
        .enumerate()
        .map(|(i, (sh, x))| g.param(i, &dev.upload(x, *sh, DType::F32).unwrap()))
        .collect();
    let y = f(&mut g, &vars).unwrap();
    let shape = y.shape();
    let t = g.constant(dev.upload(&target, shape, DType::F32).unwrap());
    let l = g.mse(&y, &t).unwrap();
    let grads = g.backward(&l, inputs.len()).unwrap();

    for (i, (_, x)) in inputs.iter().enumerate() {
        let analytic = match &grads.by_param[i] {
            Some(t) => dev.download(t).unwrap(),
            None => vec![0.0; x.len()],
        };
        let mut xs: Vec<Vec<f32>> = inputs.iter().map(|(_, x)| x.clone()).collect();
        let chosen: Vec<usize> = if x.len() <= probes {
            (0..x.len()).collect()
        } else {
            (0..probes).map(|_| rng.below(x.len())).collect()
        };
        for j in chosen {
            let orig = xs[i][j];
            xs[i][j] = orig + h;
            let lp = loss(&forward(&xs));
            xs[i][j] = orig - h;
            let lm = loss(&forward(&xs));
            xs[i][j] = orig;
            let num = (lp - lm) / (2.0 * h as f64);
            let ana = analytic[j] as f64;
            assert!(ana.is_finite(), "{what}: input {i}[{j}]: gradient {ana}");
            let err = (num - ana).abs();
            let lim = atol + rtol * num.abs().max(ana.abs());
            assert!(
                err <= lim,
                "{what}: input {i}[{j}]: analytic {ana:.6e} vs numeric {num:.6e} (|err| {err:.3e} > {lim:.3e})"
            );
        }
    }
}
