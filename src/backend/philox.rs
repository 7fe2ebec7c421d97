//! Counter-based noise: Philox4x32-10 (Salmon et al., SC'11) + Box–Muller.
//!
//! Noise element `e` (a 64-bit index) is a pure function of `(seed, e)`, so
//! every backend — the CPU, the emulated GPU, a real GPU — draws the same noise
//! for the same seed, in any order and in parallel. `kernels/diffusion.cu`
//! implements exactly this definition:
//!
//! - block `b = e / 4`, lane `l = e % 4`;
//! - `(r0, r1, r2, r3) = philox4x32_10(counter = (b_lo, b_hi, 0, 0), key = (seed_lo, seed_hi))`;
//! - uniforms `u_j = (r_j + 0.5) / 2³²` in (0, 1), computed in f32 as
//!   `r_j · 2⁻³² + 2⁻³³`;
//! - lanes 0, 1: `√(−2 ln u0) · (cos, sin)(2π u1)`; lanes 2, 3 the same from (u2, u3).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox4x32 on `ctr` with `key`.
#[inline]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, ctr[0]);
        let (hi1, lo1) = mulhilo(M1, ctr[2]);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// Uniform in (0, 1) from 32 random bits, as the kernels compute it.
#[inline]
pub fn uniform(r: u32) -> f32 {
    r as f32 * (1.0 / 4_294_967_296.0) + (1.0 / 8_589_934_592.0)
}

/// The four normals of block `b`.
#[inline]
pub fn normals4(seed: u64, block: u64) -> [f32; 4] {
    let r = philox4x32_10(
        [block as u32, (block >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    let mut out = [0f32; 4];
    for pair in 0..2 {
        let u0 = uniform(r[2 * pair]);
        let u1 = uniform(r[2 * pair + 1]);
        let rad = (-2.0 * u0.ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * u1).sin_cos();
        out[2 * pair] = rad * c;
        out[2 * pair + 1] = rad * s;
    }
    out
}

/// Standard normal noise element `e` of stream `seed`.
pub fn normal(seed: u64, e: u64) -> f32 {
    normals4(seed, e / 4)[(e % 4) as usize]
}

/// Fill `out` with elements `offset .. offset + out.len()` of stream `seed`.
pub fn fill_normal(out: &mut [f32], seed: u64, offset: u64) {
    let mut e = offset;
    let mut i = 0;
    while i < out.len() {
        let block = normals4(seed, e / 4);
        let lane = (e % 4) as usize;
        let take = (4 - lane).min(out.len() - i);
        out[i..i + take].copy_from_slice(&block[lane..lane + take]);
        i += take;
        e += take as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of the Philox4x32-10 reference (Random123 kat_vectors).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn offsets_compose() {
        let mut a = vec![0f32; 37];
        fill_normal(&mut a, 7, 3);
        for (i, &v) in a.iter().enumerate() {
            assert_eq!(v, normal(7, 3 + i as u64));
        }
    }

    #[test]
    fn moments_are_standard() {
        let mut a = vec![0f32; 1 << 16];
        fill_normal(&mut a, 42, 0);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
