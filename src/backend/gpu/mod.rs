//! The gpu backend: the CUDA kernels of `kernels/*.cu`, driven from Rust
//! against the [`device::Device`] interface, so the same host code runs on a
//! real GPU ([`cuda::Cuda`]) and on the CPU emulation ([`emu::Emu`]).
//!
//! Layout: one Rust file per kernel family, next to one `.cu` per family —
//! `elementwise.rs` ↔ `kernels/elementwise.cu`, `diffusion.rs` ↔
//! `kernels/diffusion.cu`, … Each Rust file adds the family's ops to
//! [`GpuBackend`] as inherent methods: check arguments, allocate outputs,
//! compute the launch geometry (documented next to the launch), pack the
//! arguments, launch. `registry.rs` is the generated kernel enum.
//!
//! Dtypes: activations are bf16 by default ([`GpuBackend::act_dtype`]) with f32
//! accumulation inside kernels; parameters, statistics and scalars are f32.

pub mod code_image;
pub mod conv;
pub mod cuda;
pub mod device;
pub mod diffusion;
pub mod elementwise;
pub mod emu;
pub mod launch_list;
pub mod layout;
pub mod loss;
pub mod matmul;
mod memory;
pub use loss::PENDING_LABEL_CHECKS;
pub mod norm;
pub mod optim;
pub mod plan;
pub mod pointwise;
pub mod reduce;
pub mod registry;
pub mod step_arena;

use crate::tensor::{DType, MemoryKind, Tensor};
use anyhow::{bail, ensure, Context, Result};
use device::{Device, DeviceKind};
use std::sync::Arc;

/// Opens a device by name: `emu`, `cuda` (= `cuda:0`) or `cuda:N`, behind a
/// [`step_arena::StepArena`] (a pass-through until a training step begins).
pub fn open_device(spec: &str) -> Result<Arc<dyn Device>> {
    let spec = spec.trim();
    let device: Arc<dyn Device> = match spec {
        "emu" => Arc::new(emu::Emu::new()),
        "cuda" => Arc::new(cuda::Cuda::new(0)?),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..]
                .parse()
                .with_context(|| format!("device `{s}`: expected cuda:<ordinal>"))?;
            Arc::new(cuda::Cuda::new(n)?)
        }
        other => bail!("unknown gpu device `{other}` (emu, cuda, cuda:N)"),
    };
    Ok(Arc::new(step_arena::StepArena::new(device)))
}

/// Marks the start of a training step on `b` when it is a gpu backend (see
/// [`step_arena`]); nothing on other backends.
pub fn begin_step(b: &dyn crate::backend::Backend) -> Result<()> {
    match b.as_any().downcast_ref::<GpuBackend>() {
        Some(g) => g.begin_step(),
        None => Ok(()),
    }
}

/// End the training step that began on `b` (see [`Device::end_step`]); a
/// no-op on other backends. The training loop calls it before a validation
/// pass, which belongs to no step.
pub fn end_step(b: &dyn crate::backend::Backend) -> Result<()> {
    match b.as_any().downcast_ref::<GpuBackend>() {
        Some(g) => g.end_step(),
        None => Ok(()),
    }
}

/// Tells a gpu backend `b` which weights an optimiser trains, so their bf16
/// packings for the conv kernels are made together, by one launch per change
/// of the weights ([`GpuBackend::train_weights`]); nothing on other backends.
pub fn train_weights(b: &dyn crate::backend::Backend, weights: &[&Tensor]) {
    if let Some(g) = b.as_any().downcast_ref::<GpuBackend>() {
        g.train_weights(weights);
    }
}

/// The gpu backend over one device.
pub struct GpuBackend {
    device: Arc<dyn Device>,
    act_dtype: DType,
    /// `one_hot` calls whose id check has not been read back yet (see
    /// [`GpuBackend::one_hot`]): settled at the next download or synchronize.
    label_checks: std::sync::Mutex<Vec<loss::LabelCheck>>,
    /// Weights packed as bf16 for the conv kernels, until the next in-place
    /// write (see `conv::operands`).
    packed_weights: std::sync::Mutex<Vec<conv::PackedWeight>>,
    /// Weights an optimiser trains, packed together (`conv::operands`).
    trained_weights: std::sync::Mutex<Vec<conv::TrainedWeight>>,
}

impl GpuBackend {
    /// Activations in bf16.
    pub fn new(device: Arc<dyn Device>) -> GpuBackend {
        GpuBackend::with_act_dtype(device, DType::BF16)
    }
    pub fn with_act_dtype(device: Arc<dyn Device>, act_dtype: DType) -> GpuBackend {
        GpuBackend {
            device,
            act_dtype,
            label_checks: Default::default(),
            packed_weights: Default::default(),
            trained_weights: Default::default(),
        }
    }
    /// The emulated GPU (fiber order from `VOXDIFF_EMU_SHUFFLE`).
    pub fn emu() -> GpuBackend {
        GpuBackend::new(Arc::new(emu::Emu::new()))
    }
    /// GPU `ordinal`; an error on a machine without a driver or GPU.
    pub fn cuda(ordinal: usize) -> Result<GpuBackend> {
        Ok(GpuBackend::new(Arc::new(cuda::Cuda::new(ordinal)?)))
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    /// A training step begins: the previous step's `one_hot` label checks are
    /// read (a host sync between steps, none inside one; the checks keep step
    /// buffers alive), then the device is told ([`Device::begin_step`]).
    pub fn begin_step(&self) -> Result<()> {
        self.settle_label_checks()?;
        self.forget_packed_weights();
        self.device.begin_step()
    }

    pub fn end_step(&self) -> Result<()> {
        self.settle_label_checks()?;
        self.device.end_step()
    }

    fn memory_kind(&self) -> MemoryKind {
        match self.device.kind() {
            // A plan's addresses point at nothing: never host memory.
            DeviceKind::Cuda | DeviceKind::Plan => MemoryKind::Cuda,
            DeviceKind::Emu => MemoryKind::Host,
        }
    }

    /// Checks that `t` lives in this device's memory.
    pub(crate) fn check(&self, t: &Tensor, what: &str) -> Result<()> {
        ensure!(
            t.buffer().kind() == self.memory_kind(),
            "{what}: tensor {t:?} is not in {} memory (it belongs to another backend)",
            self.device.name()
        );
        Ok(())
    }

    // ----------------------------------------------------------------- memory
}
