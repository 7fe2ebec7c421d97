//! Dropout with counter-based noise, composed from the rand and pointwise
//! families: `y = (x · m) / (1 − p)` with `m_i = 1` when the Philox normal
//! `z_i = philox::normal(seed, i)` exceeds Φ⁻¹(p), else 0 — so each element
//! is kept with probability 1 − p, and the same (seed, shape) drops the same
//! elements on every backend. The mask is built in f32 as
//! `relu(z − q) / (|z − q| + 10⁻³⁰)`, which is exactly 1 or 0 unless
//! |z − q| < 10⁻²³ (probability ≈ 10⁻²³ per element), cast to x's dtype (0 and
//! 1 are exact in every dtype), applied with one broadcast multiply and
//! rescaled by a lincomb; the composition's backward is the gradient
//! `dx = dy · m / (1 − p)`. Training only: at inference a model calls nothing.

use crate::autograd::{Graph, Var};
use crate::ops::{Binary, Unary};
use crate::tensor::{DType, Shape};
use anyhow::{ensure, Result};

/// Φ⁻¹(p), the standard normal quantile (Acklam's rational approximation,
/// relative error below 1.2·10⁻⁹), p in (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.383577518672690e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    const LOW: f64 = 0.02425;
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The kept-element mask `m` ∈ {0, 1} of `shape` in `dtype` (see the module docs).
pub fn dropout_mask(g: &mut Graph, shape: Shape, dtype: DType, p: f32, seed: u64) -> Result<Var> {
    ensure!(
        (0.0..1.0).contains(&p),
        "dropout probability must lie in [0, 1), got {p}"
    );
    let dev = g.dev;
    let q = normal_quantile(p as f64) as f32;
    let z = g.constant(dev.randn(shape, DType::F32, seed, 0)?);
    let qs = g.constant(dev.upload(&[q], Shape::scalar(), DType::F32)?);
    let d = g.binary(Binary::Sub, &z, &qs)?;
    let pos = g.unary(&d, Unary::Relu)?;
    let mag = g.unary(&d, Unary::Abs)?;
    let tiny = g.constant(dev.upload(&[1e-30], Shape::scalar(), DType::F32)?);
    let mag = g.binary(Binary::Add, &mag, &tiny)?;
    let m = g.binary(Binary::Div, &pos, &mag)?;
    Ok(if dtype == DType::F32 {
        m
    } else {
        g.constant(dev.cast(&m.t, dtype)?)
    })
}

/// `x` with each element dropped with probability `p` (kept ones scaled by
/// 1/(1 − p)), the mask drawn from `seed`; `p = 0` returns x.
pub fn dropout(g: &mut Graph, x: &Var, p: f32, seed: u64) -> Result<Var> {
    if p == 0.0 {
        return Ok(x.clone());
    }
    let m = dropout_mask(g, x.shape(), x.t.dtype(), p, seed)?;
    let kept = g.binary(Binary::Mul, x, &m)?;
    g.lincomb(&[(1.0 / (1.0 - p), &kept)])
}

/// The seed of the dropout layer numbered `layer` under a forward pass's
/// dropout seed (a SplitMix64 step of their mix), so that layers of one
/// pass draw independent masks.
pub fn layer_seed(seed: u64, layer: u64) -> u64 {
    let mut z = seed ^ layer.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::normal_quantile;

    #[test]
    fn the_quantile_matches_tabulated_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.1, -1.281_551_565_544_600_4),
            (0.01, -2.326_347_874_040_841),
            (0.999, 3.090_232_306_167_813_5),
        ] {
            let got = normal_quantile(p);
            assert!((got - z).abs() < 1e-8, "Φ⁻¹({p}) = {got}, want {z}");
        }
    }
}
