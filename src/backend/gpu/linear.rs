//! Host side of `kernels/linear.cu`: dense layers on `[M, K]` f32 vectors
//! (M = batch, K and N up to a few hundred: time embeddings, FiLM projections).
//!
//! All three ops are one strided GEMM (`vd_linear_gemm`): forward
//! `y = x·w + b`, data gradient `dx = dy·wᵀ`, weight gradient `dw = xᵀ·dy`, the
//! transposes expressed by the operand strides; the bias gradient `db = Σ_m dy`
//! is `vd_linear_bias_grad`.
//!
//! Launch geometry: `vd_linear_gemm` runs 16 × 16 threads per block, one output
//! element per thread, grid `(ceil(cols / 16), ceil(rows / 16))`; the K loop
//! stages 16 × 16 tiles of both operands in 2 × 1088 bytes of shared memory.
//! `vd_linear_bias_grad`: one thread per column, blocks of 256.
//!
//! Cost: `2·M·K·N` FLOPs per op; the fewest bytes are the three matrices once,
//! `4·(M·K + K·N + M·N)`. At M ≤ 2 these ops are launch-latency bound (a few
//! hundred kFLOP, ≤ 1 MB), which is why one simple kernel serves all three.

use super::device::{KernelArgs, LaunchConfig};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::{MatmulOps, MemoryOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Context, Result};

/// Tile edge of `vd_linear_gemm` (threads per block: 16 × 16).
pub const LINEAR_TILE: u32 = 16;
const BIAS_THREADS: u32 = 256;

/// Mirrors `VdLinearGemmArgs` in kernels/linear.cu (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmArgs {
    a: u64,
    b: u64,
    bias: u64,
    c: u64,
    rows: i32,
    cols: i32,
    depth: i32,
    a_row: i32,
    a_col: i32,
    b_row: i32,
    b_col: i32,
    pad: i32,
}

/// (rows, cols) of an f32 matrix on this device.
fn matrix(b: &GpuBackend, t: &Tensor, what: &str) -> Result<(usize, usize)> {
    b.check(t, what)?;
    let s = t.shape();
    ensure!(
        s.rank() == 2 && t.dtype() == DType::F32,
        "{what}: expected an f32 matrix [rows, cols], got {} {s:?}",
        t.dtype().name()
    );
    ensure!(
        s.numel() > 0 && s.numel() <= i32::MAX as usize,
        "{what}: {s:?} has {} elements (1..2³¹)",
        s.numel()
    );
    Ok((s.dims()[0], s.dims()[1]))
}

impl GpuBackend {
    /// c[rows, cols] = A · B (+ bias), A(i, k) = a[i·a_row + k·a_col], B(k, j) = b[k·b_row + j·b_col].
    #[allow(clippy::too_many_arguments)]
    fn linear_gemm(
        &self,
        a: &Tensor,
        (a_row, a_col): (usize, usize),
        b: &Tensor,
        (b_row, b_col): (usize, usize),
        bias: Option<&Tensor>,
        (rows, cols, depth): (usize, usize, usize),
    ) -> Result<Tensor> {
        let c = self.alloc(Shape::new(&[rows, cols]), DType::F32)?;
        let args = GemmArgs {
            a: a.addr(),
            b: b.addr(),
            bias: bias.map_or(0, |t| t.addr()),
            c: c.addr(),
            rows: rows as i32,
            cols: cols as i32,
            depth: depth as i32,
            a_row: a_row as i32,
            a_col: a_col as i32,
            b_row: b_row as i32,
            b_col: b_col as i32,
            pad: 0,
        };
        let cfg = LaunchConfig {
            grid: [
                (cols as u32).div_ceil(LINEAR_TILE),
                (rows as u32).div_ceil(LINEAR_TILE),
                1,
            ],
            block: [LINEAR_TILE, LINEAR_TILE, 1],
            shared_bytes: 0,
        };
        let mut kargs = KernelArgs::new().pod(&args);
        self.device().launch(Kernel::LinearGemm, cfg, &mut kargs)?;
        Ok(c)
    }
}

impl MatmulOps for GpuBackend {
    /// `c[β] = op(a[β])·op(b[β])` (`matmul.rs`).
    fn bmm(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        self.launch_bmm(a, b, ta, tb)
    }

    /// `y[M, N] = x[M, K] · w[K, N] + b[N]`.
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (m, k) = matrix(self, x, "linear input")?;
        let (kw, n) = matrix(self, w, "linear weight")?;
        ensure!(
            k == kw,
            "linear: input {:?} and weight {:?} disagree on K",
            x.shape(),
            w.shape()
        );
        if let Some(b) = bias {
            self.check(b, "linear bias")?;
            ensure!(
                b.shape() == Shape::new(&[n]) && b.dtype() == DType::F32,
                "linear bias: expected f32 [{n}], got {} {:?}",
                b.dtype().name(),
                b.shape()
            );
        }
        self.linear_gemm(x, (k, 1), w, (n, 1), bias, (m, n, k))
            .context("linear")
    }

    /// `dx[M, K] = dy[M, N] · w[K, N]ᵀ`.
    fn linear_dgrad(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (m, n) = matrix(self, dy, "linear_dgrad output gradient")?;
        let (k, nw) = matrix(self, w, "linear_dgrad weight")?;
        ensure!(
            n == nw,
            "linear_dgrad: output gradient {:?} and weight {:?} disagree on N",
            dy.shape(),
            w.shape()
        );
        // B(k' = n, j = k) = w[k·N + n]
        self.linear_gemm(dy, (n, 1), w, (1, n), None, (m, k, n))
            .context("linear_dgrad")
    }

    /// `dw[K, N] = x[M, K]ᵀ · dy[M, N]` and, if `with_bias`, `db[N] = Σ_m dy[m, :]`.
    fn linear_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (m, k) = matrix(self, x, "linear_wgrad input")?;
        let (my, n) = matrix(self, dy, "linear_wgrad output gradient")?;
        ensure!(
            m == my,
            "linear_wgrad: input {:?} and output gradient {:?} disagree on M",
            x.shape(),
            dy.shape()
        );
        // A(i = k, k' = m) = x[m·K + k]
        let dw = self
            .linear_gemm(x, (1, k), dy, (n, 1), None, (k, n, m))
            .context("linear_wgrad")?;
        let db = if with_bias {
            let db = self.alloc(Shape::new(&[n]), DType::F32)?;
            let blocks = (n as u32).div_ceil(BIAS_THREADS);
            let mut args = KernelArgs::new()
                .tensor(dy)
                .tensor(&db)
                .i32(m as i32)
                .i32(n as i32);
            self.device()
                .launch(
                    Kernel::LinearBiasGrad,
                    LaunchConfig::linear(blocks, BIAS_THREADS),
                    &mut args,
                )
                .context("linear_wgrad bias")?;
            Some(db)
        } else {
            None
        };
        Ok((dw, db))
    }
}
