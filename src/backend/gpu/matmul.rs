//! Host side of `kernels/matmul.cu`: batched matrix products with transpose
//! flags, `c[β] = op(a[β])·op(b[β])` (the contract: [`crate::ops::matmul`]).
//!
//! # Which kernel runs each case
//!
//! | operands | kernel | core |
//! |---|---|---|
//! | f32 | `vd_matmul_bmm_f32` (flags as arguments) | FMA, 4 × 4 outputs per thread |
//! | bf16 | `vd_matmul_bmm_bf16_{nn,nt,tn,tt}` (a's flag, then b's) | tensor cores |
//!
//! The bf16 kernels stage an operand with cp.async when its contiguous extent
//! (K for a as stored `[M, K]`, M for a stored `[K, M]`, N or K for b) is a
//! multiple of 8, else through registers (8 predicated loads per 16-byte chunk);
//! the flag is per operand and per launch.
//!
//! # Launch geometry
//!
//! Both: one block per 64 × 64 tile of c, grid `(ceil(N / 64), ceil(M / 64),
//! min(B, 65535))`; a block walks the matrices `z, z + gridDim.z, …`.
//! - f32: 256 threads; thread t owns rows `4·(t / 16)..+4` and columns
//!   `4·(t % 16)..+4`. K steps of 16: each thread loads 4 elements of each
//!   operand (consecutive threads along the operand's contiguous dimension),
//!   one barrier, 16 × 16 FMAs from float4 shared reads, one barrier.
//!   8704 bytes of static shared memory.
//! - bf16: 128 threads = 4 warps in a 2 × 2 grid, each 32 × 32 of the tile
//!   (2 × 4 `mma.sync.m16n8k16`); K steps of 32, two stages, 18432 to 20480
//!   bytes of static shared memory (a stage holds 64 × 40 or 32 × 72 bf16 per
//!   operand). Each thread keeps the global address of its 4 chunks and adds
//!   one K step to it per step.
//!
//! # Instruction mix (per K step)
//!
//! bf16, per warp and K step of 32 columns: 4 `ldmatrix.x4` of A (2 row blocks
//! × 2 k16 halves; `.trans` when a is stored `[K, M]`), 4 `ldmatrix.x4` of B
//! (2 column pairs × 2; `.trans` when b is stored `[K, N]`) and 16
//! `mma.sync.m16n8k16`: 2 mma per `ldmatrix.x4` (512 bytes), so 16 FLOP per
//! byte of shared memory read. Per thread: 4 cp.async of 16 bytes (2 chunks of
//! each operand), one commit, one wait, two barriers. The SASS of the loop
//! (nvdisasm 13.2 of the sm_80 and sm_90 cubins, `vd_matmul_bmm_bf16_nn`,
//! cp.async path) has ≈ 105 instructions per warp and step: 16
//! `HMMA.16816.F32.BF16`, 8 `LDSM` (`.MT88` for the transposed operand), 4
//! `LDGSTS.E.BYPASS.128`, 2 `BAR`, 1 `DEPBAR`, and ≈ 75 of address, predicate
//! and loop bookkeeping — ≈ 6.6 issue slots per mma. 118–128 registers (capped
//! at 128 by `__launch_bounds__(128, 4)`), no spills.
//!
//! f32, per thread and K step of 16 columns: 256 `FFMA`, 32 `LDS.128`, 8 global
//! loads and 8 shared stores (the loader, which branches on the flags: the SASS
//! holds both address forms), 2 barriers; 85–87 registers.
//!
//! # Cost (counted)
//!
//! `2·B·M·N·K` FLOPs; the fewest bytes are a, b and c once
//! ([`crate::ops::matmul::BmmDims::min_bytes`]). A 64 × 64 tile re-reads a
//! `ceil(N / 64)` times and b `ceil(M / 64)` times (from L2 when they fit).
//! Per block and K step the bf16 kernel moves 8 KiB from global memory (L2)
//! for 262 kFLOP (32 FLOP/byte), and the warps read 16 KiB of shared memory
//! (16 FLOP/byte). Example, the scores of one attention head, T = 4096 tokens,
//! d = 64: `QKᵀ` is 2.1 GFLOP against 33.5 MB (c dominates), 64 FLOP/byte,
//! memory-bound on an H100 (≈ 267 FLOP/byte at 800 TFLOP/s and 3 TB/s): floor
//! ≈ 11 µs. A large square product (M = N = K = 4096, 137 GFLOP) is
//! compute-bound (floor ≈ 0.17 ms at 800 TFLOP/s) but this tile cannot reach
//! that: at 16 FLOP per byte of shared memory it needs 128 B/clk per SM for
//! 2048 FLOP/clk per SM — an A100's tensor peak and half an H100's — and it
//! moves 1 byte from L2 per 32 FLOP (4.3 GB for that product, 25 TB/s at the
//! floor, far above what L2 delivers). It is not tuned (no GPU to measure on
//! here); a 128 × 128 tile and a deeper pipeline are the next step when a
//! benchmark asks for them. The f32 kernel is bound by the f32 FMA peak
//! (≈ 67 TFLOP/s on an H100 SXM) at best; each FMA reads 0.5 floats of shared
//! memory.

use super::device::{KernelArgs, LaunchConfig};
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::matmul::bmm_dims;
use crate::ops::{MatmulOps, MemoryOps};
use crate::tensor::{DType, Tensor};
use anyhow::{ensure, Context, Result};

/// Rows (M) of c per block.
pub const BMM_BM: usize = 64;
/// Columns (N) of c per block.
pub const BMM_BN: usize = 64;
/// Threads per block of the f32 kernel.
const F32_THREADS: u32 = 256;
/// Threads per block of the bf16 kernels.
const BF16_THREADS: u32 = 128;

/// Mirrors `VdBmmArgs` in kernels/matmul.cu (56 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BmmArgs {
    a: u64,
    b: u64,
    c: u64,
    batch: i32,
    m: i32,
    n: i32,
    k: i32,
    ta: i32,
    tb: i32,
    a_vec: i32,
    b_vec: i32,
}

/// The kernel and block size for operands of `dtype` with flags `ta`, `tb`.
fn bmm_kernel(dtype: DType, ta: bool, tb: bool) -> (Kernel, u32) {
    use Kernel::*;
    match (dtype, ta, tb) {
        (DType::F32, _, _) => (MatmulBmmF32, F32_THREADS),
        (DType::BF16, false, false) => (MatmulBmmBf16Nn, BF16_THREADS),
        (DType::BF16, false, true) => (MatmulBmmBf16Nt, BF16_THREADS),
        (DType::BF16, true, false) => (MatmulBmmBf16Tn, BF16_THREADS),
        (DType::BF16, true, true) => (MatmulBmmBf16Tt, BF16_THREADS),
    }
}

impl MatmulOps for GpuBackend {
    /// `c[β] = op(a[β])·op(b[β])` (see the module docs).
    fn bmm(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        self.check(a, "bmm: a")?;
        self.check(b, "bmm: b")?;
        let d = bmm_dims(a, b, ta, tb)?;
        let fits = |v: usize| v <= i32::MAX as usize;
        ensure!(
            fits(d.batch * d.m * d.k) && fits(d.batch * d.k * d.n) && fits(d.batch * d.m * d.n),
            "bmm: a {} · b {} exceeds 2³¹ elements per operand",
            a.shape(),
            b.shape()
        );
        let m_tiles = d.m.div_ceil(BMM_BM);
        ensure!(
            m_tiles <= 65535,
            "bmm: M = {} exceeds the grid (at most {} rows)",
            d.m,
            65535 * BMM_BM
        );
        let c = self.alloc(d.out, a.dtype())?;
        let (kernel, threads) = bmm_kernel(a.dtype(), ta, tb);
        // The contiguous extent of each operand as stored.
        let a_ld = if ta { d.m } else { d.k };
        let b_ld = if tb { d.k } else { d.n };
        let args = BmmArgs {
            a: a.addr(),
            b: b.addr(),
            c: c.addr(),
            batch: d.batch as i32,
            m: d.m as i32,
            n: d.n as i32,
            k: d.k as i32,
            ta: ta as i32,
            tb: tb as i32,
            a_vec: a_ld.is_multiple_of(8) as i32,
            b_vec: b_ld.is_multiple_of(8) as i32,
        };
        let cfg = LaunchConfig {
            grid: [
                d.n.div_ceil(BMM_BN) as u32,
                m_tiles as u32,
                d.batch.min(65535) as u32,
            ],
            block: [threads, 1, 1],
            shared_bytes: 0,
        };
        self.device()
            .launch(kernel, cfg, &mut KernelArgs::new().pod(&args))
            .context("bmm")?;
        Ok(c)
    }
}
