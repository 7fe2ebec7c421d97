//! The parameter store: named f32 tensors on a backend, deterministically
//! initialised from a seed, so a model built twice with the same seed is the
//! same model on every backend. Layers create their parameters through a
//! [`ParamBuilder`], which names them hierarchically (`down.1.block.conv1.w`)
//! from the prefixes the model code pushes; a parameter can be frozen (kept
//! out of the gradient and the optimiser, e.g. a pretrained encoder).

use crate::autograd::{Graph, Var};
use crate::backend::{philox, Backend};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

/// Index of a parameter in its [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// How a parameter starts.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal(0, σ²) truncated to ±2σ, with σ chosen so the *truncated*
    /// distribution has standard deviation `sqrt(scale / fan_in)` — Haiku's
    /// `VarianceScaling(scale, "fan_in", "truncated_normal")`, the default of
    /// its Conv layers.
    FanIn {
        fan_in: usize,
        scale: f32,
    },
    /// Normal(0, σ²) truncated to ±2σ with σ = `std` — Haiku's Linear default
    /// (`TruncatedNormal(1/sqrt(fan_in))`).
    TruncatedNormal {
        std: f32,
    },
}

/// One stored parameter.
pub struct ParamEntry {
    pub name: String,
    pub t: Tensor,
    /// Decoupled weight decay applies (weights yes; biases and norm affines no).
    pub decay: bool,
    /// Held fixed: the graph treats it as a constant and the optimiser skips it.
    pub frozen: bool,
}

/// All parameters of a model, in creation order.
pub struct ParamStore {
    pub entries: Vec<ParamEntry>,
    seed: u64,
}

/// Standard deviation of a unit normal truncated to ±2.
const TRUNC2_STD: f32 = 0.879_625_76;

impl ParamStore {
    pub fn new(seed: u64) -> ParamStore {
        ParamStore {
            entries: Vec::new(),
            seed,
        }
    }

    /// Create a parameter. Its values depend only on the store seed and its
    /// index, never on the backend.
    pub fn add(
        &mut self,
        b: &dyn Backend,
        name: &str,
        shape: Shape,
        init: Init,
    ) -> Result<ParamId> {
        let index = self.entries.len();
        let n = shape.numel();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::FanIn { fan_in, scale } => {
                let std = (scale / fan_in.max(1) as f32).sqrt() / TRUNC2_STD;
                truncated_normal(self.seed, index as u64, n, std)
            }
            Init::TruncatedNormal { std } => truncated_normal(self.seed, index as u64, n, std),
        };
        let t = b.upload(&values, shape, DType::F32)?;
        let decay = matches!(init, Init::FanIn { .. } | Init::TruncatedNormal { .. });
        anyhow::ensure!(
            self.find(name).is_none(),
            "parameter {name} is defined twice"
        );
        self.entries.push(ParamEntry {
            name: name.to_string(),
            t,
            decay,
            frozen: false,
        });
        Ok(ParamId(index))
    }

    pub fn get(&self, id: ParamId) -> &Tensor {
        &self.entries[id.0].t
    }
    /// Parameter `id` as a value of `g`: tracked, or a constant when frozen.
    pub fn var(&self, g: &mut Graph, id: ParamId) -> Var {
        let e = &self.entries[id.0];
        if e.frozen {
            g.constant(e.t.clone())
        } else {
            g.param(id.0, &e.t)
        }
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.entries.iter().map(|e| e.t.numel()).sum()
    }
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(ParamId)
    }
    /// Freeze every parameter whose name starts with `prefix` (all with "");
    /// returns how many.
    pub fn freeze(&mut self, prefix: &str) -> usize {
        let mut n = 0;
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.name.starts_with(prefix))
        {
            e.frozen = true;
            n += 1;
        }
        n
    }
    /// Parameters the optimiser updates.
    pub fn trainable(&self) -> impl Iterator<Item = (ParamId, &ParamEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.frozen)
            .map(|(i, e)| (ParamId(i), e))
    }
}

/// Creates parameters under a name prefix: `pb.pp("down").pp(1).pp("conv")`
/// adds `down.1.conv.<name>`. The model code pushes one prefix per level of
/// its structure instead of formatting names.
pub struct ParamBuilder<'a> {
    store: &'a mut ParamStore,
    dev: &'a dyn Backend,
    prefix: String,
}

impl<'a> ParamBuilder<'a> {
    /// Parameters of `store` on `dev`, at the root.
    pub fn new(store: &'a mut ParamStore, dev: &'a dyn Backend) -> ParamBuilder<'a> {
        ParamBuilder {
            store,
            dev,
            prefix: String::new(),
        }
    }
    /// A builder one level down: names under `<prefix>.<part>`.
    pub fn pp(&mut self, part: impl std::fmt::Display) -> ParamBuilder<'_> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        ParamBuilder {
            store: self.store,
            dev: self.dev,
            prefix,
        }
    }
    /// The full name of `name` at this level.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
    /// Create parameter `name` at this level (see [`ParamStore::add`]).
    pub fn add(&mut self, name: &str, shape: Shape, init: Init) -> Result<ParamId> {
        let full = self.path(name);
        self.store.add(self.dev, &full, shape, init)
    }
    /// Create state `name` at this level: stored and checkpointed like a
    /// parameter, but frozen (no gradient, no optimiser update, no decay) —
    /// batch norm's running statistics.
    pub fn add_state(&mut self, name: &str, shape: Shape, init: Init) -> Result<ParamId> {
        let id = self.add(name, shape, init)?;
        let e = &mut self.store.entries[id.0];
        e.frozen = true;
        e.decay = false;
        Ok(id)
    }
    /// Set whether decoupled weight decay applies to `id`.
    pub fn set_decay(&mut self, id: ParamId, decay: bool) {
        self.store.entries[id.0].decay = decay;
    }
    pub fn dev(&self) -> &dyn Backend {
        self.dev
    }
}

/// `n` draws of N(0, std²) truncated to ±2·std, from the Philox stream of
/// (`seed`, parameter `index`): rejected draws are replaced by the next ones.
fn truncated_normal(seed: u64, index: u64, n: usize, std: f32) -> Vec<f32> {
    // A distinct stream per parameter: the index goes into the high bits of the seed.
    let stream = seed ^ (index.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(n);
    let mut e = 0u64;
    while out.len() < n {
        let z = philox::normal(stream, e);
        e += 1;
        if z.abs() <= 2.0 {
            out.push(z * std);
        }
    }
    out
}
