//! Steps planned before they run: the ImgX training step and the segment
//! window, run shape-only by the gpu backend on the recording device
//! ([`PlanDevice`]), then analysed by [`crate::plan`]:
//!
//! - `voxdiff bench --plan` and `voxdiff train seg --plan` print the plan of a
//!   training step (launches, bytes, eager and arena peaks, a modelled time per
//!   kernel and per step on a named GPU) and exit;
//! - `voxdiff train seg` and `voxdiff segment` plan the peak memory of their
//!   step at their actual sizes before allocating anything, and refuse with
//!   the number and a suggestion when the machine does not have it
//!   ([`check_fits`]).
//!
//! The CPU backend cannot run shape-only, so its memory is estimated through
//! the gpu backend's op sequence at f32 ([`plan_dtype`]); docs/performance.md
//! says how close that estimate is.

use super::seg_config::InferConfig;
use super::seg_model::{volume_shape, ModelConfig, SegModel};
use crate::autograd::Graph;
use crate::backend::gpu::plan::{CopyKind, PlanDevice, PlanEvent};
use crate::backend::gpu::step_arena::{ArenaPlan, StepArena, StepStats};
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::diffusion::seg::DiffusionConfig;
use crate::ops::AdamW;
use crate::plan::cost::{copy_cost, launch_cost_in, Gpu};
use crate::plan::{fmt_bytes, StepPlan};
use crate::tensor::DType;
use crate::train::Optimizer;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The mark a planned step starts at.
pub const STEP: &str = "step";

/// The activation dtype a plan for backend `b` uses: the backend's own (the
/// CPU backend computes in f32, and is planned as the gpu backend at f32).
pub fn plan_dtype(b: &dyn Backend) -> DType {
    b.act_dtype()
}

/// A recording device and the gpu backend over it with activations in `act`.
pub fn plan_backend(act: DType) -> (Arc<PlanDevice>, GpuBackend) {
    let dev = Arc::new(PlanDevice::new());
    let b = GpuBackend::with_act_dtype(dev.clone(), act);
    (dev, b)
}

/// What a training step is: the network, the diffusion, the patch.
#[derive(Clone, Debug)]
pub struct TrainStepShape {
    pub model: ModelConfig,
    pub diffusion: DiffusionConfig,
    pub classes: usize,
    pub patch: [usize; 3],
    pub adamw: AdamW,
}

impl TrainStepShape {
    /// The paper's step: the ImgX UNet 32/64/128/256 (FiLM time
    /// conditioning), 14 classes, diffusion with recycling, one 32×128×128 patch.
    pub fn paper() -> TrainStepShape {
        TrainStepShape {
            model: ModelConfig::default(),
            diffusion: DiffusionConfig::default(),
            classes: 14,
            patch: [32, 128, 128],
            adamw: AdamW::default(),
        }
    }
}

/// Records one training step on `dev` through `b`: the model and optimiser
/// are built first (resident), then after the mark [`STEP`] the step as the
/// training loop runs it (marks `forward`, `backward`, `optimizer`; the batch
/// is a zero tensor where the loop uploads one of the same size).
pub fn record_train_step(
    dev: &PlanDevice,
    b: &dyn Backend,
    s: &TrainStepShape,
) -> Result<StepPlan> {
    let model = SegModel::new(b, &s.model, &s.diffusion, s.classes)?;
    let mut opt = Optimizer::new(b, &model.ps, s.adamw)?;
    run_train_step(&|m| dev.mark(m), b, &model, &mut opt, s.patch)?;
    drop((model, opt));
    StepPlan::new(dev.recording(), STEP)
}

/// One training step of `model` on a zero batch, calling `mark` at each phase.
pub fn run_train_step(
    mark: &dyn Fn(&str),
    b: &dyn Backend,
    model: &SegModel,
    opt: &mut Optimizer,
    patch: [usize; 3],
) -> Result<()> {
    crate::backend::gpu::begin_step(b)?;
    mark(STEP);
    let shape = volume_shape(patch, 1);
    let image = b.zeros(shape, b.act_dtype())?;
    let labels = b.zeros(shape, b.act_dtype())?;
    mark("forward");
    let mask = b.one_hot(&labels, model.classes, 1.0, 0.0)?;
    let mut g = Graph::train(b);
    let key = super::train_loop::StepKey { seed: 0, step: 0 };
    let loss = model.loss(&mut g, &image, &mask, model.draw_t(key), key.seed, key.step)?;
    mark("backward");
    let grads = g.backward(&loss, model.ps.len())?;
    drop(g);
    mark("optimizer");
    let norm = opt.update(b, &model.ps, &grads, 1e-4)?;
    drop((grads, loss, mask, image, labels, norm));
    mark("end");
    Ok(())
}

/// The paper step (or `shape`) run `steps` times shape-only on the real
/// allocation path: the gpu backend over a [`StepArena`] over the recording
/// device, as the training loop drives it. Returns what each step did (the
/// first is recorded, the later ones served from the arena) and the plan.
pub fn served_steps(
    shape: &TrainStepShape,
    act: DType,
    steps: usize,
) -> Result<(Vec<StepStats>, ArenaPlan)> {
    let arena = Arc::new(StepArena::new(Arc::new(PlanDevice::new())));
    let b = GpuBackend::with_act_dtype(arena.clone(), act);
    let model = SegModel::new(&b, &shape.model, &shape.diffusion, shape.classes)?;
    let mut opt = Optimizer::new(&b, &model.ps, shape.adamw)?;
    for _ in 0..steps {
        run_train_step(&|_| {}, &b, &model, &mut opt, shape.patch)?;
    }
    b.begin_step()?; // closes the last step
    let plan = arena
        .plan()
        .context("the step arena has no plan after the steps")?;
    Ok((arena.history(), plan))
}

/// Records the inference of one sliding window as `segment` runs it: the
/// model built (resident), then after [`STEP`] the prediction of a zero
/// patch (every sampling step, every sample, the kept step votes).
#[allow(clippy::too_many_arguments)]
pub fn record_segment_window(
    dev: &PlanDevice,
    b: &dyn Backend,
    model_cfg: &ModelConfig,
    diffusion: &DiffusionConfig,
    classes: usize,
    infer: &InferConfig,
    patch: [usize; 3],
    keep_steps: bool,
) -> Result<StepPlan> {
    let model = SegModel::new(b, model_cfg, diffusion, classes)?;
    dev.mark(STEP);
    let x = b.zeros(volume_shape(patch, 1), b.act_dtype())?;
    let steps = super::segment::predict_window(b, &model, infer, &x, keep_steps)?;
    drop((steps, x, model));
    dev.mark("end");
    StepPlan::new(dev.recording(), STEP)
}

/// Peak bytes planned by `record` at `patch`. When the gpu kernels' 32-bit
/// indices cannot address the actual size (the plan errs), and `extrapolate`
/// (the CPU backend, which has no such limit), the peak is extrapolated
/// linearly in voxels from plans at the patch halved until it plans and
/// halved once more. Returns (bytes, extrapolated).
pub fn planned_peak(
    patch: [usize; 3],
    extrapolate: bool,
    record: impl Fn([usize; 3]) -> Result<u64>,
) -> Result<(u64, bool)> {
    let err = match record(patch) {
        Ok(p) => return Ok((p, false)),
        Err(e) => e,
    };
    if !extrapolate || !format!("{err:#}").contains("32-bit") {
        return Err(err);
    }
    let vox = |p: [usize; 3]| p.iter().product::<usize>() as f64;
    let mut p1 = patch;
    for _ in 0..16 {
        p1 = p1.map(|v| v.div_ceil(2).max(1));
        if let Ok(peak1) = record(p1) {
            let p2 = p1.map(|v| v.div_ceil(2).max(1));
            let peak2 = record(p2)?;
            let slope = (peak1 as f64 - peak2 as f64) / (vox(p1) - vox(p2)).max(1.0);
            let est = peak1 as f64 + slope.max(0.0) * (vox(patch) - vox(p1));
            return Ok((est as u64, true));
        }
    }
    Err(err)
}

/// Bytes the machine has for `b`: free device memory on a GPU, else the
/// kernel's MemAvailable (/proc/meminfo), and where the figure came from.
pub fn available_memory(b: &dyn Backend) -> Result<(u64, &'static str)> {
    if let Some(g) = b.as_any().downcast_ref::<GpuBackend>() {
        if let Some(free) = g.device().free_memory()? {
            return Ok((free, "free device memory"));
        }
    }
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    mem_available(&text)
        .map(|kb| (kb * 1024, "MemAvailable in /proc/meminfo"))
        .context("/proc/meminfo has no MemAvailable line")
}

/// MemAvailable in kB from the text of /proc/meminfo.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Refuses when `needed` bytes exceed `available`: the error names both, what
/// the memory is for and `suggestion`.
pub fn check_fits(
    what: &str,
    needed: u64,
    available: u64,
    source: &str,
    suggestion: &str,
) -> Result<()> {
    if needed > available {
        bail!(
            "{what} needs about {} of memory (planned before running), but this machine has {} \
             available ({source}); {suggestion}",
            fmt_bytes(needed),
            fmt_bytes(available)
        );
    }
    Ok(())
}

/// Prints a step's plan with a modelled time per kernel and per step on `gpu`.
pub fn print_plan(title: &str, plan: &StepPlan, gpu: &Gpu) {
    let s = plan.summary();
    println!("{title}");
    println!("  launches per step:        {}", s.launches);
    println!(
        "  device fills/copies:      {}; host→device copies {} ({}); device→host reads {} ({} wait on a kernel's result)",
        s.device_copies,
        s.host_to_device,
        fmt_bytes(s.host_to_device_bytes),
        s.device_to_host,
        s.data_dependent_readbacks
    );
    println!("  allocations per step:     {}", s.allocations);
    println!(
        "  resident (params, moments): {}",
        fmt_bytes(s.resident_bytes)
    );
    println!(
        "  peak memory, eager:       {} (whole recording {})",
        fmt_bytes(s.eager_step_peak),
        fmt_bytes(s.eager_peak)
    );
    println!(
        "  peak memory, arena:       {} (lower bound {}: most bytes in use at once)",
        fmt_bytes(s.arena_peak),
        fmt_bytes(s.arena_lower_bound)
    );
    // Per kernel and per phase.
    #[derive(Default)]
    struct Row {
        n: usize,
        s: f64,
        roof: f64,
        flops: f64,
        bytes: u64,
        peak_s: f64,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut phases: Vec<(String, f64, usize)> = vec![];
    let (mut total, mut roof_total, mut flops) = (0.0, 0.0, 0.0);
    for e in plan.step_events() {
        let (name, c) = match e {
            PlanEvent::Launch(l) => (
                l.kernel.name().to_string(),
                launch_cost_in(gpu, l, &plan.rec),
            ),
            PlanEvent::Copy { kind, bytes, .. } => {
                let name = match kind {
                    CopyKind::HostToDevice => "(copy host→device)",
                    CopyKind::DeviceToHost { .. } => "(copy device→host)",
                    CopyKind::DeviceToDevice => "(copy device→device)",
                    CopyKind::Memset => "(memset)",
                };
                (name.to_string(), copy_cost(gpu, *kind, *bytes))
            }
            PlanEvent::Mark(m) => {
                phases.push((m.clone(), 0.0, 0));
                continue;
            }
            _ => continue,
        };
        let r = rows.entry(name).or_default();
        r.n += 1;
        r.s += c.seconds;
        r.roof += c.roofline_s;
        r.flops += c.flops;
        r.bytes += c.bytes;
        // Time at which the op would run at its peak: fraction × time.
        r.peak_s += c.fraction_of_peak * c.seconds;
        total += c.seconds;
        roof_total += c.roofline_s;
        flops += c.flops;
        if let Some(p) = phases.last_mut() {
            p.1 += c.seconds;
            p.2 += 1;
        }
    }
    println!(
        "modelled on {} (model and inputs: docs/performance.md, \"The static plan\"):",
        gpu.name
    );
    println!(
        "  step: {:.3} ms with a {:.0} µs floor per launch; {:.3} ms roofline alone; {:.1} GFLOP in the conv GEMMs ({:.1} % of the bf16 peak over the step)",
        total * 1e3,
        gpu.launch_floor * 1e6,
        roof_total * 1e3,
        flops / 1e9,
        flops / total / gpu.bf16_peak * 100.0
    );
    for (name, s, n) in &phases {
        if *n > 0 {
            println!(
                "    {name:<10} {:>8.3} ms  {n:>5} launches and copies",
                s * 1e3
            );
        }
    }
    println!(
        "  {:<42} {:>6} {:>10} {:>7} {:>11} {:>10} {:>8}",
        "kernel / copy", "count", "ms", "% step", "MB", "GFLOP", "% peak"
    );
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1.s.total_cmp(&a.1.s));
    for (name, r) in rows {
        println!(
            "  {:<42} {:>6} {:>10.4} {:>7.1} {:>11.1} {:>10.2} {:>8.1}",
            name,
            r.n,
            r.s * 1e3,
            r.s / total * 100.0,
            r.bytes as f64 / 1e6,
            r.flops / 1e9,
            r.peak_s / r.s * 100.0
        );
    }
}

/// `voxdiff bench --plan`: the plan of the paper's training step (patch
/// `dims`) at bf16, printed with the model of `gpu`.
pub fn bench_plan(dims: [usize; 3], gpu: &str) -> Result<StepPlan> {
    let gpu = crate::plan::cost::gpu_by_name(gpu)
        .with_context(|| format!("--gpu {gpu}: unknown GPU (known: h100)"))?;
    let mut shape = TrainStepShape::paper();
    shape.patch = dims;
    let (dev, b) = plan_backend(DType::BF16);
    let plan = record_train_step(&dev, &b, &shape)?;
    print_plan(
        &format!(
            "plan of one training step: ImgX UNet {:?}, 1×{}×{}×{}, {} classes, diffusion with recycling, bf16 activations",
            shape.model.channels, dims[0], dims[1], dims[2], shape.classes
        ),
        &plan,
        &gpu,
    );
    print_served_steps(&shape, DType::BF16, 3)?;
    Ok(plan)
}

/// Prints the allocations of `steps` steps on the real allocation path
/// ([`served_steps`]).
pub fn print_served_steps(shape: &TrainStepShape, act: DType, steps: usize) -> Result<()> {
    let (history, plan) = served_steps(shape, act, steps)?;
    println!(
        "allocations per step, real allocator (the step arena over the recording device, {steps} steps):"
    );
    for (i, s) in history.iter().enumerate() {
        println!(
            "  step {}: {:?}, {} from the device pool, {} from the arena, {} launches and copies",
            i + 1,
            s.mode,
            s.device_allocations,
            s.arena_allocations,
            s.ops
        );
    }
    println!(
        "  arena block {} for {} buffers ({} outlive their step and come from the pool)",
        fmt_bytes(plan.arena_bytes),
        plan.allocations,
        plan.escaping
    );
    Ok(())
}

/// The eager peak of a training step of `shape` as backend `b` would run
/// it (see [`planned_peak`]); (bytes, extrapolated).
pub fn train_step_peak(b: &dyn Backend, shape: &TrainStepShape) -> Result<(u64, bool)> {
    let cpu = b.as_any().downcast_ref::<GpuBackend>().is_none();
    planned_peak(shape.patch, cpu, |patch| {
        let (dev, pb) = plan_backend(plan_dtype(b));
        let s = TrainStepShape {
            patch,
            ..shape.clone()
        };
        Ok(record_train_step(&dev, &pb, &s)?.summary().eager_peak)
    })
}

/// Refuses a training run whose step does not fit the machine: the step's
/// planned peak plus, on the host, the batches the loader holds (image and
/// labels, f32: two prefetched, one per worker being cut, one in use).
pub fn check_train_memory(b: &dyn Backend, shape: &TrainStepShape, workers: usize) -> Result<()> {
    let (peak, extrapolated) = train_step_peak(b, shape)?;
    let host = (3 + workers as u64) * 2 * 4 * shape.patch.iter().product::<usize>() as u64;
    let on_gpu = b
        .as_any()
        .downcast_ref::<GpuBackend>()
        .is_some_and(|g| g.device().kind() == crate::backend::gpu::device::DeviceKind::Cuda);
    let (avail, source) = available_memory(b)?;
    if on_gpu {
        let host_avail = available_memory(&crate::backend::cpu::CpuBackend::new())?.0;
        check_fits(
            "the training batches on the host",
            host,
            host_avail,
            "MemAvailable in /proc/meminfo",
            "use a smaller data.patch",
        )?;
    }
    let needed = if on_gpu { peak } else { peak + host };
    check_fits(
        &format!(
            "a training step on {:?} patches{}",
            shape.patch,
            if extrapolated { " (extrapolated from smaller patches)" } else { "" }
        ),
        needed,
        avail,
        source,
        "use a smaller data.patch (e.g. --set 'data.patch=[…]' with each extent halved) or fewer model.channels",
    )
}

/// Host bytes `segment` holds besides the device work for a scan of
/// `dims` voxels, windows of `patch` and `channels` outputs per voxel: the
/// padded scan, the aggregation sums and weights (padded extents), one
/// window's input, weights, output and downloads, the cropped result and the
/// per-class scores (f32 each). An upper estimate.
pub fn segment_host_bytes(dims: [usize; 3], patch: [usize; 3], channels: usize) -> u64 {
    let v = dims.iter().product::<usize>() as u64;
    let pd: u64 = (0..3).map(|a| dims[a].max(patch[a]) as u64).product();
    let p = patch.iter().product::<usize>() as u64;
    let ch = channels as u64;
    4 * (pd * (2 + ch) + p * (2 + 2 * ch) + 2 * v * ch)
}

/// Refuses a segmentation whose windows do not fit the machine: the device
/// work of one window planned at its actual size plus the host arrays.
#[allow(clippy::too_many_arguments)]
pub fn check_segment_memory(
    b: &dyn Backend,
    model_cfg: &ModelConfig,
    diffusion: &DiffusionConfig,
    classes: usize,
    infer: &InferConfig,
    dims: [usize; 3],
    keep_steps: bool,
) -> Result<()> {
    let patch = infer.patch.unwrap_or(dims);
    let cpu = b.as_any().downcast_ref::<GpuBackend>().is_none();
    let peak_at = |patch: [usize; 3]| {
        planned_peak(patch, cpu, |p| {
            let (dev, pb) = plan_backend(plan_dtype(b));
            let plan = record_segment_window(
                &dev, &pb, model_cfg, diffusion, classes, infer, p, keep_steps,
            )?;
            Ok(plan.summary().eager_peak)
        })
    };
    let n_steps = if keep_steps {
        infer.steps.unwrap_or(diffusion.num_timesteps)
    } else {
        0
    };
    let channels = classes * (1 + n_steps);
    let on_gpu = b
        .as_any()
        .downcast_ref::<GpuBackend>()
        .is_some_and(|g| g.device().kind() == crate::backend::gpu::device::DeviceKind::Cuda);
    let (avail, source) = available_memory(b)?;
    let needed_at = |patch: [usize; 3]| -> Result<(u64, bool)> {
        let (dev, extrapolated) = peak_at(patch)?;
        let host = segment_host_bytes(dims, patch, channels);
        Ok((if on_gpu { dev } else { dev + host }, extrapolated))
    };
    let (needed, extrapolated) = needed_at(patch)?;
    if needed <= avail {
        return Ok(());
    }
    // A window that fits: halve the patch until one does (at most 6 times).
    let mut p = patch;
    let mut hint = "a smaller --patch".to_string();
    for _ in 0..6 {
        p = p.map(|v| v.div_ceil(2).max(1));
        if let Ok((n, _)) = needed_at(p) {
            if n <= avail {
                hint = format!(
                    "use a smaller window, e.g. --patch {} {} {} (about {})",
                    p[0],
                    p[1],
                    p[2],
                    fmt_bytes(n)
                );
                break;
            }
        }
    }
    check_fits(
        &format!(
            "segmenting {}×{}×{} voxels with windows of {}×{}×{}{}",
            dims[0],
            dims[1],
            dims[2],
            patch[0],
            patch[1],
            patch[2],
            if extrapolated {
                " (extrapolated from smaller windows)"
            } else {
                ""
            }
        ),
        needed,
        avail,
        source,
        &hint,
    )
}
