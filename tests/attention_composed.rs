//! Multi-head self-attention over the voxels of an NDHWC tensor
//! (`voxdiff::nn::self_attention::attend_composed`, the reference of the
//! fused `attend` — tests/attention_fused.rs), built only from the generic
//! primitives: the q, k, v projections as one 1×1×1 convolution sliced along
//! channels, reshape and permute into heads, the
//! scores as a bmm with b transposed, the 1/√d scaling as a lincomb, the row
//! softmax, the weighted values as a bmm, permute back, the output projection
//! as a 1×1×1 convolution. The proof that the primitives compose: the forward
//! matches an f64 attention written out directly on the CPU and the emulated
//! GPU (f32 and bf16 activations), and the gradient of every input and weight
//! matches finite differences through the graph.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::{grad_check, subjects};
use voxdiff::autograd::{Graph, Var};
use voxdiff::nn::self_attention::attend_composed;
use voxdiff::ops::ConvSpec;
use voxdiff::tensor::Shape;

/// Batch, spatial extents (tokens = voxels), channels, heads, head width.
const N: usize = 2;
const SPATIAL: [usize; 3] = [1, 2, 3];
const C: usize = 5;
const HEADS: usize = 2;
const D: usize = 3;
const T: usize = SPATIAL[0] * SPATIAL[1] * SPATIAL[2];
const HD: usize = HEADS * D;

fn x_shape() -> Shape {
    Shape::ndhwc(N, SPATIAL[0], SPATIAL[1], SPATIAL[2], C)
}
fn shapes() -> [Shape; 5] {
    [
        x_shape(),
        ConvSpec::K1.weight_shape(C, 3 * HD),
        Shape::new(&[3 * HD]),
        ConvSpec::K1.weight_shape(HD, C),
        Shape::new(&[C]),
    ]
}

/// y = proj_o(concat_h softmax(q_h k_hᵀ / √d) v_h), [q, k, v] = proj_qkv(x):
/// the library's composition, `nn::self_attention::attend_composed`.
fn attention(g: &mut Graph, v: &[Var]) -> anyhow::Result<Var> {
    attend_composed(g, &v[0], &v[1], Some(&v[2]), &v[3], Some(&v[4]), HEADS)
}

/// The same attention in f64, written out: x `[N, T, C]`, weights `[in, out]`.
fn reference(x: &[f32], w_qkv: &[f32], b_qkv: &[f32], w_o: &[f32], b_o: &[f32]) -> Vec<f64> {
    let dense = |inp: &[f64], w: &[f32], b: &[f32], din: usize, dout: usize| -> Vec<f64> {
        (0..inp.len() / din * dout)
            .map(|i| {
                let (r, j) = (i / dout, i % dout);
                b[j] as f64
                    + (0..din)
                        .map(|p| inp[r * din + p] * w[p * dout + j] as f64)
                        .sum::<f64>()
            })
            .collect()
    };
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let qkv = dense(&x64, w_qkv, b_qkv, C, 3 * HD); // [N·T, 3·H·d]
    let at = |n: usize, t: usize, part: usize, h: usize, e: usize| {
        qkv[(n * T + t) * 3 * HD + part * HD + h * D + e]
    };
    let mut o = vec![0.0; N * T * HD];
    for n in 0..N {
        for h in 0..HEADS {
            for i in 0..T {
                let s: Vec<f64> = (0..T)
                    .map(|j| {
                        (0..D)
                            .map(|e| at(n, i, 0, h, e) * at(n, j, 1, h, e))
                            .sum::<f64>()
                            / (D as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for e in 0..D {
                    o[(n * T + i) * HD + h * D + e] = (0..T)
                        .map(|j| (s[j] - m).exp() / z * at(n, j, 2, h, e))
                        .sum::<f64>();
                }
            }
        }
    }
    dense(&o, w_o, b_o, HD, C)
}

fn inputs(seed: u64) -> Vec<(Shape, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    shapes()
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            // Weights small enough that the softmax is neither flat nor one-hot.
            let r = if i == 1 || i == 3 { 0.6 } else { 1.0 };
            (s, rng.vec(s.numel(), -r, r))
        })
        .collect()
}

#[test]
fn the_composed_attention_matches_f64_on_every_backend() {
    let data = inputs(41);
    for s in subjects() {
        let dev = s.dev();
        // x in the activation dtype (the reference reads the stored values),
        // the weights f32 as parameters are everywhere.
        let (x, x_stored) = s.act(&data[0].1, data[0].0);
        let mut g = Graph::inference(dev);
        let mut vars = vec![g.constant(x)];
        vars.extend(data[1..].iter().map(|(sh, v)| g.constant(s.f32(v, *sh))));
        let y = attention(&mut g, &vars).unwrap();
        assert_eq!(y.shape(), x_shape());
        assert_eq!(y.t.dtype(), dev.act_dtype());
        let want = reference(&x_stored, &data[1].1, &data[2].1, &data[3].1, &data[4].1);
        // bf16 rounds every intermediate activation (q, k, v, scores,
        // probabilities, the weighted values), yet stays within the harness's
        // bf16 tolerance (worst element ≈ 0.6 of it; f32 within 0.1 of its).
        s.check("attention forward", &y.t, &want, 1.0);
    }
}

#[test]
fn the_composed_attention_gradients_match_finite_differences() {
    grad_check(
        "multi-head attention",
        &inputs(42),
        attention,
        40,
        1e-2,
        2e-3,
        2e-4,
    );
}
