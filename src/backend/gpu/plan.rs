//! The Plan device: a [`Device`] that allocates nothing and runs nothing, but
//! records every allocation, free, copy and launch, so [`super::GpuBackend`]
//! over it runs the model code shape-only and leaves behind the step's static
//! plan (`crate::plan` analyses it: launches, bytes per launch, the eager peak,
//! an arena by liveness, a modelled GPU time).
//!
//! - Addresses come from a counter starting at [`PLAN_BASE`] (2⁴⁰, far above
//!   any value a kernel argument holds by chance), [`ALLOC_ALIGN`]-aligned with
//!   a gap of one alignment unit between buffers, and are never reused; no
//!   memory is behind them (`MemoryKind::Cuda`: no host code may read them).
//! - A launch is checked as on every device (geometry, argument kinds and
//!   sizes) and recorded with the buffers its arguments point into: pointer
//!   parameters, and every 8-byte word of a struct parameter that falls inside
//!   a live buffer (the conv kernels pass their tensors inside a struct).
//! - Host reads (`memcpy_dtoh`) have no data to read: they return what the host
//!   last wrote there (`memcpy_htod` or `memset` of at most
//!   [`SHADOW_MAX_BYTES`]; e.g. the `one_hot` id check's "no bad id" sentinel)
//!   or zeros, and are recorded as data-dependent when a kernel touched the
//!   buffer since the host wrote it (or the host never wrote it): the plan says
//!   where a step waits for the device and what the value would steer.

use super::device::{
    check_args, check_config, Device, DeviceKind, Event, KernelArgs, LaunchConfig, ParamKind,
    ALLOC_ALIGN,
};
use super::registry::Kernel;
use crate::tensor::{Buffer, Memory, MemoryKind};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The first address the plan device hands out.
pub const PLAN_BASE: u64 = 1 << 40;
/// Host writes up to this size are kept, so a later read of them returns them.
pub const SHADOW_MAX_BYTES: usize = 4096;

/// One allocation of a recording: its size (rounded up to [`ALLOC_ALIGN`] as
/// the real devices round it) and the events that allocated and freed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferLife {
    pub bytes: u64,
    pub alloc_at: usize,
    /// None: still allocated when the recording was taken.
    pub free_at: Option<usize>,
}

/// A host ↔ device transfer or fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyKind {
    HostToDevice,
    /// `data_dependent`: the host reads a value a kernel computed (on a real
    /// device the step waits here, and the plan read zeros or a host value).
    DeviceToHost {
        data_dependent: bool,
    },
    DeviceToDevice,
    Memset,
}

/// One kernel launch as recorded.
#[derive(Clone)]
pub struct LaunchRecord {
    pub kernel: Kernel,
    pub cfg: LaunchConfig,
    /// The buffers its arguments point into (indices into [`Recording::buffers`]), each once.
    pub buffers: Vec<usize>,
    /// The argument value that referenced each of `buffers`.
    pub addrs: Vec<u64>,
    /// The packed arguments (for op-specific cost models, e.g. the conv GEMM shape).
    pub args: KernelArgs,
}

impl std::fmt::Debug for LaunchRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchRecord")
            .field("kernel", &self.kernel.name())
            .field("cfg", &self.cfg)
            .field("buffers", &self.buffers)
            .finish()
    }
}

/// What happened, in queue order.
#[derive(Clone, Debug)]
pub enum PlanEvent {
    Alloc {
        buffer: usize,
    },
    Free {
        buffer: usize,
    },
    Launch(Box<LaunchRecord>),
    Copy {
        kind: CopyKind,
        bytes: u64,
        buffers: Vec<usize>,
    },
    Synchronize,
    /// A label the caller put into the recording (a phase of the step).
    Mark(String),
}

/// Everything a plan device recorded.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub buffers: Vec<BufferLife>,
    pub events: Vec<PlanEvent>,
    /// (table, buffer): a table of addresses copied to the device
    /// ([`Device::memcpy_htod_table`]) points into the buffer, which is then
    /// in use for as long as the table is.
    pub links: Vec<(usize, usize)>,
}

#[derive(Default)]
struct Recorder {
    rec: Recording,
    next_addr: u64,
    /// Live buffers by base address: (buffer index, bytes).
    live: BTreeMap<u64, (usize, u64)>,
    /// Bytes the host last wrote at (buffer, offset), small writes only.
    shadow: HashMap<(usize, u64), Vec<u8>>,
    /// Buffers a kernel or device copy wrote since the host last wrote them.
    touched: HashMap<usize, bool>,
}

impl Recorder {
    /// The live buffer `addr` points into, and the offset.
    fn resolve(&self, addr: u64) -> Option<(usize, u64)> {
        let (&base, &(id, bytes)) = self.live.range(..=addr).next_back()?;
        (addr < base + bytes).then_some((id, addr - base))
    }
    fn push(&mut self, e: PlanEvent) -> usize {
        self.rec.events.push(e);
        self.rec.events.len() - 1
    }
    fn resolve_or_err(&self, addr: u64, what: &str) -> Result<(usize, u64)> {
        match self.resolve(addr) {
            Some(r) => Ok(r),
            None => bail!("plan: {what} at {addr:#x}, which is not a live plan allocation"),
        }
    }
}

struct PlanMemory {
    rec: Arc<Mutex<Recorder>>,
}

fn lock(m: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Memory for PlanMemory {
    fn kind(&self) -> MemoryKind {
        MemoryKind::Cuda
    }
    fn free(&self, addr: u64, _bytes: usize) {
        let mut r = lock(&self.rec);
        if let Some((id, _)) = r.live.remove(&addr) {
            let at = r.push(PlanEvent::Free { buffer: id });
            r.rec.buffers[id].free_at = Some(at);
            r.shadow.retain(|&(b, _), _| b != id);
        }
    }
}

/// The recording device.
pub struct PlanDevice {
    rec: Arc<Mutex<Recorder>>,
    mem: Arc<dyn Memory>,
}

impl Default for PlanDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl PlanDevice {
    pub fn new() -> PlanDevice {
        let rec = Arc::new(Mutex::new(Recorder {
            next_addr: PLAN_BASE,
            ..Default::default()
        }));
        PlanDevice {
            mem: Arc::new(PlanMemory { rec: rec.clone() }),
            rec,
        }
    }

    /// A copy of what was recorded so far (buffers still allocated have no `free_at`).
    pub fn recording(&self) -> Recording {
        lock(&self.rec).rec.clone()
    }

    /// Puts a label into the recording (e.g. "step", "backward").
    pub fn mark(&self, label: &str) {
        lock(&self.rec).push(PlanEvent::Mark(label.to_string()));
    }

    fn copy(&self, kind: CopyKind, bytes: usize, addrs: &[(u64, &str)]) -> Result<Vec<usize>> {
        let mut r = lock(&self.rec);
        let mut ids = Vec::new();
        for &(a, what) in addrs {
            let (id, off) = r.resolve_or_err(a, what)?;
            let size = r.rec.buffers[id].bytes;
            if off + bytes as u64 > size {
                bail!(
                    "plan: {what} of {bytes} bytes at offset {off} overruns a {size}-byte buffer"
                );
            }
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        r.push(PlanEvent::Copy {
            kind,
            bytes: bytes as u64,
            buffers: ids.clone(),
        });
        Ok(ids)
    }

    /// The host wrote `len` bytes at `dst` (kept when `bytes` are given and
    /// small); what it wrote earlier over the same bytes is forgotten (only
    /// those: a buffer may hold several tensors, e.g. a step arena's block).
    fn host_wrote(&self, dst: u64, len: usize, bytes: Option<Vec<u8>>) {
        let mut r = lock(&self.rec);
        if let Some((id, off)) = r.resolve(dst) {
            r.touched.insert(id, false);
            let end = off + len as u64;
            r.shadow
                .retain(|&(b, o), v| b != id || o >= end || o + v.len() as u64 <= off);
            if let Some(b) = bytes.filter(|b| b.len() <= SHADOW_MAX_BYTES) {
                r.shadow.insert((id, off), b);
            }
        }
    }
}

impl Device for PlanDevice {
    fn name(&self) -> String {
        "plan (records launches and allocations, runs nothing)".to_string()
    }
    fn kind(&self) -> DeviceKind {
        DeviceKind::Plan
    }
    fn alloc(&self, bytes: usize) -> Result<Arc<Buffer>> {
        let bytes = bytes.div_ceil(ALLOC_ALIGN).max(1) * ALLOC_ALIGN;
        let mut r = lock(&self.rec);
        let addr = r.next_addr;
        r.next_addr += (bytes + ALLOC_ALIGN) as u64;
        let id = r.rec.buffers.len();
        let at = r.push(PlanEvent::Alloc { buffer: id });
        r.rec.buffers.push(BufferLife {
            bytes: bytes as u64,
            alloc_at: at,
            free_at: None,
        });
        r.live.insert(addr, (id, bytes as u64));
        Ok(Arc::new(Buffer::new(addr, bytes, self.mem.clone())))
    }
    fn memcpy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.copy(CopyKind::HostToDevice, src.len(), &[(dst, "memcpy_htod")])?;
        self.host_wrote(dst, src.len(), Some(src.to_vec()));
        Ok(())
    }
    fn memcpy_htod_table(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.memcpy_htod(dst, src)?;
        let mut r = lock(&self.rec);
        let (table, _) = r.resolve_or_err(dst, "memcpy_htod_table")?;
        for w in src.chunks_exact(8) {
            let addr = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
            if addr < PLAN_BASE {
                continue;
            }
            if let Some((id, _)) = r.resolve(addr) {
                if !r.rec.links.contains(&(table, id)) {
                    r.rec.links.push((table, id));
                }
            }
        }
        Ok(())
    }
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        let (id, off) = lock(&self.rec).resolve_or_err(src, "memcpy_dtoh")?;
        let (shadow, touched) = {
            let r = lock(&self.rec);
            let shadow = r
                .shadow
                .get(&(id, off))
                .filter(|s| s.len() >= dst.len())
                .map(|s| s[..dst.len()].to_vec());
            (shadow, r.touched.get(&id).copied().unwrap_or(true))
        };
        let data_dependent = touched || shadow.is_none();
        self.copy(
            CopyKind::DeviceToHost { data_dependent },
            dst.len(),
            &[(src, "memcpy_dtoh")],
        )?;
        match shadow {
            Some(s) => dst.copy_from_slice(&s),
            None => dst.fill(0),
        }
        Ok(())
    }
    fn memcpy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        let ids = self.copy(
            CopyKind::DeviceToDevice,
            bytes,
            &[
                (dst, "memcpy_dtod destination"),
                (src, "memcpy_dtod source"),
            ],
        )?;
        lock(&self.rec).touched.insert(ids[0], true);
        Ok(())
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.copy(CopyKind::Memset, bytes, &[(dst, "memset")])?;
        self.host_wrote(
            dst,
            bytes,
            (bytes <= SHADOW_MAX_BYTES).then(|| vec![byte; bytes]),
        );
        Ok(())
    }
    fn launch(&self, kernel: Kernel, cfg: LaunchConfig, args: &mut KernelArgs) -> Result<()> {
        check_config(kernel, &cfg)?;
        check_args(kernel, args)?;
        let mut r = lock(&self.rec);
        let (mut ids, mut addrs) = (Vec::new(), Vec::new());
        for (i, (kind, size)) in args.layout().into_iter().enumerate() {
            let bytes = args.param_bytes(i);
            let words: Vec<u64> = match kind {
                ParamKind::Pointer => vec![u64::from_ne_bytes(bytes.try_into()?)],
                ParamKind::Struct => bytes[..size - size % 8]
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                _ => continue,
            };
            for w in words {
                if w < PLAN_BASE {
                    continue; // null pointers, integers packed in a struct
                }
                match r.resolve(w) {
                    Some((id, _)) if !ids.contains(&id) => {
                        ids.push(id);
                        addrs.push(w);
                    }
                    Some(_) => {}
                    None if kind == ParamKind::Pointer => bail!(
                        "plan: {} argument {i} = {w:#x} is not a live plan allocation",
                        kernel.name()
                    ),
                    None => {}
                }
            }
        }
        for &id in &ids {
            r.touched.insert(id, true);
        }
        r.push(PlanEvent::Launch(Box::new(LaunchRecord {
            kernel,
            cfg,
            buffers: ids,
            addrs,
            args: args.clone(),
        })));
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        lock(&self.rec).push(PlanEvent::Synchronize);
        Ok(())
    }
    fn record_event(&self) -> Result<Event> {
        Ok(Event::Host(std::time::Instant::now()))
    }
    fn elapsed_ms(&self, _start: &Event, _end: &Event) -> Result<f32> {
        bail!("plan: the recording device runs nothing, so it measures no time")
    }
}
