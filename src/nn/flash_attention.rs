//! Softmax attention as one fused custom op ([`crate::ops::custom`]):
//! [`FlashAttention`] computes `O = softmax(Q Kᵀ·scale) V` for q, k, v
//! `[BH, T, d]` (BH = batch × heads, T tokens, d the head width) without
//! writing the T × T matrix, and keeps the per-row log-sum-exp
//! `lse_i = log Σ_j exp(s_ij)` (f32 `[BH, T]`) for [`FlashAttentionGrad`],
//! its backward. [`super::self_attention::attend`] uses it;
//! `attend_composed` keeps the composition of primitives it replaces, and
//! tests/attention_fused.rs checks one against the other and both against an
//! f64 quadratic reference on every backend.
//!
//! # Forward (online softmax)
//! Per query row i, over the keys in tiles: with the running max `m`, sum `l`
//! and unnormalised output `acc`, a tile's scores `s_j = q_i·k_j·scale` give
//! `m' = max(m, max_j s_j)`, `α = exp(m − m')`, `p_j = exp(s_j − m')`,
//! `l' = α l + Σ p_j`, `acc' = α acc + Σ p_j v_j`; at the end `o_i = acc / l`
//! and `lse_i = m + log l`.
//!
//! # Backward (FlashAttention-2)
//! From dO: `D_i = dO_i·O_i`; recomputing `p_ij = exp(s_ij − lse_i)`,
//! `dp_ij = dO_i·v_j`, `ds_ij = p_ij (dp_ij − D_i)`:
//! `dV_j = Σ_i p_ij dO_i`, `dK_j = scale Σ_i ds_ij q_i` (one pass over the
//! queries per key tile) and `dQ_i = scale Σ_j ds_ij k_j` (one pass over the
//! keys per query tile). Every sum has one owner and a fixed order — no
//! atomics, the same bits every run.
//!
//! # CPU
//! The same sums in blocks of 64 query rows (64 key rows for dK, dV), each
//! block's products by the `gemm` crate: a block writes its 64 × T scores,
//! never the T × T matrix, and normalises them in place (forward) or
//! recomputes them from lse (backward), one rayon job per block.
//!
//! # GPU (`kernels/attention.cu`)
//! - `flash_fwd_mma_d{32,64,128}_bf16`: bf16 with d ∈ {32, 64, 128}: tensor
//!   cores (mma.sync m16n8k16) for Q Kᵀ and P V, 4 warps × 16 query rows per
//!   block, K/V tiles of 64 keys by cp.async, the online softmax on the
//!   accumulator fragments;
//! - `flash_fwd[_wide]_{f32,bf16}`: every other case, f32 arithmetic on CUDA
//!   cores: 256 threads per tile of BR = 32 query rows (d ≤ 64) or 16
//!   (`_wide`, d ≤ 128), K/V tiles of BR keys staged as f32 in shared memory;
//! - backward: `flash_bwd_dot` (D, one warp per row), then `flash_bwd_kv`
//!   (one block per key tile: dK, dV) and `flash_bwd_q` (one block per query
//!   tile: dQ), f32 arithmetic, BR as the forward's.
//!
//! One block per (matrix, tile), ⌈T / BR⌉·BH blocks in x. Counted per matrix:
//! the forward does 4·T²·d FLOPs (two products) and ≈ T² exponentials and
//! reads q, k, v once per tile row of the other (K, V: ⌈T / BR⌉ times); the
//! backward recomputes the scores in both passes, ≈ 10·T²·d FLOPs.

use crate::backend::cpu::{view, view_mut, CpuBackend};
use crate::backend::gpu::device::{KernelArgs, LaunchConfig};
use crate::backend::gpu::registry::Kernel;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::ops::custom::{self, CustomGrad, CustomOp};
use crate::ops::MemoryOps;
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// The forward: inputs (q, k, v), outputs (o, lse).
pub struct FlashAttention {
    pub scale: f32,
}

/// The backward: inputs (dO, q, k, v, o, lse), outputs (dq, dk, dv).
pub struct FlashAttentionGrad {
    pub scale: f32,
}

/// Matrices (batch × heads), tokens, head width.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub bh: usize,
    pub t: usize,
    pub d: usize,
}

impl Dims {
    /// FLOPs of the forward: Q Kᵀ and P V, 2·T²·d each per matrix.
    pub fn flops_fwd(&self) -> u64 {
        (4 * self.bh * self.t * self.t * self.d) as u64
    }
}

/// The widest head the GPU kernels take (`_wide`: 16 × 8 accumulators).
pub const MAX_D: usize = 128;

/// The contract: q, k, v one shape `[BH, T, d]` and one dtype, no empty
/// extent, the scale finite.
pub fn check_dims(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Dims> {
    ensure!(
        scale.is_finite(),
        "flash attention: the scale must be finite, got {scale}"
    );
    let s = q.shape();
    ensure!(
        s.rank() == 3 && k.shape() == s && v.shape() == s,
        "flash attention: q {s}, k {} and v {} must be one shape [BH, T, d]",
        k.shape(),
        v.shape()
    );
    ensure!(
        q.dtype() == k.dtype() && k.dtype() == v.dtype(),
        "flash attention: q, k, v must share a dtype, got {}, {}, {}",
        q.dtype().name(),
        k.dtype().name(),
        v.dtype().name()
    );
    ensure!(q.numel() > 0, "flash attention: q {s} has an empty extent");
    let d = s.dims();
    Ok(Dims {
        bh: d[0],
        t: d[1],
        d: d[2],
    })
}

impl CustomOp for FlashAttention {
    fn name(&self) -> String {
        "flash_attention".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        ensure!(
            inputs.len() == 3,
            "flash_attention: inputs (q, k, v), got {}",
            inputs.len()
        );
        check_dims(inputs[0], inputs[1], inputs[2], self.scale).map(|_| ())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[0], inputs[1], inputs[2], self.scale)?;
        let what = "flash_attention";
        let (q, k, v) = (
            view(inputs[0], what)?,
            view(inputs[1], what)?,
            view(inputs[2], what)?,
        );
        let o = dev.out_uninit(inputs[0].shape())?;
        let lse = dev.out_uninit(Shape::new(&[d.bh, d.t]))?;
        cpu::forward(q, k, v, view_mut(&o), view_mut(&lse), d, self.scale);
        Ok(vec![o, lse])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[0], inputs[1], inputs[2], self.scale)?;
        for (t, what) in inputs.iter().zip(["q", "k", "v"]) {
            dev.check(t, &format!("flash_attention: {what}"))?;
        }
        gpu::check_width(d)?;
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let o = dev.alloc(q.shape(), q.dtype())?;
        let lse = dev.alloc(Shape::new(&[d.bh, d.t]), DType::F32)?;
        let args = KernelArgs::new()
            .tensor(q)
            .tensor(k)
            .tensor(v)
            .tensor(&o)
            .tensor(&lse)
            .i64(d.t as i64);
        let (kernel, cfg, mut args) = match gpu::mma_kernel(d, q.dtype()) {
            Some(kernel) => (
                kernel,
                gpu::config(d, gpu::MMA_ROWS, gpu::MMA_THREADS, 0)?,
                args.f32(self.scale),
            ),
            None => {
                let br = gpu::rows(d);
                let kernel = match (q.dtype() == DType::BF16, br == gpu::WIDE_ROWS) {
                    (false, false) => Kernel::AttentionFlashFwdF32,
                    (false, true) => Kernel::AttentionFlashFwdWideF32,
                    (true, false) => Kernel::AttentionFlashFwdBf16,
                    (true, true) => Kernel::AttentionFlashFwdWideBf16,
                };
                // sq, skv [BR][d+1], ss [BR][BR+1], sa [BR].
                let smem = 4 * (2 * br * (d.d + 1) + br * (br + 1) + br);
                (
                    kernel,
                    gpu::config(d, br, gpu::THREADS, smem)?,
                    args.i32(d.d as i32).f32(self.scale),
                )
            }
        };
        dev.device().launch(kernel, cfg, &mut args)?;
        Ok(vec![o, lse])
    }
}

impl CustomGrad for FlashAttention {
    fn backward(
        &self,
        dev: &dyn Backend,
        dy: &Tensor,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>> {
        let grad = FlashAttentionGrad { scale: self.scale };
        let ins = [
            dy,
            &inputs[0],
            &inputs[1],
            &inputs[2],
            &outputs[0],
            &outputs[1],
        ];
        let ds = custom::run(dev, &grad, &ins)?;
        Ok(ds.into_iter().map(Some).collect())
    }
}

impl CustomOp for FlashAttentionGrad {
    fn name(&self) -> String {
        "flash_attention_bwd".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        ensure!(
            inputs.len() == 6,
            "flash_attention_bwd: inputs (dO, q, k, v, o, lse), got {}",
            inputs.len()
        );
        let d = check_dims(inputs[1], inputs[2], inputs[3], self.scale)?;
        let q = inputs[1];
        for (t, what) in [(inputs[0], "dO"), (inputs[4], "o")] {
            ensure!(
                t.shape() == q.shape() && t.dtype() == q.dtype(),
                "flash_attention_bwd: {what} ({} {}) and q ({} {}) differ",
                t.dtype().name(),
                t.shape(),
                q.dtype().name(),
                q.shape()
            );
        }
        let lse = inputs[5];
        ensure!(
            lse.shape() == Shape::new(&[d.bh, d.t]) && lse.dtype() == DType::F32,
            "flash_attention_bwd: lse must be f32 [{}, {}], got {} {}",
            d.bh,
            d.t,
            lse.dtype().name(),
            lse.shape()
        );
        Ok(())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[1], inputs[2], inputs[3], self.scale)?;
        let what = "flash_attention_bwd";
        let vs: Vec<&[f32]> = inputs
            .iter()
            .map(|t| view(t, what))
            .collect::<Result<_>>()?;
        let dots = cpu::row_dots(vs[0], vs[4], d);
        let dq = dev.out_uninit(inputs[1].shape())?;
        let dk = dev.out_uninit(inputs[2].shape())?;
        let dv = dev.out_uninit(inputs[3].shape())?;
        let ins = cpu::BwdInputs {
            dy: vs[0],
            q: vs[1],
            k: vs[2],
            v: vs[3],
            lse: vs[5],
            dots: &dots,
        };
        cpu::backward_kv(&ins, view_mut(&dk), view_mut(&dv), d, self.scale);
        cpu::backward_q(&ins, view_mut(&dq), d, self.scale);
        Ok(vec![dq, dk, dv])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[1], inputs[2], inputs[3], self.scale)?;
        for (i, t) in inputs.iter().enumerate() {
            dev.check(t, &format!("flash_attention_bwd: input {i}"))?;
        }
        gpu::check_width(d)?;
        let (dy, q, k, v, o, lse) = (
            inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5],
        );
        let bf16 = q.dtype() == DType::BF16;
        let dots = dev.alloc(Shape::new(&[d.bh, d.t]), DType::F32)?;
        let kernel = [
            Kernel::AttentionFlashBwdDotF32,
            Kernel::AttentionFlashBwdDotBf16,
        ][bf16 as usize];
        let mut args = KernelArgs::new()
            .tensor(dy)
            .tensor(o)
            .tensor(&dots)
            .i64(d.bh as i64)
            .i64(d.t as i64)
            .i32(d.d as i32);
        let warps = (d.bh * d.t).div_ceil(gpu::THREADS / 32).clamp(1, 4096);
        dev.device().launch(
            kernel,
            LaunchConfig::linear(warps as u32, gpu::THREADS as u32),
            &mut args,
        )?;
        let br = gpu::rows(d);
        let wide = br == gpu::WIDE_ROWS;
        // sq, sdo, sk, sv [BR][d+1], sp, sds [BR][BR+1], sl, sd [BR].
        let smem = 4 * (4 * br * (d.d + 1) + 2 * br * (br + 1) + 2 * br);
        let cfg = gpu::config(d, br, gpu::THREADS, smem)?;
        let dq = dev.alloc(q.shape(), q.dtype())?;
        let dk = dev.alloc(k.shape(), k.dtype())?;
        let dv = dev.alloc(v.shape(), v.dtype())?;
        use Kernel::*;
        let (kv_kernel, q_kernel) = match (bf16, wide) {
            (false, false) => (AttentionFlashBwdKvF32, AttentionFlashBwdQF32),
            (false, true) => (AttentionFlashBwdKvWideF32, AttentionFlashBwdQWideF32),
            (true, false) => (AttentionFlashBwdKvBf16, AttentionFlashBwdQBf16),
            (true, true) => (AttentionFlashBwdKvWideBf16, AttentionFlashBwdQWideBf16),
        };
        // (kernel, g0, g1): the q pass writes only g0.
        for (kernel, g0, g1) in [(kv_kernel, &dk, &dv), (q_kernel, &dq, &dq)] {
            let mut args = KernelArgs::new()
                .tensor(dy)
                .tensor(q)
                .tensor(k)
                .tensor(v)
                .tensor(lse)
                .tensor(&dots)
                .tensor(g0)
                .tensor(g1)
                .i64(d.t as i64)
                .i32(d.d as i32)
                .f32(self.scale);
            dev.device().launch(kernel, cfg, &mut args)?;
        }
        Ok(vec![dq, dk, dv])
    }
}

mod cpu {
    //! The CPU path: the same sums in blocks of query (or key) rows, each
    //! block's products by the `gemm` crate — a block's R × T scores are
    //! written (R = [`BLOCK`] rows, a few hundred kB), never the T × T
    //! matrix. One block per rayon job, one owner per output row, so the
    //! results are the same bits every run.
    use super::Dims;
    use crate::backend::cpu::matmul::{matmul, strides};
    use gemm::Parallelism::None as Serial;
    use rayon::prelude::*;

    /// Rows per job.
    pub const BLOCK: usize = 64;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Rows `[r0, r0 + n)` of matrix `mat` of a `[BH, T, d]` tensor.
    fn rows(x: &[f32], d: Dims, mat: usize, r0: usize, n: usize) -> &[f32] {
        &x[(mat * d.t + r0) * d.d..][..n * d.d]
    }

    /// The jobs: (matrix, first row, rows) over every matrix.
    fn jobs(d: Dims) -> Vec<(usize, usize, usize)> {
        (0..d.bh)
            .flat_map(|mat| {
                (0..d.t)
                    .step_by(BLOCK)
                    .map(move |r0| (mat, r0, BLOCK.min(d.t - r0)))
            })
            .collect()
    }

    /// `out[n × cols] = a[n × d] · b[cols × d]ᵀ`.
    fn times_t(out: &mut [f32], a: &[f32], b: &[f32], n: usize, cols: usize, w: usize) {
        matmul(
            out,
            (n, cols, w),
            a,
            strides(w, false),
            b,
            strides(w, true),
            Serial,
        );
    }

    /// `out[n × w] = a[n × cols] · b[cols × w]`.
    fn times(out: &mut [f32], a: &[f32], b: &[f32], n: usize, cols: usize, w: usize) {
        matmul(
            out,
            (n, w, cols),
            a,
            strides(cols, false),
            b,
            strides(w, false),
            Serial,
        );
    }

    /// Each job's rows of an `[BH, T, width]` output, in job order.
    fn split_rows<'a>(x: &'a mut [f32], d: Dims, width: usize) -> Vec<&'a mut [f32]> {
        let mut out = Vec::new();
        let mut rest = x;
        for (_, _, n) in jobs(d) {
            let (head, tail) = rest.split_at_mut(n * width);
            out.push(head);
            rest = tail;
        }
        out
    }

    pub fn forward(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        o: &mut [f32],
        lse: &mut [f32],
        d: Dims,
        scale: f32,
    ) {
        let (t, w) = (d.t, d.d);
        let jobs = jobs(d);
        split_rows(o, d, w)
            .into_par_iter()
            .zip(split_rows(lse, d, 1))
            .zip(jobs)
            .for_each(|((o, lse), (mat, r0, n))| {
                let mut s = vec![0f32; n * t];
                times_t(
                    &mut s,
                    rows(q, d, mat, r0, n),
                    rows(k, d, mat, 0, t),
                    n,
                    t,
                    w,
                );
                for (row, l_out) in s.chunks_mut(t).zip(lse.iter_mut()) {
                    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                    let mut l = 0f32;
                    for x in row.iter_mut() {
                        *x = (*x * scale - m).exp();
                        l += *x;
                    }
                    let inv = 1.0 / l;
                    row.iter_mut().for_each(|x| *x *= inv);
                    *l_out = m + l.ln();
                }
                times(o, &s, rows(v, d, mat, 0, t), n, t, w);
            });
    }

    /// `D_i = dO_i·O_i`.
    pub fn row_dots(dy: &[f32], o: &[f32], d: Dims) -> Vec<f32> {
        dy.par_chunks(d.d)
            .zip(o.par_chunks(d.d))
            .map(|(a, b)| dot(a, b))
            .collect()
    }

    pub struct BwdInputs<'a> {
        pub dy: &'a [f32],
        pub q: &'a [f32],
        pub k: &'a [f32],
        pub v: &'a [f32],
        pub lse: &'a [f32],
        pub dots: &'a [f32],
    }

    /// dK, dV: per block of key rows j, over all the queries i of its matrix:
    /// `pᵀ_ji = exp(scale k_j·q_i − lse_i)`, `dsᵀ_ji = pᵀ_ji (v_j·dO_i − D_i)`,
    /// `dV = Pᵀ dO`, `dK = scale dSᵀ Q`.
    pub fn backward_kv(x: &BwdInputs, dk: &mut [f32], dv: &mut [f32], d: Dims, scale: f32) {
        let (t, w) = (d.t, d.d);
        split_rows(dk, d, w)
            .into_par_iter()
            .zip(split_rows(dv, d, w))
            .zip(jobs(d))
            .for_each(|((dk, dv), (mat, j0, n))| {
                let (qm, dym) = (rows(x.q, d, mat, 0, t), rows(x.dy, d, mat, 0, t));
                let (lse, dots) = (&x.lse[mat * t..][..t], &x.dots[mat * t..][..t]);
                let mut p = vec![0f32; n * t];
                let mut ds = vec![0f32; n * t];
                times_t(&mut p, rows(x.k, d, mat, j0, n), qm, n, t, w);
                times_t(&mut ds, rows(x.v, d, mat, j0, n), dym, n, t, w);
                for (prow, dsrow) in p.chunks_mut(t).zip(ds.chunks_mut(t)) {
                    for i in 0..t {
                        prow[i] = (prow[i] * scale - lse[i]).exp();
                        dsrow[i] = prow[i] * (dsrow[i] - dots[i]) * scale;
                    }
                }
                times(dv, &p, dym, n, t, w);
                times(dk, &ds, qm, n, t, w);
            });
    }

    /// dQ: per block of query rows i, over all the keys j of its matrix:
    /// `p_ij = exp(scale q_i·k_j − lse_i)`, `ds_ij = p_ij (dO_i·v_j − D_i)`,
    /// `dQ = scale dS K`.
    pub fn backward_q(x: &BwdInputs, dq: &mut [f32], d: Dims, scale: f32) {
        let (t, w) = (d.t, d.d);
        split_rows(dq, d, w)
            .into_par_iter()
            .zip(jobs(d))
            .for_each(|(dq, (mat, i0, n))| {
                let km = rows(x.k, d, mat, 0, t);
                let mut p = vec![0f32; n * t];
                let mut ds = vec![0f32; n * t];
                times_t(&mut p, rows(x.q, d, mat, i0, n), km, n, t, w);
                times_t(
                    &mut ds,
                    rows(x.dy, d, mat, i0, n),
                    rows(x.v, d, mat, 0, t),
                    n,
                    t,
                    w,
                );
                let (lse, dots) = (&x.lse[mat * t + i0..][..n], &x.dots[mat * t + i0..][..n]);
                for (r, (prow, dsrow)) in p.chunks(t).zip(ds.chunks_mut(t)).enumerate() {
                    for (s, &pv) in dsrow.iter_mut().zip(prow) {
                        let pij = (pv * scale - lse[r]).exp();
                        *s = pij * (*s - dots[r]) * scale;
                    }
                }
                times(dq, &ds, km, n, t, w);
            });
    }
}

/// The GPU launch geometry (module docs).
mod gpu {
    use super::*;

    /// Threads per block of the f32-arithmetic kernels.
    pub const THREADS: usize = 256;
    /// Their tile rows for d ≤ 64, and for 64 < d ≤ 128 (`_wide`).
    pub const ROWS: usize = 32;
    pub const WIDE_ROWS: usize = 16;
    /// The tensor-core forward: query rows per block (and keys per tile),
    /// threads per block.
    pub const MMA_ROWS: usize = 64;
    pub const MMA_THREADS: usize = 128;

    pub fn check_width(d: Dims) -> Result<()> {
        ensure!(
            d.d <= MAX_D,
            "flash attention: head width {} exceeds the GPU kernels' {MAX_D}",
            d.d
        );
        Ok(())
    }

    /// The tile rows of the f32-arithmetic kernels.
    pub fn rows(d: Dims) -> usize {
        if d.d <= 64 {
            ROWS
        } else {
            WIDE_ROWS
        }
    }

    /// The tensor-core forward for bf16 at d ∈ {32, 64, 128}.
    pub fn mma_kernel(d: Dims, dtype: DType) -> Option<Kernel> {
        match (dtype, d.d) {
            (DType::BF16, 32) => Some(Kernel::AttentionFlashFwdMmaD32Bf16),
            (DType::BF16, 64) => Some(Kernel::AttentionFlashFwdMmaD64Bf16),
            (DType::BF16, 128) => Some(Kernel::AttentionFlashFwdMmaD128Bf16),
            _ => None,
        }
    }

    /// ⌈T / rows⌉ tiles of each of the BH matrices, in x.
    pub fn config(d: Dims, rows: usize, threads: usize, smem: usize) -> Result<LaunchConfig> {
        let blocks = d.t.div_ceil(rows) * d.bh;
        ensure!(
            blocks <= i32::MAX as usize,
            "flash attention: {blocks} blocks exceed the grid"
        );
        Ok(LaunchConfig::linear(blocks as u32, threads as u32).with_shared_bytes(smem as u32))
    }
}
