//! `voxdiff bench --suite pretrain`: the pretraining backbone's own ops at
//! the paper's sizes — position linear attention (the fused custom op and
//! the composition of primitives, forward and forward + backward through the
//! Graph) and batch norm (train forward + backward fused — the norm
//! family's instance norm on the one-sample view — and composed; eval
//! forward).
//!
//! Counted figures (per run, e bytes per activation, T tokens, C_k = C/8):
//! - linear attention forward: `Dims::flops_fwd` (≈ 4·C_k·C per token), the
//!   fewest bytes q, k, v read and out written once, `(2C_k + 2C)·e` per
//!   token;
//! - its backward: ≈ 8·C_k·C + 10·(C + C_k) FLOPs per token (the fused
//!   passes), bytes dy, q, k, v read and dq, dk, dv written once,
//!   `(4C_k + 3C)·e` per token. The composed variant is charged the same
//!   counts (it does the same arithmetic in more passes), so its GFLOP/s
//!   and GB/s compare directly with the fused one's;
//! - batch norm train forward + backward: 17 FLOPs per element (forward 7:
//!   sum, centre, square, sum, divide, scale, shift; backward ≈ 10), the
//!   fewest bytes 5n·e (x → y; x, dy → dx); eval 4 FLOPs and 2n·e.
//!
//! Both directions run through a recording Graph with `L = Σ out ⊙ dy` (one
//! multiply and one sum added to each variant alike).

use super::bench::{time_it, BenchResult};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::nn::attention::{linear_attention, AttentionImpl, LINEAR_ATTENTION_EPS};
use crate::nn::batch_norm::{batch_norm_eval, batch_norm_train, batch_norm_train_fused};
use crate::nn::linear_attention::Dims;
use crate::ops::{Bcast, Binary};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{bail, Context, Result};

/// The paper's sizes: channels and (D, H, W) at level 0 and level 4 of
/// FPN3d on a 128×128×32 patch.
pub const PAPER_SIZES: &str = "16x32x128x128,256x2x8x8";

/// Parse `CxDxHxW[,CxDxHxW…]`.
pub fn parse_sizes(s: &str) -> Result<Vec<(usize, [usize; 3])>> {
    s.split(',')
        .map(|one| {
            let v: Vec<usize> = one
                .trim()
                .split('x')
                .map(|p| p.parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("--sizes: {one:?} is not CxDxHxW"))?;
            match v[..] {
                [c, d, h, w] if c >= 8 && d * h * w > 0 => Ok((c, [d, h, w])),
                _ => bail!("--sizes: {one:?} must be CxDxHxW with C ≥ 8 and no zero extent"),
            }
        })
        .collect()
}

fn randn(b: &dyn Backend, shape: Shape, dtype: DType, seed: u64) -> Result<Tensor> {
    b.randn(shape, dtype, seed, 0)
}

/// `Σ out ⊙ dy` and its backward over `n` tracked inputs.
fn backward(g: &mut Graph, out: &Var, dy: &Tensor, n: usize) -> Result<()> {
    let dy = g.constant(dy.clone());
    let l = g.binary(Binary::Mul, out, &dy)?;
    let l = g.reduce_sum(&l, Bcast::Scalar)?;
    g.backward(&l, n)?;
    Ok(())
}

/// The suite at each `(C, [D, H, W])`, batch 1.
pub fn run(
    b: &dyn Backend,
    sizes: &[(usize, [usize; 3])],
    reps: usize,
) -> Result<Vec<BenchResult>> {
    let act = b.act_dtype();
    let e = act.size();
    let mut out = Vec::new();
    for &(c, [dd, hh, ww]) in sizes {
        let ck = (c / 8).max(1);
        let vs = Shape::ndhwc(1, dd, hh, ww, c);
        let qs = vs.with_c(ck);
        let d = Dims {
            b: 1,
            n: vs.voxels(),
            ck,
            c,
        };
        let (q, k, v) = (
            randn(b, qs, act, 1)?,
            randn(b, qs, act, 2)?,
            randn(b, vs, act, 3)?,
        );
        let dy = randn(b, vs, act, 4)?;
        let t = (d.b * d.n) as f64;
        let bwd_flops = t * (8 * ck * c + 10 * (c + ck)) as f64;
        let bwd_bytes = t * ((4 * ck + 3 * c) * e) as f64;
        for (how, name) in [
            (AttentionImpl::Fused, "fused"),
            (AttentionImpl::Composed, "composed"),
        ] {
            let (med, min) = time_it(b, 1, reps, || {
                let mut g = Graph::inference(b);
                let (q, k, v) = (
                    g.constant(q.clone()),
                    g.constant(k.clone()),
                    g.constant(v.clone()),
                );
                linear_attention(&mut g, &q, &k, &v, LINEAR_ATTENTION_EPS, how).map(drop)
            })?;
            out.push(BenchResult {
                name: format!("linear attention {name} fwd C {c} {vs}"),
                median_ms: med,
                min_ms: min,
                flops: d.flops_fwd() as f64,
                bytes: d.bytes_fwd(e) as f64,
            });
            let (med, min) = time_it(b, 1, reps, || {
                let mut g = Graph::train(b);
                let (qv, kv, vv) = (g.param(0, &q), g.param(1, &k), g.param(2, &v));
                let o = linear_attention(&mut g, &qv, &kv, &vv, LINEAR_ATTENTION_EPS, how)?;
                backward(&mut g, &o, &dy, 3)
            })?;
            out.push(BenchResult {
                name: format!("linear attention {name} fwd+bwd C {c} {vs}"),
                median_ms: med,
                min_ms: min,
                flops: d.flops_fwd() as f64 + bwd_flops,
                bytes: d.bytes_fwd(e) as f64 + bwd_bytes,
            });
        }

        let x = randn(b, vs, act, 5)?;
        let n = vs.numel() as f64;
        let gamma = b.upload(&vec![1.0; c], Shape::new(&[c]), DType::F32)?;
        let beta = b.upload(&vec![0.0; c], Shape::new(&[c]), DType::F32)?;
        for (fused, name) in [(true, "fused"), (false, "composed")] {
            let (med, min) = time_it(b, 1, reps, || {
                let mut g = Graph::train(b);
                let (xv, gv, bv) = (g.param(0, &x), g.param(1, &gamma), g.param(2, &beta));
                let (y, _) = if fused {
                    batch_norm_train_fused(&mut g, &xv, &gv, &bv, 1e-5)?
                } else {
                    batch_norm_train(&mut g, &xv, &gv, &bv, 1e-5)?
                };
                backward(&mut g, &y, &dy, 3)
            })?;
            out.push(BenchResult {
                name: format!("batch norm {name} train fwd+bwd C {c} {vs}"),
                median_ms: med,
                min_ms: min,
                flops: 17.0 * n,
                bytes: 5.0 * n * e as f64,
            });
        }
        let (med, min) = time_it(b, 1, reps, || {
            let mut g = Graph::inference(b);
            let (xv, gv, bv) = (
                g.constant(x.clone()),
                g.constant(gamma.clone()),
                g.constant(beta.clone()),
            );
            // Running statistics: mean 0 (beta's zeros), variance 1 (gamma's ones).
            batch_norm_eval(&mut g, &xv, &gv, &bv, &beta, &gamma, 1e-5).map(drop)
        })?;
        out.push(BenchResult {
            name: format!("batch norm eval fwd C {c} {vs}"),
            median_ms: med,
            min_ms: min,
            flops: 4.0 * n,
            bytes: 2.0 * n * e as f64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_sizes(PAPER_SIZES).unwrap(),
            [(16, [32, 128, 128]), (256, [2, 8, 8])]
        );
        let e = parse_sizes("16x32x128").unwrap_err().to_string();
        assert!(e.contains("\"16x32x128\" must be CxDxHxW"), "{e}");
        let e = parse_sizes("16x32xa28x1").unwrap_err().to_string();
        assert!(e.contains("is not CxDxHxW"), "{e}");
    }
}
