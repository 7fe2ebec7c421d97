//! The micro-kernels of [`super::kernel`] with AVX2 + FMA intrinsics: the
//! fast path on x86-64 CPUs without AVX-512.
//!
//! A 16-lane vector of the tile is two 8-lane ymm halves. With 16 ymm
//! registers the tiles are at most 3 rows: 3 × 2 vectors = 12 accumulators,
//! plus one weight half and the broadcasts. Partial last vectors use AVX2
//! masked loads and stores (`vmaskmovps`, which never touch masked-out lanes).
// Register tiles are indexed by (row, vector) on purpose: the loops are
// unrolled over constant bounds and the indices name registers.
#![allow(clippy::needless_range_loop)]
#![cfg(target_arch = "x86_64")]

use super::kernel::{
    DotTile, DotTileFn, RowTile, RowTileFn, WgradTile, WgradTileFn, PORTABLE_MAX_R,
};
use std::arch::x86_64::*;

/// Per-lane masks of a 16-lane vector with `lanes` valid lanes: (low, high) halves.
#[inline(always)]
unsafe fn half_masks(lanes: usize) -> (__m256i, __m256i) {
    unsafe {
        let idx_lo = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let idx_hi = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
        let n = _mm256_set1_epi32(lanes as i32);
        (_mm256_cmpgt_epi32(n, idx_lo), _mm256_cmpgt_epi32(n, idx_hi))
    }
}

/// Forward/data-gradient tile: `R` output voxels × `NV` 16-lane vectors.
///
/// # Safety
/// The CPU supports AVX2 and FMA; otherwise as the AVX-512 twin.
#[target_feature(enable = "avx2,fma")]
unsafe fn row_tile<const R: usize, const NV: usize>(t: &RowTile) {
    unsafe {
        // acc[j][h]: half h (0..2·NV) of row j.
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        if !t.bias.is_null() {
            for h in 0..2 * NV {
                let bv = _mm256_loadu_ps(t.bias.add(8 * h));
                for row in acc.iter_mut() {
                    row[h] = bv;
                }
            }
        }
        for op in t.rows {
            let mut a = op.a;
            let mut b = op.b;
            for _ in 0..t.k {
                let s: [__m256; R] =
                    std::array::from_fn(|j| _mm256_broadcast_ss(&*a.add(j * t.astride)));
                for h in 0..2 * NV {
                    let bv = _mm256_loadu_ps(b.add(8 * h));
                    for (j, row) in acc.iter_mut().enumerate() {
                        row[h] = _mm256_fmadd_ps(s[j], bv, row[h]);
                    }
                }
                a = a.add(1);
                b = b.add(16 * NV);
            }
        }
        let (m_lo, m_hi) = half_masks(t.lanes_last);
        for (j, row) in acc.iter().enumerate() {
            let y = t.y.add(j * t.ystride);
            for h in 0..2 * (NV - 1) {
                _mm256_storeu_ps(y.add(8 * h), row[h]);
            }
            let last = y.add(16 * (NV - 1));
            _mm256_maskstore_ps(last, m_lo, row[2 * NV - 2]);
            _mm256_maskstore_ps(last.add(8), m_hi, row[2 * NV - 1]);
        }
    }
}

/// Weight-gradient tile: `R` reduction coordinates × `NV` 16-lane vectors.
///
/// # Safety
/// The CPU supports AVX2 and FMA; otherwise as the AVX-512 twin.
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_tile<const R: usize, const NV: usize>(t: &WgradTile) {
    unsafe {
        let (m_lo, m_hi) = half_masks(t.lanes_last);
        // Plain loads when the last vector is whole (masked loads cost more).
        let full = t.lanes_last == 16;
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for (j, row) in acc.iter_mut().enumerate() {
            let p = t.acc.add(j * t.ld);
            for h in 0..2 * (NV - 1) {
                row[h] = _mm256_loadu_ps(p.add(8 * h));
            }
            let last = p.add(16 * (NV - 1));
            row[2 * NV - 2] = _mm256_maskload_ps(last, m_lo);
            row[2 * NV - 1] = _mm256_maskload_ps(last.add(8), m_hi);
        }
        for seg in t.segments {
            let mut a = seg.a;
            let mut b = seg.b;
            for _ in 0..seg.count {
                let s: [__m256; R] = std::array::from_fn(|j| _mm256_broadcast_ss(&*a.add(j)));
                for h in 0..2 * NV {
                    let bv = if full || h + 2 < 2 * NV {
                        _mm256_loadu_ps(b.add(8 * h))
                    } else if h + 2 == 2 * NV {
                        _mm256_maskload_ps(b.add(8 * h), m_lo)
                    } else {
                        _mm256_maskload_ps(b.add(8 * h), m_hi)
                    };
                    for (j, row) in acc.iter_mut().enumerate() {
                        row[h] = _mm256_fmadd_ps(s[j], bv, row[h]);
                    }
                }
                a = a.add(t.astride);
                b = b.add(t.bstride);
            }
        }
        for (j, row) in acc.iter().enumerate() {
            let p = t.acc.add(j * t.ld);
            for h in 0..2 * (NV - 1) {
                _mm256_storeu_ps(p.add(8 * h), row[h]);
            }
            let last = p.add(16 * (NV - 1));
            _mm256_maskstore_ps(last, m_lo, row[2 * NV - 2]);
            _mm256_maskstore_ps(last.add(8), m_hi, row[2 * NV - 1]);
        }
    }
}

/// Horizontal sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// Dot tile: `R` output voxels × `C` channels, lanes along the reduction.
///
/// # Safety
/// The CPU supports AVX2 and FMA; otherwise as the AVX-512 twin.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile<const R: usize, const C: usize>(t: &DotTile) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let full = t.k / 8;
        let tail = t.k % 8;
        let (tail_mask, _) = half_masks(tail);
        for op in t.rows {
            let mut step = |q: usize, masked: bool| {
                let bv: [__m256; C] =
                    std::array::from_fn(|c| _mm256_loadu_ps(op.b.add(c * t.kp + q)));
                for (j, row) in acc.iter_mut().enumerate() {
                    let ap = op.a.add(j * t.astride + q);
                    let av = if masked {
                        _mm256_maskload_ps(ap, tail_mask)
                    } else {
                        _mm256_loadu_ps(ap)
                    };
                    for c in 0..C {
                        row[c] = _mm256_fmadd_ps(av, bv[c], row[c]);
                    }
                }
            };
            for chunk in 0..full {
                step(8 * chunk, false);
            }
            if tail > 0 {
                step(8 * full, true);
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
                *y.add(c) = hsum(row[c]) + b;
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
