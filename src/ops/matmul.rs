//! The matrix family: batched matrix products with transpose flags.
//!
//! `bmm(a, b, ta, tb)` multiplies `B` pairs of row-major matrices:
//! `c[β] = op(a[β]) · op(b[β])` with `op(a) = aᵀ` when `ta` (likewise `b`).
//! Operand `a` is `[B, M, K]` (`[B, K, M]` when `ta`), `b` is `[B, K, N]`
//! (`[B, N, K]` when `tb`), c is `[B, M, N]`. A rank-2 operand is one matrix
//! (`B = 1`); the output has a's rank. The transposes are read through
//! strides, never materialised: `dA = dC·op(b)ᵀ` and `dB = op(a)ᵀ·dC` are
//! bmm calls with other flags (see `autograd/matmul.rs`). A dense layer is a
//! bmm plus a bias broadcast (`Graph::linear`).

use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};

/// The extents of one `bmm` call: `batch` products of `[m, k] · [k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BmmDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// The output shape: `[batch, m, n]`, or `[m, n]` when a is rank 2.
    pub out: Shape,
}

impl BmmDims {
    /// `2·B·M·N·K`.
    pub fn flops(&self) -> u64 {
        2 * (self.batch * self.m * self.n * self.k) as u64
    }
    /// Fewest bytes: a, b read once and c written once, `elem` bytes each.
    pub fn min_bytes(&self, elem: usize) -> u64 {
        (self.batch * (self.m * self.k + self.k * self.n + self.m * self.n) * elem) as u64
    }
}

/// `(batch, rows, cols)` of a bmm operand (rank 2 is one matrix).
fn batched(t: &Tensor, name: &str) -> Result<(usize, usize, usize)> {
    let sh = t.shape();
    let d = sh.dims();
    match d.len() {
        2 => Ok((1, d[0], d[1])),
        3 => Ok((d[0], d[1], d[2])),
        _ => anyhow::bail!(
            "bmm: {name} must be a matrix [rows, cols] or a batch of them [B, rows, cols], got shape {}",
            t.shape()
        ),
    }
}

/// The contract of `bmm(a, b, ta, tb)` (see the module docs): ranks 2 or 3,
/// equal batches, matching inner extents, one dtype, no empty extent.
pub fn bmm_dims(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<BmmDims> {
    let (ba, ra, ca) = batched(a, "a")?;
    let (bb, rb, cb) = batched(b, "b")?;
    let (m, ka) = if ta { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if tb { (cb, rb) } else { (rb, cb) };
    let flags = format!("ta = {ta}, tb = {tb}");
    ensure!(
        ba == bb,
        "bmm: a {} and b {} hold different numbers of matrices ({ba} vs {bb})",
        a.shape(),
        b.shape()
    );
    ensure!(
        ka == kb,
        "bmm: a {} and b {} disagree on K ({ka} vs {kb}, {flags})",
        a.shape(),
        b.shape()
    );
    ensure!(
        a.dtype() == b.dtype(),
        "bmm: a is {} but b is {} (one dtype for both operands)",
        a.dtype().name(),
        b.dtype().name()
    );
    ensure!(
        ba * m * n * ka > 0,
        "bmm: a {} · b {} ({flags}) has an empty extent",
        a.shape(),
        b.shape()
    );
    let out = if a.shape().rank() == 2 {
        Shape::new(&[m, n])
    } else {
        Shape::new(&[ba, m, n])
    };
    Ok(BmmDims {
        batch: ba,
        m,
        n,
        k: ka,
        out,
    })
}

/// Dense products.
pub trait MatmulOps {
    /// `c[β] = op(a[β]) · op(b[β])` (module docs): a and b of one dtype (f32
    /// or bf16), c in that dtype, accumulated in f32.
    fn bmm(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor>;
}
