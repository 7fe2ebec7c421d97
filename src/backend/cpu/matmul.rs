//! Batched matrix products (`bmm`).
//!
//! Every product goes through the `gemm` crate (runtime-dispatched SIMD,
//! rayon-parallel above its own size threshold) on row-major operands; the
//! transposes are expressed as strides, never materialised. `gemm` computes
//! `dst = α·dst + β·lhs·rhs`; bmm overwrites (`read_dst = false`).
//!
//! bmm runs the batch's products in parallel (one single-threaded GEMM per
//! matrix) when there are at least as many matrices as threads, else one after
//! the other, each GEMM using every thread.
use super::{view, view_mut, CpuBackend};
use crate::ops::matmul::bmm_dims;
use crate::ops::MatmulOps;
use crate::tensor::Tensor;
use anyhow::Result;
use rayon::prelude::*;

/// `dst[m×n] (row-major) = lhs·rhs`, with `lhs` element (i, p) at
/// `lhs[i·lhs_rs + p·lhs_cs]` and `rhs` element (p, j) at `rhs[p·rhs_rs + j·rhs_cs]`;
/// m, n, k ≥ 1. `dst` is overwritten.
pub(crate) fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    assert!(dst.len() == m * n && m * n * k > 0);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the pointers cover every element addressed by the given extents
    // and strides (asserted above); dst does not alias lhs or rhs (it is a
    // freshly allocated output).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Row and column strides of a row-major matrix with `cols` columns, read
/// as itself `(cols, 1)` or transposed `(1, cols)`.
pub(crate) fn strides(cols: usize, transposed: bool) -> (usize, usize) {
    if transposed {
        (1, cols)
    } else {
        (cols, 1)
    }
}

impl MatmulOps for CpuBackend {
    /// `c[β] = op(a[β])·op(b[β])`, one gemm per matrix.
    fn bmm(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        let (av, bv) = (view(a, "bmm: a")?, view(b, "bmm: b")?);
        let d = bmm_dims(a, b, ta, tb)?;
        let (m, n, k) = (d.m, d.n, d.k);
        // a[β] is m×k (k×m when ta), b[β] is k×n (n×k when tb).
        let (a_rs, a_cs) = strides(if ta { m } else { k }, ta);
        let (b_rs, b_cs) = strides(if tb { k } else { n }, tb);
        let c = self.out_uninit(d.out)?;
        let (cs, (sa, sb)) = (m * n, (m * k, k * n));
        let cv = view_mut(&c);
        let product = |(cm, (am, bm)): (&mut [f32], (&[f32], &[f32])), par| {
            matmul(cm, (m, n, k), am, (a_rs, a_cs), bm, (b_rs, b_cs), par)
        };
        if d.batch >= rayon::current_num_threads() {
            cv.par_chunks_mut(cs)
                .zip(av.par_chunks(sa).zip(bv.par_chunks(sb)))
                .for_each(|x| product(x, gemm::Parallelism::None));
        } else {
            cv.chunks_mut(cs)
                .zip(av.chunks(sa).zip(bv.chunks(sb)))
                .for_each(|x| product(x, gemm::Parallelism::Rayon(0)));
        }
        Ok(c)
    }
}
