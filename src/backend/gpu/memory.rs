//! Memory of the gpu backend ([`MemoryOps`]): device allocations, copies to
//! and from the host, fill and cast (`kernels/elementwise.cu`, launched with
//! [`super::elementwise::ew_config`]).

use super::device::KernelArgs;
use super::elementwise::{check_vector_aligned, ew_config};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::MemoryOps;
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

impl MemoryOps for GpuBackend {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn name(&self) -> String {
        self.device.name()
    }

    fn act_dtype(&self) -> DType {
        self.act_dtype
    }

    /// Uninitialised storage (poisoned with NaN on Emu).
    fn alloc(&self, shape: Shape, dtype: DType) -> Result<Tensor> {
        let buf = self.device.alloc(shape.numel() * dtype.size())?;
        Ok(Tensor::from_buffer(shape, dtype, buf))
    }

    fn zeros(&self, shape: Shape, dtype: DType) -> Result<Tensor> {
        let t = self.alloc(shape, dtype)?;
        self.device.memset(t.addr(), 0, t.bytes())?;
        Ok(t)
    }

    /// Copies host data, converted to `dtype` (bf16: round to nearest even), into a new tensor.
    fn upload(&self, data: &[f32], shape: Shape, dtype: DType) -> Result<Tensor> {
        ensure!(
            data.len() == shape.numel(),
            "upload: {} values for shape {shape}",
            data.len()
        );
        let t = self.alloc(shape, dtype)?;
        self.write(&t, data)?;
        Ok(t)
    }

    /// Copies a tensor to the host as f32 (bf16 widens exactly).
    fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.check(t, "download")?;
        self.settle_label_checks()?;
        match t.dtype() {
            DType::F32 => {
                let mut out = vec![0f32; t.numel()];
                self.device
                    .memcpy_dtoh(bytemuck::cast_slice_mut(&mut out), t.addr())?;
                Ok(out)
            }
            DType::BF16 => {
                let mut raw = vec![half::bf16::ZERO; t.numel()];
                self.device
                    .memcpy_dtoh(bytemuck::cast_slice_mut(&mut raw), t.addr())?;
                Ok(raw.into_iter().map(f32::from).collect())
            }
        }
    }

    /// Overwrites a tensor with host data (in place).
    fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        self.check(t, "write")?;
        self.forget_packed_weights_of(t);
        ensure!(
            data.len() == t.numel(),
            "write: {} values into shape {}",
            data.len(),
            t.shape()
        );
        match t.dtype() {
            DType::F32 => self
                .device
                .memcpy_htod(t.addr(), bytemuck::cast_slice(data)),
            DType::BF16 => {
                let raw: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
                self.device
                    .memcpy_htod(t.addr(), bytemuck::cast_slice(&raw))
            }
        }
    }

    /// Waits until all queued work is done.
    fn synchronize(&self) -> Result<()> {
        self.device.synchronize()?;
        self.settle_label_checks()
    }

    /// Sets every element of `t` to `value` (converted to its dtype), in place.
    fn fill(&self, t: &Tensor, value: f32) -> Result<()> {
        self.check(t, "fill")?;
        self.forget_packed_weights_of(t);
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
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
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
}
