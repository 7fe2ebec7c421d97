//! Host side of `kernels/pointwise.cu`: unary maps and their backward, binary
//! ops with a broadcast operand; and the launch of the linear combination
//! (`kernels/elementwise.cu`).
//!
//! # unary, unary_bwd, binary
//! Elementwise: chunks of 8 elements (one 16-byte vector of bf16, two of f32),
//! a grid-stride loop over chunks with the launch of
//! [`super::elementwise::ew_config`] (blocks of 256 threads, at most 4096 blocks).
//! binary runs `binary_*` when y has x's shape (both read as vectors) and
//! `binary_bcast_*` otherwise: an f32 y indexed through `kernels/bcast.cuh`
//! (two divisions per chunk of 8, then steps), y's few values read from cache.
//! Memory-bound; the floor is the bytes moved: unary 2·n·e, unary_bwd
//! 3·n·e, binary 3·n·e with a full y, 2·n·e + 4·|y| with a broadcast one
//! (e = bytes per element). FLOPs: ≤ ~20 per element plus one transcendental
//! (GELU's derivative), below the ≈ 20 FLOP per byte (67 TFLOP/s f32 /
//! 3.35 TB/s) an H100 affords at its bandwidth.

use super::device::KernelArgs;
use super::elementwise::{by_dtype, check_vector_aligned, ew_config};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::pointwise::{check_binary, check_lincomb, check_unary, check_unary_bwd};
use crate::ops::{Act, Bcast, Binary, Unary};
use crate::ops::{MemoryOps, PointwiseOps};
use crate::tensor::{DType, Tensor};
use anyhow::{ensure, Result};

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

/// The index of an activation as the kernels take it (`kernels/activation.cuh`).
pub fn act_code(act: Act) -> i32 {
    match act {
        Act::Identity => 0,
        Act::Relu => 1,
        Act::Silu => 2,
        Act::Gelu => 3,
    }
}

/// The code and parameter of a unary map as the kernels take them
/// (`kernels/activation.cuh`: ReLU, SiLU, GELU share the activations' codes).
pub fn unary_code(op: Unary) -> (i32, f32) {
    match op {
        Unary::Relu => (act_code(Act::Relu), 0.0),
        Unary::Silu => (act_code(Act::Silu), 0.0),
        Unary::Gelu => (act_code(Act::Gelu), 0.0),
        Unary::LeakyRelu(alpha) => (4, alpha),
        Unary::Sigmoid => (5, 0.0),
        Unary::Tanh => (6, 0.0),
        Unary::Exp => (7, 0.0),
        Unary::Log => (8, 0.0),
        Unary::Softplus => (9, 0.0),
        Unary::Square => (10, 0.0),
        Unary::Sqrt => (11, 0.0),
        Unary::Abs => (12, 0.0),
        Unary::SmoothL1(beta) => (13, beta),
    }
}

/// Errors unless `t` starts on a 16-byte boundary (the kernels' vector accesses).
pub(crate) fn check_aligned16(t: &Tensor, what: &str) -> Result<()> {
    ensure!(
        t.addr().is_multiple_of(16),
        "{what}: tensor at {:#x} is not 16-byte aligned (the kernels use 16-byte vector accesses)",
        t.addr()
    );
    Ok(())
}

/// Errors unless `t` is an NDHWC tensor on this device with 16-byte alignment.
pub(crate) fn check_ndhwc(b: &GpuBackend, t: &Tensor, what: &str) -> Result<()> {
    b.check(t, what)?;
    ensure!(
        t.shape().rank() == 5,
        "{what}: expected an NDHWC tensor, got shape {}",
        t.shape()
    );
    check_aligned16(t, what)
}

impl PointwiseOps for GpuBackend {
    /// `y = f(x)` elementwise (any shape; f32 or bf16, the output in x's dtype).
    fn unary(&self, x: &Tensor, op: Unary) -> Result<Tensor> {
        self.check(x, "unary: x")?;
        check_aligned16(x, "unary: x")?;
        check_unary(op)?;
        let y = self.alloc(x.shape(), x.dtype())?;
        let n = x.numel();
        if n == 0 {
            return Ok(y);
        }
        let kernel = by_dtype(
            x.dtype(),
            Kernel::PointwiseUnaryF32,
            Kernel::PointwiseUnaryBf16,
        );
        let (code, p) = unary_code(op);
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&y)
            .i64(n as i64)
            .i32(code)
            .f32(p);
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(y)
    }

    /// `dx = dy · f'(x)` elementwise (dy and x of one shape and dtype).
    fn unary_bwd(&self, dy: &Tensor, x: &Tensor, op: Unary) -> Result<Tensor> {
        self.check(dy, "unary_bwd: dy")?;
        self.check(x, "unary_bwd: x")?;
        check_unary_bwd(dy, x, op)?;
        check_aligned16(dy, "unary_bwd: dy")?;
        check_aligned16(x, "unary_bwd: x")?;
        let dx = self.alloc(x.shape(), x.dtype())?;
        let n = x.numel();
        if n == 0 {
            return Ok(dx);
        }
        let kernel = by_dtype(
            x.dtype(),
            Kernel::PointwiseUnaryBwdF32,
            Kernel::PointwiseUnaryBwdBf16,
        );
        let (code, p) = unary_code(op);
        let mut args = KernelArgs::new()
            .tensor(dy)
            .tensor(x)
            .tensor(&dx)
            .i64(n as i64)
            .i32(code)
            .f32(p);
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(dx)
    }

    /// `out = x ∘ y` elementwise, y broadcast as its shape says; out in x's
    /// dtype (see the module doc for the kernels).
    fn binary(&self, op: Binary, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.check(x, "binary: x")?;
        self.check(y, "binary: y")?;
        let b = check_binary(x, y)?;
        check_aligned16(x, "binary: x")?;
        check_aligned16(y, "binary: y")?;
        let out = self.alloc(x.shape(), x.dtype())?;
        let n = x.numel();
        if n == 0 {
            return Ok(out);
        }
        let code = match op {
            Binary::Add => 0,
            Binary::Sub => 1,
            Binary::Mul => 2,
            Binary::Div => 3,
        };
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(y)
            .tensor(&out)
            .i64(n as i64);
        let kernel = if b == Bcast::Full {
            by_dtype(
                x.dtype(),
                Kernel::PointwiseBinaryF32,
                Kernel::PointwiseBinaryBf16,
            )
        } else {
            let (_, mid, inner) = b.split(x.shape());
            ensure!(
                inner <= i32::MAX as usize,
                "binary: {inner} channels are too many"
            );
            args = args.i64((mid * inner) as i64).i32(inner as i32);
            by_dtype(
                x.dtype(),
                Kernel::PointwiseBinaryBcastF32,
                Kernel::PointwiseBinaryBcastBf16,
            )
        };
        let mut args = args.i32(code);
        self.device().launch(kernel, ew_config(n), &mut args)?;
        Ok(out)
    }

    /// `Σ_i coef_i · x_i` over 1..=4 tensors of one shape (each f32 or bf16),
    /// accumulated in f32 in term order with fused multiply-adds; the output has
    /// the dtype of the first term.
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        let shape = check_lincomb(terms)?;
        let mut a = LincombArgs {
            x: [0; 4],
            coef: [0.0; 4],
            x_is_bf16: [0; 4],
            terms: terms.len() as i32,
            pad: 0,
            n: shape.numel() as i64,
        };
        for (i, (c, t)) in terms.iter().enumerate() {
            let what = format!("lincomb: term {i}");
            self.check(t, &what)?;
            check_vector_aligned(t, &what)?;
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
