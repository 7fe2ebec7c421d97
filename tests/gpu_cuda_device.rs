//! The Cuda device: on a machine without a driver or GPU (this one, CI)
//! construction is a clear error, never a panic; with a GPU
//! (VOXDIFF_TEST_DEVICE=cuda) it opens, copies and launches.

mod gpu_support;

use gpu_support::*;
use std::sync::Arc;
use voxdiff::backend::gpu::cuda::{probe, Cuda};
use voxdiff::backend::gpu::device::{Device, KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::registry::Kernel;
use voxdiff::backend::gpu::{open_device, GpuBackend};

fn gpu_required() -> bool {
    std::env::var("VOXDIFF_TEST_DEVICE").is_ok_and(|s| s.starts_with("cuda"))
}

#[test]
fn construction_is_an_error_or_a_working_device() {
    match Cuda::new(0) {
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("Cuda::new(0): {msg}");
            assert!(!gpu_required(), "VOXDIFF_TEST_DEVICE=cuda but: {msg}");
            assert!(
                msg.contains("no CUDA driver")
                    || msg.contains("reports no GPU")
                    || msg.contains("compute capability"),
                "the error says what is missing: {msg}"
            );
            assert!(probe().is_err() || msg.contains("compute capability"));
            assert!(GpuBackend::cuda(0).is_err());
            assert!(open_device("cuda:0").is_err());
        }
        Ok(cuda) => {
            let dev: Arc<dyn Device> = Arc::new(cuda);
            let x: Vec<i32> = (0..100).collect();
            let xb = upload(&dev, &x);
            let yb = poisoned::<i32>(&dev, 100);
            run(
                &dev,
                Kernel::SelftestBlockScan,
                LaunchConfig::linear(1, 100),
                KernelArgs::new().buffer(&xb).buffer(&yb).i32(100),
            );
            let y: Vec<i32> = download(&dev, &yb, 100);
            assert_eq!(y[99], (0..100).sum::<i32>());
        }
    }
}

#[test]
fn device_names_are_parsed() {
    assert!(open_device("emu").is_ok());
    let err = open_device("tpu").err().expect("unknown device");
    assert!(format!("{err:#}").contains("unknown gpu device `tpu`"));
    let err = open_device("cuda:x").err().expect("bad ordinal");
    assert!(format!("{err:#}").contains("cuda:<ordinal>"));
    if probe().is_ok() {
        assert!(
            open_device("cuda:4096").is_err(),
            "no machine has 4097 GPUs"
        );
    }
}
