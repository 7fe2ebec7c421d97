//! Tile and K-split choices of the conv kernels (see the module doc of `conv`).

use super::*;

/// The block tile, kernel and K split of a pipelined forward / data gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpropTiling {
    pub kernel: Kernel,
    pub bm: usize,
    pub bn: usize,
    /// K steps of [`FPROP_BK`] in all.
    pub steps: usize,
    /// K splits (grid z); 1 = no split.
    pub splits: usize,
    /// K steps per split.
    pub split_steps: usize,
    /// Dynamic shared memory per block: the pipeline stages.
    pub shared_bytes: u32,
}

/// The tile of a pipelined forward / data gradient with `rows` GEMM rows,
/// `cout` output channels and `k` GEMM K columns (steps of [`FPROP_BK`]): a
/// 32-wide N tile when Cout ≤ 32 (no half-empty tiles at the 32-channel
/// levels), else 64; 128-row M tiles where that still gives a block per SM,
/// else 64; and when the grid has fewer blocks than [`SMS`], K split until it
/// has about one per SM, each split keeping at least [`SPLIT_MIN_STEPS`] steps.
pub fn fprop_tiling(rows: usize, cout: usize, k: usize) -> FpropTiling {
    let steps = k.div_ceil(FPROP_BK);
    let bn = if cout <= 32 { 32 } else { 64 };
    let bm = if bn == 32 || rows.div_ceil(128) * cout.div_ceil(64) >= SMS {
        128
    } else {
        64
    };
    let blocks = rows.div_ceil(bm) * cout.div_ceil(bn);
    let want = if blocks < SMS {
        SMS.div_ceil(blocks).min(steps / SPLIT_MIN_STEPS).max(1)
    } else {
        1
    };
    let split_steps = steps.div_ceil(want).max(1);
    let splits = steps.div_ceil(split_steps).max(1);
    let kernel = match (bm, bn, splits > 1) {
        (128, 32, false) => Kernel::Conv3dFprop128x32Bf16,
        (128, 32, true) => Kernel::Conv3dFprop128x32SplitkBf16,
        (128, 64, _) => Kernel::Conv3dFprop128x64Bf16,
        (_, _, false) => Kernel::Conv3dFprop64x64Bf16,
        (_, _, true) => Kernel::Conv3dFprop64x64SplitkBf16,
    };
    FpropTiling {
        kernel,
        bm,
        bn,
        steps,
        splits,
        split_steps,
        shared_bytes: (FPROP_STAGES * (bm + bn) * (FPROP_BK + 8) * 2) as u32,
    }
}

/// The kernel of a forward / data-gradient GEMM that does not take the
/// pipelined path ([`takes_pipeline`]): f32 on the FMA core; bf16 scatters
/// through the cp.async pipeline (channels padded to a multiple of 8 first
/// when they are not), bf16 gathers with `e > 1` on the register loader.
pub fn gemm_kernel(scatter: bool, dtype: DType) -> Kernel {
    match (scatter, dtype) {
        (false, DType::F32) => Kernel::Conv3dGatherF32,
        (true, DType::F32) => Kernel::Conv3dScatterF32,
        (false, DType::BF16) => Kernel::Conv3dGatherBf16,
        (true, DType::BF16) => Kernel::Conv3dScatterAsyncBf16,
    }
}

/// Whether a forward / data-gradient GEMM takes the pipelined kernels: bf16,
/// a gather whose input index needs no division (e == 1), at most
/// [`PIPE_MAX_TAPS`] taps.
pub fn takes_pipeline(scatter: bool, dtype: DType, map_e: [i64; 3], taps: usize) -> bool {
    dtype == DType::BF16 && !scatter && map_e == [1; 3] && taps <= PIPE_MAX_TAPS
}

/// `(K per split, splits)` of a weight gradient over `tiles` output tiles and
/// `k_total` voxels in steps of `bk`: enough splits for about
/// [`WGRAD_TARGET_BLOCKS`] blocks, each split at least [`WGRAD_MIN_STEPS`] steps.
pub fn wgrad_splits(tiles: usize, k_total: usize, bk: usize) -> (usize, usize) {
    let max_splits = k_total.div_ceil(bk * WGRAD_MIN_STEPS);
    let want = WGRAD_TARGET_BLOCKS
        .div_ceil(tiles)
        .clamp(1, max_splits.max(1));
    let k_chunk = k_total.div_ceil(want).div_ceil(bk) * bk;
    (k_chunk, k_total.div_ceil(k_chunk))
}
