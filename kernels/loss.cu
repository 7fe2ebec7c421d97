// Segmentation kernels: argmax, one-hot, the losses (cross-entropy, soft
// Dice, MSE) with their backward passes, and the [−1, 1] → logits map.
// Launched by src/backend/gpu/loss.rs (row ops, CE, MSE) and
// src/backend/gpu/loss/dice.rs, which document the launch geometry.
//
// Layout: activations are NDHWC, so one voxel's C channel values are one
// contiguous "row". Row ops give one thread one row (a grid-stride loop over
// rows); the class counts of segmentation are small (2 … 17), so a thread's C
// loads are few and a warp's 32 rows are one contiguous span of 32·C elements.
//
// Every activation kernel has an f32 and a bf16 entry point (T = the dtype of
// the activation inputs and outputs); arithmetic and accumulation are f32.
//
// Losses reduce in two stages, deterministic for a given grid: stage 1 writes
// one partial per block (a fixed set of rows per thread, then a fixed-tree
// block sum) to a workspace; stage 2 is one block summing the partials in a
// fixed order. No block waits on another.
#include "common.cuh"

#define VD_LOSS_CHUNK 8
// Threads per block of the Dice stage-1 kernel (the launcher uses the same).
#define VD_LOSS_DICE_THREADS 256

// ------------------------------------------------------------------ access
// Chunk j of n elements: the full chunk as a vector, the last partial chunk
// element by element (missing elements read 0).
template <typename T>
VD_DEVICE int vd_loss_ld_chunk(const T* p, i64 i0, i64 n, float v[8]) {
    const int len = (int)min(n - i0, (i64)VD_LOSS_CHUNK);
    if (len == VD_LOSS_CHUNK) {
        vd_ld8(p + i0, v);
    } else {
#pragma unroll
        for (int j = 0; j < VD_LOSS_CHUNK; ++j) v[j] = j < len ? vd_ld(p, i0 + j) : 0.0f;
    }
    return len;
}
template <typename T>
VD_DEVICE void vd_loss_st_chunk(T* p, i64 i0, int len, const float v[8]) {
    if (len == VD_LOSS_CHUNK) {
        vd_st8(p + i0, v);
    } else {
#pragma unroll
        for (int j = 0; j < VD_LOSS_CHUNK; ++j)
            if (j < len) vd_st(p, i0 + j, v[j]);
    }
}

VD_DEVICE i64 vd_loss_gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
VD_DEVICE i64 vd_loss_gstride() { return (i64)gridDim.x * blockDim.x; }

// Max of a row; NaN when any element is NaN (a NaN never compares greater).
template <typename T>
VD_DEVICE float vd_loss_row_max(const T* x, int C) {
    float m = vd_ld(x, 0);
    for (int c = 1; c < C; ++c) {
        const float v = vd_ld(x, c);
        if (v > m || v != v) m = v;
    }
    return m;
}
// Σ_c e^{x_c − m} of a row, f32, in channel order.
template <typename T>
VD_DEVICE float vd_loss_row_sumexp(const T* x, int C, float m) {
    float s = 0.0f;
    for (int c = 0; c < C; ++c) s += expf(vd_ld(x, c) - m);
    return s;
}

// ------------------------------------------------------------------ argmax
// y[r] = the first c with x[r,c] = max_c x[r,c], as a float; NaN when the row
// holds a NaN.
template <typename T>
VD_DEVICE void vd_loss_argmax(const T* __restrict__ x, T* __restrict__ y, i64 rows, int C) {
    for (i64 r = vd_loss_gtid(); r < rows; r += vd_loss_gstride()) {
        const T* xr = x + r * C;
        float best_v = vd_ld(xr, 0);
        bool nan = best_v != best_v;
        int best = 0;
        for (int c = 1; c < C; ++c) {
            const float v = vd_ld(xr, c);
            nan |= v != v;
            if (v > best_v) best = c, best_v = v;
        }
        vd_st(y, r, nan ? __int_as_float(0x7FC00000) : (float)best);
    }
}
extern "C" __global__ void vd_loss_argmax_f32(const float* __restrict__ x, float* __restrict__ y, i64 rows, int C) {
    vd_loss_argmax(x, y, rows, C);
}
extern "C" __global__ void vd_loss_argmax_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, i64 rows, int C) {
    vd_loss_argmax(x, y, rows, C);
}

// ----------------------------------------------------------------- one-hot
// y[r,c] = on if c == labels[r] else off. A label that is not an integer in
// [0, classes) (NaN included) writes `off` to its whole row and lowers
// *first_bad (initialised to 2⁶⁴−1 by the launcher) to its row index with
// atomicMin, so the launcher reports the first offending voxel.
template <typename TL, typename TY>
VD_DEVICE void vd_loss_one_hot(const TL* __restrict__ labels, TY* __restrict__ y, i64 rows, int classes, float on,
                               float off, u64* __restrict__ first_bad) {
    for (i64 r = vd_loss_gtid(); r < rows; r += vd_loss_gstride()) {
        const float l = vd_ld(labels, r);
        const bool valid = l >= 0.0f && l < (float)classes && l == floorf(l);
        const int id = valid ? (int)l : -1;
        if (!valid) atomicMin(first_bad, (u64)r);
        TY* yr = y + r * classes;
        for (int c = 0; c < classes; ++c) vd_st(yr, c, c == id ? on : off);
    }
}
extern "C" __global__ void vd_loss_one_hot_f32_f32(const float* __restrict__ labels, float* __restrict__ y, i64 rows,
                                                   int classes, float on, float off, u64* __restrict__ first_bad) {
    vd_loss_one_hot(labels, y, rows, classes, on, off, first_bad);
}
extern "C" __global__ void vd_loss_one_hot_f32_bf16(const float* __restrict__ labels, bf16* __restrict__ y, i64 rows,
                                                    int classes, float on, float off, u64* __restrict__ first_bad) {
    vd_loss_one_hot(labels, y, rows, classes, on, off, first_bad);
}
extern "C" __global__ void vd_loss_one_hot_bf16_f32(const bf16* __restrict__ labels, float* __restrict__ y, i64 rows,
                                                    int classes, float on, float off, u64* __restrict__ first_bad) {
    vd_loss_one_hot(labels, y, rows, classes, on, off, first_bad);
}
extern "C" __global__ void vd_loss_one_hot_bf16_bf16(const bf16* __restrict__ labels, bf16* __restrict__ y, i64 rows,
                                                     int classes, float on, float off, u64* __restrict__ first_bad) {
    vd_loss_one_hot(labels, y, rows, classes, on, off, first_bad);
}

// ----------------------------------------------------- stage 2: the finish
// out[0] = (Σ_i partials[i]) / denom over count partials: one block; thread t
// sums partials t, t + blockDim, … in order, then a fixed-tree block sum.
extern "C" __global__ void vd_loss_mean_partials(const float* __restrict__ partials, int count, float denom,
                                                 float* __restrict__ out) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = (int)threadIdx.x; i < count; i += (int)blockDim.x) s += partials[i];
    s = vd_block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s / denom;
}

// ----------------------------------------------------------- cross-entropy
// Stage 1: partials[block] = Σ over the block's rows r of
//   −Σ_c t[r,c] · (x[r,c] − lse_r),   x − lse computed as (x − m) − ln Σ e^{x−m}.
template <typename T>
VD_DEVICE void vd_loss_ce_partial(const T* __restrict__ x, const T* __restrict__ t, i64 rows, int C,
                                  float* __restrict__ partials) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (i64 r = vd_loss_gtid(); r < rows; r += vd_loss_gstride()) {
        const T* xr = x + r * C;
        const T* tr = t + r * C;
        const float m = vd_loss_row_max(xr, C);
        const float ls = logf(vd_loss_row_sumexp(xr, C, m));
        for (int c = 0; c < C; ++c) acc -= vd_ld(tr, c) * ((vd_ld(xr, c) - m) - ls);
    }
    acc = vd_block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
extern "C" __global__ void vd_loss_ce_partial_f32(const float* __restrict__ x, const float* __restrict__ t, i64 rows,
                                                  int C, float* __restrict__ partials) {
    vd_loss_ce_partial(x, t, rows, C, partials);
}
extern "C" __global__ void vd_loss_ce_partial_bf16(const bf16* __restrict__ x, const bf16* __restrict__ t, i64 rows,
                                                   int C, float* __restrict__ partials) {
    vd_loss_ce_partial(x, t, rows, C, partials);
}

// dx[r,c] = k · (softmax(x)[r,c] − t[r,c]),  k = dloss[0] / rows.
template <typename T>
VD_DEVICE void vd_loss_ce_bwd(const T* __restrict__ x, const T* __restrict__ t, const float* __restrict__ dloss,
                              i64 rows, int C, T* __restrict__ dx) {
    const float k = dloss[0] / (float)rows;
    for (i64 r = vd_loss_gtid(); r < rows; r += vd_loss_gstride()) {
        const T* xr = x + r * C;
        const T* tr = t + r * C;
        T* dr = dx + r * C;
        const float m = vd_loss_row_max(xr, C);
        const float inv = 1.0f / vd_loss_row_sumexp(xr, C, m);
        for (int c = 0; c < C; ++c) {
            const float p = expf(vd_ld(xr, c) - m) * inv;
            vd_st(dr, c, k * (p - vd_ld(tr, c)));
        }
    }
}
extern "C" __global__ void vd_loss_ce_bwd_f32(const float* __restrict__ x, const float* __restrict__ t,
                                              const float* __restrict__ dloss, i64 rows, int C,
                                              float* __restrict__ dx) {
    vd_loss_ce_bwd(x, t, dloss, rows, C, dx);
}
extern "C" __global__ void vd_loss_ce_bwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ t,
                                               const float* __restrict__ dloss, i64 rows, int C,
                                               bf16* __restrict__ dx) {
    vd_loss_ce_bwd(x, t, dloss, rows, C, dx);
}

// --------------------------------------------------------------------- MSE
// Stage 1: partials[block] = Σ (a − b)² over the block's chunks of 8 elements
// (grid-stride over chunks).
template <typename T>
VD_DEVICE void vd_loss_mse_partial(const T* __restrict__ a, const T* __restrict__ b, i64 n,
                                   float* __restrict__ partials) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    const i64 chunks = (n + VD_LOSS_CHUNK - 1) / VD_LOSS_CHUNK;
    for (i64 ch = vd_loss_gtid(); ch < chunks; ch += vd_loss_gstride()) {
        float va[8], vb[8];
        vd_loss_ld_chunk(a, ch * VD_LOSS_CHUNK, n, va);
        vd_loss_ld_chunk(b, ch * VD_LOSS_CHUNK, n, vb);
#pragma unroll
        for (int j = 0; j < VD_LOSS_CHUNK; ++j) {
            const float d = va[j] - vb[j];
            acc = fmaf(d, d, acc);
        }
    }
    acc = vd_block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
extern "C" __global__ void vd_loss_mse_partial_f32(const float* __restrict__ a, const float* __restrict__ b, i64 n,
                                                   float* __restrict__ partials) {
    vd_loss_mse_partial(a, b, n, partials);
}
extern "C" __global__ void vd_loss_mse_partial_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b, i64 n,
                                                    float* __restrict__ partials) {
    vd_loss_mse_partial(a, b, n, partials);
}

// da = k · (a − b),  k = 2·dloss[0] / n.
template <typename T>
VD_DEVICE void vd_loss_mse_bwd(const T* __restrict__ a, const T* __restrict__ b, const float* __restrict__ dloss,
                               i64 n, T* __restrict__ da) {
    const float k = 2.0f * dloss[0] / (float)n;
    const i64 chunks = (n + VD_LOSS_CHUNK - 1) / VD_LOSS_CHUNK;
    for (i64 ch = vd_loss_gtid(); ch < chunks; ch += vd_loss_gstride()) {
        float va[8], vb[8];
        const int len = vd_loss_ld_chunk(a, ch * VD_LOSS_CHUNK, n, va);
        vd_loss_ld_chunk(b, ch * VD_LOSS_CHUNK, n, vb);
#pragma unroll
        for (int j = 0; j < VD_LOSS_CHUNK; ++j) va[j] = k * (va[j] - vb[j]);
        vd_loss_st_chunk(da, ch * VD_LOSS_CHUNK, len, va);
    }
}
extern "C" __global__ void vd_loss_mse_bwd_f32(const float* __restrict__ a, const float* __restrict__ b,
                                               const float* __restrict__ dloss, i64 n, float* __restrict__ da) {
    vd_loss_mse_bwd(a, b, dloss, n, da);
}
extern "C" __global__ void vd_loss_mse_bwd_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b,
                                                const float* __restrict__ dloss, i64 n, bf16* __restrict__ da) {
    vd_loss_mse_bwd(a, b, dloss, n, da);
}

// -------------------------------------------------------------- soft Dice
// Stage 1, grid (blocks_per_sample, N), VD_LOSS_DICE_THREADS = 256 threads.
// Sample n = blockIdx.y. The channels are taken in tiles of ct = min(C, 256);
// within a tile thread t < S = ct·⌊256/ct⌋ owns channel cb + t mod ct and visits the voxels
// v ≡ blockIdx.x·R + t/ct (mod R·bps), R = S/ct, so a thread's channel is
// fixed and its three sums (Σp·t, Σp, Σt) stay in registers; consecutive
// threads read consecutive elements. The R threads of a channel are summed in
// order of t/ct through shared memory and written to
//   ws[((n·bps + blockIdx.x)·C + c)·3 + k].
template <typename T>
VD_DEVICE void vd_loss_dice_partial(const T* __restrict__ p, const T* __restrict__ t, i64 voxels, int C,
                                    float* __restrict__ ws) {
    __shared__ float red[VD_LOSS_DICE_THREADS * 3];
    const int tid = (int)threadIdx.x;
    const int ct = min(C, VD_LOSS_DICE_THREADS), R = VD_LOSS_DICE_THREADS / ct, S = R * ct;
    const int n = (int)blockIdx.y, bps = (int)gridDim.x;
    const int lane_c = tid % ct, lane_r = tid / ct;
    const T* ps = p + (i64)n * voxels * C;
    const T* ts = t + (i64)n * voxels * C;
    for (int cb = 0; cb < C; cb += ct) {
        const int c = cb + lane_c;
        float spt = 0.0f, sp = 0.0f, st = 0.0f;
        if (tid < S && c < C) {
            for (i64 v = (i64)blockIdx.x * R + lane_r; v < voxels; v += (i64)R * bps) {
                const float pv = vd_ld(ps, v * C + c), tv = vd_ld(ts, v * C + c);
                spt = fmaf(pv, tv, spt);
                sp += pv;
                st += tv;
            }
        }
        red[tid * 3 + 0] = spt;
        red[tid * 3 + 1] = sp;
        red[tid * 3 + 2] = st;
        __syncthreads();
        if (tid < ct && cb + tid < C) {
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
            for (int r = 0; r < R; ++r) {
                const float* q = red + (r * ct + tid) * 3;
                s0 += q[0], s1 += q[1], s2 += q[2];
            }
            float* o = ws + (((i64)n * bps + blockIdx.x) * C + cb + tid) * 3;
            o[0] = s0, o[1] = s1, o[2] = s2;
        }
        __syncthreads();  // red is rewritten by the next tile
    }
}
extern "C" __global__ void vd_loss_dice_partial_f32(const float* __restrict__ p, const float* __restrict__ t,
                                                    i64 voxels, int C, float* __restrict__ ws) {
    vd_loss_dice_partial(p, t, voxels, C, ws);
}
extern "C" __global__ void vd_loss_dice_partial_bf16(const bf16* __restrict__ p, const bf16* __restrict__ t,
                                                     i64 voxels, int C, float* __restrict__ ws) {
    vd_loss_dice_partial(p, t, voxels, C, ws);
}

// Stage 2, one block: sums[(n·C + c)·3 + k] = Σ_b ws[((n·bps + b)·C + c)·3 + k]
// in order of b (thread i handles the pairs i, i + blockDim, …); then
// loss[0] = mean over the pairs with c ≥ 1 and Σt > 0 of 1 − 2Σpt / (Σp + Σt),
// 0 when there are none (block sums of the terms and of the count).
extern "C" __global__ void vd_loss_dice_finish(const float* __restrict__ ws, int N, int C, int bps,
                                               float* __restrict__ sums, float* __restrict__ loss) {
    __shared__ float scratch[32];
    float total = 0.0f, count = 0.0f;
    for (int i = (int)threadIdx.x; i < N * C; i += (int)blockDim.x) {
        const int n = i / C, c = i % C;
        float s[3] = {0.0f, 0.0f, 0.0f};
        for (int b = 0; b < bps; ++b) {
            const float* q = ws + (((i64)n * bps + b) * C + c) * 3;
            s[0] += q[0], s[1] += q[1], s[2] += q[2];
        }
        sums[(i64)i * 3 + 0] = s[0];
        sums[(i64)i * 3 + 1] = s[1];
        sums[(i64)i * 3 + 2] = s[2];
        if (c >= 1 && s[2] > 0.0f) {
            total += 1.0f - 2.0f * s[0] / (s[1] + s[2]);
            count += 1.0f;
        }
    }
    total = vd_block_sum(total, scratch);
    count = vd_block_sum(count, scratch);
    if (threadIdx.x == 0) loss[0] = count > 0.0f ? total / count : 0.0f;
}

// Backward, grid (blocks, N), 256 threads, dynamic shared memory 2·C floats.
// Each block first counts K = #{(n', c) : c ≥ 1, Σt > 0} over all of `sums`
// (block sum), then fills, for its sample n = blockIdx.y,
//   α[c] = −k / S,  β[c] = k · Σpt / S²   (k = 2·dloss[0] / K, S = Σp + Σt)
// for the present pairs and α = β = 0 elsewhere, so that
//   dp[n,v,c] = α[c] · t[n,v,c] + β[c];
// then one thread per voxel row (grid-stride within the sample).
template <typename T>
VD_DEVICE void vd_loss_dice_bwd(const T* __restrict__ t, const float* __restrict__ sums,
                                const float* __restrict__ dloss, i64 voxels, int N, int C, T* __restrict__ dp) {
    __shared__ float scratch[32];
    VD_DYNAMIC_SMEM(float, coef);
    const int n = (int)blockIdx.y;
    float count = 0.0f;
    for (int i = (int)threadIdx.x; i < N * C; i += (int)blockDim.x)
        if (i % C >= 1 && sums[(i64)i * 3 + 2] > 0.0f) count += 1.0f;
    count = vd_block_sum(count, scratch);
    const float k = count > 0.0f ? 2.0f * dloss[0] / count : 0.0f;
    for (int c = (int)threadIdx.x; c < C; c += (int)blockDim.x) {
        const float* s = sums + ((i64)n * C + c) * 3;
        float alpha = 0.0f, beta = 0.0f;
        if (c >= 1 && s[2] > 0.0f) {
            const float den = s[1] + s[2];
            alpha = -k / den;
            beta = k * s[0] / (den * den);
        }
        coef[2 * c] = alpha;
        coef[2 * c + 1] = beta;
    }
    __syncthreads();
    const T* ts = t + (i64)n * voxels * C;
    T* ds = dp + (i64)n * voxels * C;
    for (i64 v = (i64)blockIdx.x * blockDim.x + threadIdx.x; v < voxels; v += (i64)gridDim.x * blockDim.x) {
        for (int c = 0; c < C; ++c)
            vd_st(ds, v * C + c, fmaf(coef[2 * c], vd_ld(ts, v * C + c), coef[2 * c + 1]));
    }
}
extern "C" __global__ void vd_loss_dice_bwd_f32(const float* __restrict__ t, const float* __restrict__ sums,
                                                const float* __restrict__ dloss, i64 voxels, int N, int C,
                                                float* __restrict__ dp) {
    vd_loss_dice_bwd(t, sums, dloss, voxels, N, C, dp);
}
extern "C" __global__ void vd_loss_dice_bwd_bf16(const bf16* __restrict__ t, const float* __restrict__ sums,
                                                 const float* __restrict__ dloss, i64 voxels, int N, int C,
                                                 bf16* __restrict__ dp) {
    vd_loss_dice_bwd(t, sums, dloss, voxels, N, C, dp);
}
