//! Host side of `kernels/elementwise.cu`: fill, cast, lincomb.
//!
//! Launch geometry (all three): the kernels cut the n elements into chunks of
//! [`EW_CHUNK`] = 8 (one 16-byte vector of bf16, two of f32) and run a
//! grid-stride loop over chunks. Blocks of [`EW_THREADS`] = 256 threads (8
//! warps); `blocks = ceil(ceil(n / 8) / 256)` capped at [`EW_MAX_BLOCKS`] =
//! 4096 — enough to keep every SM of an H100 (132 SMs × 8 resident blocks of
//! 256) busy several times over; larger tensors loop. These ops are
//! memory-bound: the floor is bytes moved / bandwidth
//! (lincomb: (Σ input bytes + output bytes) · n).

use super::device::{KernelArgs, LaunchConfig};
use super::registry::Kernel;
use super::GpuBackend;
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

/// Mirrors `VdLincombArgs` in kernels/elementwise.cu (80 bytes; the launch
/// checks the size against the kernel's parameter).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LincombArgs {
    x: [u64; 4],
    coef: [f32; 4],
    x_is_bf16: [i32; 4],
    terms: i32,
    pad: i32,
    n: i64,
}

fn check_vector_aligned(t: &Tensor, what: &str) -> Result<()> {
    ensure!(
        t.addr().is_multiple_of(16),
        "{what}: tensor at {:#x} is not 16-byte aligned (the kernel uses 16-byte vector accesses)",
        t.addr()
    );
    Ok(())
}

impl GpuBackend {
    /// Sets every element of `t` to `value` (converted to its dtype), in place.
    pub fn fill(&self, t: &Tensor, value: f32) -> Result<()> {
        self.check(t, "fill")?;
        check_vector_aligned(t, "fill")?;
        let n = t.numel();
        if n == 0 {
            return Ok(());
        }
        let kernel = match t.dtype() {
            DType::F32 => Kernel::ElementwiseFillF32,
            DType::BF16 => Kernel::ElementwiseFillBf16,
        };
        let mut args = KernelArgs::new().tensor(t).f32(value).i64(n as i64);
        self.device().launch(kernel, ew_config(n), &mut args)
    }

    /// A converted copy (a plain device copy when the dtype is unchanged);
    /// f32 → bf16 rounds to nearest even.
    pub fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        self.check(x, "cast")?;
        let y = self.alloc(x.shape(), dtype)?;
        let n = x.numel();
        if n == 0 {
            return Ok(y);
        }
        let kernel = match (x.dtype(), dtype) {
            (a, b) if a == b => {
                self.device().memcpy_dtod(y.addr(), x.addr(), x.bytes())?;
                return Ok(y);
            }
            (DType::F32, DType::BF16) => Kernel::ElementwiseCastF32Bf16,
            (DType::BF16, DType::F32) => Kernel::ElementwiseCastBf16F32,
            _ => unreachable!("two dtypes"),
        };
        check_vector_aligned(x, "cast")?;
        let mut args = KernelArgs::new().tensor(x).tensor(&y).i64(n as i64);
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(y)
    }

    /// `Σ_i coef_i · x_i` over 1..=4 tensors of one shape (each f32 or bf16),
    /// accumulated in f32 in term order with fused multiply-adds; the output has
    /// the dtype of the first term.
    pub fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        ensure!(
            (1..=4).contains(&terms.len()),
            "lincomb: {} terms (1..=4)",
            terms.len()
        );
        let shape = terms[0].1.shape();
        let mut a = LincombArgs {
            x: [0; 4],
            coef: [0.0; 4],
            x_is_bf16: [0; 4],
            terms: terms.len() as i32,
            pad: 0,
            n: shape.numel() as i64,
        };
        for (i, (c, t)) in terms.iter().enumerate() {
            let what = format!("lincomb term {i}");
            self.check(t, &what)?;
            check_vector_aligned(t, &what)?;
            ensure!(
                t.shape() == shape,
                "{what}: shape {} differs from the first term's {shape}",
                t.shape()
            );
            a.x[i] = t.addr();
            a.coef[i] = *c;
            a.x_is_bf16[i] = (t.dtype() == DType::BF16) as i32;
        }
        let y = self.alloc(shape, terms[0].1.dtype())?;
        if shape.numel() == 0 {
            return Ok(y);
        }
        let kernel = match y.dtype() {
            DType::F32 => Kernel::ElementwiseLincombF32,
            DType::BF16 => Kernel::ElementwiseLincombBf16,
        };
        let mut args = KernelArgs::new().pod(&a).tensor(&y);
        self.device()
            .launch(kernel, ew_config(shape.numel()), &mut args)?;
        Ok(y)
    }
}
