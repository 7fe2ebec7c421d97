//! Helpers of the gpu/emu tests: the device under test, raw device buffers,
//! and a watchdog so an emulator bug shows up as a failure, not a hung run.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;
use voxdiff::backend::gpu::cuda::Cuda;
use voxdiff::backend::gpu::device::{Device, DeviceKind, KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::registry::Kernel;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::tensor::Buffer;

/// The device the tests run on: `VOXDIFF_TEST_DEVICE=cuda[:N]` selects a GPU,
/// anything else (or unset) the emulator.
pub fn device() -> Arc<dyn Device> {
    match std::env::var("VOXDIFF_TEST_DEVICE") {
        Ok(s) if s.starts_with("cuda") => {
            let ordinal = s.strip_prefix("cuda:").map_or(0, |n| {
                n.parse().expect("VOXDIFF_TEST_DEVICE=cuda:<ordinal>")
            });
            Arc::new(
                Cuda::with_poison(ordinal, true).expect("VOXDIFF_TEST_DEVICE names a CUDA device"),
            )
        }
        // Emu::new() honours VOXDIFF_EMU_SHUFFLE (a shuffled fiber order).
        _ => Arc::new(Emu::new()),
    }
}

pub fn backend() -> GpuBackend {
    GpuBackend::new(device())
}

pub fn is_emu(dev: &Arc<dyn Device>) -> bool {
    dev.kind() == DeviceKind::Emu
}

/// A device buffer holding `data`.
pub fn upload<T: bytemuck::Pod>(dev: &Arc<dyn Device>, data: &[T]) -> Arc<Buffer> {
    let buf = dev.alloc(std::mem::size_of_val(data).max(1)).unwrap();
    dev.memcpy_htod(buf.addr(), bytemuck::cast_slice(data))
        .unwrap();
    buf
}

/// A device buffer of `n` elements of `T`, every byte 0xFF (NaN / -1 / MAX).
pub fn poisoned<T: bytemuck::Pod>(dev: &Arc<dyn Device>, n: usize) -> Arc<Buffer> {
    let bytes = (n * std::mem::size_of::<T>()).max(1);
    let buf = dev.alloc(bytes).unwrap();
    dev.memset(buf.addr(), 0xFF, bytes).unwrap();
    buf
}

/// The first `n` elements of a device buffer.
pub fn download<T: bytemuck::Pod + bytemuck::Zeroable>(
    dev: &Arc<dyn Device>,
    buf: &Buffer,
    n: usize,
) -> Vec<T> {
    let mut out = vec![T::zeroed(); n];
    dev.memcpy_dtoh(bytemuck::cast_slice_mut(&mut out), buf.addr())
        .unwrap();
    out
}

/// Launches and waits, giving up after `secs` (a hang is a failure).
pub fn launch_with_timeout(
    dev: &Arc<dyn Device>,
    kernel: Kernel,
    cfg: LaunchConfig,
    args: KernelArgs,
    secs: u64,
) -> anyhow::Result<()> {
    let dev = dev.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut args = args;
        let r = dev
            .launch(kernel, cfg, &mut args)
            .and_then(|_| dev.synchronize());
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{} did not finish within {secs} s", kernel.name()))
}

/// Launches on `dev` and waits (60 s watchdog).
pub fn run(dev: &Arc<dyn Device>, kernel: Kernel, cfg: LaunchConfig, args: KernelArgs) {
    launch_with_timeout(dev, kernel, cfg, args, 60).unwrap_or_else(|e| panic!("{e:#}"));
}
