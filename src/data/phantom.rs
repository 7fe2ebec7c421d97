//! A synthetic abdomen: deterministic CT-like volumes with the 13 BTCV organ
//! labels, so the demo and the tests have data on any machine.
//!
//! The grid is canonical RAS (voxel i → patient Right, j → Anterior, k →
//! Superior) centred on the world origin. Anatomy is laid out in coordinates
//! normalised to the field of view, `(X, Y, Z) ∈ [−1, 1]³` (X to the patient's
//! right, Y anterior, Z superior): an elliptic body with a fat layer and a
//! muscle wall, a vertebra with its canal, ribs in the upper half, bowel-like
//! texture, and the organs as deformed ellipsoids and tubes painted in a
//! fixed order (later ones win). The seed moves and resizes every organ
//! (±0.04 of the field of view, ×0.85–1.15), deforms its surface with a few
//! random low-frequency waves, and draws the noise (Gaussian, `noise_hu`).
//!
//! Typical values (HU): air −1000, fat −100, muscle and bowel wall 40,
//! liver 60, spleen 50, kidneys 150 and aorta 200 (contrast phase), veins
//! 140–170, gallbladder 10, cancellous bone 300, cortical bone 700.

use super::affine::Affine;
use super::rng::Rng;
use super::volume::Volume;
use rayon::prelude::*;

/// Label ids (index) and names, in the BTCV order of the 13-organ task.
pub const CLASS_NAMES: [&str; 14] = [
    "background",
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
];

/// Number of classes including background.
pub const NUM_CLASSES: usize = CLASS_NAMES.len();

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomConfig {
    /// Extents `[D, H, W]`.
    pub dims: [usize; 3],
    /// Voxel size `[sd, sh, sw]` in mm.
    pub spacing: [f64; 3],
    /// Standard deviation of the voxel noise, HU.
    pub noise_hu: f32,
}

impl Default for PhantomConfig {
    /// 48×64×64 voxels at 5×5×5 mm: a 240 × 320 × 320 mm field of view.
    fn default() -> Self {
        PhantomConfig {
            dims: [48, 64, 64],
            spacing: [5.0, 5.0, 5.0],
            noise_hu: 12.0,
        }
    }
}

/// An organ's shape in normalised coordinates.
#[derive(Clone, Copy)]
enum Shape {
    /// Centre and semi-axes (X, Y, Z).
    Ellipsoid { c: [f64; 3], r: [f64; 3] },
    /// A capsule: segment a→b, radius.
    Tube {
        a: [f64; 3],
        b: [f64; 3],
        radius: f64,
    },
}

struct Organ {
    label: u8,
    hu: f32,
    shape: Shape,
    /// Surface waves: (amplitude, frequency vector, phase).
    waves: [(f64, [f64; 3], f64); 3],
}

impl Organ {
    /// Signed "inside" function: < 1 inside (ellipsoid metric / tube radius).
    fn level(&self, p: [f64; 3]) -> f64 {
        let base = match self.shape {
            Shape::Ellipsoid { c, r } => {
                (0..3).map(|a| ((p[a] - c[a]) / r[a]).powi(2)).sum::<f64>()
            }
            Shape::Tube { a, b, radius } => {
                let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
                let ap = [p[0] - a[0], p[1] - a[1], p[2] - a[2]];
                let len2 = ab.iter().map(|v| v * v).sum::<f64>().max(1e-12);
                let t = ((0..3).map(|k| ab[k] * ap[k]).sum::<f64>() / len2).clamp(0.0, 1.0);
                let d2: f64 = (0..3).map(|k| (ap[k] - t * ab[k]).powi(2)).sum();
                d2 / (radius * radius)
            }
        };
        let wobble: f64 = self
            .waves
            .iter()
            .map(|(amp, f, ph)| amp * (f[0] * p[0] + f[1] * p[1] + f[2] * p[2] + ph).sin())
            .sum();
        base * (1.0 + wobble)
    }
}

fn jitter(rng: &mut Rng, c: [f64; 3], amount: f64) -> [f64; 3] {
    c.map(|v| v + rng.uniform(-amount, amount))
}

fn organs(seed: u64) -> Vec<Organ> {
    let mut rng = Rng::derive(seed, &[0x0A6A]);
    let shift = [
        rng.uniform(-0.03, 0.03),
        rng.uniform(-0.03, 0.03),
        rng.uniform(-0.05, 0.05),
    ];
    let mk = |label: u8, hu: f32, shape: Shape, rng: &mut Rng| {
        let s = rng.uniform(0.85, 1.15);
        let shape = match shape {
            Shape::Ellipsoid { c, r } => Shape::Ellipsoid {
                c: jitter(
                    rng,
                    [c[0] + shift[0], c[1] + shift[1], c[2] + shift[2]],
                    0.04,
                ),
                r: r.map(|v| v * s),
            },
            Shape::Tube { a, b, radius } => {
                let d = [
                    rng.uniform(-0.03, 0.03),
                    rng.uniform(-0.03, 0.03),
                    rng.uniform(-0.03, 0.03),
                ];
                Shape::Tube {
                    a: [0, 1, 2].map(|k| a[k] + shift[k] + d[k]),
                    b: [0, 1, 2].map(|k| b[k] + shift[k] + d[k]),
                    radius: radius * s,
                }
            }
        };
        let mut waves = [(0.0, [0.0; 3], 0.0); 3];
        for w in waves.iter_mut() {
            *w = (
                rng.uniform(0.0, 0.12),
                [
                    rng.uniform(-9.0, 9.0),
                    rng.uniform(-9.0, 9.0),
                    rng.uniform(-9.0, 9.0),
                ],
                rng.uniform(0.0, std::f64::consts::TAU),
            );
        }
        Organ {
            label,
            hu,
            shape,
            waves,
        }
    };
    let e = |c: [f64; 3], r: [f64; 3]| Shape::Ellipsoid { c, r };
    let t = |a: [f64; 3], b: [f64; 3], radius: f64| Shape::Tube { a, b, radius };
    // Painted in this order; later organs overwrite earlier ones.
    vec![
        mk(6, 60.0, e([0.33, 0.0, 0.45], [0.42, 0.45, 0.38]), &mut rng), // liver
        mk(
            1,
            50.0,
            e([-0.52, -0.22, 0.42], [0.14, 0.2, 0.22]),
            &mut rng,
        ), // spleen
        mk(7, 30.0, e([-0.28, 0.18, 0.38], [0.2, 0.17, 0.2]), &mut rng), // stomach
        mk(2, 150.0, e([0.33, -0.36, 0.0], [0.1, 0.12, 0.2]), &mut rng), // kidney right
        mk(
            3,
            150.0,
            e([-0.33, -0.36, 0.05], [0.1, 0.12, 0.2]),
            &mut rng,
        ), // kidney left
        mk(4, 10.0, e([0.33, 0.2, 0.12], [0.07, 0.08, 0.12]), &mut rng), // gallbladder
        mk(
            11,
            45.0,
            t([0.08, -0.08, 0.1], [-0.42, -0.12, 0.22], 0.06),
            &mut rng,
        ), // pancreas
        mk(
            10,
            170.0,
            t([0.22, -0.03, 0.22], [-0.4, -0.18, 0.26], 0.035),
            &mut rng,
        ), // portal/splenic vein
        mk(
            8,
            200.0,
            t([-0.07, -0.3, -1.2], [-0.07, -0.3, 1.2], 0.055),
            &mut rng,
        ), // aorta
        mk(
            9,
            140.0,
            t([0.12, -0.26, -1.2], [0.12, -0.26, 0.6], 0.06),
            &mut rng,
        ), // IVC
        mk(12, 35.0, e([0.22, -0.3, 0.3], [0.03, 0.05, 0.07]), &mut rng), // adrenal right
        mk(
            13,
            35.0,
            e([-0.22, -0.3, 0.32], [0.03, 0.05, 0.07]),
            &mut rng,
        ), // adrenal left
        mk(
            5,
            40.0,
            t([-0.03, -0.24, 0.55], [-0.03, -0.24, 1.2], 0.04),
            &mut rng,
        ), // esophagus
    ]
}

/// Generate case `seed`: (CT image in HU, label map with ids of [`CLASS_NAMES`]).
pub fn generate(cfg: &PhantomConfig, seed: u64) -> (Volume, Volume) {
    let [d, h, w] = cfg.dims;
    let organs = organs(seed);
    let mut trng = Rng::derive(seed, &[0x7E47]);
    // Bowel texture: a few random waves mixing fat and soft tissue.
    let tex: Vec<([f64; 3], f64)> = (0..4)
        .map(|_| {
            (
                [
                    trng.uniform(-14.0, 14.0),
                    trng.uniform(-14.0, 14.0),
                    trng.uniform(-14.0, 14.0),
                ],
                trng.uniform(0.0, 6.3),
            )
        })
        .collect();
    let air_pocket = [
        trng.uniform(-0.34, -0.22),
        trng.uniform(0.26, 0.32),
        trng.uniform(0.45, 0.52),
    ];
    let norm = |n: usize, i: usize| {
        if n > 1 {
            2.0 * i as f64 / (n - 1) as f64 - 1.0
        } else {
            0.0
        }
    };
    let mut img = vec![0f32; d * h * w];
    let mut lab = vec![0f32; d * h * w];
    img.par_chunks_mut(h * w)
        .zip(lab.par_chunks_mut(h * w))
        .enumerate()
        .for_each(|(k, (islab, lslab))| {
            let z = norm(d, k);
            let mut nrng = Rng::derive(seed, &[0x401E, k as u64]);
            for j in 0..h {
                let y = norm(h, j);
                for i in 0..w {
                    let x = norm(w, i);
                    let p = [x, y, z];
                    let idx = j * w + i;
                    // Body: elliptic cylinder with fat layer and muscle wall.
                    let body = (x / 0.86).powi(2) + ((y + 0.04) / 0.7).powi(2);
                    let (mut hu, mut l) = (-1000.0f32, 0u8);
                    if body <= 1.0 {
                        hu = if body > 0.84 {
                            -100.0 // subcutaneous fat
                        } else if body > 0.72 {
                            40.0 // muscle wall
                        } else {
                            let t: f64 = tex
                                .iter()
                                .map(|(f, ph)| (f[0] * x + f[1] * y + f[2] * z + ph).sin())
                                .sum::<f64>();
                            if t > 0.6 {
                                35.0
                            } else {
                                -90.0
                            } // bowel loops in visceral fat
                        };
                        // Ribs: rings inside the wall in the upper abdomen.
                        if z > -0.1
                            && body > 0.6
                            && body < 0.7
                            && ((z * 9.0).sin() > 0.55)
                            && y > -0.5
                        {
                            hu = 600.0;
                        }
                        // Vertebra with its canal, psoas-ish muscle beside it.
                        let vb = (x / 0.13).powi(2) + ((y + 0.52) / 0.11).powi(2);
                        let canal = (x / 0.05).powi(2) + ((y + 0.62) / 0.04).powi(2);
                        if vb <= 1.0 {
                            hu = if vb > 0.7 { 700.0 } else { 300.0 };
                        } else if canal <= 1.0 {
                            hu = 20.0;
                        } else if ((x.abs() - 0.2) / 0.08).powi(2) + ((y + 0.48) / 0.08).powi(2)
                            <= 1.0
                            && z < 0.2
                        {
                            hu = 45.0;
                        }
                        for o in &organs {
                            if o.level(p) <= 1.0 {
                                hu = o.hu;
                                l = o.label;
                            }
                        }
                        // Gas in the stomach fundus (still stomach).
                        if l == 7
                            && (0..3).map(|a| (p[a] - air_pocket[a]).powi(2)).sum::<f64>()
                                < 0.06f64.powi(2)
                        {
                            hu = -850.0;
                        }
                    }
                    let noise = cfg.noise_hu as f64 * nrng.normal();
                    islab[idx] = (hu as f64 + noise).round() as f32;
                    lslab[idx] = l as f32;
                }
            }
        });
    let [sd, sh, sw] = cfg.spacing;
    let origin = [
        -(w as f64 - 1.0) / 2.0 * sw,
        -(h as f64 - 1.0) / 2.0 * sh,
        -(d as f64 - 1.0) / 2.0 * sd,
    ];
    let affine = Affine::diagonal([sw, sh, sd], origin);
    let mk = |data| Volume {
        data,
        dims: cfg.dims,
        spacing: cfg.spacing,
        affine,
        source: None,
    };
    (mk(img), mk(lab))
}
