//! Emulator self-tests of the block-level model: barrier ordering, exited
//! threads, static and dynamic shared memory, deadlock reports, poison, the
//! shuffled fiber order, argument checks. The kernels are in kernels/selftest.cu;
//! every expectation is computed here independently.

mod gpu_support;

use gpu_support::*;
use std::sync::Arc;
use voxdiff::backend::gpu::device::{Device, KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::registry::Kernel;

fn scan(dev: &Arc<dyn Device>, x: &[i32], block: u32) -> Vec<i32> {
    let n = x.len();
    let xb = upload(dev, x);
    let yb = poisoned::<i32>(dev, n);
    let grid = n.div_ceil(block as usize) as u32;
    run(
        dev,
        Kernel::SelftestBlockScan,
        LaunchConfig::linear(grid, block),
        KernelArgs::new().buffer(&xb).buffer(&yb).i32(n as i32),
    );
    download(dev, &yb, n)
}

#[test]
fn block_scan_needs_and_gets_barriers() {
    let dev = device();
    let n = 1003usize;
    let x: Vec<i32> = (0..n).map(|i| ((i * 37) % 11) as i32 - 5).collect();
    for block in [100u32, 128, 1024] {
        let y = scan(&dev, &x, block);
        for seg in 0..n.div_ceil(block as usize) {
            let mut acc = 0;
            for i in seg * block as usize..((seg + 1) * block as usize).min(n) {
                acc += x[i];
                assert_eq!(y[i], acc, "block {block}: prefix sum at {i}");
            }
        }
    }
}

#[test]
fn block_reverse_through_static_shared_memory() {
    let dev = device();
    let n = 777usize;
    let block = 128usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 100.0).collect();
    let xb = upload(&dev, &x);
    let yb = poisoned::<f32>(&dev, n);
    run(
        &dev,
        Kernel::SelftestBlockReverse,
        LaunchConfig::linear(n.div_ceil(block) as u32, block as u32),
        KernelArgs::new().buffer(&xb).buffer(&yb).i32(n as i32),
    );
    let y: Vec<f32> = download(&dev, &yb, n);
    for seg in 0..n.div_ceil(block) {
        let lo = seg * block;
        let hi = (lo + block).min(n);
        for i in lo..hi {
            assert_eq!(y[i], x[hi - 1 - (i - lo)], "element {i}");
        }
    }
}

#[test]
fn exited_threads_count_as_arrived() {
    let dev = device();
    let n = 50usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 + 0.25).collect();
    let xb = upload(&dev, &x);
    let yb = poisoned::<f32>(&dev, n);
    run(
        &dev,
        Kernel::SelftestEarlyExit,
        LaunchConfig::linear(1, 64),
        KernelArgs::new().buffer(&xb).buffer(&yb).i32(n as i32),
    );
    let y: Vec<f32> = download(&dev, &yb, n);
    for t in 0..n {
        assert_eq!(y[t], x[(t + 1) % n], "thread {t}");
    }
}

#[test]
fn dynamic_shared_memory_per_block_and_poisoned() {
    let dev = device();
    let (grid, block) = (5usize, 96usize);
    let n = grid * block;
    let x: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
    let xb = upload(&dev, &x);
    let yb = poisoned::<f32>(&dev, n);
    let pb = poisoned::<u32>(&dev, grid);
    run(
        &dev,
        Kernel::SelftestDynamicSmem,
        LaunchConfig::linear(grid as u32, block as u32).with_shared_bytes(((block + 1) * 4) as u32),
        KernelArgs::new().buffer(&xb).buffer(&yb).buffer(&pb),
    );
    let y: Vec<f32> = download(&dev, &yb, n);
    for b in 0..grid {
        for t in 0..block {
            let want = x[b * block + t] + x[b * block + (t + 1) % block];
            assert_eq!(y[b * block + t], want, "block {b} thread {t}");
        }
    }
    if is_emu(&dev) {
        let poison: Vec<u32> = download(&dev, &pb, grid);
        assert!(
            poison.iter().all(|&p| p == 0xFFFF_FFFF),
            "unwritten dynamic shared memory must read as poison, got {poison:x?}"
        );
    }
}

#[test]
fn divergent_barrier_is_reported_as_deadlock() {
    let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(None));
    let yb = poisoned::<i32>(&dev, 32);
    let err = launch_with_timeout(
        &dev,
        Kernel::SelftestDeadlockBarrier,
        LaunchConfig::linear(1, 32),
        KernelArgs::new().buffer(&yb),
        30,
    )
    .expect_err("a barrier in a divergent branch cannot complete");
    let msg = format!("{err:#}");
    eprintln!("reported: {msg}");
    assert!(msg.contains("vd_selftest_deadlock_barrier"), "{msg}");
    assert!(msg.contains("deadlock"), "{msg}");
    assert!(
        msg.contains("threads 0-15") && msg.contains("threads 16-31"),
        "{msg}"
    );
    assert!(
        msg.contains("selftest.cu"),
        "the report names the barriers' lines: {msg}"
    );
}

#[test]
fn barrier_against_warp_collective_is_reported_as_deadlock() {
    let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(None));
    let yb = poisoned::<i32>(&dev, 32);
    let err = launch_with_timeout(
        &dev,
        Kernel::SelftestDeadlockWarp,
        LaunchConfig::linear(1, 32),
        KernelArgs::new().buffer(&yb),
        30,
    )
    .expect_err("lanes at __syncthreads and lanes at a shuffle wait for each other");
    let msg = format!("{err:#}");
    eprintln!("reported: {msg}");
    assert!(msg.contains("no thread can proceed"), "{msg}");
    assert!(msg.contains("a shuffle (mask 0xffffffff)"), "{msg}");
}

#[test]
fn misaligned_vector_load_is_an_error() {
    let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(None));
    let xb = upload(&dev, &[1.0f32; 16]);
    let yb = poisoned::<f32>(&dev, 32);
    let err = launch_with_timeout(
        &dev,
        Kernel::SelftestMisaligned,
        LaunchConfig::linear(1, 32),
        KernelArgs::new().buffer(&xb).buffer(&yb),
        30,
    )
    .expect_err("a 16-byte load at a 4-byte offset");
    let msg = format!("{err:#}");
    eprintln!("reported: {msg}");
    assert!(msg.contains("misaligned 16-byte vector load"), "{msg}");
    assert!(msg.contains("thread (0,0,0)"), "{msg}");
}

#[test]
fn wrong_arguments_are_rejected_before_launch() {
    let dev = device();
    let yb = poisoned::<i32>(&dev, 32);
    let mut too_few = KernelArgs::new().buffer(&yb);
    let err = dev
        .launch(
            Kernel::SelftestBlockScan,
            LaunchConfig::linear(1, 32),
            &mut too_few,
        )
        .expect_err("block_scan takes three parameters");
    assert!(
        format!("{err:#}").contains("do not match the kernel's parameters"),
        "{err:#}"
    );
    let mut wrong_size = KernelArgs::new().buffer(&yb).buffer(&yb).i64(32);
    assert!(dev
        .launch(
            Kernel::SelftestBlockScan,
            LaunchConfig::linear(1, 32),
            &mut wrong_size
        )
        .is_err());
    let mut ok = KernelArgs::new().buffer(&yb).buffer(&yb).i32(0);
    let err = dev
        .launch(
            Kernel::SelftestBlockScan,
            LaunchConfig::linear(1, 2048),
            &mut ok,
        )
        .expect_err("2048 threads per block");
    assert!(format!("{err:#}").contains("1..=1024"), "{err:#}");
}

/// The missing-barrier kernel reads its neighbour's slot without waiting. In
/// thread order every thread but the last reads poison; the shuffled order
/// makes some threads read a written value, so the output depends on the order:
/// the shuffle exposes the race.
#[test]
fn shuffled_order_exposes_a_missing_barrier() {
    let n = 64usize;
    let run_with = |shuffle: Option<u64>| -> Vec<f32> {
        let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(shuffle));
        let yb = poisoned::<f32>(&dev, n);
        run(
            &dev,
            Kernel::SelftestMissingBarrier,
            LaunchConfig::linear(1, n as u32).with_shared_bytes((n * 4) as u32),
            KernelArgs::new().buffer(&yb),
        );
        download(&dev, &yb, n)
    };
    let ordered = run_with(None);
    for t in 0..n - 1 {
        assert!(
            ordered[t].is_nan(),
            "thread {t} ran before {} wrote: poison expected",
            t + 1
        );
    }
    assert_eq!(ordered[n - 1], 0.0);
    let differing = (1..=8u64)
        .filter(|&seed| {
            let shuffled = run_with(Some(seed));
            shuffled
                .iter()
                .zip(&ordered)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        })
        .count();
    assert!(
        differing > 0,
        "no shuffled order changed what the racy kernel read"
    );
}

/// Correct kernels give bit-identical results in any fiber order.
#[test]
fn shuffled_order_gives_the_same_results() {
    let n = 1003usize;
    let x: Vec<i32> = (0..n).map(|i| ((i * 91) % 23) as i32 - 11).collect();
    let xf: Vec<f32> = (0..4 * 96).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
    let results = |dev: &Arc<dyn Device>| -> (Vec<i32>, Vec<f32>) {
        let s = scan(dev, &x, 100);
        let xb = upload(dev, &xf);
        let yb = poisoned::<f32>(dev, 8);
        run(
            dev,
            Kernel::SelftestBlockSum,
            LaunchConfig::linear(4, 96),
            KernelArgs::new().buffer(&xb).buffer(&yb),
        );
        (s, download(dev, &yb, 8))
    };
    let base = results(&(Arc::new(Emu::with_shuffle(None)) as Arc<dyn Device>));
    for seed in [1u64, 7, 12345] {
        let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(Some(seed)));
        let got = results(&dev);
        assert_eq!(got.0, base.0, "scan, seed {seed}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.1), bits(&base.1), "block sums, seed {seed}");
    }
}

/// Runs `kernel` with `args` on Emu in a child process (this test binary,
/// re-executed for test `name` with VOXDIFF_EMU_CRASH_CHILD set) and returns
/// the child's stderr after checking that it crashed.
fn crash_in_child(name: &str, child: impl FnOnce()) -> String {
    if std::env::var("VOXDIFF_EMU_CRASH_CHILD").is_ok() {
        child();
        unreachable!("the launch must have crashed");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("VOXDIFF_EMU_CRASH_CHILD", "1")
        .output()
        .expect("re-running the test binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the child did not crash:\n{stderr}");
    stderr
}

/// A kernel dereferencing a wild pointer crashes the process (as on a GPU the
/// context would be lost), but first names the kernel, block and thread.
#[test]
fn invalid_access_in_a_kernel_is_reported() {
    let stderr = crash_in_child("invalid_access_in_a_kernel_is_reported", || {
        let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(None));
        let yb = poisoned::<f32>(&dev, 64);
        // x = address 16: unmapped.
        let mut args = KernelArgs::new().ptr(16).buffer(&yb).i32(64);
        let _ = dev.launch(
            Kernel::SelftestBlockReverse,
            LaunchConfig::linear(1, 64),
            &mut args,
        );
    });
    assert!(
        stderr.contains(
            "voxdiff emu: invalid memory access in kernel vd_selftest_block_reverse, block (0,0,0), \
             thread (0,0,0), address 0x10"
        ),
        "child stderr:\n{stderr}"
    );
}

/// A thread whose frame outgrows its fiber stack hits the guard page below it.
#[test]
fn fiber_stack_overflow_hits_the_guard_page() {
    let stderr = crash_in_child("fiber_stack_overflow_hits_the_guard_page", || {
        let dev: Arc<dyn Device> = Arc::new(Emu::with_shuffle(None));
        let yb = poisoned::<f32>(&dev, 32);
        let mut args = KernelArgs::new().buffer(&yb).i32(64 * 1024);
        let _ = dev.launch(
            Kernel::SelftestStackOverflow,
            LaunchConfig::linear(1, 32),
            &mut args,
        );
    });
    assert!(
        stderr.contains("voxdiff emu: fiber stack overflow (raise VOXDIFF_EMU_STACK_KIB) in kernel vd_selftest_stack_overflow"),
        "child stderr:\n{stderr}"
    );
}
