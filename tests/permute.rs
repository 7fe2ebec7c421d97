//! `permute` on every backend (CPU, emulated GPU with f32 and bf16 tensors):
//! every permutation of rank-3 tensors and a selection of rank 1, 2, 4 and 5,
//! at extents below, at and across the 32 × 32 transpose tile, with runs that
//! are and are not multiples of 8 (the vector copy) and dims of extent 1 (the
//! merged plan). A permute moves bits: outputs must equal the stored inputs
//! exactly. Also the plan's merging, the contract's errors, and the gradient
//! of `Graph::permute` by finite differences.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects, Subject};
use voxdiff::ops::layout::permute_plan;
use voxdiff::tensor::{DType, Shape};

/// Every permutation of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

/// `x` (row-major, extents `dims`) permuted: output dim k is x's dim perm[k].
fn reference(x: &[f32], dims: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = dims.len();
    let mut stride = vec![1; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * dims[i + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    (0..x.len())
        .map(|mut o| {
            let mut src = 0;
            for k in (0..rank).rev() {
                src += (o % out_dims[k]) * stride[perm[k]];
                o /= out_dims[k];
            }
            x[src]
        })
        .collect()
}

/// Permutes a random tensor of `dims` in `dtype` on `s` and checks every bit.
fn check(s: &Subject, rng: &mut Rng, dims: &[usize], perm: &[usize], dtype: DType) {
    let shape = Shape::new(dims);
    let data = rng.vec(shape.numel(), -1.0, 1.0);
    let x = s.dev().upload(&data, shape, dtype).unwrap();
    let stored = s.dev().download(&x).unwrap();
    let y = s.dev().permute(&x, perm).unwrap();
    let what = format!(
        "permute {dims:?} by {perm:?} ({}) on {}",
        dtype.name(),
        s.label
    );
    let want_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    assert_eq!(y.shape().dims(), want_dims, "{what}: shape");
    assert_eq!(y.dtype(), dtype, "{what}: dtype");
    let got = s.dev().download(&y).unwrap();
    let want = reference(&stored, dims, perm);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i} is {g}, want {w}"
        );
    }
}

#[test]
fn every_permutation_of_rank_3() {
    for s in subjects() {
        let mut rng = Rng::new(31);
        // Odd extents; a run of 8 (vector copy); extents across a tile.
        for dims in [[3, 5, 7], [2, 3, 8], [2, 33, 70], [1, 40, 9]] {
            for perm in permutations(3) {
                check(&s, &mut rng, &dims, &perm, s.dev().act_dtype());
            }
        }
    }
}

#[test]
fn permutations_of_rank_1_2_4_and_5() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[7], &[0]),
        (&[37, 5], &[1, 0]),
        (&[16, 24], &[1, 0]),
        // Attention: [B, T, heads, d] → [B, heads, T, d] and back; Kᵀ per head.
        (&[2, 7, 3, 8], &[0, 2, 1, 3]),
        (&[2, 3, 7, 8], &[0, 2, 1, 3]),
        (&[2, 7, 3, 5], &[0, 2, 3, 1]),
        (&[3, 4, 5, 6], &[3, 2, 1, 0]),
        (&[2, 3, 4, 5], &[2, 3, 0, 1]),
        // NDHWC ↔ NCDHW, extents of 1 (merged away), a full reversal.
        (&[2, 3, 4, 5, 6], &[0, 4, 1, 2, 3]),
        (&[2, 6, 3, 4, 5], &[0, 2, 3, 4, 1]),
        (&[1, 3, 1, 35, 9], &[4, 2, 0, 3, 1]),
        (&[2, 3, 2, 3, 2], &[4, 3, 2, 1, 0]),
        (&[2, 1, 1, 1, 16], &[0, 4, 1, 2, 3]),
    ];
    for s in subjects() {
        let mut rng = Rng::new(32);
        for (dims, perm) in cases {
            check(&s, &mut rng, dims, perm, s.dev().act_dtype());
            // f32 tensors (per-sample vectors, parameters) on every backend.
            check(&s, &mut rng, dims, perm, DType::F32);
        }
    }
}

#[test]
fn the_plan_merges_dims_that_stay_adjacent() {
    let plan = |dims: &[usize], perm: &[usize]| permute_plan(Shape::new(dims), perm).unwrap();
    // The identity is one contiguous run.
    let p = plan(&[2, 3, 4], &[0, 1, 2]);
    assert_eq!((p.rank, p.dims[0], p.src_strides[0]), (1, 24, 1));
    assert!(p.keeps_last());
    // Two blocks swapped: a 6 × 20 → 20 × 6 transpose.
    let p = plan(&[2, 3, 4, 5], &[2, 3, 0, 1]);
    assert_eq!(
        (p.rank, &p.dims[..2], &p.src_strides[..2]),
        (2, &[20, 6][..], &[1, 20][..])
    );
    assert!(!p.keeps_last());
    assert_eq!(p.contiguous_group(), 0);
    assert_eq!(&p.dst_strides[..2], &[6, 1]);
    // Heads to the front: the last dim stays, runs of 8.
    let p = plan(&[2, 7, 3, 8], &[0, 2, 1, 3]);
    assert_eq!((p.rank, &p.dims[..4]), (4, &[2, 3, 7, 8][..]));
    assert_eq!(&p.src_strides[..4], &[168, 8, 24, 1]);
    assert!(p.keeps_last());
    // Extents of 1 vanish and let their neighbours merge.
    let p = plan(&[2, 1, 1, 1, 16], &[0, 4, 1, 2, 3]);
    assert_eq!((p.rank, p.dims[0]), (1, 32));
    assert_eq!(p.out.dims(), [2, 16, 1, 1, 1]);
}

#[test]
fn permute_rejects_what_is_not_a_permutation() {
    for s in subjects() {
        let x = s
            .dev()
            .zeros(Shape::new(&[2, 3, 4]), s.dev().act_dtype())
            .unwrap();
        for perm in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3], &[2, 1, 0, 3]] {
            let e = format!("{:#}", s.dev().permute(&x, perm).unwrap_err());
            assert!(
                e.contains("is not a permutation"),
                "{}: {perm:?}: {e}",
                s.label
            );
        }
    }
}

#[test]
fn permute_gradients_match_finite_differences() {
    let mut rng = Rng::new(33);
    for (dims, perm) in [
        (&[2, 3, 4][..], &[2, 0, 1][..]),
        (&[2, 3, 4], &[1, 0, 2]),
        (&[2, 3, 2, 3], &[0, 2, 3, 1]),
        (&[2, 1, 3, 2, 2], &[4, 2, 0, 3, 1]),
    ] {
        let shape = Shape::new(dims);
        let inputs = [(shape, rng.vec(shape.numel(), -1.0, 1.0))];
        grad_check(
            &format!("permute {dims:?} by {perm:?}"),
            &inputs,
            |g, v| g.permute(&v[0], perm),
            24,
            1e-2,
            1e-3,
            1e-4,
        );
    }
}
