// NDHWC activations seen as rows of C channels (one row per voxel), shared by
// the norm, reduce and layout families.
//
// A thread handles a *column vector* of VEC consecutive channels of a row:
// VEC = 8 (one 16-byte vector of bf16, two of f32) when C is a multiple of 8,
// else VEC = 1. The launchers choose VEC and check the alignment.
//
// Column-tile geometry of the per-channel reductions (norm statistics and
// gradients, reduce_sum) and of the norm's elementwise passes, computed by
// `RowTiles` in src/backend/gpu/reduce.rs:
//   blockDim  = (bx, by): bx column vectors × by row slots (by a power of two)
//   gridDim   = (chunks, column tiles, N)
//   thread (tx, ty) of block (j, t, n) owns column vector col = t·bx + tx
//   (channels col·VEC .. col·VEC + VEC) of sample n and visits the rows
//   r = j·R + ty, j·R + ty + by, … below min((j + 1)·R, rows).
// Every thread keeps per-channel state in registers across its rows, so the
// per-channel coefficients of an epilogue are computed once per thread, and a
// warp (32 consecutive threads, tx fastest) reads 32/bx whole rows of bx
// vectors: contiguous, 16-byte accesses.
#pragma once
#include "common.cuh"


// VEC consecutive elements at p, widened to f32 (VEC = 8: 16-byte aligned).
template <int VEC, typename T>
VD_DEVICE void vd_rows_load(const T* p, float v[VEC]) {
    if constexpr (VEC == 8)
        vd_ld8(p, v);
    else
        v[0] = vd_ld(p);
}
// VEC consecutive elements at p from f32 (bf16: round to nearest even).
template <int VEC, typename T>
VD_DEVICE void vd_rows_store(T* p, const float v[VEC]) {
    if constexpr (VEC == 8)
        vd_st8(p, v);
    else
        vd_st(p, v[0]);
}

// ------------------------------------------------------- column-tile geometry
// This thread's place in the column-tile geometry (see the top of the file).
struct VdRowTile {
    i64 n;       // sample
    i64 r0, r1;  // row range of the block's chunk
    int col;     // column vector (channels col·VEC ..)
    bool active; // col < lanes (threads past the last column still reach barriers)
};
VD_DEVICE VdRowTile vd_row_tile(i64 rows, i64 rows_per_chunk, int lanes) {
    VdRowTile t;
    t.n = blockIdx.z;
    t.r0 = (i64)blockIdx.x * rows_per_chunk;
    t.r1 = min(t.r0 + rows_per_chunk, rows);
    t.col = (int)(blockIdx.y * blockDim.x + threadIdx.x);
    t.active = t.col < lanes;
    return t;
}

// Chan et al.'s parallel combination of two Welford states (count n, mean m,
// sum of squared deviations m2): (na, ma, m2a) ← (na, ma, m2a) ⊕ (nb, mb, m2b).
// An empty b leaves a unchanged; an empty a becomes b.
VD_DEVICE void vd_welford_combine(float& na, float& ma, float& m2a, float nb, float mb, float m2b) {
    if (nb == 0.0f) return;
    const float n = na + nb, d = mb - ma, fb = nb / n;
    ma = fmaf(d, fb, ma);
    m2a = m2a + m2b + d * d * na * fb;
    na = n;
}
