// Reduce kernels: sums down to a broadcast shape (src/ops/bcast.rs), the
// broadcast back up (expand), and the softmax over the last dim with its
// backward. src/backend/gpu/reduce.rs launches them and
// documents which runs when, the launch geometry and the counted floors.
//
// Sums are deterministic: every partial is added in a fixed order that
// depends only on the shape (no float atomics), and no block waits on
// another — a sum over many elements per output is two launches.
//
// - sum_partial_* / sum_merge: x seen as [samples, rows, C] (column-tile
//   geometry of channel_rows.cuh); stage 1 writes f32 partials
//   [samples, chunks, C], stage 2 adds them in chunk order, one warp per
//   (sample, channel).
// - row_sum_*: sums of the last dim of x seen as [rows, len]: one thread per
//   row (row_sum_thread, short rows) or one warp per row (row_sum_warp).
// - softmax_*, softmax_bwd_*: over the last dim, one thread, warp or block
//   per row (see the softmax section).
// - expand_*: out[i] = y[bcast index of i] in the output dtype (bcast.cuh).
#include "bcast.cuh"
#include "channel_rows.cuh"

#define VD_RD_CHUNK 8

VD_DEVICE i64 vd_rd_gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
VD_DEVICE i64 vd_rd_gstride() { return (i64)gridDim.x * blockDim.x; }

// ------------------------------------------------------- two-stage sums
// Stage 1: per-(sample, chunk, c) sums of x over the chunk's rows. Thread
// (tx, ty) sums its rows in f32, a tree over ty in shared memory
// (bx·by·VEC floats) adds the column's by sums, ty == 0 writes
// partial[sample, chunk, c].
template <typename T, int VEC>
VD_DEVICE void vd_rd_sum_partial(const T* __restrict__ x, float* __restrict__ partial, i64 rows, i64 rows_per_chunk,
                                 int c, int lanes) {
    VD_DYNAMIC_SMEM(float, sm);
    const VdRowTile t = vd_row_tile(rows, rows_per_chunk, lanes);
    const int bx = blockDim.x, by = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    float s[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) s[j] = 0.0f;
    if (t.active) {
        const T* xs = x + t.n * rows * c + t.col * VEC;
        for (i64 r = t.r0 + ty; r < t.r1; r += by) {
            float v[VEC];
            vd_rows_load<VEC>(xs + r * c, v);
#pragma unroll
            for (int j = 0; j < VEC; ++j) s[j] += v[j];
        }
    }
    const int me = (ty * bx + tx) * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) sm[me + j] = s[j];
    __syncthreads();
    for (int h = by >> 1; h > 0; h >>= 1) {
        if (ty < h) {
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                s[j] += sm[me + h * bx * VEC + j];
                sm[me + j] = s[j];
            }
        }
        __syncthreads();
    }
    if (ty == 0 && t.active) {
        float* out = partial + (t.n * gridDim.x + blockIdx.x) * c + t.col * VEC;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] = s[j];
    }
}
extern "C" __global__ void vd_reduce_sum_partial_f32x8(const float* __restrict__ x, float* __restrict__ partial,
                                                       i64 rows, i64 rows_per_chunk, int c, int lanes) {
    vd_rd_sum_partial<float, 8>(x, partial, rows, rows_per_chunk, c, lanes);
}
extern "C" __global__ void vd_reduce_sum_partial_f32x1(const float* __restrict__ x, float* __restrict__ partial,
                                                       i64 rows, i64 rows_per_chunk, int c, int lanes) {
    vd_rd_sum_partial<float, 1>(x, partial, rows, rows_per_chunk, c, lanes);
}
extern "C" __global__ void vd_reduce_sum_partial_bf16x8(const bf16* __restrict__ x, float* __restrict__ partial,
                                                        i64 rows, i64 rows_per_chunk, int c, int lanes) {
    vd_rd_sum_partial<bf16, 8>(x, partial, rows, rows_per_chunk, c, lanes);
}
extern "C" __global__ void vd_reduce_sum_partial_bf16x1(const bf16* __restrict__ x, float* __restrict__ partial,
                                                        i64 rows, i64 rows_per_chunk, int c, int lanes) {
    vd_rd_sum_partial<bf16, 1>(x, partial, rows, rows_per_chunk, c, lanes);
}

// Stage 2: s[n, c] = Σ_chunk partial[n, chunk, c], one warp per (n, c)
// (blocks of a multiple of 32 threads; warps past the last pair idle): lane l
// adds chunks l, l + 32, … in order, then a butterfly over the warp (fixed
// order).
extern "C" __global__ void vd_reduce_sum_merge(const float* __restrict__ partial, float* __restrict__ s, int samples,
                                               int c, int chunks) {
    const i64 pair = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool live = pair < (i64)samples * c;
    const i64 n = live ? pair / c : 0, ch = live ? pair % c : 0;
    float acc = 0.0f;
    if (live)
        for (int j = (int)(threadIdx.x & 31u); j < chunks; j += 32) acc += partial[(n * chunks + j) * c + ch];
    acc = vd_warp_sum(acc);
    if (live && (threadIdx.x & 31u) == 0) s[pair] = acc;
}

// ------------------------------------------------------------- row sums
// s[r] = Σ_j x[r, j], one thread per row, in order (rows of ≤ 32: a warp's
// 32 rows are one contiguous span).
template <typename T>
VD_DEVICE void vd_rd_row_sum_thread(const T* __restrict__ x, float* __restrict__ s, i64 rows, int len) {
    for (i64 r = vd_rd_gtid(); r < rows; r += vd_rd_gstride()) {
        const T* xr = x + r * len;
        float a = 0.0f;
        for (int j = 0; j < len; ++j) a += vd_ld(xr, j);
        s[r] = a;
    }
}
extern "C" __global__ void vd_reduce_row_sum_thread_f32(const float* __restrict__ x, float* __restrict__ s, i64 rows,
                                                        int len) {
    vd_rd_row_sum_thread(x, s, rows, len);
}
extern "C" __global__ void vd_reduce_row_sum_thread_bf16(const bf16* __restrict__ x, float* __restrict__ s, i64 rows,
                                                         int len) {
    vd_rd_row_sum_thread(x, s, rows, len);
}

// The row of warp w of block b in a grid-stride loop over rows: every lane of
// a warp sees the same rows, so warp collectives inside the loop are safe.
VD_DEVICE i64 vd_rd_warp_row0() { return (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); }
VD_DEVICE i64 vd_rd_warp_rows() { return (i64)gridDim.x * (blockDim.x >> 5); }

// s[r] = Σ_j x[r, j], one warp per row: lane l adds elements l, l + 32, …
// (vec8: 8-element vectors l, l + 32, … — len % 8 == 0, 16-byte aligned
// rows), then a butterfly over the warp.
template <typename T>
VD_DEVICE void vd_rd_row_sum_warp(const T* __restrict__ x, float* __restrict__ s, i64 rows, int len, int vec8) {
    const int lane = (int)(threadIdx.x & 31u);
    for (i64 r = vd_rd_warp_row0(); r < rows; r += vd_rd_warp_rows()) {
        const T* xr = x + r * len;
        float a = 0.0f;
        if (vec8) {
            for (int k = lane; k < len / 8; k += 32) {
                float v[8];
                vd_ld8(xr + 8 * k, v);
#pragma unroll
                for (int j = 0; j < 8; ++j) a += v[j];
            }
        } else {
            for (int j = lane; j < len; j += 32) a += vd_ld(xr, j);
        }
        a = vd_warp_sum(a);
        if (lane == 0) s[r] = a;
    }
}
extern "C" __global__ void vd_reduce_row_sum_warp_f32(const float* __restrict__ x, float* __restrict__ s, i64 rows,
                                                      int len, int vec8) {
    vd_rd_row_sum_warp(x, s, rows, len, vec8);
}
extern "C" __global__ void vd_reduce_row_sum_warp_bf16(const bf16* __restrict__ x, float* __restrict__ s, i64 rows,
                                                       int len, int vec8) {
    vd_rd_row_sum_warp(x, s, rows, len, vec8);
}

// ---------------------------------------------------------------- expand
// out[i] = y[bcast index of i] over n elements (x = out seen as [outer, mid,
// inner], per_outer = mid·inner), converted to the output dtype; chunks of 8
// consecutive elements in a grid-stride loop, full chunks stored as one
// 16-byte vector (bf16) or two (f32).
template <typename T>
VD_DEVICE void vd_rd_expand(const float* __restrict__ y, T* __restrict__ out, i64 n, i64 per_outer, int inner) {
    const i64 chunks = (n + VD_RD_CHUNK - 1) / VD_RD_CHUNK;
    for (i64 k = vd_rd_gtid(); k < chunks; k += vd_rd_gstride()) {
        const i64 i0 = k * VD_RD_CHUNK;
        VdBcastIter it = vd_bcast_at(i0, per_outer, inner);
        float v[8];
#pragma unroll
        for (int j = 0; j < VD_RD_CHUNK; ++j) {
            v[j] = i0 + j < n ? y[vd_bcast_index(it)] : 0.0f;
            vd_bcast_next(it, per_outer, inner);
        }
        if (i0 + VD_RD_CHUNK <= n) {
            vd_st8(out + i0, v);
        } else {
            for (int j = 0; i0 + j < n; ++j) vd_st(out, i0 + j, v[j]);
        }
    }
}
extern "C" __global__ void vd_reduce_expand_f32(const float* __restrict__ y, float* __restrict__ out, i64 n,
                                                i64 per_outer, int inner) {
    vd_rd_expand(y, out, n, per_outer, inner);
}
extern "C" __global__ void vd_reduce_expand_bf16(const float* __restrict__ y, bf16* __restrict__ out, i64 n,
                                                 i64 per_outer, int inner) {
    vd_rd_expand(y, out, n, per_outer, inner);
}

// ---------------------------------------------------------------- softmax
// p[r, j] = e^{x[r, j] − m_r} / Σ_j' e^{x[r, j'] − m_r},  m_r = max_j x[r, j],
// over rows of `len` (the last dim). Three variants by row length (the
// launcher picks; gpu/reduce.rs documents the choice):
//   thread: one thread per row      (len ≤ 32)
//   warp:   one warp per row        (len ≤ 1024)
//   block:  one block per row       (longer rows)
// Each reads the row twice: one online pass keeping the running maximum m and
// s = Σ e^{x − m} (a larger element rescales s, so max and sum need one pass),
// then the pass writing p (re-reading the row, from cache). Warps and blocks
// merge their threads' (m, s) in a fixed order. With vec8 (len % 8 == 0, rows
// 16-byte aligned) the warp and block variants read 8-element vectors.
// A row holding NaN gives NaN (as the CPU); −∞ elements get p = 0.

// The running (max, Σ e^{x − max}) of part of a row.
struct VdSoftmaxAcc {
    float m, s;
};
VD_DEVICE VdSoftmaxAcc vd_sm_empty() { return VdSoftmaxAcc{__int_as_float(0xff800000), 0.0f}; }
// e^{a − m} for a ≤ m, with e^{−∞ − (−∞)} taken as 1 (the −∞ terms vanish
// once a finite element raises m).
VD_DEVICE float vd_sm_scale(float a, float m) { return a == m ? 1.0f : expf(a - m); }
// Adds element x: one exponential, no branch (x > m selects the rescale).
VD_DEVICE void vd_sm_add(VdSoftmaxAcc& a, float x) {
    const bool up = x > a.m;
    const float e = x == a.m ? 1.0f : expf(-fabsf(x - a.m));
    a.s = up ? fmaf(a.s, e, 1.0f) : a.s + e;
    a.m = up ? x : a.m;
}
VD_DEVICE VdSoftmaxAcc vd_sm_merge(VdSoftmaxAcc a, VdSoftmaxAcc b) {
    const float m = fmaxf(a.m, b.m);
    return VdSoftmaxAcc{m, a.s * vd_sm_scale(a.m, m) + b.s * vd_sm_scale(b.m, m)};
}
// The warp's merged (m, s), the same in every lane (lane 0's: the two lanes
// of a butterfly step may round a product differently).
VD_DEVICE VdSoftmaxAcc vd_sm_warp_merge(VdSoftmaxAcc a) {
    for (int o = 16; o > 0; o >>= 1) {
        VdSoftmaxAcc b;
        b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
        b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
        a = vd_sm_merge(a, b);
    }
    a.m = __shfl_sync(0xffffffffu, a.m, 0);
    a.s = __shfl_sync(0xffffffffu, a.s, 0);
    return a;
}

// Calls f(v) for each element a thread owns of a row of `len`: thread t of
// nt takes 8-element vectors t, t + nt, … (vec8) or elements t, t + nt, ….
template <typename T, typename F>
VD_DEVICE void vd_rd_row_read(const T* xr, int len, int t, int nt, int vec8, F f) {
    if (vec8) {
        for (int k = t; k < len / 8; k += nt) {
            float v[8];
            vd_ld8(xr + 8 * k, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) f(v[j]);
        }
    } else {
        for (int j = t; j < len; j += nt) f(vd_ld(xr, j));
    }
}
// out[j] = f(a[j], b[j]) over the same elements as vd_rd_row_read.
template <typename T, typename F>
VD_DEVICE void vd_rd_row_map(const T* a, const T* b, T* out, int len, int t, int nt, int vec8, F f) {
    if (vec8) {
        for (int k = t; k < len / 8; k += nt) {
            float va[8], vb[8];
            vd_ld8(a + 8 * k, va);
            vd_ld8(b + 8 * k, vb);
#pragma unroll
            for (int j = 0; j < 8; ++j) va[j] = f(va[j], vb[j]);
            vd_st8(out + 8 * k, va);
        }
    } else {
        for (int j = t; j < len; j += nt) vd_st(out, j, f(vd_ld(a, j), vd_ld(b, j)));
    }
}

// The row's (m, s) from this thread's share, merged over the warp.
template <typename T>
VD_DEVICE VdSoftmaxAcc vd_sm_row_warp(const T* xr, int len, int vec8) {
    VdSoftmaxAcc a = vd_sm_empty();
    vd_rd_row_read(xr, len, (int)(threadIdx.x & 31u), 32, vec8, [&](float v) { vd_sm_add(a, v); });
    return vd_sm_warp_merge(a);
}

template <typename T>
VD_DEVICE void vd_rd_softmax_thread(const T* __restrict__ x, T* __restrict__ p, i64 rows, int len) {
    for (i64 r = vd_rd_gtid(); r < rows; r += vd_rd_gstride()) {
        const T* xr = x + r * len;
        VdSoftmaxAcc a = vd_sm_empty();
        for (int j = 0; j < len; ++j) vd_sm_add(a, vd_ld(xr, j));
        const float inv = 1.0f / a.s;
        for (int j = 0; j < len; ++j) vd_st(p, r * len + j, expf(vd_ld(xr, j) - a.m) * inv);
    }
}
extern "C" __global__ void vd_reduce_softmax_thread_f32(const float* __restrict__ x, float* __restrict__ p, i64 rows,
                                                        int len) {
    vd_rd_softmax_thread(x, p, rows, len);
}
extern "C" __global__ void vd_reduce_softmax_thread_bf16(const bf16* __restrict__ x, bf16* __restrict__ p, i64 rows,
                                                         int len) {
    vd_rd_softmax_thread(x, p, rows, len);
}

template <typename T>
VD_DEVICE void vd_rd_softmax_warp(const T* __restrict__ x, T* __restrict__ p, i64 rows, int len, int vec8) {
    const int lane = (int)(threadIdx.x & 31u);
    for (i64 r = vd_rd_warp_row0(); r < rows; r += vd_rd_warp_rows()) {
        const T* xr = x + r * len;
        const VdSoftmaxAcc a = vd_sm_row_warp(xr, len, vec8);
        const float inv = 1.0f / a.s;
        vd_rd_row_map(xr, xr, p + r * len, len, lane, 32, vec8, [&](float v, float) { return expf(v - a.m) * inv; });
    }
}
extern "C" __global__ void vd_reduce_softmax_warp_f32(const float* __restrict__ x, float* __restrict__ p, i64 rows,
                                                      int len, int vec8) {
    vd_rd_softmax_warp(x, p, rows, len, vec8);
}
extern "C" __global__ void vd_reduce_softmax_warp_bf16(const bf16* __restrict__ x, bf16* __restrict__ p, i64 rows,
                                                       int len, int vec8) {
    vd_rd_softmax_warp(x, p, rows, len, vec8);
}

// One block per row (blockDim a multiple of 32, ≤ 1024): each warp merges its
// threads' (m, s), lane 0 of warp w puts it in shared slot w, and every thread
// merges the slots in warp order (the same result everywhere).
template <typename T>
VD_DEVICE void vd_rd_softmax_block(const T* __restrict__ x, T* __restrict__ p, i64 rows, int len, int vec8) {
    __shared__ float sm_m[32], sm_s[32];
    const int t = (int)threadIdx.x, nt = (int)blockDim.x, nwarps = nt >> 5;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * len;
        VdSoftmaxAcc a = vd_sm_empty();
        vd_rd_row_read(xr, len, t, nt, vec8, [&](float v) { vd_sm_add(a, v); });
        a = vd_sm_warp_merge(a);
        if ((t & 31) == 0) sm_m[t >> 5] = a.m, sm_s[t >> 5] = a.s;
        __syncthreads();
        a = VdSoftmaxAcc{sm_m[0], sm_s[0]};
        for (int w = 1; w < nwarps; ++w) a = vd_sm_merge(a, VdSoftmaxAcc{sm_m[w], sm_s[w]});
        __syncthreads();  // the slots are rewritten for the next row
        const float inv = 1.0f / a.s;
        vd_rd_row_map(xr, xr, p + r * len, len, t, nt, vec8, [&](float v, float) { return expf(v - a.m) * inv; });
    }
}
extern "C" __global__ void vd_reduce_softmax_block_f32(const float* __restrict__ x, float* __restrict__ p, i64 rows,
                                                       int len, int vec8) {
    vd_rd_softmax_block(x, p, rows, len, vec8);
}
extern "C" __global__ void vd_reduce_softmax_block_bf16(const bf16* __restrict__ x, bf16* __restrict__ p, i64 rows,
                                                        int len, int vec8) {
    vd_rd_softmax_block(x, p, rows, len, vec8);
}

// ------------------------------------------------------ softmax backward
// dx[r, j] = p[r, j] · (dp[r, j] − Σ_j' dp[r, j']·p[r, j']): the same three
// variants (one pass for the dot product, one writing dx).
template <typename T>
VD_DEVICE void vd_rd_softmax_bwd_thread(const T* __restrict__ dp, const T* __restrict__ p, T* __restrict__ dx, i64 rows,
                                        int len) {
    for (i64 r = vd_rd_gtid(); r < rows; r += vd_rd_gstride()) {
        const T* gr = dp + r * len;
        const T* pr = p + r * len;
        float dot = 0.0f;
        for (int j = 0; j < len; ++j) dot = fmaf(vd_ld(gr, j), vd_ld(pr, j), dot);
        for (int j = 0; j < len; ++j) vd_st(dx, r * len + j, vd_ld(pr, j) * (vd_ld(gr, j) - dot));
    }
}
extern "C" __global__ void vd_reduce_softmax_bwd_thread_f32(const float* __restrict__ dp, const float* __restrict__ p,
                                                            float* __restrict__ dx, i64 rows, int len) {
    vd_rd_softmax_bwd_thread(dp, p, dx, rows, len);
}
extern "C" __global__ void vd_reduce_softmax_bwd_thread_bf16(const bf16* __restrict__ dp, const bf16* __restrict__ p,
                                                             bf16* __restrict__ dx, i64 rows, int len) {
    vd_rd_softmax_bwd_thread(dp, p, dx, rows, len);
}

// This thread's share of Σ dp·p over a row.
template <typename T>
VD_DEVICE float vd_rd_row_dot(const T* gr, const T* pr, int len, int t, int nt, int vec8) {
    float dot = 0.0f;
    if (vec8) {
        for (int k = t; k < len / 8; k += nt) {
            float g[8], q[8];
            vd_ld8(gr + 8 * k, g);
            vd_ld8(pr + 8 * k, q);
#pragma unroll
            for (int j = 0; j < 8; ++j) dot = fmaf(g[j], q[j], dot);
        }
    } else {
        for (int j = t; j < len; j += nt) dot = fmaf(vd_ld(gr, j), vd_ld(pr, j), dot);
    }
    return dot;
}

template <typename T>
VD_DEVICE void vd_rd_softmax_bwd_warp(const T* __restrict__ dp, const T* __restrict__ p, T* __restrict__ dx, i64 rows,
                                      int len, int vec8) {
    const int lane = (int)(threadIdx.x & 31u);
    for (i64 r = vd_rd_warp_row0(); r < rows; r += vd_rd_warp_rows()) {
        const T* gr = dp + r * len;
        const T* pr = p + r * len;
        const float dot = vd_warp_sum(vd_rd_row_dot(gr, pr, len, lane, 32, vec8));
        vd_rd_row_map(gr, pr, dx + r * len, len, lane, 32, vec8, [&](float g, float q) { return q * (g - dot); });
    }
}
extern "C" __global__ void vd_reduce_softmax_bwd_warp_f32(const float* __restrict__ dp, const float* __restrict__ p,
                                                          float* __restrict__ dx, i64 rows, int len, int vec8) {
    vd_rd_softmax_bwd_warp(dp, p, dx, rows, len, vec8);
}
extern "C" __global__ void vd_reduce_softmax_bwd_warp_bf16(const bf16* __restrict__ dp, const bf16* __restrict__ p,
                                                           bf16* __restrict__ dx, i64 rows, int len, int vec8) {
    vd_rd_softmax_bwd_warp(dp, p, dx, rows, len, vec8);
}

template <typename T>
VD_DEVICE void vd_rd_softmax_bwd_block(const T* __restrict__ dp, const T* __restrict__ p, T* __restrict__ dx, i64 rows,
                                       int len, int vec8) {
    __shared__ float scratch[32];
    const int t = (int)threadIdx.x, nt = (int)blockDim.x;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* gr = dp + r * len;
        const T* pr = p + r * len;
        const float dot = vd_block_sum(vd_rd_row_dot(gr, pr, len, t, nt, vec8), scratch);
        vd_rd_row_map(gr, pr, dx + r * len, len, t, nt, vec8, [&](float g, float q) { return q * (g - dot); });
    }
}
extern "C" __global__ void vd_reduce_softmax_bwd_block_f32(const float* __restrict__ dp, const float* __restrict__ p,
                                                           float* __restrict__ dx, i64 rows, int len, int vec8) {
    vd_rd_softmax_bwd_block(dp, p, dx, rows, len, vec8);
}
extern "C" __global__ void vd_reduce_softmax_bwd_block_bf16(const bf16* __restrict__ dp, const bf16* __restrict__ p,
                                                            bf16* __restrict__ dx, i64 rows, int len, int vec8) {
    vd_rd_softmax_bwd_block(dp, p, dx, rows, len, vec8);
}
