//! Batched matrix products (`bmm`) and the dense layer on per-sample vectors.
//!
//! Every product goes through the `gemm` crate (runtime-dispatched SIMD,
//! rayon-parallel above its own size threshold) on row-major operands; the
//! transposes are expressed as strides, never materialised. `gemm` computes
//! `dst = α·dst + β·lhs·rhs`; we either overwrite (`read_dst = false`) or add
//! to a destination pre-filled with the bias.
//!
//! bmm runs the batch's products in parallel (one single-threaded GEMM per
//! matrix) when there are at least as many matrices as threads, else one after
//! the other, each GEMM using every thread.
use super::{check, view, view_mut, CpuBackend};
use crate::ops::matmul::bmm_dims;
use crate::ops::MatmulOps;
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};
use rayon::prelude::*;

const RAYON: gemm::Parallelism = gemm::Parallelism::Rayon(0);

/// `(rows, cols)` of a rank-2 f32 tensor.
fn matrix(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    check(t, what)?;
    ensure!(
        t.shape().rank() == 2,
        "{what}: expected a matrix, got shape {}",
        t.shape()
    );
    Ok((t.shape().dims()[0], t.shape().dims()[1]))
}

/// `dst[m×n] (row-major) = lhs·rhs` (or `+=` when `accumulate`), with `lhs`
/// element (i, p) at `lhs[i·lhs_rs + p·lhs_cs]` and `rhs` element (p, j) at
/// `rhs[p·rhs_rs + j·rhs_cs]`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    debug_assert_eq!(dst.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    debug_assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the pointers cover every element addressed by the given extents
    // and strides (checked by the callers' shape validation, asserted above);
    // dst does not alias lhs or rhs (it is a freshly allocated output).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
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

/// Row and column strides of `op(t)` for a row-major `rows × cols` matrix t:
/// `(cols, 1)`, or `(1, cols)` when transposed.
fn strides(cols: usize, transposed: bool) -> (usize, usize) {
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
            matmul(cm, m, n, k, am, a_rs, a_cs, bm, b_rs, b_cs, false, par)
        };
        if d.batch >= rayon::current_num_threads() {
            cv.par_chunks_mut(cs)
                .zip(av.par_chunks(sa).zip(bv.par_chunks(sb)))
                .for_each(|x| product(x, gemm::Parallelism::None));
        } else {
            cv.chunks_mut(cs)
                .zip(av.chunks(sa).zip(bv.chunks(sb)))
                .for_each(|x| product(x, RAYON));
        }
        Ok(c)
    }

    /// `y = x·w + self`: x `[M,K]`, w `[K,N]`, bias `[N]`.
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (m, k) = matrix(x, "linear: x")?;
        let (kw, n) = matrix(w, "linear: w")?;
        ensure!(
            k == kw,
            "linear: x is {m}×{k} but w is {kw}×{n} (inner dimensions differ)"
        );
        let y = self.out_uninit(Shape::new(&[m, n]))?;
        let ys = view_mut(&y);
        if let Some(bias) = bias {
            let bs = view(bias, "linear: bias")?;
            ensure!(
                bias.shape().dims() == [n],
                "linear: bias must have shape [{n}], got {}",
                bias.shape()
            );
            for row in ys.chunks_exact_mut(n.max(1)) {
                row.copy_from_slice(bs);
            }
        }
        let (xs, ws) = (view(x, "linear: x")?, view(w, "linear: w")?);
        matmul(ys, m, n, k, xs, k, 1, ws, n, 1, bias.is_some(), RAYON);
        Ok(y)
    }

    /// `dx[M,K] = dy[M,N]·wᵀ` (wᵀ read from w `[K,N]` with swapped strides).
    fn linear_dgrad(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (m, n) = matrix(dy, "linear_dgrad: dy")?;
        let (k, nw) = matrix(w, "linear_dgrad: w")?;
        ensure!(
            n == nw,
            "linear_dgrad: dy is {m}×{n} but w is {k}×{nw} (output dimensions differ)"
        );
        let dx = self.out_uninit(Shape::new(&[m, k]))?;
        let (dys, ws) = (view(dy, "linear_dgrad: dy")?, view(w, "linear_dgrad: w")?);
        // wᵀ[j, p] = w[p, j]: row stride 1, column stride n.
        matmul(view_mut(&dx), m, k, n, dys, n, 1, ws, 1, n, false, RAYON);
        Ok(dx)
    }

    /// `dw[K,N] = xᵀ·dy`, `db[N] = Σ_m dy[m,·]` (f64 accumulation) if `with_bias`.
    fn linear_wgrad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (m, k) = matrix(x, "linear_wgrad: x")?;
        let (md, n) = matrix(dy, "linear_wgrad: dy")?;
        ensure!(
            m == md,
            "linear_wgrad: x has {m} rows but dy has {md} (batch sizes differ)"
        );
        let (xs, dys) = (view(x, "linear_wgrad: x")?, view(dy, "linear_wgrad: dy")?);
        let dw = self.out_uninit(Shape::new(&[k, n]))?;
        // xᵀ[i, p] = x[p, i]: row stride 1, column stride k.
        matmul(view_mut(&dw), k, n, m, xs, 1, k, dys, n, 1, false, RAYON);
        let db = if with_bias {
            let db = self.out_uninit(Shape::new(&[n]))?;
            let mut acc = vec![0f64; n];
            for row in dys.chunks_exact(n.max(1)) {
                for (a, &g) in acc.iter_mut().zip(row) {
                    *a += g as f64;
                }
            }
            for (o, a) in view_mut(&db).iter_mut().zip(acc) {
                *o = a as f32;
            }
            Some(db)
        } else {
            None
        };
        Ok((dw, db))
    }
}
