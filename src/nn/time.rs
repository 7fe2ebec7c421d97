//! Sinusoidal time-step embedding (computed on the host: it is `[N, dim]`).

/// For each time value `t` and `i < dim/2`: `cos(t·f_i)` then `sin(t·f_i)` with
/// `f_i = exp(−ln(max_period)·i/(dim/2))` — cos half first, as the ImgX
/// reference (`sinusoidal_positional_embedding`). Returns `[N, dim]` row-major.
pub fn sinusoidal(ts: &[f32], dim: usize, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let mut out = vec![0f32; ts.len() * dim];
    for (n, &t) in ts.iter().enumerate() {
        for i in 0..half {
            let f = (-(max_period.ln()) * i as f32 / half as f32).exp();
            let a = t * f;
            out[n * dim + i] = a.cos();
            out[n * dim + half + i] = a.sin();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_frequency_is_t() {
        let e = super::sinusoidal(&[0.0, 3.0], 8, 10000.0);
        assert_eq!(&e[0..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((e[8] - 3f32.cos()).abs() < 1e-6);
        assert!((e[12] - 3f32.sin()).abs() < 1e-6);
        // Frequency i = 1 of 4: 10000^(-1/4) = 0.1.
        assert!((e[13] - (0.3f32).sin()).abs() < 1e-6);
    }
}
