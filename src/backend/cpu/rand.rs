//! Philox noise ([`RandOps`]).

use super::{view_mut, CpuBackend};
use crate::ops::{MemoryOps, RandOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::Result;

impl RandOps for CpuBackend {
    fn randn(&self, shape: Shape, dtype: DType, seed: u64, offset: u64) -> Result<Tensor> {
        let t = self.alloc(shape, dtype)?;
        let out = view_mut(&t);
        // Parallel over chunks: each chunk's noise depends only on its offset.
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
            crate::backend::philox::fill_normal(c, seed, offset + (i * CHUNK) as u64)
        });
        Ok(t)
    }
}
