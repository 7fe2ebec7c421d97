//! The static plan of a step: what [`crate::backend::gpu::plan::PlanDevice`]
//! recorded while the gpu backend ran a step shape-only, analysed before
//! anything runs for real.
//!
//! - [`StepPlan::new`] splits a recording at a [`PlanEvent::Mark`]: buffers
//!   allocated before the mark and still live at it are *resident* (parameters,
//!   optimiser moments, constants); everything after it is *the step*.
//! - Eager peak: the largest sum of allocated bytes (each rounded to 256 as
//!   the devices round it) at any event of the recording, i.e. what an
//!   allocator that hands out exactly the requested blocks and never
//!   fragments would hold. A real pool holds at least this.
//! - Arena ([`arena`]): every step buffer gets an offset in one block, valid
//!   for its *use* interval — from the first launch or copy that touches it to
//!   the last — not from allocation to drop, so a tensor the tape keeps alive
//!   but no later op reads shares its memory with later buffers. Resident
//!   buffers sit below at fixed offsets. The arena's lower bound is the
//!   largest sum of bytes in use at one event.
//! - Cost ([`cost`]): a modelled time per launch on a named GPU.

pub mod arena;
pub mod cost;

use crate::backend::gpu::plan::{BufferLife, CopyKind, LaunchRecord, PlanEvent, Recording};
use anyhow::{Context, Result};

/// A buffer's interval of use, in event indices (both ends inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: usize,
    pub end: usize,
    pub bytes: u64,
}

impl Interval {
    pub fn overlaps(&self, o: &Interval) -> bool {
        self.start <= o.end && o.start <= self.end
    }
}

/// A recording split into resident state and one step.
pub struct StepPlan {
    pub rec: Recording,
    /// Index of the event the step starts after.
    pub step_start: usize,
    /// Buffers live when the step starts.
    pub resident: Vec<usize>,
    /// Buffers allocated during the step.
    pub step_buffers: Vec<usize>,
}

/// The figures of a plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PlanSummary {
    pub launches: usize,
    /// Device copies and fills (memset, device-to-device).
    pub device_copies: usize,
    pub host_to_device: usize,
    pub host_to_device_bytes: u64,
    pub device_to_host: usize,
    /// Reads of a value a kernel computed: the host waits for the device.
    pub data_dependent_readbacks: usize,
    pub allocations: usize,
    pub resident_bytes: u64,
    /// Peak of the eager allocator over the whole recording.
    pub eager_peak: u64,
    /// Peak of the eager allocator during the step (resident included).
    pub eager_step_peak: u64,
    /// Resident bytes plus the packed step buffers.
    pub arena_peak: u64,
    /// Resident bytes plus the most bytes in use at one event.
    pub arena_lower_bound: u64,
}

impl StepPlan {
    /// Splits `rec` at the first mark named `mark`.
    pub fn new(rec: Recording, mark: &str) -> Result<StepPlan> {
        let step_start = rec
            .events
            .iter()
            .position(|e| matches!(e, PlanEvent::Mark(m) if m == mark))
            .with_context(|| format!("the recording has no mark `{mark}`"))?;
        let (resident, step_buffers) = (0..rec.buffers.len())
            .filter(|&b| rec.buffers[b].free_at.is_none_or(|f| f > step_start))
            .partition(|&b| rec.buffers[b].alloc_at < step_start);
        Ok(StepPlan {
            rec,
            step_start,
            resident,
            step_buffers,
        })
    }

    /// The step's events.
    pub fn step_events(&self) -> &[PlanEvent] {
        &self.rec.events[self.step_start..]
    }

    /// The step's launches.
    pub fn launches(&self) -> impl Iterator<Item = &LaunchRecord> {
        self.step_events().iter().filter_map(|e| match e {
            PlanEvent::Launch(l) => Some(&**l),
            _ => None,
        })
    }

    /// Use interval of each step buffer (same order as `step_buffers`): first
    /// to last event that touches it, and at least as long as a table of
    /// addresses that points into it ([`Recording::links`]); a buffer nothing
    /// touches lives at its allocation only.
    pub fn use_intervals(&self) -> Vec<Interval> {
        let mut first = vec![usize::MAX; self.rec.buffers.len()];
        let mut last = vec![0usize; self.rec.buffers.len()];
        for (i, e) in self.rec.events.iter().enumerate().skip(self.step_start) {
            let touched: &[usize] = match e {
                PlanEvent::Launch(l) => &l.buffers,
                PlanEvent::Copy { buffers, .. } => buffers,
                _ => &[],
            };
            for &b in touched {
                first[b] = first[b].min(i);
                last[b] = last[b].max(i);
            }
        }
        for &(table, b) in &self.rec.links {
            if first[table] != usize::MAX {
                first[b] = first[b].min(first[table]);
                last[b] = last[b].max(last[table]);
            }
        }
        self.step_buffers
            .iter()
            .map(|&b| {
                let BufferLife {
                    bytes, alloc_at, ..
                } = self.rec.buffers[b];
                if first[b] == usize::MAX {
                    Interval {
                        start: alloc_at,
                        end: alloc_at,
                        bytes,
                    }
                } else {
                    Interval {
                        start: first[b],
                        end: last[b],
                        bytes,
                    }
                }
            })
            .collect()
    }

    pub fn resident_bytes(&self) -> u64 {
        self.resident
            .iter()
            .map(|&b| self.rec.buffers[b].bytes)
            .sum()
    }

    /// The arena of the step buffers (offsets above the resident block).
    pub fn arena(&self) -> arena::Arena {
        arena::Arena::pack(&self.use_intervals())
    }

    pub fn summary(&self) -> PlanSummary {
        let (eager_peak, eager_step_peak) = eager_peaks(&self.rec, self.step_start);
        let mut s = PlanSummary {
            launches: 0,
            device_copies: 0,
            host_to_device: 0,
            host_to_device_bytes: 0,
            device_to_host: 0,
            data_dependent_readbacks: 0,
            allocations: self.step_buffers.len(),
            resident_bytes: self.resident_bytes(),
            eager_peak,
            eager_step_peak,
            arena_peak: 0,
            arena_lower_bound: 0,
        };
        for e in self.step_events() {
            match e {
                PlanEvent::Launch(_) => s.launches += 1,
                PlanEvent::Copy { kind, bytes, .. } => match kind {
                    CopyKind::HostToDevice => {
                        s.host_to_device += 1;
                        s.host_to_device_bytes += bytes;
                    }
                    CopyKind::DeviceToHost { data_dependent } => {
                        s.device_to_host += 1;
                        s.data_dependent_readbacks += *data_dependent as usize;
                    }
                    CopyKind::DeviceToDevice | CopyKind::Memset => s.device_copies += 1,
                },
                _ => {}
            }
        }
        let intervals = self.use_intervals();
        s.arena_peak = s.resident_bytes + arena::Arena::pack(&intervals).peak;
        s.arena_lower_bound = s.resident_bytes + arena::max_live(&intervals);
        s
    }
}

/// (peak over the whole recording, peak from event `from` on) of allocated bytes.
pub fn eager_peaks(rec: &Recording, from: usize) -> (u64, u64) {
    let (mut live, mut peak, mut step_peak) = (0u64, 0u64, 0u64);
    for (i, e) in rec.events.iter().enumerate() {
        match e {
            PlanEvent::Alloc { buffer } => live += rec.buffers[*buffer].bytes,
            PlanEvent::Free { buffer } => live -= rec.buffers[*buffer].bytes,
            _ => {}
        }
        peak = peak.max(live);
        if i >= from {
            step_peak = step_peak.max(live);
        }
    }
    (peak, step_peak)
}

/// `bytes` as "12.3 MB" / "4.56 GB" (decimal units).
pub fn fmt_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
