//! What the emulator costs: the raw fiber switch (hand-written x86-64 switch:
//! callee-saved registers, MXCSR and the x87 control word; no system call) and
//! a block barrier per thread. Printed for the record (run with --nocapture);
//! the bounds only catch a switch that has become a system call or worse.

mod gpu_support;

use gpu_support::*;
use std::sync::Arc;
use std::time::Instant;
use voxdiff::backend::gpu::device::{Device, KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::emu::{fiber_switch_ns, Emu};
use voxdiff::backend::gpu::registry::Kernel;

#[test]
fn fiber_switch_is_cheap() {
    let ns = (0..5)
        .map(|_| fiber_switch_ns(1_000_000))
        .fold(f64::INFINITY, f64::min);
    eprintln!("emu: raw fiber switch {ns:.1} ns (best of 5 × 10⁶ round trips)");
    assert!(ns > 0.0 && ns < 200.0, "a fiber switch took {ns} ns");
}

#[test]
fn barrier_cost_per_thread() {
    let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(None));
    let (threads, rounds) = (256usize, 2000i32);
    let cb = poisoned::<i32>(&dev, threads);
    // Warm up stacks and the pool, then time.
    run(
        &dev,
        Kernel::SelftestBarriers,
        LaunchConfig::linear(1, threads as u32),
        KernelArgs::new().buffer(&cb).i32(1),
    );
    let t0 = Instant::now();
    run(
        &dev,
        Kernel::SelftestBarriers,
        LaunchConfig::linear(1, threads as u32),
        KernelArgs::new().buffer(&cb).i32(rounds),
    );
    let secs = t0.elapsed().as_secs_f64();
    let counts: Vec<i32> = download(&dev, &cb, threads);
    assert!(
        counts.iter().all(|&c| c == rounds),
        "every thread passed every barrier"
    );
    let per = secs * 1e9 / (threads as f64 * rounds as f64);
    eprintln!(
        "emu: __syncthreads with {threads} threads: {per:.1} ns per thread per barrier \
         ({rounds} barriers in {:.1} ms)",
        secs * 1e3
    );
    assert!(per < 5_000.0, "{per} ns per thread per barrier");
}
