//! Host side of `kernels/diffusion.cu`. So far: Gaussian noise.
//!
//! randn launch geometry: one thread per Philox block of four normals. Element
//! `e = offset + i` lives in block `e / 4`, so the blocks `[offset / 4,
//! (offset + n + 3) / 4)` are needed; blocks of 256 threads, `grid =
//! ceil(blocks / 256)` capped at 4096 (grid-stride beyond). Compute-bound by
//! Philox (10 rounds of two 32×32 multiplies per 4 normals) plus log, sqrt,
//! sin and cos per pair.

use super::device::{KernelArgs, LaunchConfig};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::{MemoryOps, RandOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

const RANDN_THREADS: u32 = 256;
const RANDN_MAX_BLOCKS: u64 = 4096;

impl RandOps for GpuBackend {
    /// Standard normal noise: element `i` is `philox::normal(seed, offset + i)`
    /// (`src/backend/philox.rs`; bit-identical uniforms, normals within float
    /// rounding of the CPU's), in `dtype` (bf16 rounds to nearest even).
    fn randn(&self, shape: Shape, dtype: DType, seed: u64, offset: u64) -> Result<Tensor> {
        let y = self.alloc(shape, dtype)?;
        let n = shape.numel() as u64;
        if n == 0 {
            return Ok(y);
        }
        let philox_blocks = (offset + n).div_ceil(4) - offset / 4;
        let grid = philox_blocks
            .div_ceil(RANDN_THREADS as u64)
            .clamp(1, RANDN_MAX_BLOCKS) as u32;
        let kernel = match dtype {
            DType::F32 => Kernel::DiffusionRandnF32,
            DType::BF16 => Kernel::DiffusionRandnBf16,
        };
        let mut args = KernelArgs::new()
            .tensor(&y)
            .i64(n as i64)
            .u64(seed)
            .u64(offset);
        self.device()
            .launch(kernel, LaunchConfig::linear(grid, RANDN_THREADS), &mut args)?;
        Ok(y)
    }
}
