//! Shared helpers of the integration tests: seeded random data, tolerant
//! comparisons that never let NaN pass, and a finite-difference gradient check.
#![allow(dead_code)]

use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{Act, Unary};
use voxdiff::tensor::{DType, Shape, Tensor};

/// A small deterministic generator (SplitMix64) so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// Random f32 tensor with values in [lo, hi) on `b`.
pub fn rand_tensor(b: &dyn Backend, rng: &mut Rng, shape: Shape, lo: f32, hi: f32) -> Tensor {
    let v = rng.vec(shape.numel(), lo, hi);
    b.upload(&v, shape, DType::F32).unwrap()
}

/// Assert `got` matches `want` elementwise: |g − w| ≤ atol + rtol·|w|.
/// NaN or infinity in `got` always fails.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (want {w})");
        let err = (g as f64 - w).abs();
        let lim = atol + rtol * w.abs();
        if err / lim > worst.1 {
            worst = (i, err / lim);
        }
        assert!(
            err <= lim,
            "{what}: element {i}: got {g}, want {w} (|err| {err:.3e} > {lim:.3e})"
        );
    }
}

/// Same as [`assert_close`] for two f32 slices.
pub fn assert_close32(what: &str, got: &[f32], want: &[f32], rtol: f64, atol: f64) {
    let w: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    assert_close(what, got, &w, rtol, atol);
}

/// Finite-difference check of a gradient.
///
/// `loss(x)` must return the scalar `Σ g ⊙ f(x)` for a fixed upstream `g`,
/// computed in f64 from the op's f32 output; `analytic` is the backward's
/// gradient for that `g`. Checks `n_probe` coordinates (all if fewer) with a
/// central difference of step `h`, to `rtol` relative of the larger of the two
/// values plus `atol`.
pub fn fd_check(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    mut loss: impl FnMut(&[f32]) -> f64,
    n_probe: usize,
    h: f32,
    rtol: f64,
    atol: f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut rng = Rng::new(0xFD ^ x.len() as u64);
    let probes: Vec<usize> = if x.len() <= n_probe {
        (0..x.len()).collect()
    } else {
        (0..n_probe).map(|_| rng.below(x.len())).collect()
    };
    let mut xp = x.to_vec();
    for &i in &probes {
        let orig = xp[i];
        xp[i] = orig + h;
        let lp = loss(&xp);
        xp[i] = orig - h;
        let lm = loss(&xp);
        xp[i] = orig;
        let num = (lp - lm) / (2.0 * h as f64);
        let ana = analytic[i] as f64;
        assert!(ana.is_finite(), "{what}[{i}]: analytic gradient is {ana}");
        let err = (num - ana).abs();
        let lim = atol + rtol * num.abs().max(ana.abs());
        assert!(
            err <= lim,
            "{what}[{i}]: analytic {ana:.6e} vs numeric {num:.6e} (|err| {err:.3e} > {lim:.3e})"
        );
    }
}

/// `Σ g ⊙ y` in f64.
pub fn dot(g: &[f32], y: &[f32]) -> f64 {
    assert_eq!(g.len(), y.len());
    g.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// The backends the device-generic tests run on: `cpu` always, plus the
/// device named by `VOXDIFF_TEST_DEVICE` (e.g. `emu`, `cuda`) when set.
pub fn test_device() -> Option<String> {
    std::env::var("VOXDIFF_TEST_DEVICE")
        .ok()
        .filter(|s| !s.is_empty())
}

/// act'(u) in f64, from the closed forms.
pub fn dact_f64(a: Act, u: f64) -> f64 {
    match a {
        Act::Identity => 1.0,
        Act::Relu => {
            if u > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Act::Silu => {
            let s = 1.0 / (1.0 + (-u).exp());
            s * (1.0 + u * (1.0 - s))
        }
        Act::Gelu => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let t = (k * (u + 0.044715 * u * u * u)).tanh();
            0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * u * u)
        }
    }
}

pub fn act_f64(a: Act, u: f64) -> f64 {
    match a {
        Act::Identity => u,
        Act::Relu => u.max(0.0),
        Act::Silu => u / (1.0 + (-u).exp()),
        Act::Gelu => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * u * (1.0 + (k * (u + 0.044715 * u * u * u)).tanh())
        }
    }
}

fn sigmoid_f64(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

/// GELU's tanh argument √(2/π)(u + 0.044715u³).
fn gelu_y(u: f64) -> f64 {
    (2.0 / std::f64::consts::PI).sqrt() * (u + 0.044715 * u * u * u)
}

/// f(u) of a unary map in f64, from the closed forms.
pub fn unary_f64(op: Unary, u: f64) -> f64 {
    match op {
        Unary::Relu => act_f64(Act::Relu, u),
        Unary::Silu => act_f64(Act::Silu, u),
        // u·σ(2y), 0.5·(1 + tanh y) = σ(2y): no cancellation for u < 0.
        Unary::Gelu => u * sigmoid_f64(2.0 * gelu_y(u)),
        Unary::LeakyRelu(a) => {
            if u > 0.0 {
                u
            } else {
                a as f64 * u
            }
        }
        Unary::Sigmoid => 1.0 / (1.0 + (-u).exp()),
        Unary::Tanh => u.tanh(),
        Unary::Exp => u.exp(),
        Unary::Log => u.ln(),
        Unary::Softplus => u.max(0.0) + (-u.abs()).exp().ln_1p(),
        Unary::Square => u * u,
        Unary::Sqrt => u.sqrt(),
        Unary::Abs => u.abs(),
        Unary::SmoothL1(b) => {
            let b = b as f64;
            if u.abs() < b {
                0.5 * u * u / b
            } else {
                u.abs() - 0.5 * b
            }
        }
    }
}

/// f'(u) of a unary map in f64 (PyTorch's choice where f has no derivative).
pub fn dunary_f64(op: Unary, u: f64) -> f64 {
    let sign = if u > 0.0 {
        1.0
    } else if u < 0.0 {
        -1.0
    } else {
        0.0
    };
    match op {
        Unary::Relu => dact_f64(Act::Relu, u),
        Unary::Silu => dact_f64(Act::Silu, u),
        // s + u·y'·2s(1 − s), s = σ(2y) (= 0.5(1 + tanh y)).
        Unary::Gelu => {
            let (s, sm) = (sigmoid_f64(2.0 * gelu_y(u)), sigmoid_f64(-2.0 * gelu_y(u)));
            let k = (2.0 / std::f64::consts::PI).sqrt();
            s + u * k * (1.0 + 3.0 * 0.044715 * u * u) * 2.0 * s * sm
        }
        Unary::LeakyRelu(a) => {
            if u > 0.0 {
                1.0
            } else {
                a as f64
            }
        }
        Unary::Sigmoid => {
            let s = 1.0 / (1.0 + (-u).exp());
            s * (1.0 - s)
        }
        Unary::Tanh => 1.0 - u.tanh().powi(2),
        Unary::Exp => u.exp(),
        Unary::Log => 1.0 / u,
        Unary::Softplus => 1.0 / (1.0 + (-u).exp()),
        Unary::Square => 2.0 * u,
        Unary::Sqrt => 0.5 / u.sqrt(),
        Unary::Abs => sign,
        Unary::SmoothL1(b) => {
            if u.abs() < b as f64 {
                u / b as f64
            } else {
                sign
            }
        }
    }
}

/// Where a unary map is tested: (0.05, hi) for ln and √ (defined for x > 0),
/// (lo, hi) otherwise.
pub fn unary_range(op: Unary, lo: f32, hi: f32) -> (f32, f32) {
    match op {
        Unary::Log | Unary::Sqrt => (0.05, hi),
        _ => (lo, hi),
    }
}

/// The real scans (`../shared/data`, or `$VOXDIFF_DATA`) when they are there.
/// Otherwise `None`, after a `skipping` line naming the test, written to the
/// process's stderr directly so the test harness's output capture does not
/// swallow it: a plain `cargo test` shows which tests did not run.
pub fn data_dir() -> Option<std::path::PathBuf> {
    use std::io::Write;
    let d = std::env::var_os("VOXDIFF_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if d.join("ct_abdomen/example_ct.nii.gz").is_file() {
        return Some(d);
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipping {}::{test}: the real scans are not in {}",
        env!("CARGO_CRATE_NAME"),
        d.display()
    );
    None
}

/// A fresh, empty scratch folder for `name`, unique to this test binary,
/// under cargo's temporary folder for integration tests.
pub fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(env!("CARGO_CRATE_NAME"))
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The data set `name` of the real data (e.g. `polyp_2d`) when it is there;
/// otherwise `None` after a `skipping` line, as [`data_dir`].
pub fn data_set(name: &str) -> Option<std::path::PathBuf> {
    use std::io::Write;
    let d = data_dir()?.join(name);
    if d.is_dir() {
        return Some(d);
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipping {}::{test}: {} not found",
        env!("CARGO_CRATE_NAME"),
        d.display()
    );
    None
}
