//! The static plan: the recording device runs a step shape-only with the same
//! launch sequence as the emulator, the arena never puts two live buffers on
//! the same bytes and never needs more than the eager allocator, and the cost
//! model of the conv passes is the one of scripts/model-conv-h100.py.

mod common;

use std::sync::{Arc, Mutex};
use voxdiff::backend::gpu::conv::launch_gemm;
use voxdiff::backend::gpu::device::{Device, DeviceKind, Event, KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::registry::Kernel;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::pipeline::plan_step::{
    mem_available, plan_backend, planned_peak, record_train_step, run_train_step, TrainStepShape,
    STEP,
};
use voxdiff::pipeline::seg_model::{ModelConfig, SegModel};
use voxdiff::plan::arena::{max_live, Arena};
use voxdiff::plan::cost::{launch_cost, H100_SXM};
use voxdiff::plan::Interval;
use voxdiff::tensor::{Buffer, DType};
use voxdiff::train::Optimizer;

/// The emulator, logging every launch's kernel and the caller's marks.
struct LoggingEmu {
    inner: Emu,
    log: Mutex<Vec<String>>,
}

impl Device for LoggingEmu {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn kind(&self) -> DeviceKind {
        self.inner.kind()
    }
    fn alloc(&self, bytes: usize) -> anyhow::Result<Arc<Buffer>> {
        self.inner.alloc(bytes)
    }
    fn memcpy_htod(&self, dst: u64, src: &[u8]) -> anyhow::Result<()> {
        self.inner.memcpy_htod(dst, src)
    }
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64) -> anyhow::Result<()> {
        self.inner.memcpy_dtoh(dst, src)
    }
    fn memcpy_dtod(&self, dst: u64, src: u64, bytes: usize) -> anyhow::Result<()> {
        self.inner.memcpy_dtod(dst, src, bytes)
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> anyhow::Result<()> {
        self.inner.memset(dst, byte, bytes)
    }
    fn launch(&self, k: Kernel, cfg: LaunchConfig, args: &mut KernelArgs) -> anyhow::Result<()> {
        self.log.lock().unwrap().push(k.name().to_string());
        self.inner.launch(k, cfg, args)
    }
    fn synchronize(&self) -> anyhow::Result<()> {
        self.inner.synchronize()
    }
    fn record_event(&self) -> anyhow::Result<Event> {
        self.inner.record_event()
    }
    fn elapsed_ms(&self, a: &Event, b: &Event) -> anyhow::Result<f32> {
        self.inner.elapsed_ms(a, b)
    }
}

/// A small diffusion UNet step: two levels, 3 classes, an 8×8×8 patch.
fn small_step() -> TrainStepShape {
    TrainStepShape {
        model: ModelConfig {
            channels: vec![8, 16],
            ..ModelConfig::default()
        },
        classes: 3,
        patch: [8, 8, 8],
        ..TrainStepShape::paper()
    }
}

#[test]
fn the_plan_launches_what_the_emulator_launches() {
    let shape = small_step();
    for act in [DType::BF16, DType::F32] {
        let (dev, b) = plan_backend(act);
        let plan = record_train_step(&dev, &b, &shape).unwrap();
        let planned: Vec<&str> = plan
            .rec
            .events
            .iter()
            .filter_map(|e| match e {
                voxdiff::backend::gpu::plan::PlanEvent::Launch(l) => Some(l.kernel.name()),
                voxdiff::backend::gpu::plan::PlanEvent::Mark(m) if m == STEP => Some("|step|"),
                _ => None,
            })
            .collect();

        let emu = Arc::new(LoggingEmu {
            inner: Emu::new(),
            log: Mutex::new(Vec::new()),
        });
        let eb = GpuBackend::with_act_dtype(emu.clone(), act);
        let model = SegModel::new(&eb, &shape.model, &shape.diffusion, shape.classes).unwrap();
        let mut opt = Optimizer::new(&eb, &model.ps, shape.adamw).unwrap();
        let mark = |m: &str| {
            if m == STEP {
                emu.log.lock().unwrap().push("|step|".into());
            }
        };
        run_train_step(&mark, &eb, &model, &mut opt, shape.patch).unwrap();
        // The step really ran: its parameters moved and stay finite.
        let p0 = eb.download(&model.ps.entries[0].t).unwrap();
        assert!(p0.iter().all(|v| v.is_finite()));
        let ran = emu.log.lock().unwrap().clone();

        let step_launches =
            planned.len() - planned.iter().position(|&k| k == "|step|").unwrap() - 1;
        assert!(
            step_launches > 50,
            "{act:?}: only {step_launches} launches in the step"
        );
        assert_eq!(
            planned.len(),
            ran.len(),
            "{act:?}: {} launches planned, {} run",
            planned.len(),
            ran.len()
        );
        for (i, (p, r)) in planned.iter().zip(&ran).enumerate() {
            assert_eq!(p, r, "{act:?}: launch {i} differs");
        }
    }
}

/// Every pair of intervals live together lies on disjoint bytes (checked
/// here independently of `Arena::check`).
fn assert_disjoint(items: &[Interval], a: &Arena) {
    for i in 0..items.len() {
        for j in i + 1..items.len() {
            if items[i].overlaps(&items[j]) {
                let (si, ei) = (a.offsets[i], a.offsets[i] + items[i].bytes);
                let (sj, ej) = (a.offsets[j], a.offsets[j] + items[j].bytes);
                assert!(
                    ei <= sj || ej <= si,
                    "{:?} at {si}..{ei} and {:?} at {sj}..{ej} overlap",
                    items[i],
                    items[j]
                );
            }
        }
        assert!(a.offsets[i] + items[i].bytes <= a.peak);
    }
}

#[test]
fn the_arena_of_a_step_is_sound_and_no_larger_than_the_eager_peak() {
    for act in [DType::BF16, DType::F32] {
        let (dev, b) = plan_backend(act);
        let plan = record_train_step(&dev, &b, &small_step()).unwrap();
        let items = plan.use_intervals();
        let arena = plan.arena();
        arena.check(&items).unwrap();
        assert_disjoint(&items, &arena);
        // The AdamW slot table points at every gradient: each stays in use
        // (and keeps its bytes) until the table's last reader.
        let at = |b: usize| plan.step_buffers.iter().position(|&x| x == b);
        let links: Vec<_> = plan
            .rec
            .links
            .iter()
            .filter_map(|&(t, b)| Some((items[at(t)?], items[at(b)?])))
            .collect();
        assert!(links.len() > 10, "{act:?}: {} table links", links.len());
        for (t, b) in links {
            assert!(b.end >= t.end, "{act:?}: {b:?} ends before its table {t:?}");
        }
        let s = plan.summary();
        assert!(s.allocations > 100, "{s:?}");
        assert!(s.arena_lower_bound <= s.arena_peak, "{s:?}");
        assert!(s.arena_peak <= s.eager_step_peak, "{s:?}");
        assert!(s.eager_step_peak <= s.eager_peak, "{s:?}");
        assert!(
            s.resident_bytes > 0 && s.resident_bytes < s.arena_peak,
            "{s:?}"
        );
    }
}

#[test]
fn the_arena_packs_random_intervals_soundly() {
    // xorshift: reproducible random intervals of sizes 256 B .. 64 KiB.
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        z
    };
    for _ in 0..20 {
        let n = 20 + (next() % 80) as usize;
        let items: Vec<Interval> = (0..n)
            .map(|_| {
                let start = (next() % 200) as usize;
                Interval {
                    start,
                    end: start + (next() % 40) as usize,
                    bytes: 256 * (1 + next() % 256),
                }
            })
            .collect();
        let a = Arena::pack(&items);
        a.check(&items).unwrap();
        assert_disjoint(&items, &a);
        let bound = max_live(&items);
        assert!(a.peak >= bound);
        // Never worse than giving every interval its own bytes.
        assert!(a.peak <= items.iter().map(|i| i.bytes).sum::<u64>());
    }
    // The check catches an overlap.
    let items = [
        Interval {
            start: 0,
            end: 5,
            bytes: 512,
        },
        Interval {
            start: 3,
            end: 9,
            bytes: 512,
        },
    ];
    let bad = Arena {
        offsets: vec![0, 256],
        peak: 768,
    };
    assert!(bad.check(&items).is_err());
}

#[test]
fn the_conv_passes_of_the_paper_step_model_as_the_script_does() {
    // scripts/model-conv-h100.py: the conv passes of this step take 1.53 ms
    // (forwards 0.62, data gradients 0.29, weight gradients 0.63) for 625 GFLOP.
    let (dev, b) = plan_backend(DType::BF16);
    let plan = record_train_step(&dev, &b, &TrainStepShape::paper()).unwrap();
    let (mut secs, mut flops) = (0.0, 0.0);
    for l in plan.launches() {
        if launch_gemm(l.kernel, &l.cfg, &l.args).is_some() {
            let c = launch_cost(&H100_SXM, l, &plan.rec.buffers);
            secs += c.roofline_s;
            flops += c.flops;
        }
    }
    assert!(
        (secs * 1e3 - 1.53).abs() < 0.08,
        "conv passes modelled at {:.3} ms (script: 1.53 ms)",
        secs * 1e3
    );
    // Useful FLOPs: the script counts 625 GFLOP without the channel padding
    // of the stem and head (15 → 16, 14 → 16 channels).
    assert!(
        (flops / 1e9 - 625.0).abs() < 10.0,
        "{:.1} GFLOP in the conv GEMMs",
        flops / 1e9
    );
    // And the step as a whole is counted: every launch costs at least the floor.
    let s = plan.summary();
    assert!(s.launches > 250, "{s:?}");
}

#[test]
fn host_readbacks_are_marked_data_dependent() {
    let (dev, b) = plan_backend(DType::F32);
    let t = b
        .zeros(voxdiff::tensor::Shape::new(&[4]), DType::F32)
        .unwrap();
    // A value the host wrote reads back as written.
    b.write(&t, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(b.download(&t).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    // After a kernel wrote it, the read is data-dependent: it still returns
    // what the host wrote (so a sentinel such as one_hot's "no bad id" holds).
    b.fill(&t, 7.0).unwrap();
    assert_eq!(b.download(&t).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    // What the host never wrote reads as zeros, data-dependent too.
    let u = b
        .alloc(voxdiff::tensor::Shape::new(&[3]), DType::F32)
        .unwrap();
    b.fill(&u, 7.0).unwrap();
    assert_eq!(b.download(&u).unwrap(), vec![0.0; 3]);
    let rec = dev.recording();
    let dd: Vec<bool> = rec
        .events
        .iter()
        .filter_map(|e| match e {
            voxdiff::backend::gpu::plan::PlanEvent::Copy {
                kind: voxdiff::backend::gpu::plan::CopyKind::DeviceToHost { data_dependent },
                ..
            } => Some(*data_dependent),
            _ => None,
        })
        .collect();
    assert_eq!(dd, vec![false, true, true]);
}

#[test]
fn sizes_past_the_kernels_index_range_are_extrapolated_in_voxels() {
    // A peak of 1000 + 3 bytes per voxel, refused above 4096 voxels the way
    // the launchers refuse an index past 32 bits.
    let record = |p: [usize; 3]| {
        let v = p.iter().product::<usize>() as u64;
        if v > 4096 {
            anyhow::bail!("input elements = {v} does not fit the kernel's 32-bit index")
        }
        Ok(1000 + 3 * v)
    };
    assert_eq!(
        planned_peak([8, 8, 8], true, record).unwrap(),
        (1000 + 3 * 512, false)
    );
    let (est, extrapolated) = planned_peak([64, 64, 64], true, record).unwrap();
    assert!(extrapolated);
    assert_eq!(est, 1000 + 3 * 64 * 64 * 64);
    // Without extrapolation (a GPU) the kernels' refusal stands.
    assert!(planned_peak([64, 64, 64], false, record).is_err());
    // Other errors are never extrapolated away.
    assert!(planned_peak([8, 8, 8], true, |_| anyhow::bail!("bad config")).is_err());
}

#[test]
fn mem_available_is_read_from_meminfo() {
    let text =
        "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12345678 kB\n";
    assert_eq!(mem_available(text), Some(12345678));
    assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
}

fn voxdiff(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_voxdiff"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_training_patch_larger_than_the_machine_is_refused_before_loading() {
    let run = common::tmp("plan_train_refused");
    let out = voxdiff(&[
        "train",
        "seg",
        "--device",
        "cpu",
        "--quiet",
        "--run",
        run.to_str().unwrap(),
        "--set",
        "data.phantom_cases=1",
        "--set",
        "data.patch=[1000,1000,1000]",
        "--set",
        "model.channels=[4,8]",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("a training step on [1000, 1000, 1000] patches needs about"),
        "{err}"
    );
    assert!(err.contains("data.patch"), "{err}");
    assert!(!run.join("checkpoint.safetensors").exists());
}

#[test]
fn bench_and_train_print_the_plan_without_running() {
    let out = voxdiff(&["bench", "--plan", "--dims", "16", "32", "32"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "launches per step:",
        "peak memory, eager:",
        "peak memory, arena:",
        "modelled on H100 SXM",
        "vd_conv3d_fprop_128x32_bf16",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    let run = common::tmp("plan_train_only");
    let out = voxdiff(&[
        "train",
        "seg",
        "--plan",
        "--device",
        "cpu",
        "--run",
        run.to_str().unwrap(),
        "--set",
        "data.phantom_cases=1",
        "--set",
        "model.channels=[4,8]",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("f32 activations"), "{text}");
    assert!(text.contains("launches per step:"), "{text}");
    assert!(
        !run.join("config.toml").exists(),
        "--plan created the run folder"
    );
}
