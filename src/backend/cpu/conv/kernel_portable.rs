//! The micro-kernels of [`super::kernel`] in plain Rust over `[f32; 16]`
//! lanes, which the compiler vectorises for the build target (x86-64: SSE2).
//! Multiply and add are separate roundings (no FMA), so results differ from
//! the SIMD kernels in the last bits, well inside the tests' tolerance. The
//! last-resort fallback for CPUs with neither AVX-512 nor AVX2 + FMA (and for
//! other architectures); tested on every machine.
// Register tiles are indexed by (row, vector) on purpose: the loops are
// unrolled over constant bounds and the indices name registers.
#![allow(clippy::needless_range_loop)]

use super::kernel::{
    DotTile, DotTileFn, RowTile, RowTileFn, WgradTile, WgradTileFn, PORTABLE_MAX_R,
};

const L: usize = 16;

/// `acc + s·b` (two roundings; `mul_add` would be a libm call without FMA).
#[inline(always)]
fn madd(s: f32, b: f32, acc: f32) -> f32 {
    acc + s * b
}

/// Forward/data-gradient tile: `R` output voxels × `NV` vectors of channels.
///
/// # Safety
/// As the AVX-512 twin, without the CPU requirement.
unsafe fn row_tile<const R: usize, const NV: usize>(t: &RowTile) {
    unsafe {
        let mut acc = [[[0f32; L]; NV]; R];
        if !t.bias.is_null() {
            for row in acc.iter_mut() {
                for (v, vec) in row.iter_mut().enumerate() {
                    vec.copy_from_slice(std::slice::from_raw_parts(t.bias.add(v * L), L));
                }
            }
        }
        for op in t.rows {
            let mut b = op.b;
            for q in 0..t.k {
                let bv: [[f32; L]; NV] =
                    std::array::from_fn(|v| std::array::from_fn(|l| *b.add(v * L + l)));
                for (j, row) in acc.iter_mut().enumerate() {
                    let s = *op.a.add(j * t.astride + q);
                    for v in 0..NV {
                        for l in 0..L {
                            row[v][l] = madd(s, bv[v][l], row[v][l]);
                        }
                    }
                }
                b = b.add(NV * L);
            }
        }
        let valid = (NV - 1) * L + t.lanes_last;
        for (j, row) in acc.iter().enumerate() {
            let y = std::slice::from_raw_parts_mut(t.y.add(j * t.ystride), valid);
            for (n, out) in y.iter_mut().enumerate() {
                *out = row[n / L][n % L];
            }
        }
    }
}

/// Weight-gradient tile: `R` reduction coordinates × `NV` vectors of channels.
///
/// # Safety
/// As the AVX-512 twin, without the CPU requirement.
unsafe fn wgrad_tile<const R: usize, const NV: usize>(t: &WgradTile) {
    unsafe {
        let valid = (NV - 1) * L + t.lanes_last;
        let mut acc = [[[0f32; L]; NV]; R];
        for (j, row) in acc.iter_mut().enumerate() {
            let p = std::slice::from_raw_parts(t.acc.add(j * t.ld), valid);
            for (n, &v) in p.iter().enumerate() {
                row[n / L][n % L] = v;
            }
        }
        for seg in t.segments {
            let (mut a, mut b) = (seg.a, seg.b);
            for _ in 0..seg.count {
                let mut bv = [[0f32; L]; NV];
                if valid == NV * L {
                    for (v, vec) in bv.iter_mut().enumerate() {
                        *vec = std::array::from_fn(|l| *b.add(v * L + l));
                    }
                } else {
                    for n in 0..valid {
                        bv[n / L][n % L] = *b.add(n);
                    }
                }
                for (j, row) in acc.iter_mut().enumerate() {
                    let s = *a.add(j);
                    for v in 0..NV {
                        for l in 0..L {
                            row[v][l] = madd(s, bv[v][l], row[v][l]);
                        }
                    }
                }
                a = a.add(t.astride);
                b = b.add(t.bstride);
            }
        }
        for (j, row) in acc.iter().enumerate() {
            let p = std::slice::from_raw_parts_mut(t.acc.add(j * t.ld), valid);
            for (n, out) in p.iter_mut().enumerate() {
                *out = row[n / L][n % L];
            }
        }
    }
}

/// Dot tile: `R` output voxels × `C` channels, lanes along the reduction.
///
/// # Safety
/// As the AVX-512 twin, without the CPU requirement.
unsafe fn dot_tile<const R: usize, const C: usize>(t: &DotTile) {
    unsafe {
        let mut acc = [[[0f32; L]; C]; R];
        let full = t.k / L * L;
        for op in t.rows {
            for q0 in (0..full).step_by(L) {
                let bv: [[f32; L]; C] =
                    std::array::from_fn(|c| std::array::from_fn(|l| *op.b.add(c * t.kp + q0 + l)));
                for (j, row) in acc.iter_mut().enumerate() {
                    let av: [f32; L] = std::array::from_fn(|l| *op.a.add(j * t.astride + q0 + l));
                    for c in 0..C {
                        for l in 0..L {
                            row[c][l] = madd(av[l], bv[c][l], row[c][l]);
                        }
                    }
                }
            }
            for q in full..t.k {
                for (j, row) in acc.iter_mut().enumerate() {
                    let a = *op.a.add(j * t.astride + q);
                    for (c, lanes) in row.iter_mut().enumerate() {
                        lanes[q - full] = madd(a, *op.b.add(c * t.kp + q), lanes[q - full]);
                    }
                }
            }
        }
        for (j, row) in acc.iter().enumerate() {
            for (c, lanes) in row.iter().enumerate() {
                let b = if t.bias.is_null() {
                    0.0
                } else {
                    *t.bias.add(c)
                };
                *t.y.add(j * t.ystride + c) = lanes.iter().sum::<f32>() + b;
            }
        }
    }
}

const ROW: [[RowTileFn; 2]; PORTABLE_MAX_R] = [
    [row_tile::<1, 1>, row_tile::<1, 2>],
    [row_tile::<2, 1>, row_tile::<2, 2>],
    [row_tile::<3, 1>, row_tile::<3, 2>],
];
const WGRAD: [[WgradTileFn; 2]; PORTABLE_MAX_R] = [
    [wgrad_tile::<1, 1>, wgrad_tile::<1, 2>],
    [wgrad_tile::<2, 1>, wgrad_tile::<2, 2>],
    [wgrad_tile::<3, 1>, wgrad_tile::<3, 2>],
];
const DOT: [[DotTileFn; 4]; PORTABLE_MAX_R] = [
    [
        dot_tile::<1, 1>,
        dot_tile::<1, 2>,
        dot_tile::<1, 3>,
        dot_tile::<1, 4>,
    ],
    [
        dot_tile::<2, 1>,
        dot_tile::<2, 2>,
        dot_tile::<2, 3>,
        dot_tile::<2, 4>,
    ],
    [
        dot_tile::<3, 1>,
        dot_tile::<3, 2>,
        dot_tile::<3, 3>,
        dot_tile::<3, 4>,
    ],
];

/// The forward tile of `r` rows (1..=3) and `nv` vectors (1..=2).
pub(super) fn row_tile_fn(r: usize, nv: usize) -> RowTileFn {
    ROW[r - 1][nv - 1]
}

/// The weight-gradient tile of `r` rows (1..=3) and `nv` vectors (1..=2).
pub(super) fn wgrad_tile_fn(r: usize, nv: usize) -> WgradTileFn {
    WGRAD[r - 1][nv - 1]
}

/// The dot tile of `r` rows (1..=3) and `c` channels (1..=4).
pub(super) fn dot_tile_fn(r: usize, c: usize) -> DotTileFn {
    DOT[r - 1][c - 1]
}
