//! The CPU backend's memory is estimated by planning the gpu backend's op
//! sequence at f32 on the recording device (it cannot run shape-only). This
//! checks the estimate against the CPU run's real high-water mark, measured
//! by a counting global allocator (one test in this binary, so nothing else
//! allocates alongside).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::pipeline::plan_step::{
    plan_backend, record_train_step, run_train_step, TrainStepShape,
};
use voxdiff::pipeline::seg_model::{ModelConfig, SegModel};
use voxdiff::tensor::DType;
use voxdiff::train::Optimizer;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn the_planned_cpu_peak_is_within_a_factor_of_1_2_of_the_real_one() {
    let shape = TrainStepShape {
        model: ModelConfig {
            channels: vec![8, 16, 32],
            ..ModelConfig::default()
        },
        classes: 4,
        patch: [16, 32, 32],
        ..TrainStepShape::paper()
    };
    let (dev, b) = plan_backend(DType::F32);
    let planned = record_train_step(&dev, &b, &shape)
        .unwrap()
        .summary()
        .eager_peak as f64;
    drop((dev, b));

    let cpu = CpuBackend::new();
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let model = SegModel::new(&cpu, &shape.model, &shape.diffusion, shape.classes).unwrap();
    let mut opt = Optimizer::new(&cpu, &model.ps, shape.adamw).unwrap();
    run_train_step(&|_| {}, &cpu, &model, &mut opt, shape.patch).unwrap();
    let real = (PEAK.load(Relaxed) - base) as f64;
    let ratio = planned / real;
    eprintln!(
        "planned {:.1} MB, CPU high-water mark {:.1} MB: ratio {ratio:.3}",
        planned / 1e6,
        real / 1e6
    );
    assert!((1.0 / 1.2..=1.2).contains(&ratio), "ratio {ratio:.3}");
}
