//! Exact Euclidean distance transform under anisotropic spacing.
//!
//! `dt(p) = min_{q ∈ F} Σ_a ((p_a − q_a) · s_a)²` over the feature points F
//! (squared, in mm²). The squared distance separates into one term per axis,
//! so it is computed exactly by three 1D passes (Felzenszwalb & Huttenlocher,
//! "Distance transforms of sampled functions", 2012): each pass replaces
//! every line `f` by `g(x) = min_q (s·(x − q))² + f(q)`, the lower envelope of
//! parabolas rooted at each q. Arithmetic is f64; a line with no finite
//! value stays +∞. Passes run over all lines of one axis in parallel (rayon).

use rayon::prelude::*;

/// Squared distance (mm²) from every voxel to the nearest `true` of
/// `features`; +∞ everywhere when there is none.
pub fn squared_edt(features: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut f: Vec<f64> = features
        .iter()
        .map(|&b| if b { 0.0 } else { f64::INFINITY })
        .collect();
    if !features.iter().any(|&b| b) {
        return f;
    }
    let [d, h, w] = dims;
    // Axis 2 (W, contiguous lines).
    f.par_chunks_mut(w).for_each(|line| {
        let mut buf = Buf::new(w);
        transform_line(line, spacing[2], &mut buf);
    });
    // Axis 1 (H): lines of stride W inside each D slab.
    f.par_chunks_mut(h * w).for_each(|slab| {
        let mut buf = Buf::new(h);
        let mut line = vec![0.0; h];
        for x in 0..w {
            for y in 0..h {
                line[y] = slab[y * w + x];
            }
            transform_line(&mut line, spacing[1], &mut buf);
            for y in 0..h {
                slab[y * w + x] = line[y];
            }
        }
    });
    // Axis 0 (D): gather columns, transform, scatter (parallel over H·W columns
    // in chunks of rows of W).
    let plane = h * w;
    let mut cols = vec![0.0f64; f.len()]; // column-major: [h·w][d]
    cols.par_chunks_mut(d).enumerate().for_each(|(c, col)| {
        for z in 0..d {
            col[z] = f[z * plane + c];
        }
        let mut buf = Buf::new(d);
        transform_line(col, spacing[0], &mut buf);
    });
    f.par_chunks_mut(plane).enumerate().for_each(|(z, out)| {
        for c in 0..plane {
            out[c] = cols[c * d + z];
        }
    });
    f
}

/// Scratch of one 1D pass.
struct Buf {
    v: Vec<usize>,
    z: Vec<f64>,
    out: Vec<f64>,
}

impl Buf {
    fn new(n: usize) -> Buf {
        Buf {
            v: vec![0; n],
            z: vec![0.0; n + 1],
            out: vec![0.0; n],
        }
    }
}

/// In place: `f(x) ← min_q (s·(x − q))² + f(q)`.
fn transform_line(f: &mut [f64], s: f64, b: &mut Buf) {
    let n = f.len();
    let s2 = s * s;
    // Parabola at q: s²(x − q)² + f(q). Intersection of parabolas q and r (q > r):
    // x = ((f(q) + s²q²) − (f(r) + s²r²)) / (2 s² (q − r)).
    let mut k: isize = -1;
    for q in 0..n {
        if !f[q].is_finite() {
            continue;
        }
        if k < 0 {
            k = 0;
            b.v[0] = q;
            b.z[0] = f64::NEG_INFINITY;
            b.z[1] = f64::INFINITY;
            continue;
        }
        loop {
            let r = b.v[k as usize];
            let qf = q as f64;
            let rf = r as f64;
            let x = ((f[q] + s2 * qf * qf) - (f[r] + s2 * rf * rf)) / (2.0 * s2 * (qf - rf));
            if x <= b.z[k as usize] {
                k -= 1;
                if k < 0 {
                    break;
                }
            } else {
                k += 1;
                b.v[k as usize] = q;
                b.z[k as usize] = x;
                b.z[k as usize + 1] = f64::INFINITY;
                break;
            }
        }
        if k < 0 {
            k = 0;
            b.v[0] = q;
            b.z[0] = f64::NEG_INFINITY;
            b.z[1] = f64::INFINITY;
        }
    }
    if k < 0 {
        return; // no feature on this line: stays +∞
    }
    let mut j = 0usize;
    for x in 0..n {
        let xf = x as f64;
        while b.z[j + 1] < xf {
            j += 1;
        }
        let q = b.v[j];
        let dx = s * (xf - q as f64);
        b.out[x] = dx * dx + f[q];
    }
    f.copy_from_slice(&b.out[..n]);
}

/// Brute-force reference (O(N·|F|)), for tests.
pub fn squared_edt_brute(features: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [_, h, w] = dims;
    let pts: Vec<[usize; 3]> = features
        .iter()
        .enumerate()
        .filter(|(_, &b)| b)
        .map(|(i, _)| [i / (h * w), (i / w) % h, i % w])
        .collect();
    (0..features.len())
        .map(|i| {
            let p = [i / (h * w), (i / w) % h, i % w];
            pts.iter()
                .map(|q| {
                    (0..3)
                        .map(|a| {
                            let d = (p[a] as f64 - q[a] as f64) * spacing[a];
                            d * d
                        })
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}
