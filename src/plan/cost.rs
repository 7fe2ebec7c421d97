//! A modelled time for every launch of a plan on a named GPU.
//!
//! Conv GEMM launches (the shape read back from their arguments,
//! [`crate::backend::gpu::conv::launch_gemm`]) use the model of
//! `scripts/model-conv-h100.py` unchanged:
//! `max(executed FLOPs / (peak · min(F_MMA, 4 / I) · min(1, 4 · wave efficiency)),
//! bytes / GEMM bandwidth)`, where I is the kernel's issued instructions per
//! HMMA in its K loop (counted from the sm_90 SASS, [`instructions_per_hmma`]),
//! the wave efficiency follows from the grid and the blocks per SM that the
//! kernel's shared memory (dynamic + static from the ptxas report) allows, and
//! executed FLOPs include the tile padding. f32 GEMMs run on the FMA core at
//! the f32 peak with the same wave term.
//!
//! Every other kernel is a roofline on memory: the bytes of the buffers its
//! arguments point into (each once, in full — an upper estimate for a kernel
//! that reads part of a buffer) at the HBM bandwidth, scaled down when the
//! grid has fewer threads than [`Gpu::threads_to_fill`] (too few loads in
//! flight to saturate memory). Device fills and copies likewise; host copies
//! at [`Gpu::host_bw`].
//!
//! Every launch or copy costs at least [`Gpu::launch_floor`]: a small
//! kernel's launch latency and ramp, the dominant cost of the many tiny
//! launches of an unfused step. The step time is reported with and without it.

use crate::backend::gpu::conv::{launch_gemm, LaunchGemm};
use crate::backend::gpu::norm;
use crate::backend::gpu::plan::{BufferLife, CopyKind, LaunchRecord, Recording};
use crate::backend::gpu::registry::{ptxas_info, Kernel};

/// The figures a model needs of one GPU; every one is an input to check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Dense bf16 tensor-core FLOP/s.
    pub bf16_peak: f64,
    /// f32 FMA FLOP/s (no tensor cores).
    pub f32_peak: f64,
    /// HBM bandwidth, bytes/s (the roofline of memory-bound kernels).
    pub hbm_bw: f64,
    /// Bandwidth assumed inside a conv GEMM (the script's 3.0 TB/s).
    pub gemm_bw: f64,
    /// Shared memory per SM available to blocks, bytes.
    pub smem_per_sm: u32,
    /// Fraction of `bf16_peak` mma.sync reaches at best (assumption).
    pub mma_sync_fraction: f64,
    /// Warp instructions a sub-partition may issue per HMMA at peak.
    pub issue_per_hmma: f64,
    /// Threads in flight below which a memory-bound kernel reaches only
    /// `threads / threads_to_fill` of the bandwidth (assumption: 32 warps per SM).
    pub threads_to_fill: f64,
    /// Host ↔ device copies (pageable memory, PCIe 5 ×16), bytes/s (assumption).
    pub host_bw: f64,
    /// Least time of one launch or copy, seconds (assumption).
    pub launch_floor: f64,
}

/// NVIDIA H100 SXM5 (80 GB): spec-sheet peaks; the model's assumptions as in
/// `scripts/model-conv-h100.py` and docs/performance.md.
pub const H100_SXM: Gpu = Gpu {
    name: "H100 SXM",
    sms: 132,
    bf16_peak: 989e12,
    f32_peak: 67e12,
    hbm_bw: 3.35e12,
    gemm_bw: 3.0e12,
    smem_per_sm: 227 * 1024,
    mma_sync_fraction: 0.67,
    issue_per_hmma: 4.0,
    threads_to_fill: 132.0 * 1024.0,
    host_bw: 25e9,
    launch_floor: 2e-6,
};

/// The GPUs the model knows, by the names `--gpu` accepts.
pub fn gpu_by_name(name: &str) -> Option<Gpu> {
    match name.to_ascii_lowercase().as_str() {
        "h100" | "h100-sxm" | "h100 sxm" => Some(H100_SXM),
        _ => None,
    }
}

/// Issued instructions per HMMA in the K loop of each tensor-core conv
/// kernel: static instructions of the loop body / HMMA in it, sm_90 SASS of
/// the embedded CUBIN (docs/performance.md; the transposed weight gradients
/// share their tile's loop).
pub fn instructions_per_hmma(k: Kernel) -> Option<f64> {
    use Kernel as K;
    Some(match k {
        K::Conv3dFprop128x32Bf16 | K::Conv3dFprop128x32SplitkBf16 => 171.0 / 32.0,
        K::Conv3dFprop128x64Bf16 => 222.0 / 64.0,
        K::Conv3dFprop64x64Bf16 | K::Conv3dFprop64x64SplitkBf16 => 158.0 / 32.0,
        K::Conv3dWgradPipe128x32Bf16 | K::Conv3dWgradPipeTransposed128x32Bf16 => 209.0 / 16.0,
        K::Conv3dWgradPipe64x64Bf16 | K::Conv3dWgradPipeTransposed64x64Bf16 => 160.0 / 16.0,
        K::Conv3dScatterAsyncBf16 => 90.0 / 8.0,
        K::Conv3dGatherBf16 => 670.0 / 4.0,
        _ => return None,
    })
}

/// What bounds a launch in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Bound {
    /// Tensor-core or FMA throughput (incl. instruction issue and waves).
    Compute,
    Memory,
    /// The per-launch floor.
    Launch,
}

/// The modelled cost of one launch or copy.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Cost {
    /// max(compute, memory): the roofline alone.
    pub roofline_s: f64,
    /// The roofline with the launch floor.
    pub seconds: f64,
    /// Useful FLOPs (0 where the op's FLOPs are not modelled).
    pub flops: f64,
    pub bytes: u64,
    pub bound: Bound,
    /// Achieved fraction of the peak that bounds it: FLOP/s of the compute
    /// peak for a GEMM, bytes/s of the HBM bandwidth otherwise (at `seconds`).
    pub fraction_of_peak: f64,
}

fn finish(gpu: &Gpu, compute: f64, memory: f64, flops: f64, bytes: u64, peak_flops: f64) -> Cost {
    let roofline_s = compute.max(memory);
    let seconds = roofline_s.max(gpu.launch_floor);
    let bound = if seconds > roofline_s {
        Bound::Launch
    } else if compute >= memory {
        Bound::Compute
    } else {
        Bound::Memory
    };
    let fraction_of_peak = if peak_flops > 0.0 {
        flops / seconds / peak_flops
    } else {
        bytes as f64 / seconds / gpu.hbm_bw
    };
    Cost {
        roofline_s,
        seconds,
        flops,
        bytes,
        bound,
        fraction_of_peak,
    }
}

/// Bytes of the buffers a launch's arguments point into; for the norm
/// family, whose passes share one argument struct, only those the pass
/// touches ([`crate::backend::gpu::norm::launch_touches`]).
pub fn launch_bytes(l: &LaunchRecord, buffers: &[BufferLife]) -> u64 {
    let touched = norm::launch_touches(l.kernel, &l.args);
    l.buffers
        .iter()
        .zip(&l.addrs)
        .filter(|(_, a)| touched.as_ref().is_none_or(|t| t.contains(a)))
        .map(|(&b, _)| buffers[b].bytes)
        .sum()
}

/// Modelled cost of one launch.
pub fn launch_cost(gpu: &Gpu, l: &LaunchRecord, buffers: &[BufferLife]) -> Cost {
    launch_cost_of_bytes(gpu, l, launch_bytes(l, buffers))
}

/// Modelled cost of one launch of `rec`: as [`launch_cost`], and a launch
/// that follows a table of addresses (the AdamW slots, the weight packings:
/// [`Recording::links`]) also moves the buffers the table points into, each
/// once and in full.
pub fn launch_cost_in(gpu: &Gpu, l: &LaunchRecord, rec: &Recording) -> Cost {
    let linked: std::collections::BTreeSet<usize> = rec
        .links
        .iter()
        .filter(|(table, b)| l.buffers.contains(table) && !l.buffers.contains(b))
        .map(|&(_, b)| b)
        .collect();
    let bytes =
        launch_bytes(l, &rec.buffers) + linked.iter().map(|&b| rec.buffers[b].bytes).sum::<u64>();
    launch_cost_of_bytes(gpu, l, bytes)
}

fn launch_cost_of_bytes(gpu: &Gpu, l: &LaunchRecord, bytes: u64) -> Cost {
    match launch_gemm(l.kernel, &l.cfg, &l.args) {
        Some(g) => gemm_cost(gpu, l, &g, bytes),
        None => {
            let threads = (l.cfg.blocks() * l.cfg.threads_per_block()) as f64;
            let bw = gpu.hbm_bw * (threads / gpu.threads_to_fill).min(1.0);
            finish(gpu, 0.0, bytes as f64 / bw, 0.0, bytes, 0.0)
        }
    }
}

fn gemm_cost(gpu: &Gpu, l: &LaunchRecord, g: &LaunchGemm, bytes: u64) -> Cost {
    let smem = l.cfg.shared_bytes + ptxas_info(l.kernel, "sm_90").map_or(0, |i| i.shared_bytes);
    let resident = (gpu.smem_per_sm / smem.max(1)).clamp(1, 8) as f64;
    let blocks = l.cfg.blocks() as f64;
    let slots = gpu.sms as f64 * resident;
    let waves = (blocks / slots).ceil();
    let wave_eff = blocks / (waves * slots);
    let fill = (wave_eff * 4.0).min(1.0);
    let (peak, rate) = if g.tensor_cores {
        let i = instructions_per_hmma(l.kernel).unwrap_or(f64::INFINITY);
        let f = gpu.mma_sync_fraction.min(gpu.issue_per_hmma / i);
        (gpu.bf16_peak, gpu.bf16_peak * f * fill)
    } else {
        (gpu.f32_peak, gpu.f32_peak * fill)
    };
    let compute = g.executed_flops() / rate;
    let memory = bytes as f64 / gpu.gemm_bw;
    finish(gpu, compute, memory, g.flops(), bytes, peak)
}

/// Modelled cost of a copy or fill.
pub fn copy_cost(gpu: &Gpu, kind: CopyKind, bytes: u64) -> Cost {
    let moved = match kind {
        CopyKind::DeviceToDevice => 2 * bytes,
        _ => bytes,
    };
    let bw = match kind {
        CopyKind::HostToDevice | CopyKind::DeviceToHost { .. } => gpu.host_bw,
        CopyKind::DeviceToDevice | CopyKind::Memset => gpu.hbm_bw,
    };
    finish(gpu, 0.0, moved as f64 / bw, 0.0, moved, 0.0)
}
