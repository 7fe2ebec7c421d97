//! A step's device work as one list: launches, device copies and fills in
//! queue order, with the step's host→device copies served from one staging
//! buffer. [`super::step_arena::StepArena`] captures it from the first step it
//! serves from its arena and replays it for every later step
//! ([`Device::replay`]): the host code of a step still runs (it yields the
//! arguments, which are checked against the plan and patched into the list),
//! but the device receives the step as one submission after one upload of
//! the staging bytes.
//!
//! - Emu and the recording device run the list op by op
//!   ([`LaunchList::run_in_order`], the default of [`Device::replay`]).
//! - Cuda captures the list into a CUDA graph by stream capture (the same
//!   `run_in_order` on a capturing stream), instantiates it, and launches the
//!   graph; it captures again when the list's arguments changed since
//!   ([`LaunchList::version`]), and runs a part of the list (a host read
//!   inside a step) op by op.

use super::device::{Device, KernelArgs, LaunchConfig};
use super::registry::Kernel;
use crate::tensor::Buffer;
use anyhow::{Context, Result};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One operation of the list.
#[derive(Clone)]
pub enum ListOp {
    Launch {
        kernel: Kernel,
        cfg: LaunchConfig,
        /// Boxed: the packed arguments are large next to the other operations.
        args: Box<KernelArgs>,
    },
    /// A host→device copy of the step: `bytes` from the staging buffer at `offset` to `dst`.
    Staged {
        dst: u64,
        offset: usize,
        bytes: usize,
    },
    DeviceToDevice {
        dst: u64,
        src: u64,
        bytes: usize,
    },
    Memset {
        dst: u64,
        byte: u8,
        bytes: usize,
    },
}

/// The captured list of a step.
pub struct LaunchList {
    /// Identifies the list (a Cuda graph belongs to one list).
    pub id: u64,
    pub ops: Vec<ListOp>,
    /// The staged copies' bytes at their offsets, uploaded before each replay.
    pub staging_host: Vec<u8>,
    /// The staging buffer on the device (allocated when the capture completes).
    pub staging: Option<Arc<Buffer>>,
    /// Bumped whenever an operation's arguments change.
    pub version: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for LaunchList {
    fn default() -> Self {
        LaunchList {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ops: Vec::new(),
            staging_host: Vec::new(),
            staging: None,
            version: 0,
        }
    }
}

impl LaunchList {
    /// Appends a host→device copy of `src` to `dst` (its bytes go to staging).
    pub fn push_staged(&mut self, dst: u64, src: &[u8]) {
        let offset = self.staging_host.len().next_multiple_of(16);
        self.staging_host.resize(offset, 0);
        self.staging_host.extend_from_slice(src);
        self.ops.push(ListOp::Staged {
            dst,
            offset,
            bytes: src.len(),
        });
    }

    /// Runs `range` of the list on `dev`, one operation after the other
    /// (the staging bytes must be on the device).
    pub fn run_in_order<D: Device + ?Sized>(&self, dev: &D, range: Range<usize>) -> Result<()> {
        let staging = || {
            self.staging
                .as_ref()
                .map(|b| b.addr())
                .context("launch list: no staging buffer on the device")
        };
        for (i, op) in self.ops[range.clone()].iter().enumerate() {
            let at = range.start + i;
            match op {
                ListOp::Launch { kernel, cfg, args } => dev
                    .launch(*kernel, *cfg, &mut args.clone())
                    .with_context(|| format!("launch list: operation {at}"))?,
                ListOp::Staged { dst, offset, bytes } => {
                    dev.memcpy_dtod(*dst, staging()? + *offset as u64, *bytes)?
                }
                ListOp::DeviceToDevice { dst, src, bytes } => {
                    dev.memcpy_dtod(*dst, *src, *bytes)?
                }
                ListOp::Memset { dst, byte, bytes } => dev.memset(*dst, *byte, *bytes)?,
            }
        }
        Ok(())
    }
}
