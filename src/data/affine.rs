//! 4×4 voxel-to-world affines, NIfTI quaternions, and axis orientation.
//!
//! An [`Affine`] maps a voxel index `(i, j, k, 1)` — `i` the fastest axis in
//! the file (W in memory), `j` the middle one (H), `k` the slowest (D) — to a
//! world point `(x, y, z, 1)` in millimetres, RAS+ (x towards the patient's
//! Right, y Anterior, z Superior), exactly as NIfTI-1's qform/sform define it.
//! Rows are stored row-major: `m[r][c]`, so column `c < 3` is the world step
//! of one voxel along voxel axis `c` (i, j, k) and column 3 the world position
//! of voxel (0, 0, 0).

use anyhow::{ensure, Result};

/// A 4×4 affine (last row `[0, 0, 0, 1]`), f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [[f64; 4]; 4]);

impl Affine {
    pub const IDENTITY: Affine = Affine([
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);

    /// Axis-aligned affine: spacing `[sx, sy, sz]` along i, j, k and the origin.
    pub fn diagonal(spacing_ijk: [f64; 3], origin: [f64; 3]) -> Affine {
        let mut m = Affine::IDENTITY.0;
        for a in 0..3 {
            m[a][a] = spacing_ijk[a];
            m[a][3] = origin[a];
        }
        Affine(m)
    }

    /// `self · other` (apply `other` first).
    pub fn mul(&self, other: &Affine) -> Affine {
        let (a, b) = (&self.0, &other.0);
        let mut m = [[0.0; 4]; 4];
        for (r, row) in m.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..4).map(|k| a[r][k] * b[k][c]).sum();
            }
        }
        Affine(m)
    }

    /// World point of a (fractional) voxel index `[i, j, k]`.
    pub fn apply(&self, ijk: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = m[r][0] * ijk[0] + m[r][1] * ijk[1] + m[r][2] * ijk[2] + m[r][3];
        }
        out
    }

    /// Determinant of the 3×3 linear part.
    pub fn det3(&self) -> f64 {
        let m = &self.0;
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    }

    /// The inverse (an error when the linear part is singular).
    pub fn inverse(&self) -> Result<Affine> {
        let m = &self.0;
        let det = self.det3();
        ensure!(
            det.is_finite() && det.abs() > 1e-12,
            "affine is singular (det {det:e})"
        );
        let mut inv = [[0.0; 4]; 4];
        // Adjugate of the 3×3 block.
        inv[0][0] = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / det;
        inv[0][1] = (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / det;
        inv[0][2] = (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / det;
        inv[1][0] = (m[1][2] * m[2][0] - m[1][0] * m[2][2]) / det;
        inv[1][1] = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det;
        inv[1][2] = (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / det;
        inv[2][0] = (m[1][0] * m[2][1] - m[1][1] * m[2][0]) / det;
        inv[2][1] = (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / det;
        inv[2][2] = (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / det;
        for r in 0..3 {
            inv[r][3] = -(0..3).map(|c| inv[r][c] * m[c][3]).sum::<f64>();
        }
        inv[3][3] = 1.0;
        Ok(Affine(inv))
    }

    /// Length of column `c` (the world step of one voxel along i, j or k).
    pub fn column_norm(&self, c: usize) -> f64 {
        (0..3)
            .map(|r| self.0[r][c] * self.0[r][c])
            .sum::<f64>()
            .sqrt()
    }

    /// True when every entry is finite.
    pub fn is_finite(&self) -> bool {
        self.0.iter().flatten().all(|v| v.is_finite())
    }

    /// Largest absolute entry-wise difference.
    pub fn max_abs_diff(&self, other: &Affine) -> f64 {
        self.0
            .iter()
            .flatten()
            .zip(other.0.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    /// The orientation code of each voxel axis, e.g. "RAS" or "LPS": for voxel
    /// axis i, j, k the world axis it is closest to and its sign.
    pub fn orientation_code(&self) -> String {
        let o = self.orientation();
        o.iter()
            .map(|&(w, sign)| match (w, sign > 0) {
                (0, true) => 'R',
                (0, false) => 'L',
                (1, true) => 'A',
                (1, false) => 'P',
                (2, true) => 'S',
                _ => 'I',
            })
            .collect()
    }

    /// For each voxel axis (i, j, k): the world axis (0 = x, 1 = y, 2 = z) it
    /// points along most closely, and the sign (+1/−1). The assignment is a
    /// permutation: the largest |direction cosine| is taken first, as
    /// nibabel's `io_orientation` does.
    pub fn orientation(&self) -> [(usize, i8); 3] {
        let m = &self.0;
        let mut cos = [[0.0f64; 3]; 3]; // cos[voxel axis][world axis]
        for c in 0..3 {
            let n = self.column_norm(c).max(1e-300);
            for r in 0..3 {
                cos[c][r] = m[r][c] / n;
            }
        }
        let mut out = [(usize::MAX, 1i8); 3];
        let mut used_voxel = [false; 3];
        let mut used_world = [false; 3];
        for _ in 0..3 {
            let mut best = (0, 0, -1.0);
            for (c, row) in cos.iter().enumerate() {
                for (r, &v) in row.iter().enumerate() {
                    if !used_voxel[c] && !used_world[r] && v.abs() > best.2 {
                        best = (c, r, v.abs());
                    }
                }
            }
            let (c, r, _) = best;
            used_voxel[c] = true;
            used_world[r] = true;
            out[c] = (r, if cos[c][r] >= 0.0 { 1 } else { -1 });
        }
        out
    }
}

/// NIfTI quaternion parameters (qform, "method 2" of the standard).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quatern {
    pub b: f64,
    pub c: f64,
    pub d: f64,
    pub offset: [f64; 3],
    /// pixdim[1..=3]
    pub spacing: [f64; 3],
    /// pixdim[0]: ±1 (0 is read as 1, as the standard says)
    pub qfac: f64,
}

impl Quatern {
    /// The affine of the standard:
    /// `[x y z]ᵀ = R · [pixdim1·i, pixdim2·j, qfac·pixdim3·k]ᵀ + [qx qy qz]ᵀ`,
    /// with `a = sqrt(1 − b² − c² − d²)` (clamped at 0) and R the rotation of
    /// the unit quaternion (a, b, c, d).
    pub fn to_affine(&self) -> Affine {
        let (b, c, d) = (self.b, self.c, self.d);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if self.qfac < 0.0 { -1.0 } else { 1.0 };
        let s = [self.spacing[0], self.spacing[1], self.spacing[2] * qfac];
        let mut m = Affine::IDENTITY.0;
        for row in 0..3 {
            for col in 0..3 {
                m[row][col] = r[row][col] * s[col];
            }
            m[row][3] = self.offset[row];
        }
        Affine(m)
    }

    /// The quaternion closest to an affine's rotation: columns are normalised,
    /// a negative determinant is absorbed into qfac = −1 (third column
    /// negated), and the rotation is converted with the numerically stable
    /// branch on the largest of a, b, c, d. Shear, if any, is lost (the
    /// sform keeps the exact affine).
    pub fn from_affine(aff: &Affine) -> Quatern {
        let m = &aff.0;
        let spacing = [aff.column_norm(0), aff.column_norm(1), aff.column_norm(2)];
        let mut r = [[0.0f64; 3]; 3];
        for col in 0..3 {
            let n = if spacing[col] > 0.0 {
                spacing[col]
            } else {
                1.0
            };
            for row in 0..3 {
                r[row][col] = m[row][col] / n;
            }
        }
        let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
            - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
            + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
        let qfac = if det < 0.0 {
            for row in r.iter_mut() {
                row[2] = -row[2];
            }
            -1.0
        } else {
            1.0
        };
        let trace = r[0][0] + r[1][1] + r[2][2];
        let (a, b, c, d);
        if trace > 0.0 {
            let s = (trace + 1.0).sqrt() * 2.0; // 4a
            a = 0.25 * s;
            b = (r[2][1] - r[1][2]) / s;
            c = (r[0][2] - r[2][0]) / s;
            d = (r[1][0] - r[0][1]) / s;
        } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
            let s = (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt() * 2.0; // 4b
            a = (r[2][1] - r[1][2]) / s;
            b = 0.25 * s;
            c = (r[0][1] + r[1][0]) / s;
            d = (r[0][2] + r[2][0]) / s;
        } else if r[1][1] > r[2][2] {
            let s = (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt() * 2.0; // 4c
            a = (r[0][2] - r[2][0]) / s;
            b = (r[0][1] + r[1][0]) / s;
            c = 0.25 * s;
            d = (r[1][2] + r[2][1]) / s;
        } else {
            let s = (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt() * 2.0; // 4d
            a = (r[1][0] - r[0][1]) / s;
            b = (r[0][2] + r[2][0]) / s;
            c = (r[1][2] + r[2][1]) / s;
            d = 0.25 * s;
        }
        // The standard stores b, c, d with a ≥ 0 implied.
        let sign = if a < 0.0 { -1.0 } else { 1.0 };
        Quatern {
            b: b * sign,
            c: c * sign,
            d: d * sign,
            offset: [m[0][3], m[1][3], m[2][3]],
            spacing,
            qfac,
        }
    }
}
