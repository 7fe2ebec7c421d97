//! Host side of `kernels/norm.cu`: fused group norm + affine + FiLM + residual
//! + activation, forward and backward. The math is at the top of the `.cu`.
//!
//! # Launches
//! The elementwise and per-channel passes use the column-tile geometry
//! [`RowTiles`] (`kernels/channel_rows.cuh`): blocks of `bx × by` ≤ 256
//! threads, each thread owning 8 channels (16-byte vectors; `C % 8 == 0`) or
//! one, grid `(chunks, column tiles, N)` with about 1024 blocks — so one sample
//! alone fills an H100 (132 SMs × 8 blocks). The merges are small 1-D launches
//! of 256 threads.
//!
//! forward:
//! 1. `stats_*` (RowTiles; shared `bx·by·(1 + 2·vec)` floats): Welford
//!    partials `[N, chunks, C, 2]`.
//! 2. `stats_merge` (grid `(G, N)`, 256 threads, shared 3·256 floats):
//!    Chan's combination in a fixed order → stats `[N, G, 2]` = (μ, r).
//! 3. `apply_*` (RowTiles): y.
//!
//! backward:
//! 1. `bwd_reduce_*` (RowTiles; shared `2·bx·by·vec` floats): partial
//!    (Σ du, Σ du·(x − μ)) `[N, chunks, C, 2]`; with a residual, stores du (= dresidual).
//! 2. `bwd_merge` (grid G, 256 threads, shared 4·256 floats): dγ, dβ, dscale,
//!    dshift and the group moments (m1, m2) `[N, G, 2]` (S2 = r·Σ du·(x − μ)).
//! 3. `bwd_dx_*` (RowTiles): dx (du read back when stored, else recomputed).
//!
//! # Bytes (the op is memory-bound)
//! With n = N·voxels·C elements of e bytes (2 for bf16, 4 for f32):
//! - forward: x is read twice (stats, apply), y written once, the residual read
//!   once: 3·n·e (4·n·e with a residual). The absolute floor is 2·n·e (3·n·e)
//!   — x read once — which a single pass cannot reach because no output can be
//!   written before the statistics of all of x are known; on a GPU whose L2
//!   holds x (H100: 50 MB, a 128×128×32×32 bf16 tensor is 32 MiB) the second
//!   read mostly hits L2.
//! - backward: reduce reads x, dy (+ residual, + writes du); dx reads x and dy
//!   (or du) and writes dx: 5·n·e without a residual, 7·n·e with one (storing
//!   du saves re-reading dy and the residual). Floor 3·n·e (4·n·e): x and dy
//!   read once, dx (and du) written.
//! - The workspaces (f32 partials 8·N·chunks·C bytes, written and read once
//!   per direction) and the per-channel vectors are O(N·C·chunks), ≤ 8 KiB
//!   per channel.
//!
//! Example, the first level of the ImgX UNet at batch one (1×32×128×128, 32
//! channels, bf16: 32 MiB): vec 8, block 4 × 64, 1024 chunks of 512 rows,
//! partials 256 KiB (< 1 % of the traffic). Forward 3 × 32 MiB = 101 MB →
//! 34 µs at 3.0 TB/s (floor, x read once: 22 µs); backward 5 × 32 MiB =
//! 168 MB → 56 µs (with a residual 7 ×: 78 µs; floor 34 µs). Modelled, not
//! measured: no GPU was available.
//!
//! The merges run N·G blocks (forward) and G blocks (backward), each reading
//! `chunks·cpg` partials: for instance norm and the usual 8–32 groups that is
//! a few KiB per block, but a single group over many channels (G = 1,
//! C = 256: 256 K partials on one SM, tens of µs) would want a third stage.
//!
//! Registers (ptxas, sm_90): the 8-channel passes hold 8 channels × 3–6
//! coefficients per thread and use 66–104 registers (2–3 blocks of 256 per
//! SM); capping them at 80 (`__launch_bounds__(256, 3)`) spills, so they are
//! left uncapped.
//!
//! FLOPs: ~5 per element forward plus the activation (GELU ≈ 15 and an exp),
//! ~10 backward plus the activation's derivative — below what an H100 affords
//! at its bandwidth (≈ 67 TFLOP/s f32 / 3.35 TB/s ≈ 20 FLOP per byte, ≈ 120
//! per element over the forward's 6 bytes per bf16 element).

use super::device::{KernelArgs, LaunchConfig};
use super::pointwise::{act_code, check_aligned16, check_ndhwc};
use super::reduce::RowTiles;
use super::registry::Kernel;
use super::GpuBackend;
use crate::ops::{MemoryOps, NormOps};
use crate::ops::{NormArgs, NormGrads, NormOut};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// Threads of the merge kernels (a power of two).
const MERGE_THREADS: u32 = 256;

/// Mirrors `VdNormArgs` in kernels/norm.cu (176 bytes); 0 is a null pointer.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct NormKernelArgs {
    x: u64,
    residual: u64,
    dy: u64,
    out: u64,
    du: u64,
    gamma: u64,
    beta: u64,
    scale: u64,
    shift: u64,
    stats: u64,
    partial: u64,
    moments: u64,
    dgamma: u64,
    dbeta: u64,
    dscale: u64,
    dshift: u64,
    rows: i64,
    rows_per_chunk: i64,
    samples: i32,
    c: i32,
    groups: i32,
    lanes: i32,
    chunks: i32,
    act: i32,
    eps: f32,
    pad: i32,
}

fn addr(t: Option<&Tensor>) -> u64 {
    t.map_or(0, |t| t.addr())
}

/// The kernel of each column-tile pass for a dtype and vector width.
struct PassKernels {
    stats: Kernel,
    apply: Kernel,
    reduce: Kernel,
    dx: Kernel,
}

fn pass_kernels(dtype: DType, vec: usize) -> PassKernels {
    use Kernel::*;
    match (dtype, vec) {
        (DType::F32, 8) => PassKernels {
            stats: NormStatsF32x8,
            apply: NormApplyF32x8,
            reduce: NormBwdReduceF32x8,
            dx: NormBwdDxF32x8,
        },
        (DType::F32, _) => PassKernels {
            stats: NormStatsF32x1,
            apply: NormApplyF32x1,
            reduce: NormBwdReduceF32x1,
            dx: NormBwdDxF32x1,
        },
        (DType::BF16, 8) => PassKernels {
            stats: NormStatsBf16x8,
            apply: NormApplyBf16x8,
            reduce: NormBwdReduceBf16x8,
            dx: NormBwdDxBf16x8,
        },
        (DType::BF16, _) => PassKernels {
            stats: NormStatsBf16x1,
            apply: NormApplyBf16x1,
            reduce: NormBwdReduceBf16x1,
            dx: NormBwdDxBf16x1,
        },
    }
}

impl GpuBackend {
    /// Checks x and the optional inputs of `args`; returns the geometry and the
    /// kernel arguments with the inputs filled in.
    fn norm_setup(
        &self,
        op: &str,
        x: &Tensor,
        args: &NormArgs,
    ) -> Result<(RowTiles, NormKernelArgs)> {
        args.check(op, x)?;
        // This backend's own rules: device memory, 16-byte aligned activations.
        check_ndhwc(self, x, &format!("{op}: x"))?;
        for (t, name) in [
            (args.gamma, "gamma"),
            (args.beta, "beta"),
            (args.film.map(|f| f.0), "film scale"),
            (args.film.map(|f| f.1), "film shift"),
        ] {
            if let Some(t) = t {
                self.check(t, &format!("{op}: {name}"))?;
            }
        }
        if let Some(r) = args.residual {
            let what = format!("{op}: residual");
            self.check(r, &what)?;
            check_aligned16(r, &what)?;
        }
        let sh = x.shape();
        let c = sh.c();
        let tiles = RowTiles::new(sh)?;
        ensure!(
            args.groups <= 65535,
            "{op}: {} groups exceed the merge grid (65535)",
            args.groups
        );
        let k = NormKernelArgs {
            x: x.addr(),
            residual: addr(args.residual),
            gamma: addr(args.gamma),
            beta: addr(args.beta),
            scale: addr(args.film.map(|f| f.0)),
            shift: addr(args.film.map(|f| f.1)),
            rows: tiles.rows as i64,
            rows_per_chunk: tiles.rows_per_chunk as i64,
            samples: sh.n() as i32,
            c: c as i32,
            groups: args.groups as i32,
            lanes: tiles.lanes as i32,
            chunks: tiles.chunks as i32,
            act: act_code(args.act),
            eps: args.eps,
            ..Default::default()
        };
        Ok((tiles, k))
    }
}

impl NormOps for GpuBackend {
    /// Fused group norm forward ([`NormArgs`]): y in x's dtype, stats f32 `[N, G, 2]`.
    fn norm_fwd(&self, x: &Tensor, args: &NormArgs) -> Result<NormOut> {
        let (t, mut k) = self.norm_setup("norm_fwd", x, args)?;
        let sh = x.shape();
        let kernels = pass_kernels(x.dtype(), t.vec);
        let y = self.alloc(sh, x.dtype())?;
        let stats = self.alloc(Shape::new(&[sh.n(), args.groups, 2]), DType::F32)?;
        let partial = self.alloc(Shape::new(&[sh.n(), t.chunks, sh.c(), 2]), DType::F32)?;
        k.out = y.addr();
        k.stats = stats.addr();
        k.partial = partial.addr();

        let shared = (t.threads() * (1 + 2 * t.vec) * 4) as u32;
        let mut a = KernelArgs::new().pod(&k);
        self.device()
            .launch(kernels.stats, t.config().with_shared_bytes(shared), &mut a)?;

        let merge = LaunchConfig {
            grid: [args.groups as u32, sh.n() as u32, 1],
            block: [MERGE_THREADS, 1, 1],
            shared_bytes: 3 * MERGE_THREADS * 4,
        };
        let mut a = KernelArgs::new().pod(&k);
        self.device()
            .launch(Kernel::NormStatsMerge, merge, &mut a)?;

        let mut a = KernelArgs::new().pod(&k);
        self.device().launch(kernels.apply, t.config(), &mut a)?;
        Ok(NormOut { y, stats })
    }

    /// Backward of [`GpuBackend::norm_fwd`] from the same x, stats and args.
    fn norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        stats: &Tensor,
        args: &NormArgs,
    ) -> Result<NormGrads> {
        args.check_bwd(dy, x, stats)?;
        let (t, mut k) = self.norm_setup("norm_bwd", x, args)?;
        let sh = x.shape();
        self.check(dy, "norm_bwd: dy")?;
        check_aligned16(dy, "norm_bwd: dy")?;
        self.check(stats, "norm_bwd: stats")?;
        let kernels = pass_kernels(x.dtype(), t.vec);
        let nc = Shape::new(&[sh.n(), sh.c()]);
        let cvec = Shape::new(&[sh.c()]);
        let dx = self.alloc(sh, x.dtype())?;
        let du = match args.residual {
            Some(_) => Some(self.alloc(sh, x.dtype())?),
            None => None,
        };
        let dgamma = match args.gamma {
            Some(_) => Some(self.alloc(cvec, DType::F32)?),
            None => None,
        };
        let dbeta = match args.beta {
            Some(_) => Some(self.alloc(cvec, DType::F32)?),
            None => None,
        };
        let dfilm = match args.film {
            Some(_) => Some((self.alloc(nc, DType::F32)?, self.alloc(nc, DType::F32)?)),
            None => None,
        };
        let partial = self.alloc(Shape::new(&[sh.n(), t.chunks, sh.c(), 2]), DType::F32)?;
        let moments = self.alloc(Shape::new(&[sh.n(), args.groups, 2]), DType::F32)?;
        k.dy = dy.addr();
        k.out = dx.addr();
        k.du = addr(du.as_ref());
        k.stats = stats.addr();
        k.partial = partial.addr();
        k.moments = moments.addr();
        k.dgamma = addr(dgamma.as_ref());
        k.dbeta = addr(dbeta.as_ref());
        k.dscale = addr(dfilm.as_ref().map(|f| &f.0));
        k.dshift = addr(dfilm.as_ref().map(|f| &f.1));

        let shared = (t.threads() * 2 * t.vec * 4) as u32;
        let mut a = KernelArgs::new().pod(&k);
        self.device()
            .launch(kernels.reduce, t.config().with_shared_bytes(shared), &mut a)?;

        let merge = LaunchConfig::linear(args.groups as u32, MERGE_THREADS)
            .with_shared_bytes(4 * MERGE_THREADS * 4);
        let mut a = KernelArgs::new().pod(&k);
        self.device().launch(Kernel::NormBwdMerge, merge, &mut a)?;

        let mut a = KernelArgs::new().pod(&k);
        self.device().launch(kernels.dx, t.config(), &mut a)?;
        Ok(NormGrads {
            dx,
            dgamma,
            dbeta,
            dfilm,
            dresidual: du,
        })
    }
}

/// The buffers one launch of the norm family reads or writes, by address
/// (every pass gets the whole [`NormKernelArgs`], but each touches only part
/// of it): for the byte count of a static plan's cost model. None for
/// kernels of other families.
pub fn launch_touches(kernel: Kernel, args: &KernelArgs) -> Option<Vec<u64>> {
    use Kernel::*;
    let k: NormKernelArgs = bytemuck::try_pod_read_unaligned(args.param_bytes(0)).ok()?;
    let v = match kernel {
        NormStatsF32x8 | NormStatsF32x1 | NormStatsBf16x8 | NormStatsBf16x1 => {
            vec![k.x, k.residual, k.partial]
        }
        NormStatsMerge => vec![k.partial, k.stats],
        NormApplyF32x8 | NormApplyF32x1 | NormApplyBf16x8 | NormApplyBf16x1 => vec![
            k.x, k.residual, k.out, k.stats, k.gamma, k.beta, k.scale, k.shift,
        ],
        NormBwdReduceF32x8 | NormBwdReduceF32x1 | NormBwdReduceBf16x8 | NormBwdReduceBf16x1 => {
            vec![
                k.x, k.residual, k.dy, k.du, k.partial, k.stats, k.gamma, k.scale,
            ]
        }
        NormBwdMerge => vec![
            k.partial, k.moments, k.stats, k.gamma, k.dgamma, k.dbeta, k.dscale, k.dshift,
        ],
        NormBwdDxF32x8 | NormBwdDxF32x1 | NormBwdDxBf16x8 | NormBwdDxBf16x1 => vec![
            k.x, k.residual, k.dy, k.du, k.out, k.moments, k.stats, k.gamma, k.scale,
        ],
        _ => return None,
    };
    Some(v.into_iter().filter(|&a| a != 0).collect())
}
