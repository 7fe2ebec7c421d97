//! The micro-kernels of [`super::kernel`] with AVX-512F intrinsics.
//!
//! Register budget of the tallest forward tile (14 × 2): 28 zmm accumulators,
//! 2 zmm for the weight vectors of the current reduction step; the input value
//! is broadcast straight from memory into the FMA (`vfmadd231ps zmm, zmm,
//! m32{1to16}`). Per step: 2 vector loads + 14 broadcasts feed 28 FMAs, so the
//! two FMA ports, not the load ports, bound it.
// Register tiles are indexed by (row, vector) on purpose: the loops are
// unrolled over constant bounds and the indices name registers.
#![allow(clippy::needless_range_loop)]
#![cfg(target_arch = "x86_64")]

use super::kernel::{
    lane_mask, DotTile, DotTileFn, RowTile, RowTileFn, WgradTile, WgradTileFn, MAX_R,
};
use std::arch::x86_64::*;

/// Forward/data-gradient tile: `R` output voxels × `NV` vectors of channels.
///
/// # Safety
/// The CPU supports AVX-512F; every `rows[i].a[j·astride + q]` (j < R, q < k)
/// and `rows[i].b[q·NV·16 + n]` (n < NV·16) is readable; `y[j·ystride + n]` is
/// writable for the valid lanes; `bias` is null or has `NV·16` values.
#[target_feature(enable = "avx512f")]
unsafe fn row_tile<const R: usize, const NV: usize>(t: &RowTile) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        if !t.bias.is_null() {
            for v in 0..NV {
                let bv = _mm512_loadu_ps(t.bias.add(16 * v));
                for row in acc.iter_mut() {
                    row[v] = bv;
                }
            }
        }
        let astride = t.astride;
        for op in t.rows {
            let mut a = op.a;
            let mut b = op.b;
            for _ in 0..t.k {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm512_loadu_ps(b.add(16 * v));
                }
                for (j, row) in acc.iter_mut().enumerate() {
                    let s = _mm512_set1_ps(*a.add(j * astride));
                    for v in 0..NV {
                        row[v] = _mm512_fmadd_ps(s, bv[v], row[v]);
                    }
                }
                a = a.add(1);
                b = b.add(16 * NV);
            }
        }
        let mask = lane_mask(t.lanes_last);
        for (j, row) in acc.iter().enumerate() {
            let y = t.y.add(j * t.ystride);
            for v in 0..NV - 1 {
                _mm512_storeu_ps(y.add(16 * v), row[v]);
            }
            _mm512_mask_storeu_ps(y.add(16 * (NV - 1)), mask, row[NV - 1]);
        }
    }
}

/// Weight-gradient tile: `R` reduction coordinates × `NV` vectors of channels.
///
/// # Safety
/// The CPU supports AVX-512F; `acc[j·ld + n]` is readable and writable and,
/// for every segment, `a[t·astride + j]`, `b[t·bstride + n]` are readable for
/// j < R, t < count and the valid lanes n.
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_tile<const R: usize, const NV: usize>(t: &WgradTile) {
    unsafe {
        let mask = lane_mask(t.lanes_last);
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for (j, row) in acc.iter_mut().enumerate() {
            let p = t.acc.add(j * t.ld);
            for v in 0..NV - 1 {
                row[v] = _mm512_loadu_ps(p.add(16 * v));
            }
            row[NV - 1] = _mm512_maskz_loadu_ps(mask, p.add(16 * (NV - 1)));
        }
        for seg in t.segments {
            let mut a = seg.a;
            let mut b = seg.b;
            for _ in 0..seg.count {
                let mut bv = [_mm512_setzero_ps(); NV];
                for v in 0..NV - 1 {
                    bv[v] = _mm512_loadu_ps(b.add(16 * v));
                }
                bv[NV - 1] = _mm512_maskz_loadu_ps(mask, b.add(16 * (NV - 1)));
                for (j, row) in acc.iter_mut().enumerate() {
                    let s = _mm512_set1_ps(*a.add(j));
                    for v in 0..NV {
                        row[v] = _mm512_fmadd_ps(s, bv[v], row[v]);
                    }
                }
                a = a.add(t.astride);
                b = b.add(t.bstride);
            }
        }
        for (j, row) in acc.iter().enumerate() {
            let p = t.acc.add(j * t.ld);
            for v in 0..NV - 1 {
                _mm512_storeu_ps(p.add(16 * v), row[v]);
            }
            _mm512_mask_storeu_ps(p.add(16 * (NV - 1)), mask, row[NV - 1]);
        }
    }
}

/// Dot tile: `R` output voxels × `C` channels, vectors along the reduction.
///
/// # Safety
/// The CPU supports AVX-512F; every `rows[i].a[j·astride + q]` (j < R, q < k)
/// and `rows[i].b[c·kp + q]` (c < C, q < kp) is readable; `y[j·ystride + c]`
/// is writable; `bias` is null or has `C` values.
#[target_feature(enable = "avx512f")]
unsafe fn dot_tile<const R: usize, const C: usize>(t: &DotTile) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let full = t.k / 16;
        let tail = t.k % 16;
        for op in t.rows {
            let mut step = |q: usize, mask: u16| {
                let mut bv = [_mm512_setzero_ps(); C];
                for (c, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm512_loadu_ps(op.b.add(c * t.kp + q));
                }
                for (j, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_maskz_loadu_ps(mask, op.a.add(j * t.astride + q));
                    for c in 0..C {
                        row[c] = _mm512_fmadd_ps(av, bv[c], row[c]);
                    }
                }
            };
            for chunk in 0..full {
                step(16 * chunk, 0xFFFF);
            }
            if tail > 0 {
                step(16 * full, lane_mask(tail));
            }
        }
        for (j, row) in acc.iter().enumerate() {
            let y = t.y.add(j * t.ystride);
            for c in 0..C {
                let b = if t.bias.is_null() {
                    0.0
                } else {
                    *t.bias.add(c)
                };
                *y.add(c) = _mm512_reduce_add_ps(row[c]) + b;
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
            [$f::<5, 1> as $ty, $f::<5, 2> as $ty],
            [$f::<6, 1> as $ty, $f::<6, 2> as $ty],
            [$f::<7, 1> as $ty, $f::<7, 2> as $ty],
            [$f::<8, 1> as $ty, $f::<8, 2> as $ty],
            [$f::<9, 1> as $ty, $f::<9, 2> as $ty],
            [$f::<10, 1> as $ty, $f::<10, 2> as $ty],
            [$f::<11, 1> as $ty, $f::<11, 2> as $ty],
            [$f::<12, 1> as $ty, $f::<12, 2> as $ty],
            [$f::<13, 1> as $ty, $f::<13, 2> as $ty],
            [$f::<14, 1> as $ty, $f::<14, 2> as $ty],
        ]
    };
}

const ROW_TILES: [[RowTileFn; 2]; MAX_R] = tile_table!(row_tile, RowTileFn);
const WGRAD_TILES: [[WgradTileFn; 2]; MAX_R] = tile_table!(wgrad_tile, WgradTileFn);

/// The forward tile of `r` rows (1..=14) and `nv` vectors (1..=2).
pub(super) fn row_tile_fn(r: usize, nv: usize) -> RowTileFn {
    ROW_TILES[r - 1][nv - 1]
}

/// The weight-gradient tile of `r` rows (1..=14) and `nv` vectors (1..=2).
pub(super) fn wgrad_tile_fn(r: usize, nv: usize) -> WgradTileFn {
    WGRAD_TILES[r - 1][nv - 1]
}

/// The dot tile of `r` rows (1..=`dot_max_rows(Avx512, c)`) and `c` channels (1..=4).
pub(super) fn dot_tile_fn(r: usize, c: usize) -> DotTileFn {
    macro_rules! pick {
        ($($c:literal => [$($r:literal),*]);*) => {
            match (r, c) {
                $($(($r, $c) => dot_tile::<$r, $c> as DotTileFn,)*)*
                _ => unreachable!("no dot tile of {r} rows × {c} channels"),
            }
        };
    }
    pick!(
        1 => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        2 => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        3 => [1, 2, 3, 4, 5, 6, 7, 8];
        4 => [1, 2, 3, 4, 5, 6]
    )
}
