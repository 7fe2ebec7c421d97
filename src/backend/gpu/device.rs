//! The device interface the gpu backend is written against: memory, copies,
//! kernel launches, synchronisation and timing. Two devices implement it:
//! [`super::cuda::Cuda`] (a real GPU through the driver API) and
//! [`super::emu::Emu`] (the same kernels compiled for the CPU). Everything above
//! it — launch geometry, argument packing, workspace sizing, launch order — is
//! the same code on both, so every test run exercises it.
//!
//! Addresses are `u64` device addresses (host pointers on Emu). Allocation
//! returns a [`Buffer`] that frees itself when dropped; work is ordered on one
//! stream, so a buffer may be dropped while queued work still uses it.

use super::registry::Kernel;
use crate::tensor::{Buffer, Tensor};
use anyhow::{bail, ensure, Result};
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Alignment of every device allocation (what cudaMalloc guarantees).
pub const ALLOC_ALIGN: usize = 256;

/// Which kind of device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cuda,
    Emu,
    /// The recording device of a static plan ([`super::plan::PlanDevice`]):
    /// no memory behind its addresses, no kernel run.
    Plan,
}

/// Grid and block extents and the dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory per block (`VD_DYNAMIC_SMEM`), bytes.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }
    pub fn with_shared_bytes(mut self, bytes: u32) -> LaunchConfig {
        self.shared_bytes = bytes;
        self
    }
    pub fn threads_per_block(&self) -> u64 {
        self.block.iter().map(|&b| b as u64).product()
    }
    pub fn blocks(&self) -> u64 {
        self.grid.iter().map(|&b| b as u64).product()
    }
}

/// Largest dynamic shared memory per block any supported GPU grants (sm_90: 227 KiB).
pub const MAX_SHARED_BYTES: u32 = 227 * 1024;

/// The limits of the CUDA launch model, checked before every launch on every device.
pub fn check_config(kernel: Kernel, cfg: &LaunchConfig) -> Result<()> {
    let name = kernel.name();
    let t = cfg.threads_per_block();
    ensure!(
        (1..=1024).contains(&t),
        "{name}: block {:?} has {t} threads (1..=1024)",
        cfg.block
    );
    ensure!(
        cfg.block[2] <= 64,
        "{name}: block z extent {} > 64",
        cfg.block[2]
    );
    ensure!(
        cfg.grid.iter().all(|&g| g > 0),
        "{name}: empty grid {:?}",
        cfg.grid
    );
    ensure!(
        cfg.grid[0] <= i32::MAX as u32 && cfg.grid[1] <= 65535 && cfg.grid[2] <= 65535,
        "{name}: grid {:?} exceeds (2³¹−1, 65535, 65535)",
        cfg.grid
    );
    ensure!(
        cfg.shared_bytes <= MAX_SHARED_BYTES,
        "{name}: {} bytes of dynamic shared memory (max {MAX_SHARED_BYTES})",
        cfg.shared_bytes
    );
    Ok(())
}

/// What a kernel parameter is, as the C++ compiler reports it (the check
/// cannot tell `float` from `int` by size alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Pointer,
    Float,
    Integer,
    /// A struct passed by value.
    Struct,
}

impl ParamKind {
    fn from_code(c: u32) -> ParamKind {
        match c {
            0 => ParamKind::Pointer,
            1 => ParamKind::Float,
            2 => ParamKind::Integer,
            _ => ParamKind::Struct,
        }
    }
}

const MAX_ARGS: usize = 24;
const ARG_WORDS: usize = 64;

/// Kernel arguments, packed as `cuLaunchKernel` takes them: one pointer per
/// parameter to a copy of its value. The same packing drives the emulator
/// (its launch table unpacks the pointers into the kernel's typed parameters).
///
/// Push the arguments in the kernel's parameter order; at launch, each value's
/// kind and size are checked against the parameters as the C++ compiler
/// reports them, so a wrong count or type is an error, never a corrupt launch.
/// ```
/// use voxdiff::backend::gpu::device::{Device, KernelArgs, LaunchConfig};
/// use voxdiff::backend::gpu::{emu::Emu, registry::Kernel};
/// let dev = Emu::new();
/// let n = 100;
/// let y = dev.alloc(4 * n)?;
/// // vd_elementwise_fill_f32(float* y, float value, i64 n)
/// let mut args = KernelArgs::new().buffer(&y).f32(1.5).i64(n as i64);
/// dev.launch(Kernel::ElementwiseFillF32, LaunchConfig::linear(1, 256), &mut args)?;
/// let mut out = vec![0u8; 4 * n];
/// dev.memcpy_dtoh(&mut out, y.addr())?;
/// assert!(out.chunks(4).all(|b| f32::from_ne_bytes(b.try_into().unwrap()) == 1.5));
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Clone)]
pub struct KernelArgs {
    words: [u64; ARG_WORDS],
    offsets: [u16; MAX_ARGS],
    sizes: [u16; MAX_ARGS],
    kinds: [ParamKind; MAX_ARGS],
    len: usize,
    used_words: usize,
    ptrs: [*mut c_void; MAX_ARGS],
    overflow: bool,
}

// The pointers in `ptrs` point into `words` and are rebuilt before each use.
unsafe impl Send for KernelArgs {}

impl Default for KernelArgs {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelArgs {
    pub fn new() -> KernelArgs {
        KernelArgs {
            words: [0; ARG_WORDS],
            offsets: [0; MAX_ARGS],
            sizes: [0; MAX_ARGS],
            kinds: [ParamKind::Struct; MAX_ARGS],
            len: 0,
            used_words: 0,
            ptrs: [std::ptr::null_mut(); MAX_ARGS],
            overflow: false,
        }
    }

    /// Appends the bytes of one parameter (8-byte aligned slot).
    fn push_bytes(mut self, kind: ParamKind, bytes: &[u8]) -> KernelArgs {
        let words = bytes.len().div_ceil(8).max(1);
        if self.len == MAX_ARGS || self.used_words + words > ARG_WORDS {
            self.overflow = true;
            return self;
        }
        let dst = bytemuck::cast_slice_mut::<u64, u8>(&mut self.words[self.used_words..]);
        dst[..bytes.len()].copy_from_slice(bytes);
        self.offsets[self.len] = self.used_words as u16;
        self.sizes[self.len] = bytes.len() as u16;
        self.kinds[self.len] = kind;
        self.len += 1;
        self.used_words += words;
        self
    }

    /// A tensor's device address (a `T*` parameter).
    pub fn tensor(self, t: &Tensor) -> KernelArgs {
        self.ptr(t.addr())
    }
    /// A buffer's device address (a `T*` parameter).
    pub fn buffer(self, b: &Buffer) -> KernelArgs {
        self.ptr(b.addr())
    }
    /// A raw device address (a `T*` parameter).
    pub fn ptr(self, addr: u64) -> KernelArgs {
        self.push_bytes(ParamKind::Pointer, &addr.to_ne_bytes())
    }
    pub fn f32(self, v: f32) -> KernelArgs {
        self.push_bytes(ParamKind::Float, &v.to_ne_bytes())
    }
    pub fn i32(self, v: i32) -> KernelArgs {
        self.push_bytes(ParamKind::Integer, &v.to_ne_bytes())
    }
    pub fn u32(self, v: u32) -> KernelArgs {
        self.push_bytes(ParamKind::Integer, &v.to_ne_bytes())
    }
    pub fn i64(self, v: i64) -> KernelArgs {
        self.push_bytes(ParamKind::Integer, &v.to_ne_bytes())
    }
    pub fn u64(self, v: u64) -> KernelArgs {
        self.push_bytes(ParamKind::Integer, &v.to_ne_bytes())
    }
    /// A struct passed by value: `T` is `#[repr(C)]`, mirrors the C++ struct
    /// field by field, and has an alignment of at most 8.
    pub fn pod<T: bytemuck::Pod>(self, v: &T) -> KernelArgs {
        assert!(
            std::mem::align_of::<T>() <= 8,
            "kernel parameter structs are at most 8-byte aligned"
        );
        self.push_bytes(ParamKind::Struct, bytemuck::bytes_of(v))
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// (kind, size in bytes) of each parameter.
    pub fn layout(&self) -> Vec<(ParamKind, usize)> {
        (0..self.len)
            .map(|i| (self.kinds[i], self.sizes[i] as usize))
            .collect()
    }

    /// The bytes of parameter `i` as packed (a pointer's address, a struct's fields).
    pub fn param_bytes(&self, i: usize) -> &[u8] {
        assert!(i < self.len, "parameter {i} of {}", self.len);
        let words = bytemuck::cast_slice::<u64, u8>(&self.words);
        let at = self.offsets[i] as usize * 8;
        &words[at..at + self.sizes[i] as usize]
    }

    /// The 8-byte argument words that may hold a device address: pointer
    /// parameters and every whole word of a struct parameter, numbered in order.
    pub fn address_words(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, (kind, size)) in self.layout().into_iter().enumerate() {
            let bytes = self.param_bytes(i);
            match kind {
                ParamKind::Pointer => out.push(u64::from_ne_bytes(
                    bytes[..8].try_into().expect("8-byte pointer"),
                )),
                ParamKind::Struct => out.extend(
                    bytes[..size - size % 8]
                        .chunks_exact(8)
                        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes"))),
                ),
                _ => {}
            }
        }
        out
    }

    /// The `void**` array for a launch (valid until `self` moves or changes).
    pub fn pointers(&mut self) -> &mut [*mut c_void] {
        let base = self.words.as_mut_ptr();
        for i in 0..self.len {
            // SAFETY: offsets[i] < ARG_WORDS by construction.
            self.ptrs[i] = unsafe { base.add(self.offsets[i] as usize) } as *mut c_void;
        }
        &mut self.ptrs[..self.len]
    }
}

/// The kernel's parameters, (kind, size in bytes), as the C++ compiler sees
/// them (the emulation library is linked into every build, whatever the device).
pub fn param_layout(kernel: Kernel) -> &'static [(ParamKind, usize)] {
    static TABLE: OnceLock<Vec<Vec<(ParamKind, usize)>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        Kernel::ALL
            .iter()
            .map(|k| {
                let entry = k.emu_entry();
                let mut sizes = [0u32; MAX_ARGS];
                let mut kinds = [0u32; MAX_ARGS];
                // SAFETY: writes at most MAX_ARGS entries to each array.
                let n = unsafe {
                    (entry.params)(sizes.as_mut_ptr(), kinds.as_mut_ptr(), MAX_ARGS as i32)
                } as usize;
                assert!(
                    n <= MAX_ARGS,
                    "{} has {n} parameters (max {MAX_ARGS})",
                    k.name()
                );
                (0..n)
                    .map(|i| (ParamKind::from_code(kinds[i]), sizes[i] as usize))
                    .collect()
            })
            .collect()
    });
    &table[kernel.index()]
}

/// Checks the packed arguments against the kernel's parameters: count, kind
/// (pointer / float / integer / struct) and size of each.
pub fn check_args(kernel: Kernel, args: &KernelArgs) -> Result<()> {
    if args.overflow {
        bail!(
            "{}: too many or too large arguments (max {MAX_ARGS} parameters, {} bytes)",
            kernel.name(),
            ARG_WORDS * 8
        );
    }
    let want = param_layout(kernel);
    let got = args.layout();
    if got.as_slice() != want {
        bail!(
            "{}: arguments {got:?} do not match the kernel's parameters {want:?} (kind, bytes)",
            kernel.name()
        );
    }
    Ok(())
}

/// A point in a device's work queue, for timing.
pub enum Event {
    /// Emu executes synchronously: the host clock is the device clock.
    Host(Instant),
    Cuda(cudarc::driver::CudaEvent),
}

/// A device: memory, copies and launches on one in-order queue.
pub trait Device: Send + Sync {
    /// e.g. "emu (2 threads)" or "cuda:0 NVIDIA H100 (sm_90)".
    fn name(&self) -> String;
    fn kind(&self) -> DeviceKind;
    /// `bytes` of uninitialised device memory, [`ALLOC_ALIGN`]-aligned (Emu
    /// poisons it with 0xFF bytes: NaN as f32 and as bf16).
    fn alloc(&self, bytes: usize) -> Result<Arc<Buffer>>;
    fn memcpy_htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// A host→device copy of a table of device addresses that a kernel will
    /// follow (any aligned 8-byte word may be one, e.g. the AdamW slot
    /// table). The devices that track which buffers a launch uses (the plan,
    /// the step arena) count the buffers it points to as used for as long as
    /// the table is; every other device just copies.
    fn memcpy_htod_table(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.memcpy_htod(dst, src)
    }
    /// Waits for queued work, then copies.
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()>;
    fn memcpy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()>;
    /// Queues `kernel` with `cfg` (checked against the CUDA limits) and `args`
    /// (checked against the kernel's parameters).
    fn launch(&self, kernel: Kernel, cfg: LaunchConfig, args: &mut KernelArgs) -> Result<()>;
    /// Waits until all queued work is done; reports asynchronous errors.
    fn synchronize(&self) -> Result<()>;
    /// Records an event after the work queued so far.
    fn record_event(&self) -> Result<Event>;
    /// Milliseconds between two recorded events (waits for `end`).
    fn elapsed_ms(&self, start: &Event, end: &Event) -> Result<f32>;
    /// Free device memory in bytes, where the device has its own (None: host memory).
    fn free_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// A step of a run with fixed shapes begins (the previous one, if any,
    /// has ended). [`super::step_arena::StepArena`] plans and serves the
    /// step's allocations from it; every other device ignores it.
    fn begin_step(&self) -> Result<()> {
        Ok(())
    }
    /// The step that began has ended early: what follows until the next
    /// [`Device::begin_step`] (a validation pass, say) is not part of any
    /// step, so the step arena passes it to the device as it comes.
    fn end_step(&self) -> Result<()> {
        Ok(())
    }
    /// Runs operations `range` of a captured step list
    /// ([`super::launch_list::LaunchList`]; its staging bytes are on the
    /// device). By default one after the other, as they were issued.
    fn replay(
        &self,
        list: &super::launch_list::LaunchList,
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        list.run_in_order(self, range)
    }
}
