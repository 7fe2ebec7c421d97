//! The GEMM of a conv launch read back from its packed arguments.

use super::*;

/// The GEMM one conv launch computes, read back from its packed arguments
/// (for the cost model of a static plan, `crate::plan::cost`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchGemm {
    /// Rows, columns and depth of the product (per tap group).
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// K as the kernel executes it (rounded up to its step), over all splits.
    pub k_exec: u64,
    /// Independent products in the launch (taps of a scatter or of a
    /// transposed weight gradient; 1 otherwise).
    pub groups: u64,
    /// The block tile.
    pub bm: u64,
    pub bn: u64,
    /// Tensor cores (bf16) or the FMA core (f32).
    pub tensor_cores: bool,
}

impl LaunchGemm {
    /// FLOPs of the product as stated (multiply-add = 2).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.groups) as f64
    }
    /// FLOPs the tiles execute: M and N rounded up to the tile, K to the step.
    pub fn executed_flops(&self) -> f64 {
        let m = self.m.div_ceil(self.bm) * self.bm;
        let n = self.n.div_ceil(self.bn) * self.bn;
        2.0 * (m * n * self.k_exec * self.groups) as f64
    }
}

/// The GEMM of a conv GEMM launch (`None` for every other kernel, including
/// the conv family's helpers: padding, packing, reductions).
pub fn launch_gemm(kernel: Kernel, cfg: &LaunchConfig, args: &KernelArgs) -> Option<LaunchGemm> {
    use Kernel as K;
    let pod = |i: usize| args.param_bytes(i);
    let int = |i: usize| {
        let b = pod(i);
        i32::from_ne_bytes(b.get(..4)?.try_into().ok()?)
            .try_into()
            .ok()
    };
    match kernel {
        K::Conv3dFprop128x32Bf16
        | K::Conv3dFprop128x32SplitkBf16
        | K::Conv3dFprop128x64Bf16
        | K::Conv3dFprop64x64Bf16
        | K::Conv3dFprop64x64SplitkBf16 => {
            let a: ConvPipeArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let (bm, bn) = match kernel {
                K::Conv3dFprop128x32Bf16 | K::Conv3dFprop128x32SplitkBf16 => (128, 32),
                K::Conv3dFprop128x64Bf16 => (128, 64),
                _ => (64, 64),
            };
            Some(LaunchGemm {
                m: a.rows as u64,
                n: a.cout as u64,
                k: (a.taps * a.cin) as u64,
                k_exec: a.steps as u64 * FPROP_BK as u64,
                groups: 1,
                bm,
                bn,
                tensor_cores: true,
            })
        }
        K::Conv3dGatherF32
        | K::Conv3dScatterF32
        | K::Conv3dGatherBf16
        | K::Conv3dScatterAsyncBf16 => {
            let a: ConvGemmArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let taps = (a.kernel[0] * a.kernel[1] * a.kernel[2]) as u64;
            let scatter = matches!(kernel, K::Conv3dScatterF32 | K::Conv3dScatterAsyncBf16);
            let k = if scatter {
                a.cin as u64
            } else {
                taps * a.cin as u64
            };
            let step = if kernel == K::Conv3dScatterAsyncBf16 {
                32
            } else {
                CONV_BK as u64
            };
            Some(LaunchGemm {
                m: a.rows as u64,
                n: a.cout as u64,
                k,
                k_exec: k.div_ceil(step) * step,
                groups: if scatter { cfg.grid[2] as u64 } else { 1 },
                bm: CONV_BM as u64,
                bn: CONV_BN as u64,
                tensor_cores: kernel != K::Conv3dGatherF32 && kernel != K::Conv3dScatterF32,
            })
        }
        K::Conv3dWgradPipe128x32Bf16
        | K::Conv3dWgradPipe64x64Bf16
        | K::Conv3dWgradPipeTransposed128x32Bf16
        | K::Conv3dWgradPipeTransposed64x64Bf16 => {
            let a: ConvWgradPipeArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let splits: u64 = int(1)?;
            let (bm, bn) = match kernel {
                K::Conv3dWgradPipe128x32Bf16 | K::Conv3dWgradPipeTransposed128x32Bf16 => (128, 32),
                _ => (64, 64),
            };
            let k = a.k_total as u64;
            Some(LaunchGemm {
                m: a.rows as u64,
                n: a.cout as u64,
                k,
                k_exec: k.div_ceil(WGRAD_BK as u64) * WGRAD_BK as u64,
                groups: (cfg.grid[2] as u64 / splits.max(1)).max(1),
                bm,
                bn,
                tensor_cores: true,
            })
        }
        K::Conv3dWgradF32 | K::Conv3dWgradTransposedF32 => {
            let a: ConvWgradArgs = bytemuck::try_pod_read_unaligned(pod(0)).ok()?;
            let k = a.k_total as u64;
            Some(LaunchGemm {
                m: (a.taps_m * a.cin) as u64,
                n: a.cout as u64,
                k,
                k_exec: k.div_ceil(CONV_BK as u64) * CONV_BK as u64,
                groups: cfg.grid[2] as u64,
                bm: CONV_BM as u64,
                bn: CONV_BN as u64,
                tensor_cores: false,
            })
        }
        _ => None,
    }
}
