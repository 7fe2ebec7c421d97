//! The launch of the elementwise kernels (`kernels/elementwise.cu`: fill and
//! cast in `memory.rs`, lincomb in `pointwise.rs`; the pointwise kernels too),
//! and the dtype dispatch every family uses ([`by_dtype`]).
//!
//! Launch geometry (all three): the kernels cut the n elements into chunks of
//! [`EW_CHUNK`] = 8 (one 16-byte vector of bf16, two of f32) and run a
//! grid-stride loop over chunks. Blocks of [`EW_THREADS`] = 256 threads (8
//! warps); `blocks = ceil(ceil(n / 8) / 256)` capped at [`EW_MAX_BLOCKS`] =
//! 4096 — enough to keep every SM of an H100 (132 SMs × 8 resident blocks of
//! 256) busy several times over; larger tensors loop. These ops are
//! memory-bound: the floor is bytes moved / bandwidth
//! (lincomb: (Σ input bytes + output bytes) · n).

use super::device::LaunchConfig;
use super::registry::Kernel;
use crate::tensor::{DType, Tensor};
use anyhow::{ensure, Result};

/// Threads per block.
pub const EW_THREADS: u32 = 256;
/// Elements per thread per grid-stride step (`VD_EW_CHUNK` in the kernel).
pub const EW_CHUNK: usize = 8;
/// Grid cap; the grid-stride loop covers the rest.
pub const EW_MAX_BLOCKS: usize = 4096;

/// The launch of an elementwise kernel over `n` elements (n > 0).
pub fn ew_config(n: usize) -> LaunchConfig {
    let chunks = n.div_ceil(EW_CHUNK);
    let blocks = chunks.div_ceil(EW_THREADS as usize).clamp(1, EW_MAX_BLOCKS);
    LaunchConfig::linear(blocks as u32, EW_THREADS)
}

/// The entry point of a kernel for `dtype`, from its f32 and bf16 variants:
/// the one dtype dispatch of an op.
pub(super) fn by_dtype(dtype: DType, f32_kernel: Kernel, bf16_kernel: Kernel) -> Kernel {
    match dtype {
        DType::F32 => f32_kernel,
        DType::BF16 => bf16_kernel,
    }
}

pub(super) fn check_vector_aligned(t: &Tensor, what: &str) -> Result<()> {
    ensure!(
        t.addr().is_multiple_of(16),
        "{what}: tensor at {:#x} is not 16-byte aligned (the kernel uses 16-byte vector accesses)",
        t.addr()
    );
    Ok(())
}
