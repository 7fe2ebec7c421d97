//! Helpers of the kernel tests that compare the gpu backend with the CPU
//! backend: the same inputs on both (activations rounded to the gpu's dtype
//! first, so both compute from identical values) and a comparison relative to
//! the magnitude of the values. Include next to `gpu_support` and `common`.
#![allow(dead_code)]

use crate::common::{assert_close, Rng};
use crate::gpu_support;
use std::sync::Arc;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::gpu::device::Device;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

/// The device under test: a GPU with `VOXDIFF_TEST_DEVICE=cuda[:N]`, else the
/// emulator with the fiber order of `VOXDIFF_EMU_SHUFFLE` (unset: thread order).
pub fn device() -> Arc<dyn Device> {
    match std::env::var("VOXDIFF_TEST_DEVICE") {
        Ok(s) if s.starts_with("cuda") => gpu_support::device(),
        _ => Arc::new(Emu::new()),
    }
}

/// A gpu backend with activations in `dtype` and the CPU reference.
pub struct Pair {
    pub gpu: GpuBackend,
    pub cpu: CpuBackend,
    pub dtype: DType,
}

impl Pair {
    pub fn new(dtype: DType) -> Pair {
        Pair::on(device(), dtype)
    }
    pub fn on(dev: Arc<dyn Device>, dtype: DType) -> Pair {
        Pair {
            gpu: GpuBackend::with_act_dtype(dev, dtype),
            cpu: CpuBackend::new(),
            dtype,
        }
    }
    /// The tolerance of outputs in the activation dtype: 1e-5 for f32, 1e-2 for bf16.
    pub fn rtol(&self) -> f64 {
        match self.dtype {
            DType::F32 => 1e-5,
            DType::BF16 => 1e-2,
        }
    }
    /// `data` as an activation: on the gpu in the activation dtype, on the CPU
    /// the values the gpu stores (bf16-rounded).
    pub fn act_from(&self, data: &[f32], shape: Shape) -> (Tensor, Tensor) {
        let g = self.gpu.upload(data, shape, self.dtype).unwrap();
        let stored = self.gpu.download(&g).unwrap();
        let c = self.cpu.upload(&stored, shape, DType::F32).unwrap();
        (g, c)
    }
    /// A random activation with values in [lo, hi).
    pub fn act(&self, rng: &mut Rng, shape: Shape, lo: f32, hi: f32) -> (Tensor, Tensor) {
        self.act_from(&rng.vec(shape.numel(), lo, hi), shape)
    }
    /// A random f32 tensor (parameters, `[N, C]` vectors) on both.
    pub fn f32(&self, rng: &mut Rng, shape: Shape, lo: f32, hi: f32) -> (Tensor, Tensor) {
        let v = rng.vec(shape.numel(), lo, hi);
        (
            self.gpu.upload(&v, shape, DType::F32).unwrap(),
            self.cpu.upload(&v, shape, DType::F32).unwrap(),
        )
    }
    /// Downloads the gpu and the CPU tensor and compares them with [`compare`].
    pub fn check(&self, what: &str, gpu: &Tensor, cpu: &Tensor, rtol: f64) {
        assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
        let g = self.gpu.download(gpu).unwrap();
        let c = self.cpu.download(cpu).unwrap();
        compare(what, &g, &c, rtol);
    }
}

/// Every element of `got` within `rtol · (|want| + rms(want))` of `want`: relative
/// to the value, with a floor relative to the magnitude of the whole tensor (a
/// sum that cancels keeps the absolute rounding error of its terms). NaN and
/// infinity never pass, so an element a kernel did not write (poisoned) fails.
pub fn compare(what: &str, got: &[f32], want: &[f32], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let rms =
        (want.iter().map(|&w| w as f64 * w as f64).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let w: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    assert_close(what, got, &w, rtol, rtol * rms.max(1e-30));
}
