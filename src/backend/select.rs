//! Device selection by name.

use super::{cpu, gpu, Backend};
use anyhow::{bail, Result};
use std::sync::Arc;

/// Open a backend by name: `cpu`, `emu` (CUDA kernels on the CPU emulation),
/// `cuda` / `cuda:N`, or `auto` (CUDA when a driver and a GPU are present,
/// else the CPU). Never panics where CUDA is absent: the driver is probed first.
pub fn select(spec: &str) -> Result<Arc<dyn Backend>> {
    let spec = spec.trim();
    match spec {
        "cpu" => Ok(Arc::new(cpu::CpuBackend::new())),
        "auto" => match gpu::cuda::probe() {
            Ok(n) if n > 0 => Ok(Arc::new(gpu::GpuBackend::new(gpu::open_device("cuda:0")?))),
            _ => Ok(Arc::new(cpu::CpuBackend::new())),
        },
        "emu" | "cuda" => Ok(Arc::new(gpu::GpuBackend::new(gpu::open_device(spec)?))),
        s if s.starts_with("cuda:") => Ok(Arc::new(gpu::GpuBackend::new(gpu::open_device(s)?))),
        other => bail!("unknown device `{other}`: expected auto, cpu, emu, cuda or cuda:N"),
    }
}
