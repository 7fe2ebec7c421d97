//! The micro-kernels of [`super::kernel`] in plain Rust: the same tiles over
//! `[f32; 16]` lanes, which the compiler vectorises for whatever the build
//! target offers. The fallback on CPUs without AVX-512, and tested on every
//! machine against the same references as the AVX-512 path.
//!
//! Multiply and add are separate roundings here (no fused multiply-add), so
//! results differ from the AVX-512 path in the last bits, well inside the
//! tests' tolerance.

use super::kernel::{DotTile, DotTileFn, RowTile, RowTileFn, WgradTile, WgradTileFn};

const L: usize = 16;

/// Forward/data-gradient tile: `R` output voxels × `NV` vectors of channels.
///
/// # Safety
/// As the AVX-512 twin, without the CPU requirement.
unsafe fn row_tile<const R: usize, const NV: usize>(t: &RowTile) {
    unsafe {
        let mut acc = [[[0f32; L]; NV]; R];
        if !t.bias.is_null() {
            let bias = std::slice::from_raw_parts(t.bias, NV * L);
            for row in acc.iter_mut() {
                for (v, vec) in row.iter_mut().enumerate() {
                    vec.copy_from_slice(&bias[v * L..(v + 1) * L]);
                }
            }
        }
        for op in t.rows {
            for q in 0..t.k {
                let b = std::slice::from_raw_parts(op.b.add(q * NV * L), NV * L);
                for (j, row) in acc.iter_mut().enumerate() {
                    let s = *op.a.add(j * t.astride + q);
                    for (v, vec) in row.iter_mut().enumerate() {
                        for (lane, x) in vec.iter_mut().enumerate() {
                            *x += s * b[v * L + lane];
                        }
                    }
                }
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
        let mut acc = [[0f32; 32]; R];
        for (j, row) in acc.iter_mut().enumerate() {
            let p = std::slice::from_raw_parts(t.acc.add(j * t.ld), valid);
            row[..valid].copy_from_slice(p);
        }
        for seg in t.segments {
            for step in 0..seg.count {
                let b = std::slice::from_raw_parts(seg.b.add(step * t.bstride), valid);
                let a = seg.a.add(step * t.astride);
                for (j, row) in acc.iter_mut().enumerate() {
                    let s = *a.add(j);
                    for (x, &bn) in row[..valid].iter_mut().zip(b) {
                        *x += s * bn;
                    }
                }
            }
        }
        for (j, row) in acc.iter().enumerate() {
            let p = std::slice::from_raw_parts_mut(t.acc.add(j * t.ld), valid);
            p.copy_from_slice(&row[..valid]);
        }
    }
}

/// Dot tile: `R` output voxels × `C` channels.
///
/// # Safety
/// As the AVX-512 twin, without the CPU requirement.
unsafe fn dot_tile<const R: usize, const C: usize>(t: &DotTile) {
    unsafe {
        let mut acc = [[[0f32; L]; C]; R];
        for op in t.rows {
            for q in 0..t.k {
                for (j, row) in acc.iter_mut().enumerate() {
                    let a = *op.a.add(j * t.astride + q);
                    for (c, lanes) in row.iter_mut().enumerate() {
                        lanes[q % L] += a * *op.b.add(c * t.kp + q);
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

macro_rules! tile_table {
    ($f:ident, $ty:ty) => {
        [
            [$f::<1, 1> as $ty, $f::<1, 2> as $ty],
            [$f::<2, 1> as $ty, $f::<2, 2> as $ty],
            [$f::<3, 1> as $ty, $f::<3, 2> as $ty],
            [$f::<4, 1> as $ty, $f::<4, 2> as $ty],
        ]
    };
}

const ROW_TILES: [[RowTileFn; 2]; 4] = tile_table!(row_tile, RowTileFn);
const WGRAD_TILES: [[WgradTileFn; 2]; 4] = tile_table!(wgrad_tile, WgradTileFn);

/// The forward tile of `r` rows (1..=4) and `nv` vectors (1..=2).
pub(super) fn row_tile_fn(r: usize, nv: usize) -> RowTileFn {
    ROW_TILES[r - 1][nv - 1]
}

/// The weight-gradient tile of `r` rows (1..=4) and `nv` vectors (1..=2).
pub(super) fn wgrad_tile_fn(r: usize, nv: usize) -> WgradTileFn {
    WGRAD_TILES[r - 1][nv - 1]
}

const DOT_TILES: [[DotTileFn; 4]; 4] = [
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
    [
        dot_tile::<4, 1>,
        dot_tile::<4, 2>,
        dot_tile::<4, 3>,
        dot_tile::<4, 4>,
    ],
];

/// The dot tile of `r` rows (1..=4) and `c` channels (1..=4).
pub(super) fn dot_tile_fn(r: usize, c: usize) -> DotTileFn {
    DOT_TILES[r - 1][c - 1]
}
