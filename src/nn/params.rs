//! The parameter store: named f32 tensors on a backend, deterministically
//! initialised from a seed, so a model built twice with the same seed is the
//! same model on every backend.

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
        self.entries.push(ParamEntry {
            name: name.to_string(),
            t,
            decay,
        });
        Ok(ParamId(index))
    }

    pub fn get(&self, id: ParamId) -> &Tensor {
        &self.entries[id.0].t
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
