//! The CPU backend: f32, rayon-parallel, host memory.
//!
//! It is both the fast path on machines without a GPU and the independent
//! reference every CUDA kernel is checked against, so each op here is written
//! to be read: the math of the op in [`crate::backend`], then the loop order
//! that makes it fast. Ops live one family per file.

mod conv;
mod layout;
mod loss;
pub(crate) mod matmul;
mod norm;
mod optim;
mod pointwise;
mod rand;
mod reduce;
mod unary;

use crate::ops::MemoryOps;
use crate::tensor::{Buffer, DType, Memory, MemoryKind, Shape, Tensor};
use anyhow::{bail, ensure, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Host allocator: 64-byte aligned blocks.
///
/// Freed blocks of at least [`CACHE_MIN_BYTES`] are kept (up to
/// [`CACHE_MAX_BYTES`] in total) and handed out again for requests of the same
/// rounded size. Shapes are fixed per run, so after the first step every large
/// output lands in warm, already-mapped memory instead of paying a page fault
/// per 4 KiB page plus a single-threaded zeroing pass on each allocation
/// (tens of ms per 64 MiB tensor on a virtual machine — more than the op).
struct HostMemory {
    cache: Mutex<BlockCache>,
}

/// Free blocks by rounded size, and their total size.
#[derive(Default)]
struct BlockCache {
    free: HashMap<usize, Vec<u64>>,
    bytes: usize,
}

const ALIGN: usize = 64;
/// Smallest block worth caching (1 MiB); smaller ones go back to the system allocator.
const CACHE_MIN_BYTES: usize = 1 << 20;
/// Most bytes kept in the cache (1 GiB).
const CACHE_MAX_BYTES: usize = 1 << 30;

fn layout(bytes: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(bytes, ALIGN).expect("host block layout")
}

impl HostMemory {
    /// A block of `bytes` (a multiple of [`ALIGN`]): a cached one if there is
    /// one of that size, else a fresh one. Its contents are unspecified.
    fn take(&self, bytes: usize) -> Result<u64> {
        if bytes >= CACHE_MIN_BYTES {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(addr) = cache.free.get_mut(&bytes).and_then(|v| v.pop()) {
                cache.bytes -= bytes;
                return Ok(addr);
            }
        }
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { std::alloc::alloc(layout(bytes)) };
        ensure!(
            !ptr.is_null(),
            "out of host memory allocating {bytes} bytes"
        );
        Ok(ptr as u64)
    }
}

impl Memory for HostMemory {
    fn kind(&self) -> MemoryKind {
        MemoryKind::Host
    }
    fn free(&self, addr: u64, bytes: usize) {
        if bytes >= CACHE_MIN_BYTES {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.bytes + bytes <= CACHE_MAX_BYTES {
                cache.free.entry(bytes).or_default().push(addr);
                cache.bytes += bytes;
                return;
            }
        }
        // SAFETY: `addr` came from `alloc` with this layout in `HostMemory::take`.
        unsafe { std::alloc::dealloc(addr as *mut u8, layout(bytes)) }
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        let cache = self.cache.get_mut().unwrap_or_else(|e| e.into_inner());
        for (&bytes, addrs) in &cache.free {
            for &addr in addrs {
                // SAFETY: as in `free`: allocated in `take` with this layout.
                unsafe { std::alloc::dealloc(addr as *mut u8, layout(bytes)) }
            }
        }
    }
}

/// A host buffer of at least `bytes` bytes (rounded up to the alignment),
/// zeroed when `zero` (in parallel for large blocks).
fn host_alloc(mem: &Arc<HostMemory>, bytes: usize, zero: bool) -> Result<Arc<Buffer>> {
    let bytes = bytes.div_ceil(ALIGN).max(1) * ALIGN;
    let addr = mem.take(bytes)?;
    if zero {
        use rayon::prelude::*;
        // SAFETY: the block is `bytes` long and owned by no tensor yet.
        let block = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, bytes) };
        block
            .par_chunks_mut(CACHE_MIN_BYTES)
            .for_each(|c| c.fill(0));
    }
    let owner: Arc<dyn Memory> = mem.clone();
    Ok(Arc::new(Buffer::new(addr, bytes, owner)))
}

/// The CPU backend.
pub struct CpuBackend {
    mem: Arc<HostMemory>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend {
            mem: Arc::new(HostMemory {
                cache: Mutex::new(BlockCache::default()),
            }),
        }
    }

    /// A new zeroed f32 tensor (the output of an op).
    pub(crate) fn out(&self, shape: Shape) -> Result<Tensor> {
        let buf = host_alloc(&self.mem, shape.numel() * 4, true)?;
        Ok(Tensor::from_buffer(shape, DType::F32, buf))
    }

    /// A new f32 tensor with unspecified contents, for ops that write every
    /// element of their output (saves a pass over memory). Poisoned with NaN
    /// in debug builds so an element left unwritten shows.
    pub(crate) fn out_uninit(&self, shape: Shape) -> Result<Tensor> {
        let buf = host_alloc(&self.mem, shape.numel() * 4, false)?;
        let t = Tensor::from_buffer(shape, DType::F32, buf);
        if cfg!(debug_assertions) {
            view_mut(&t).fill(f32::NAN);
        }
        Ok(t)
    }
}

/// The CPU backend stores f32 only.
fn f32_only(dtype: DType) -> Result<()> {
    ensure!(
        dtype == DType::F32,
        "the cpu backend stores f32 only, asked for {}",
        dtype.name()
    );
    Ok(())
}

/// Per-sample sums of per-chunk partials: `parts[job]` (each `size` long)
/// belongs to sample `job / chunks`, and each sample's partials are added
/// in job order — the fixed order that makes a chunked CPU reduction give
/// the same bits every run.
pub(crate) fn sum_partials_in_order(
    parts: &[Vec<f32>],
    chunks: usize,
    samples: usize,
    size: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; samples * size];
    for (job, p) in parts.iter().enumerate() {
        let sample = job / chunks;
        for (o, &v) in out[sample * size..][..size].iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// The f32 host view of a tensor, after checking it belongs on this backend.
pub(crate) fn view<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    check(t, what)?;
    // SAFETY: checked host f32 storage; ops never write their inputs.
    Ok(unsafe { t.host::<f32>() })
}

/// The mutable f32 host view of an op's freshly allocated output.
#[allow(clippy::mut_from_ref)]
pub(crate) fn view_mut(t: &Tensor) -> &mut [f32] {
    // SAFETY: called only on outputs an op allocated and has not shared yet,
    // or on tensors an in-place op (adamw, fill, write) owns by contract.
    unsafe { t.host_mut::<f32>() }
}

pub(crate) fn check(t: &Tensor, what: &str) -> Result<()> {
    ensure!(
        t.buffer().kind() == MemoryKind::Host,
        "{what}: tensor is not in host memory (it belongs to another backend)"
    );
    ensure!(
        t.dtype() == DType::F32,
        "{what}: the cpu backend computes in f32, got {}",
        t.dtype().name()
    );
    Ok(())
}

pub(crate) fn check_same_shape(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    ensure!(
        a.shape() == b.shape(),
        "{what}: shapes differ ({} vs {})",
        a.shape(),
        b.shape()
    );
    Ok(())
}

pub(crate) fn check_ndhwc(t: &Tensor, what: &str) -> Result<()> {
    ensure!(
        t.shape().rank() == 5,
        "{what}: expected an NDHWC tensor, got shape {}",
        t.shape()
    );
    Ok(())
}

impl MemoryOps for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn act_dtype(&self) -> DType {
        DType::F32
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn alloc(&self, shape: Shape, dtype: DType) -> Result<Tensor> {
        f32_only(dtype)?;
        self.out_uninit(shape)
    }
    fn zeros(&self, shape: Shape, dtype: DType) -> Result<Tensor> {
        f32_only(dtype)?;
        self.out(shape)
    }
    fn upload(&self, data: &[f32], shape: Shape, dtype: DType) -> Result<Tensor> {
        ensure!(
            data.len() == shape.numel(),
            "upload: {} values for shape {shape}",
            data.len()
        );
        let t = self.alloc(shape, dtype)?;
        view_mut(&t).copy_from_slice(data);
        Ok(t)
    }
    fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(view(t, "download")?.to_vec())
    }
    fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        check(t, "write")?;
        ensure!(
            data.len() == t.numel(),
            "write: {} values into shape {}",
            data.len(),
            t.shape()
        );
        view_mut(t).copy_from_slice(data);
        Ok(())
    }
    fn fill(&self, t: &Tensor, value: f32) -> Result<()> {
        check(t, "fill")?;
        view_mut(t).fill(value);
        Ok(())
    }
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        if dtype != DType::F32 {
            bail!(
                "the cpu backend stores f32 only, asked to cast to {}",
                dtype.name()
            );
        }
        self.upload(view(x, "cast")?, x.shape(), dtype)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
