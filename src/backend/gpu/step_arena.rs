//! Steady-state steps that allocate nothing: a [`Device`] wrapper that serves
//! every allocation of a training step from one arena placed by liveness.
//!
//! Shapes are fixed for a run, so every step makes the same allocations, in
//! the same order, and the same launches on them. The caller marks where a
//! step starts ([`Device::begin_step`]; `GpuBackend::begin_step`, called by the
//! training loop):
//!
//! 1. **Record** (the first step): allocations come from the inner device
//!    (its pool) as usual. Each allocation of the step gets an index; every
//!    launch and copy is recorded with the buffers its arguments point into
//!    (pointer parameters and the 8-byte words of struct parameters, as the
//!    recording device of a static plan resolves them) and their offsets.
//! 2. **Plan** (at the next `begin_step`): each step buffer's *use interval*
//!    is its first to last launch or copy (open-ended when it is still
//!    allocated at the end of the step: the host may read it later);
//!    [`crate::plan::arena::Arena::pack`] places the intervals in one block,
//!    which is allocated from the inner device once. A buffer still
//!    allocated when the next step begins (a cache that outlives its step)
//!    keeps coming from the inner device.
//! 3. **Serve** (every later step): allocation `k` of the step returns the
//!    block's base plus the planned offset of allocation `k`, with no call to
//!    the inner device; dropping it frees nothing. Each launch and copy is
//!    checked against the recorded one at the same position: the same kernel
//!    or copy, and every argument word that pointed into step buffer `j` at
//!    offset `o` now pointing at the served address of `j` plus `o` (no other
//!    word may point into the block). Host reads are checked to read a
//!    buffer inside its use interval. Scalar arguments (seeds, time steps)
//!    may differ from step to step.
//!
//! Work between steps that is no part of one — the training loop's
//! validation pass — follows [`Device::end_step`], which closes the step
//! early: until the next `begin_step` every operation passes through to the
//! inner device, unchecked and unrecorded.
//!
//! Fallbacks, each stated once on stderr:
//! - the step's first allocation differs from the plan (size or count: the
//!   shapes changed): the step is recorded anew and planned again;
//! - a buffer served by the arena in the previous step is still held when a
//!   step begins: its bytes would be reused under it, so the step is
//!   recorded anew (eager allocations) and planned again;
//! - a later allocation, launch or copy that departs from the plan inside a
//!   step: the step fails with an error naming the position and what
//!   differs (continuing would compute on bytes the plan gave to another
//!   buffer), and the next step is recorded anew.
//!
//! On Emu arena bytes are not poisoned: a kernel that reads an element no
//! one wrote gets the previous step's value instead of NaN, which the
//! bitwise comparison with the eager path (`tests/step_arena.rs`) detects.

use super::device::{
    check_args, check_config, Device, DeviceKind, Event, KernelArgs, LaunchConfig, ALLOC_ALIGN,
};
use super::launch_list::{LaunchList, ListOp};
use super::registry::Kernel;
use crate::plan::arena::Arena;
use crate::plan::Interval;
use crate::tensor::{Buffer, Memory, MemoryKind};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How a step's memory was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum StepMode {
    /// Allocations from the inner device, launches recorded for the plan.
    Recorded,
    /// Allocations served from the planned arena; the step's launch list captured.
    Arena,
    /// Allocations served from the arena, the captured launch list replayed.
    Replayed,
}

/// What one step did (from one `begin_step` to the next).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StepStats {
    pub mode: StepMode,
    /// Allocations the inner device (its pool) made.
    pub device_allocations: usize,
    /// Allocations served from the arena.
    pub arena_allocations: usize,
    /// Launches and device copies (host reads not counted).
    pub ops: usize,
    /// Replayed steps: operations whose arguments differed from the list's
    /// (scalars such as seeds and time steps), patched in before the replay.
    pub patched: usize,
    /// Replayed steps: submissions of (a part of) the list to the device.
    pub submissions: usize,
}

/// The plan of a step as the wrapper serves it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ArenaPlan {
    /// Bytes of the arena block.
    pub arena_bytes: u64,
    /// Allocations per step.
    pub allocations: usize,
    /// Of which served by the inner device (they outlive their step).
    pub escaping: usize,
    /// Launches and device copies per step.
    pub ops: usize,
}

/// One 8-byte argument word that pointed into a step buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ref {
    word: u16,
    alloc: u32,
    offset: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Launch(Kernel),
    HostToDevice(usize),
    DeviceToDevice(usize),
    Memset(usize),
}

impl OpKind {
    fn describe(&self) -> String {
        match self {
            OpKind::Launch(k) => format!("launch of {}", k.name()),
            OpKind::HostToDevice(b) => format!("host→device copy of {b} bytes"),
            OpKind::DeviceToDevice(b) => format!("device copy of {b} bytes"),
            OpKind::Memset(b) => format!("fill of {b} bytes"),
        }
    }
}

#[derive(Clone, Debug)]
struct Op {
    kind: OpKind,
    refs: Vec<Ref>,
}

/// One allocation of the recorded step.
#[derive(Clone, Debug)]
struct Alloc {
    bytes: u64,
    alloc_pos: usize,
    first_use: Option<usize>,
    last_use: usize,
    /// Still allocated: at the end of recording, it outlived the step.
    live: bool,
}

#[derive(Default)]
struct Recording {
    allocs: Vec<Alloc>,
    ops: Vec<Op>,
    /// (table, buffer): a table of addresses (None: outside the step's
    /// buffers) points into a step buffer, which is in use while the table is.
    links: Vec<(Option<usize>, usize)>,
    /// Live buffers of the step by address: (allocation index, bytes).
    live: BTreeMap<u64, (usize, u64)>,
}

struct Planned {
    /// The step's launch list, captured in the first served step.
    list: Option<LaunchList>,
    /// Operations of this step already submitted (replayed steps).
    submitted: usize,
    block: Arc<Buffer>,
    /// Buffers of this block not dropped yet.
    live: Arc<AtomicUsize>,
    /// Per allocation: bytes, arena offset (None: from the inner device), use interval.
    allocs: Vec<(u64, Option<u64>, Interval)>,
    ops: Vec<Op>,
}

/// The served step in progress.
struct Serving {
    /// Address given to each allocation so far, and whether it is still held.
    addrs: Vec<(u64, bool)>,
    /// The list being captured (the first served step).
    capture: Option<LaunchList>,
}

/// An operation as the caller issued it.
enum OpCall<'a> {
    Launch(Kernel, LaunchConfig, &'a KernelArgs),
    /// dst, bytes, and whether they are a table of addresses.
    HostToDevice(u64, &'a [u8], bool),
    DeviceToDevice(u64, u64, usize),
    Memset(u64, u8, usize),
}

impl OpCall<'_> {
    fn kind(&self) -> OpKind {
        match self {
            OpCall::Launch(k, ..) => OpKind::Launch(*k),
            OpCall::HostToDevice(_, src, _) => OpKind::HostToDevice(src.len()),
            OpCall::DeviceToDevice(.., b) => OpKind::DeviceToDevice(*b),
            OpCall::Memset(.., b) => OpKind::Memset(*b),
        }
    }
    fn words(&self) -> Vec<u64> {
        match self {
            OpCall::Launch(_, _, args) => args.address_words(),
            OpCall::HostToDevice(dst, src, table) => {
                let mut words = vec![*dst];
                if *table {
                    words.extend(
                        src.chunks_exact(8)
                            .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes"))),
                    );
                }
                words
            }
            OpCall::Memset(dst, ..) => vec![*dst],
            OpCall::DeviceToDevice(dst, src, _) => vec![*dst, *src],
        }
    }
    /// As a list operation (a host copy staged in `list`).
    fn push_to(&self, list: &mut LaunchList) {
        match *self {
            OpCall::Launch(kernel, cfg, args) => list.ops.push(ListOp::Launch {
                kernel,
                cfg,
                args: Box::new(args.clone()),
            }),
            OpCall::HostToDevice(dst, src, _) => list.push_staged(dst, src),
            OpCall::DeviceToDevice(dst, src, bytes) => {
                list.ops.push(ListOp::DeviceToDevice { dst, src, bytes })
            }
            OpCall::Memset(dst, byte, bytes) => list.ops.push(ListOp::Memset { dst, byte, bytes }),
        }
    }
    /// Overwrites the list's operation `at` with this call; whether it changed.
    fn patch(&self, list: &mut LaunchList, at: usize) -> bool {
        let staging = &mut list.staging_host;
        match (self, &mut list.ops[at]) {
            (
                OpCall::Launch(_, cfg, args),
                ListOp::Launch {
                    cfg: c, args: a, ..
                },
            ) => {
                let changed =
                    *c != *cfg || (0..args.len()).any(|i| args.param_bytes(i) != a.param_bytes(i));
                if changed {
                    *c = *cfg;
                    **a = (*args).clone();
                }
                changed
            }
            (OpCall::HostToDevice(dst, src, _), ListOp::Staged { dst: d, offset, .. }) => {
                // New bytes are the point of a staged copy: not a change of the list.
                staging[*offset..*offset + src.len()].copy_from_slice(src);
                let changed = *d != *dst;
                *d = *dst;
                changed
            }
            (
                OpCall::DeviceToDevice(dst, src, _),
                ListOp::DeviceToDevice { dst: d, src: s, .. },
            ) => {
                let changed = (*d, *s) != (*dst, *src);
                (*d, *s) = (*dst, *src);
                changed
            }
            (
                OpCall::Memset(dst, byte, _),
                ListOp::Memset {
                    dst: d, byte: b, ..
                },
            ) => {
                let changed = (*d, *b) != (*dst, *byte);
                (*d, *b) = (*dst, *byte);
                changed
            }
            _ => unreachable!("the kinds were checked against the plan"),
        }
    }
}

enum Phase {
    /// No step begun: a pass-through.
    Idle,
    Recording(Recording),
    Serving(Serving),
}

struct State {
    phase: Phase,
    plan: Option<Planned>,
    /// Launches and counted copies so far in this step.
    pos: usize,
    stats: StepStats,
    history: Vec<StepStats>,
    /// A departure from the plan inside the current step: the next step records anew.
    broken: bool,
    notices: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of the recorded step: the inner device's buffer, freed with it.
struct RecordedMemory {
    inner: Arc<Buffer>,
    shared: Arc<Shared>,
    alloc: usize,
}

impl Memory for RecordedMemory {
    fn kind(&self) -> MemoryKind {
        self.inner.kind()
    }
    fn free(&self, addr: u64, _bytes: usize) {
        let mut st = lock(&self.shared);
        if let Phase::Recording(r) = &mut st.phase {
            if r.live.remove(&addr).is_some() {
                r.allocs[self.alloc].live = false;
            }
        }
    }
}

/// A buffer served from the arena: keeps the block alive, frees nothing.
struct ArenaMemory {
    block: Arc<Buffer>,
    live: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    alloc: usize,
}

impl Memory for ArenaMemory {
    fn kind(&self) -> MemoryKind {
        self.block.kind()
    }
    fn free(&self, _addr: u64, _bytes: usize) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        let mut st = lock(&self.shared);
        if let Phase::Serving(s) = &mut st.phase {
            if let Some(a) = s.addrs.get_mut(self.alloc) {
                a.1 = false;
            }
        }
    }
}

/// The wrapper: a pass-through until the first [`Device::begin_step`].
pub struct StepArena {
    inner: Arc<dyn Device>,
    shared: Arc<Shared>,
}

impl StepArena {
    /// Close the step that ran, if one did: its statistics join the
    /// history, a recorded step becomes the plan, a complete captured step
    /// its replayed list; the phase is idle after (a pass-through).
    fn close_step(&self, st: &mut State) -> Result<()> {
        if matches!(st.phase, Phase::Idle) {
            return Ok(());
        }
        let done = st.stats;
        st.history.push(done);
        let phase = std::mem::replace(&mut st.phase, Phase::Idle);
        match phase {
            Phase::Recording(rec) => {
                drop(st.plan.take());
                // The block is allocated between steps: no step counts it.
                let planned = self.make_plan(rec)?;
                st.plan = Some(planned);
            }
            Phase::Serving(Serving {
                capture: Some(mut list),
                ..
            }) if !st.broken => {
                let planned = st.plan.as_ref().map_or(0, |p| p.ops.len());
                if list.ops.len() == planned {
                    // A complete step: its list is replayed from now on.
                    list.staging = Some(
                        self.inner
                            .alloc(list.staging_host.len().max(ALLOC_ALIGN))
                            .context("allocating the launch list's staging buffer")?,
                    );
                    if let Some(p) = &mut st.plan {
                        p.list = Some(list);
                    }
                } else {
                    let n = list.ops.len();
                    Self::notice(
                        st,
                        format!(
                            "the step served from the arena made {n} launches and copies where its \
                             plan has {planned}: the next step is captured again instead of replayed"
                        ),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub fn new(inner: Arc<dyn Device>) -> StepArena {
        StepArena {
            inner,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    phase: Phase::Idle,
                    plan: None,
                    pos: 0,
                    stats: StepStats {
                        mode: StepMode::Recorded,
                        device_allocations: 0,
                        arena_allocations: 0,
                        ops: 0,
                        patched: 0,
                        submissions: 0,
                    },
                    history: Vec::new(),
                    broken: false,
                    notices: Vec::new(),
                }),
            }),
        }
    }

    /// The device the wrapper allocates from and launches on.
    pub fn inner(&self) -> &Arc<dyn Device> {
        &self.inner
    }

    /// What every completed step did, in order (a step completes at the next `begin_step`).
    pub fn history(&self) -> Vec<StepStats> {
        lock(&self.shared).history.clone()
    }

    /// The plan being served, if any.
    pub fn plan(&self) -> Option<ArenaPlan> {
        let st = lock(&self.shared);
        st.plan.as_ref().map(|p| ArenaPlan {
            arena_bytes: p.block.bytes() as u64,
            allocations: p.allocs.len(),
            escaping: p.allocs.iter().filter(|a| a.1.is_none()).count(),
            ops: p.ops.len(),
        })
    }

    /// The fallbacks taken so far, as stated on stderr.
    pub fn notices(&self) -> Vec<String> {
        lock(&self.shared).notices.clone()
    }

    fn notice(st: &mut State, msg: String) {
        eprintln!("voxdiff: {msg}");
        st.notices.push(msg);
    }

    /// Turns the recorded step into a plan and allocates its block.
    fn make_plan(&self, rec: Recording) -> Result<Planned> {
        let end = rec.ops.len() + 1;
        let mut intervals: Vec<Interval> = rec
            .allocs
            .iter()
            .map(|a| {
                let start = a.first_use.unwrap_or(a.alloc_pos);
                Interval {
                    start,
                    // Held at the end of the step: the host may still read it.
                    end: if a.live { end } else { a.last_use.max(start) },
                    bytes: a.bytes,
                }
            })
            .collect();
        // A buffer a table of addresses points into is used by whatever
        // reads the table (the launches name only the table).
        for &(table, b) in &rec.links {
            let until = table.map_or(end, |t| intervals[t].end);
            intervals[b].end = intervals[b].end.max(until);
        }
        let arena_items: Vec<usize> = (0..rec.allocs.len())
            .filter(|&k| !rec.allocs[k].live)
            .collect();
        let items: Vec<Interval> = arena_items.iter().map(|&k| intervals[k]).collect();
        let arena = Arena::pack(&items);
        arena.check(&items)?;
        let block = self
            .inner
            .alloc(arena.peak.max(ALLOC_ALIGN as u64) as usize)
            .context("allocating the step's arena")?;
        let mut allocs: Vec<(u64, Option<u64>, Interval)> = rec
            .allocs
            .iter()
            .zip(&intervals)
            .map(|(a, &iv)| (a.bytes, None, iv))
            .collect();
        for (n, &k) in arena_items.iter().enumerate() {
            allocs[k].1 = Some(arena.offsets[n]);
        }
        Ok(Planned {
            list: None,
            submitted: 0,
            block,
            live: Default::default(),
            allocs,
            ops: rec.ops,
        })
    }

    /// Resolves the address words of an op while recording: references to step buffers.
    fn record_refs(r: &mut Recording, words: &[u64], pos: usize) -> Vec<Ref> {
        let mut refs = Vec::new();
        for (w, &addr) in words.iter().enumerate() {
            let hit = r
                .live
                .range(..=addr)
                .next_back()
                .filter(|(&base, &(_, bytes))| addr < base + bytes)
                .map(|(&base, &(k, _))| (k, addr - base));
            if let Some((k, offset)) = hit {
                let a = &mut r.allocs[k];
                a.first_use.get_or_insert(pos);
                a.last_use = a.last_use.max(pos);
                refs.push(Ref {
                    word: w as u16,
                    alloc: k as u32,
                    offset,
                });
            }
        }
        refs
    }

    /// Checks an op of a served step against the plan's op at the same position.
    fn check_served(st: &mut State, kind: OpKind, words: &[u64]) -> Result<()> {
        let pos = st.pos;
        let (plan, serving) = match (&st.plan, &st.phase) {
            (Some(p), Phase::Serving(s)) => (p, s),
            _ => return Ok(()),
        };
        let fail = |why: String| -> Result<()> {
            bail!(
                "step arena: operation {pos} of the step ({}) departs from the planned step: {why}; \
                 the step's buffers cannot be trusted, the next step is planned anew",
                kind.describe()
            )
        };
        let Some(op) = plan.ops.get(pos) else {
            return fail(format!("the plan has only {} operations", plan.ops.len()));
        };
        if op.kind != kind {
            return fail(format!("the plan has a {} here", op.kind.describe()));
        }
        let (lo, hi) = (
            plan.block.addr(),
            plan.block.addr() + plan.block.bytes() as u64,
        );
        let mut refs = op.refs.iter().peekable();
        for (w, &addr) in words.iter().enumerate() {
            match refs.peek() {
                Some(r) if r.word as usize == w => {
                    let Some(&(base, _)) = serving.addrs.get(r.alloc as usize) else {
                        return fail(format!(
                            "argument word {w} should point into allocation {} of the step, \
                             which has not been made",
                            r.alloc
                        ));
                    };
                    if addr != base + r.offset {
                        return fail(format!(
                            "argument word {w} is {addr:#x}, the plan has allocation {} at offset {} ({:#x})",
                            r.alloc,
                            r.offset,
                            base + r.offset
                        ));
                    }
                    refs.next();
                }
                _ if (lo..hi).contains(&addr) => {
                    return fail(format!(
                        "argument word {w} = {addr:#x} points into the arena where the plan has no buffer"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records, checks or defers one launch or counted copy at the current
    /// position; whether the caller runs it now (false: it is in the list
    /// that [`Self::flush`] replays).
    fn op(&self, call: OpCall) -> Result<bool> {
        let mut guard = lock(&self.shared);
        let st = &mut *guard;
        let pos = st.pos;
        let (kind, words) = (call.kind(), call.words());
        let run_now = match &mut st.phase {
            Phase::Idle => return Ok(true),
            Phase::Recording(r) => {
                let refs = Self::record_refs(r, &words, pos);
                if let OpCall::HostToDevice(_, _, true) = call {
                    let table = refs.iter().find(|x| x.word == 0).map(|x| x.alloc as usize);
                    for x in refs.iter().filter(|x| x.word > 0) {
                        r.links.push((table, x.alloc as usize));
                    }
                }
                r.ops.push(Op { kind, refs });
                true
            }
            Phase::Serving(_) => {
                if let Err(e) = Self::check_served(st, kind, &words) {
                    st.broken = true;
                    return Err(e);
                }
                let (Phase::Serving(serving), Some(plan)) = (&mut st.phase, &mut st.plan) else {
                    unreachable!("serving has a plan")
                };
                match (&mut serving.capture, &mut plan.list) {
                    (Some(capture), _) => {
                        call.push_to(capture);
                        true
                    }
                    (None, Some(list)) if pos < list.ops.len() => {
                        if call.patch(list, pos) {
                            list.version += 1;
                            st.stats.patched += 1;
                        }
                        false
                    }
                    (None, _) => true,
                }
            }
        };
        st.pos += 1;
        st.stats.ops += 1;
        Ok(run_now)
    }

    /// Submits the deferred operations of a replayed step: one upload of the
    /// staging bytes, then the list from the first unsubmitted operation.
    fn flush(&self) -> Result<()> {
        let mut guard = lock(&self.shared);
        let st = &mut *guard;
        let pos = st.pos;
        if st.broken {
            return Ok(()); // the step failed: its pending operations are dropped
        }
        let Some(plan) = &mut st.plan else {
            return Ok(());
        };
        let (Some(list), true) = (&plan.list, plan.submitted < pos) else {
            return Ok(());
        };
        if let Some(staging) = &list.staging {
            self.inner.memcpy_htod(staging.addr(), &list.staging_host)?;
        }
        let range = plan.submitted..pos;
        plan.submitted = pos;
        st.stats.submissions += 1;
        self.inner.replay(list, range)
    }

    /// A host read of `addr`: recorded as a use (recording), or checked to
    /// read a buffer inside its use interval (serving).
    fn host_read(&self, addr: u64) -> Result<()> {
        let mut guard = lock(&self.shared);
        let st = &mut *guard;
        let pos = st.pos;
        match &mut st.phase {
            Phase::Idle => Ok(()),
            Phase::Recording(r) => {
                Self::record_refs(r, &[addr], pos);
                Ok(())
            }
            Phase::Serving(s) => {
                let plan = st.plan.as_ref().expect("serving has a plan");
                // The most recent held buffer that contains the address.
                let hit = s.addrs.iter().enumerate().rev().find(|(k, &(base, held))| {
                    held && addr >= base && addr < base + plan.allocs[*k].0
                });
                if let Some((k, _)) = hit {
                    let iv = plan.allocs[k].2;
                    if plan.allocs[k].1.is_some() && !(iv.start <= pos && pos <= iv.end) {
                        st.broken = true;
                        bail!(
                            "step arena: the host reads allocation {k} of the step at operation {pos}, \
                             outside its planned use ({}..={}): its bytes belong to another buffer by now",
                            iv.start,
                            iv.end
                        );
                    }
                }
                Ok(())
            }
        }
    }

    fn alloc_inner(&self, st: &mut State, bytes: usize) -> Result<Arc<Buffer>> {
        st.stats.device_allocations += 1;
        self.inner.alloc(bytes)
    }
}

impl Device for StepArena {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn kind(&self) -> DeviceKind {
        self.inner.kind()
    }

    fn end_step(&self) -> Result<()> {
        self.flush()?;
        let mut st = lock(&self.shared);
        self.close_step(&mut st)
    }

    fn begin_step(&self) -> Result<()> {
        self.flush()?;
        let mut st = lock(&self.shared);
        // Close the step that ran (nothing when `end_step` closed it).
        self.close_step(&mut st)?;
        if st.broken {
            st.broken = false;
            st.plan = None;
        }
        let held = st
            .plan
            .as_ref()
            .map_or(0, |p| p.live.load(Ordering::Relaxed));
        if held > 0 {
            let n = held;
            Self::notice(
                &mut st,
                format!(
                    "{n} buffers of the previous step are still held, so the step arena cannot \
                     reuse its bytes: this step allocates from the device and is planned again"
                ),
            );
            st.plan = None;
        }
        st.pos = 0;
        let mode = if let Some(plan) = &mut st.plan {
            plan.submitted = 0;
            let replay = plan.list.is_some();
            st.phase = Phase::Serving(Serving {
                addrs: Vec::new(),
                capture: (!replay).then(LaunchList::default),
            });
            if replay {
                StepMode::Replayed
            } else {
                StepMode::Arena
            }
        } else {
            st.phase = Phase::Recording(Recording::default());
            StepMode::Recorded
        };
        st.stats = StepStats {
            mode,
            device_allocations: 0,
            arena_allocations: 0,
            ops: 0,
            patched: 0,
            submissions: 0,
        };
        Ok(())
    }

    fn alloc(&self, bytes: usize) -> Result<Arc<Buffer>> {
        let rounded = bytes.div_ceil(ALLOC_ALIGN).max(1) * ALLOC_ALIGN;
        let mut guard = lock(&self.shared);
        let st = &mut *guard;
        let pos = st.pos;
        let served = match (&mut st.phase, &st.plan) {
            (Phase::Serving(s), Some(p)) => {
                let k = s.addrs.len();
                match p.allocs.get(k) {
                    Some(&(planned, offset, _)) if planned == rounded as u64 => Ok((k, offset)),
                    other => Err((
                        k,
                        other.map_or("no allocation".to_string(), |a| format!("{} bytes", a.0)),
                    )),
                }
            }
            _ => Err((usize::MAX, String::new())),
        };
        match served {
            Ok((k, Some(offset))) => {
                let p = st.plan.as_ref().expect("serving has a plan");
                let (block, live) = (p.block.clone(), p.live.clone());
                live.fetch_add(1, Ordering::Relaxed);
                let addr = block.addr() + offset;
                let Phase::Serving(s) = &mut st.phase else {
                    unreachable!("matched above")
                };
                s.addrs.push((addr, true));
                st.stats.arena_allocations += 1;
                let mem = Arc::new(ArenaMemory {
                    block,
                    live,
                    shared: self.shared.clone(),
                    alloc: k,
                });
                Ok(Arc::new(Buffer::new(addr, rounded, mem)))
            }
            Ok((_, None)) => {
                // Outlives its step: from the device, every step.
                let b = self.alloc_inner(st, bytes)?;
                if let Phase::Serving(s) = &mut st.phase {
                    s.addrs.push((b.addr(), true));
                }
                Ok(b)
            }
            Err((0, planned)) => {
                Self::notice(
                    st,
                    format!(
                        "the step's first allocation is {rounded} bytes where its plan has {planned}: \
                         the shapes changed, so this step allocates from the device and is planned again"
                    ),
                );
                st.plan = None;
                st.phase = Phase::Recording(Recording::default());
                st.stats.mode = StepMode::Recorded;
                drop(guard);
                self.alloc(bytes)
            }
            Err((usize::MAX, _)) => {
                let b = self.alloc_inner(st, bytes)?;
                let Phase::Recording(r) = &mut st.phase else {
                    return Ok(b); // idle: a pass-through
                };
                let k = r.allocs.len();
                r.allocs.push(Alloc {
                    bytes: rounded as u64,
                    alloc_pos: pos,
                    first_use: None,
                    last_use: pos,
                    live: true,
                });
                r.live.insert(b.addr(), (k, rounded as u64));
                let mem = Arc::new(RecordedMemory {
                    inner: b.clone(),
                    shared: self.shared.clone(),
                    alloc: k,
                });
                Ok(Arc::new(Buffer::new(b.addr(), b.bytes(), mem)))
            }
            Err((k, planned)) => {
                st.broken = true;
                bail!(
                    "step arena: allocation {k} of the step is {rounded} bytes where the plan has \
                     {planned}: the step's allocations changed inside the step; the step's buffers \
                     cannot be trusted, the next step is planned anew"
                )
            }
        }
    }

    fn memcpy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        if self.op(OpCall::HostToDevice(dst, src, false))? {
            self.inner.memcpy_htod(dst, src)?;
        }
        Ok(())
    }
    fn memcpy_htod_table(&self, dst: u64, src: &[u8]) -> Result<()> {
        if self.op(OpCall::HostToDevice(dst, src, true))? {
            self.inner.memcpy_htod_table(dst, src)?;
        }
        Ok(())
    }
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.host_read(src)?;
        self.flush()?;
        self.inner.memcpy_dtoh(dst, src)
    }
    fn memcpy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if self.op(OpCall::DeviceToDevice(dst, src, bytes))? {
            self.inner.memcpy_dtod(dst, src, bytes)?;
        }
        Ok(())
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        if self.op(OpCall::Memset(dst, byte, bytes))? {
            self.inner.memset(dst, byte, bytes)?;
        }
        Ok(())
    }
    fn launch(&self, kernel: Kernel, cfg: LaunchConfig, args: &mut KernelArgs) -> Result<()> {
        if self.op(OpCall::Launch(kernel, cfg, args))? {
            // Checked here too, so a bad launch fails where it is made.
            self.inner.launch(kernel, cfg, args)?;
        } else {
            check_config(kernel, &cfg)?;
            check_args(kernel, args)?;
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.inner.synchronize()
    }
    fn record_event(&self) -> Result<Event> {
        self.flush()?;
        self.inner.record_event()
    }
    fn elapsed_ms(&self, start: &Event, end: &Event) -> Result<f32> {
        self.inner.elapsed_ms(start, end)
    }
    fn free_memory(&self) -> Result<Option<u64>> {
        self.inner.free_memory()
    }
}
