//! The Emu device: CUDA kernels compiled as C++17 for the CPU and run by the
//! project's emulation of the CUDA execution model (`kernels/emu/`, see
//! `docs/cuda.md`). Memory is host memory; launches run synchronously on a
//! small thread pool (one OS thread per block at a time, a fiber per CUDA
//! thread). New allocations are poisoned with 0xFF bytes (NaN as f32 and bf16)
//! so an element a kernel forgot to write is caught by the tests. An error the
//! emulator detects (deadlock, misaligned vector access, mismatched warp
//! collective, …) comes back as an `Err` naming the kernel, block and thread.

use super::device::{
    check_args, check_config, Device, DeviceKind, Event, KernelArgs, LaunchConfig, ALLOC_ALIGN,
};
use super::registry::Kernel;
use crate::tensor::{Buffer, Memory, MemoryKind};
use anyhow::{bail, ensure, Context, Result};
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;
use std::time::Instant;

extern "C" {
    fn vd_emu_launch(
        thunk: unsafe extern "C" fn(*mut *mut c_void),
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem: usize,
        args: *mut *mut c_void,
        shuffle: c_int,
        seed: u64,
        err: *mut c_char,
        errcap: usize,
    ) -> c_int;
    fn vd_emu_switch_ns(iters: std::ffi::c_long) -> f64;
    fn vd_emu_pool_threads() -> u32;
}

/// OS threads that run a grid's blocks (`VOXDIFF_EMU_THREADS`, default: the core count).
pub fn pool_threads() -> u32 {
    // SAFETY: starts the pool if needed and reads its size.
    unsafe { vd_emu_pool_threads() }
}

/// Raw cost of one fiber context switch, in ns (measured over `iters` round trips).
pub fn fiber_switch_ns(iters: u64) -> f64 {
    // SAFETY: self-contained measurement in the emulation runtime.
    unsafe { vd_emu_switch_ns(iters as std::ffi::c_long) }
}

/// Host allocator of the emulated device.
struct EmuMemory;

impl Memory for EmuMemory {
    fn kind(&self) -> MemoryKind {
        MemoryKind::Host
    }
    fn free(&self, addr: u64, bytes: usize) {
        let layout = std::alloc::Layout::from_size_align(bytes, ALLOC_ALIGN).expect("layout");
        // SAFETY: allocated by `Emu::alloc` with this layout.
        unsafe { std::alloc::dealloc(addr as *mut u8, layout) }
    }
}

/// Launches per kernel (by `Kernel::index`) on every emulated device of this
/// process: what lets a test prove that every kernel was executed.
static LAUNCHES: std::sync::OnceLock<Vec<std::sync::atomic::AtomicU64>> =
    std::sync::OnceLock::new();

fn launch_table() -> &'static [std::sync::atomic::AtomicU64] {
    LAUNCHES.get_or_init(|| (0..Kernel::ALL.len()).map(|_| Default::default()).collect())
}

/// How many times `kernel` has been launched on an emulated device in this process.
pub fn launches(kernel: Kernel) -> u64 {
    launch_table()[kernel.index()].load(std::sync::atomic::Ordering::Relaxed)
}

/// The emulated GPU.
pub struct Emu {
    mem: Arc<dyn Memory>,
    /// Seed of the shuffled fiber order, or None for thread-index order.
    shuffle: Option<u64>,
}

impl Default for Emu {
    fn default() -> Self {
        Self::new()
    }
}

impl Emu {
    /// Fiber order from `VOXDIFF_EMU_SHUFFLE=<seed>` (unset: thread-index order).
    pub fn new() -> Emu {
        let shuffle = std::env::var("VOXDIFF_EMU_SHUFFLE")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        Emu::with_shuffle(shuffle)
    }
    /// An explicit fiber order: `Some(seed)` shuffles the order in which a
    /// block's threads are resumed after every barrier (to expose missing ones).
    pub fn with_shuffle(shuffle: Option<u64>) -> Emu {
        Emu {
            mem: Arc::new(EmuMemory),
            shuffle,
        }
    }
}

impl Device for Emu {
    fn name(&self) -> String {
        match self.shuffle {
            Some(s) => format!("emu (shuffled fiber order, seed {s})"),
            None => "emu".to_string(),
        }
    }
    fn kind(&self) -> DeviceKind {
        DeviceKind::Emu
    }
    fn alloc(&self, bytes: usize) -> Result<Arc<Buffer>> {
        let bytes = bytes.div_ceil(ALLOC_ALIGN).max(1) * ALLOC_ALIGN;
        let layout = std::alloc::Layout::from_size_align(bytes, ALLOC_ALIGN)?;
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { std::alloc::alloc(layout) };
        ensure!(
            !ptr.is_null(),
            "emu: out of host memory allocating {bytes} bytes"
        );
        // SAFETY: fresh allocation of `bytes` bytes.
        unsafe { std::ptr::write_bytes(ptr, 0xFF, bytes) };
        Ok(Arc::new(Buffer::new(ptr as u64, bytes, self.mem.clone())))
    }
    fn memcpy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: `dst` is an Emu allocation of at least src.len() bytes (the
        // caller's contract); host memory does not overlap a Rust slice it owns.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        // SAFETY: as memcpy_htod.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn memcpy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: both are Emu allocations of at least `bytes` bytes.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        // SAFETY: `dst` is an Emu allocation of at least `bytes` bytes.
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
        Ok(())
    }
    fn launch(&self, kernel: Kernel, cfg: LaunchConfig, args: &mut KernelArgs) -> Result<()> {
        check_config(kernel, &cfg)?;
        check_args(kernel, args)?;
        let entry = kernel.emu_entry();
        let mut err = vec![0u8; 2048];
        // SAFETY: the thunk unpacks exactly the parameters `check_args` matched;
        // the pointers in `args` point at their values for the whole call.
        let rc = unsafe {
            vd_emu_launch(
                entry.call,
                kernel.c_name().as_ptr(),
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.shared_bytes as usize,
                args.pointers().as_mut_ptr(),
                self.shuffle.is_some() as c_int,
                self.shuffle.unwrap_or(0),
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            bail!("emu: {}", String::from_utf8_lossy(&err[..end]));
        }
        launch_table()[kernel.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn record_event(&self) -> Result<Event> {
        Ok(Event::Host(Instant::now()))
    }
    fn elapsed_ms(&self, start: &Event, end: &Event) -> Result<f32> {
        match (start, end) {
            (Event::Host(a), Event::Host(b)) => {
                Ok(b.saturating_duration_since(*a).as_secs_f32() * 1e3)
            }
            _ => None.context("emu: events recorded on another device"),
        }
    }
}
