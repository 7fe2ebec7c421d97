//! The Cuda device: a real GPU through the CUDA driver API (cudarc 0.19,
//! loaded dynamically so the binary runs where CUDA is absent).
//!
//! - Construction probes first: no driver library or no GPU is a clear error,
//!   never a panic (the whole constructor also converts a panic of the dynamic
//!   loader, e.g. a driver older than CUDA 13.0 missing a symbol, into an error).
//! - One context (the device's primary context) and one non-default stream;
//!   every copy and launch is queued on that stream in order.
//! - Modules are loaded once, at construction: per family the embedded CUBIN
//!   for the device's architecture, else the embedded PTX, else the source
//!   recompiled by the machine's NVRTC (`code_image.rs` gives the order and the
//!   reasons; each refusal is logged once to stderr, and a driver too old for
//!   every form gets one error that says so).
//! - Every kernel's function handle is looked up once and cached by
//!   [`Kernel::index`]; a launch never looks up a name.
//! - Memory comes from the device's default stream-ordered pool, whose release
//!   threshold is raised to "never", so freed memory stays in the pool for the
//!   next allocation instead of returning to the driver.

use super::code_image::{self, driver_version_name, image_name, CodeImage, Embedded, LoadPlan};
use super::device::{
    check_args, check_config, Device, DeviceKind, Event, KernelArgs, LaunchConfig, ALLOC_ALIGN,
};
use super::launch_list::LaunchList;
use super::registry::{Family, Kernel, HEADERS, NVRTC_AT_BUILD, NVRTC_OPTIONS};
use crate::tensor::{Buffer, Memory, MemoryKind};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Static shared memory every kernel may use without opting in.
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

fn driver_err(what: &str) -> impl FnOnce(result::DriverError) -> anyhow::Error + '_ {
    move |e| anyhow!("cuda: {what}: {e}")
}

/// Runs `f`, turning a panic (cudarc's dynamic loader panics on a missing
/// library or symbol) into an error.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(anyhow!("cuda: {what}: {msg}"))
        }
    }
}

/// Whether the CUDA driver library can be loaded, and how many GPUs it sees.
/// An error explains what is missing.
pub fn probe() -> Result<usize> {
    // SAFETY: only attempts to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        bail!(
            "no CUDA driver: the driver library (libcuda.so) was not found, so this machine has \
             no usable NVIDIA GPU; use --device cpu or --device emu"
        );
    }
    let count = no_panic("initialising the driver", || {
        result::init().map_err(driver_err("cuInit"))?;
        result::device::get_count().map_err(driver_err("counting devices"))
    })?;
    if count <= 0 {
        bail!("the CUDA driver is installed but reports no GPU");
    }
    Ok(count as usize)
}

/// `cuda:N name (sm_XY)` of every GPU the driver sees, without opening them.
pub fn list_devices() -> Result<Vec<String>> {
    let count = probe()?;
    no_panic("listing devices", || {
        let mut out = Vec::new();
        for i in 0..count {
            let dev = result::device::get(i as i32).map_err(driver_err("getting a device"))?;
            let name =
                result::device::get_name(dev).map_err(driver_err("reading a device name"))?;
            // SAFETY: a device handle the driver just returned.
            let cc = |a| unsafe { result::device::get_attribute(dev, a) };
            let major = cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                .map_err(driver_err("reading the compute capability"))?;
            let minor = cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                .map_err(driver_err("reading the compute capability"))?;
            out.push(format!("cuda:{i} {name} (sm_{major}{minor})"));
        }
        Ok(out)
    })
}

/// The stream-ordered memory pool of the device.
struct CudaMemory {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pool: PoolHandle,
}

struct PoolHandle(sys::CUmemoryPool);
// SAFETY: a CUmemoryPool handle may be used from any thread of the process.
unsafe impl Send for PoolHandle {}
unsafe impl Sync for PoolHandle {}

impl Memory for CudaMemory {
    fn kind(&self) -> MemoryKind {
        MemoryKind::Cuda
    }
    fn free(&self, addr: u64, _bytes: usize) {
        // Stream-ordered: queued kernels that still read the buffer finish first.
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: `addr` came from alloc_async on this pool and stream.
        self.ctx
            .record_err(unsafe { result::free_async(addr, self.stream.cu_stream()) });
    }
}

/// A CUDA GPU.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    mem: Arc<CudaMemory>,
    _modules: Vec<Arc<CudaModule>>,
    /// By `Kernel::index`.
    functions: Vec<CudaFunction>,
    /// Dynamic shared memory each function has been opted in to, by `Kernel::index`.
    shared_limit: Vec<AtomicU32>,
    label: String,
    /// Fill new allocations with 0xFF bytes (NaN as f32 and bf16), as Emu does.
    poison: bool,
    /// Where the loaded code came from, per family (for `voxdiff info`).
    code_origin: Vec<(Family, String)>,
    /// The CUDA graph of the last replayed launch list.
    graph: Mutex<Option<CapturedGraph>>,
}

/// A launch list captured as a CUDA graph: which list, at which version.
struct CapturedGraph {
    list: u64,
    version: u64,
    graph: CudaGraph,
}

// SAFETY: the graph is used only under the Mutex of `Cuda::graph`, one thread at a time.
unsafe impl Send for CapturedGraph {}

impl Cuda {
    /// Opens GPU `ordinal`.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        Cuda::with_poison(ordinal, false)
    }

    /// Opens GPU `ordinal`; with `poison`, every allocation is filled with 0xFF
    /// bytes (NaN as f32 and bf16) so tests catch elements a kernel never wrote.
    pub fn with_poison(ordinal: usize, poison: bool) -> Result<Cuda> {
        let count = probe()?;
        if ordinal >= count {
            bail!("cuda:{ordinal} does not exist: the driver reports {count} GPU(s)");
        }
        no_panic("opening the device", || Cuda::open(ordinal, poison))
    }

    fn open(ordinal: usize, poison: bool) -> Result<Cuda> {
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating the context"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("reading the compute capability"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_string());
        if major < 8 {
            bail!(
                "cuda:{ordinal} ({name}) has compute capability {major}.{minor}; voxdiff's kernels \
                 need 8.0 or newer (bf16 mma.sync, cp.async)"
            );
        }
        let stream = ctx
            .new_stream()
            .map_err(driver_err("creating the stream"))?;

        let driver = driver_version()?;
        let load = code_image::plan((major as u32, minor as u32), driver, &Embedded::built());
        for why in &load.refused {
            log_once(&format!(
                "cuda:{ordinal} (sm_{major}{minor}, driver CUDA {}): {why}",
                driver_version_name(driver)
            ));
        }
        let mut modules = Vec::new();
        let mut code_origin = Vec::new();
        for &family in Family::ALL {
            let (module, image) = load_family(&ctx, family, &load, (major, minor), driver)
                .with_context(|| format!("cuda:{ordinal} ({name}, sm_{major}{minor})"))?;
            modules.push((family, module));
            code_origin.push((family, image_name(image)));
        }
        let mut functions = Vec::with_capacity(Kernel::ALL.len());
        for &k in Kernel::ALL {
            let module = &modules.iter().find(|(f, _)| *f == k.family()).unwrap().1;
            let f = module
                .load_function(k.name())
                .map_err(|e| anyhow!("cuda: loading kernel {}: {e}", k.name()))?;
            functions.push(f);
        }

        // SAFETY: the device of a live context.
        let pool = unsafe { result::device::get_default_mem_pool(ctx.cu_device()) }
            .map_err(driver_err("getting the memory pool"))?;
        let mut keep = u64::MAX;
        // SAFETY: RELEASE_THRESHOLD takes a u64.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut keep as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .map_err(driver_err("configuring the memory pool"))?;

        Ok(Cuda {
            mem: Arc::new(CudaMemory {
                ctx: ctx.clone(),
                stream: stream.clone(),
                pool: PoolHandle(pool),
            }),
            label: format!("cuda:{ordinal} {name} (sm_{major}{minor})"),
            poison,
            shared_limit: Kernel::ALL
                .iter()
                .map(|_| AtomicU32::new(DEFAULT_SHARED_LIMIT))
                .collect(),
            _modules: modules.into_iter().map(|(_, m)| m).collect(),
            functions,
            ctx,
            stream,
            code_origin,
            graph: Mutex::new(None),
        })
    }

    /// Where each family's loaded code came from.
    pub fn code_origin(&self) -> &[(Family, String)] {
        &self.code_origin
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("binding the context"))
    }
}

/// `cuDriverGetVersion`: 1000·major + 10·minor of the CUDA version the driver supports.
fn driver_version() -> Result<i32> {
    let mut v = 0i32;
    // SAFETY: writes one int.
    let rc = unsafe { sys::cuDriverGetVersion(&mut v) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        bail!("cuda: reading the driver version: {rc:?}");
    }
    Ok(v)
}

/// Prints `msg` to stderr the first time this process sees it.
fn log_once(msg: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|s| s == msg) {
        eprintln!("voxdiff: {msg}");
        seen.push(msg.to_string());
    }
}

/// Loads `family` from the first image of `load` the driver accepts; every
/// image that fails is logged once with its reason. When none loads, one
/// error names the driver, every refusal and what to do.
fn load_family(
    ctx: &Arc<CudaContext>,
    family: Family,
    load: &LoadPlan,
    (major, minor): (i32, i32),
    driver: i32,
) -> Result<(Arc<CudaModule>, CodeImage)> {
    let mut failed: Vec<String> = Vec::new();
    for &image in &load.tries {
        let module = match image {
            CodeImage::Cubin(i) => {
                let cubin = family.cubin(i).context("the CUBIN is not embedded")?;
                ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin.to_vec()))
                    .map_err(|e| anyhow!("the driver rejected it: {e}"))
            }
            CodeImage::Ptx(i) => {
                let ptx = family.ptx(i).context("the PTX is not embedded")?;
                ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                    .map_err(|e| anyhow!("the driver rejected it: {e}"))
            }
            CodeImage::RuntimeNvrtc => {
                let arch = format!("compute_{major}{minor}");
                compile_at_run_time(family, &arch).and_then(|ptx| {
                    ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                        .map_err(|e| anyhow!("the driver rejected the recompiled PTX: {e}"))
                })
            }
        };
        match module {
            Ok(m) => return Ok((m, image)),
            Err(e) => {
                let why = format!("kernels/{}.cu: {}: {e:#}", family.name(), image_name(image));
                log_once(&why);
                failed.push(why);
            }
        }
    }
    bail!(
        "no form of kernels/{}.cu loads under this driver (CUDA {}): {}. Install an NVIDIA \
         driver for CUDA {} or newer, or put an NVRTC no newer than the driver on the library \
         path",
        family.name(),
        driver_version_name(driver),
        load.refused
            .iter()
            .chain(&failed)
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
        NVRTC_AT_BUILD.unwrap_or("13.0")
    )
}

/// Compiles `family` from its embedded source with the machine's NVRTC.
fn compile_at_run_time(family: Family, arch: &str) -> Result<String> {
    // SAFETY: only attempts to dlopen libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!("NVRTC (libnvrtc.so) was not found on this machine");
    }
    // The sources include each other by name: write the headers to a folder.
    let dir = std::env::temp_dir().join(format!("voxdiff-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in HEADERS {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    let mut options: Vec<String> = vec![format!("--gpu-architecture={arch}")];
    options.extend(NVRTC_OPTIONS.iter().map(|s| s.to_string()));
    options.push(format!("-I{}", dir.display()));
    for inc in cuda_include_dirs() {
        options.push(format!("-I{inc}"));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options,
        name: Some(format!("{}.cu", family.name())),
        ..Default::default()
    };
    let ptx = no_panic("running NVRTC", || {
        cudarc::nvrtc::compile_ptx_with_opts(family.source(), opts).map_err(|e| anyhow!("{e:?}"))
    })?;
    Ok(ptx.to_src())
}

/// Folders that may hold `cuda_bf16.h`: `$VOXDIFF_CUDA_ROOT/include`, the
/// project's toolchain, `$CUDA_HOME`/`$CUDA_PATH`, `/usr/local/cuda`.
fn cuda_include_dirs() -> Vec<String> {
    let mut roots = Vec::new();
    for var in ["VOXDIFF_CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        if let Ok(v) = std::env::var(var) {
            roots.push(std::path::PathBuf::from(v));
        }
    }
    roots.push(std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.toolchain/cuda/nvidia/cu13"
    )));
    roots.push(std::path::PathBuf::from("/usr/local/cuda"));
    roots
        .into_iter()
        .map(|r| r.join("include"))
        .filter(|i| i.join("cuda_bf16.h").exists())
        .map(|i| i.display().to_string())
        .collect()
}

impl Device for Cuda {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda
    }
    fn alloc(&self, bytes: usize) -> Result<Arc<Buffer>> {
        let bytes = bytes.div_ceil(ALLOC_ALIGN).max(1) * ALLOC_ALIGN;
        self.bind()?;
        // SAFETY: a live pool and stream; the memory is used only on this stream.
        let ptr = unsafe {
            result::mem_pool::alloc_async(self.mem.pool.0, bytes, self.stream.cu_stream())
        }
        .map_err(|e| anyhow!("cuda: allocating {bytes} bytes: {e}"))?;
        let buf = Arc::new(Buffer::new(ptr, bytes, self.mem.clone()));
        if self.poison {
            self.memset(ptr, 0xFF, bytes)?;
        }
        Ok(buf)
    }
    fn free_memory(&self) -> Result<Option<u64>> {
        self.bind()?;
        let (free, _total) = result::mem_get_info().map_err(driver_err("reading free memory"))?;
        Ok(Some(free as u64))
    }
    fn memcpy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: pageable source: the call returns once `src` is staged, so it
        // may be dropped afterwards; `dst` holds at least src.len() bytes.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver_err("copying host to device"))
    }
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` holds at least dst.len() bytes; synchronised below
        // before `dst` is used.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver_err("copying device to host"))?;
        self.synchronize()
    }
    fn memcpy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both hold at least `bytes` bytes.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("copying device to device"))
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds at least `bytes` bytes.
        unsafe { result::memset_d8_async(dst, byte, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("memset"))
    }
    fn launch(&self, kernel: Kernel, cfg: LaunchConfig, args: &mut KernelArgs) -> Result<()> {
        check_config(kernel, &cfg)?;
        check_args(kernel, args)?;
        self.bind()?;
        let f = self.functions[kernel.index()].cu_function();
        let limit = &self.shared_limit[kernel.index()];
        if cfg.shared_bytes > limit.load(Ordering::Relaxed) {
            // SAFETY: a loaded function; opting in to more dynamic shared memory.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.shared_bytes as i32,
                )
            }
            .map_err(|e| {
                anyhow!(
                    "cuda: {}: {} bytes of dynamic shared memory: {e}",
                    kernel.name(),
                    cfg.shared_bytes
                )
            })?;
            limit.store(cfg.shared_bytes, Ordering::Relaxed);
        }
        let g = cfg.grid;
        let b = cfg.block;
        // SAFETY: arguments match the kernel's parameters (check_args) and are
        // copied by the driver at launch.
        unsafe {
            result::launch_kernel(
                f,
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                cfg.shared_bytes,
                self.stream.cu_stream(),
                args.pointers(),
            )
        }
        .map_err(|e| anyhow!("cuda: launching {} with {cfg:?}: {e}", kernel.name()))
    }
    /// The whole list: as one CUDA graph, captured from the stream (the list
    /// issued op by op on a capturing stream) when the list or its arguments
    /// changed since the last capture, then launched. A part of a list: op by op.
    fn replay(&self, list: &LaunchList, range: std::ops::Range<usize>) -> Result<()> {
        if range != (0..list.ops.len()) {
            return list.run_in_order(self, range);
        }
        let mut g = self.graph.lock().unwrap_or_else(|e| e.into_inner());
        let current = g
            .as_ref()
            .is_some_and(|c| (c.list, c.version) == (list.id, list.version));
        if !current {
            *g = None;
            self.bind()?;
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(driver_err("beginning a stream capture"))?;
            let issued = list.run_in_order(self, range);
            let graph = self
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(driver_err("capturing the step's launch list as a graph"))?;
            issued?;
            *g = Some(CapturedGraph {
                list: list.id,
                version: list.version,
                graph: graph.context("cuda: the captured launch list is empty")?,
            });
        }
        g.as_ref()
            .expect("captured above")
            .graph
            .launch()
            .map_err(driver_err("launching the step's graph"))
    }
    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_err("synchronising the stream"))
    }
    fn record_event(&self) -> Result<Event> {
        let ev = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err("creating an event"))?;
        ev.record(&self.stream)
            .map_err(driver_err("recording an event"))?;
        Ok(Event::Cuda(ev))
    }
    fn elapsed_ms(&self, start: &Event, end: &Event) -> Result<f32> {
        match (start, end) {
            (Event::Cuda(a), Event::Cuda(b)) => {
                a.elapsed_ms(b).map_err(driver_err("reading event times"))
            }
            _ => bail!("cuda: events recorded on another device"),
        }
    }
}
