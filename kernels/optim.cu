// Fused AdamW with global-norm gradient clipping over every parameter of a
// model in three launches, whatever the number of parameter tensors
// (src/backend/gpu/optim.rs builds the slot table and documents the geometry).
//
// The slots (param, grad, m, v: f32 tensors of n elements) are described by a
// device-side table, uploaded once per step. Each slot is cut into tiles of
// VD_ADAMW_TILE = 2048 elements; tiles are numbered consecutively over all
// slots (slot s owns tiles [tile_start_s, tile_start_s + ⌈n_s / 2048⌉)). A
// block works on whole tiles (tile = blockIdx.x, blockIdx.x + gridDim.x, …),
// finds the tile's slot by binary search over tile_start, and thread t handles
// elements base + j·256 + t, j < 8 (coalesced).
//
//   1. vd_optim_adamw_sumsq:  partials[block] = Σ g² over the block's tiles;
//   2. vd_optim_adamw_norm:   one block, norm[0] = sqrt(Σ partials) (fixed order);
//   3. vd_optim_adamw_update: every thread reads norm[0] and forms
//        c = max_norm / ‖g‖ if clipping and !(‖g‖ < max_norm), else 1,
//      then per element, in place:
//        g' = c·g,  m = β1·m + (1 − β1)·g',  v = β2·v + (1 − β2)·g'²,
//        p -= lr · ( (m / bc1) / (sqrt(v / bc2) + eps) + wd·p )
//      with bc1 = 1 − β1^step, bc2 = 1 − β2^step (host constants of the step)
//      and wd = weight_decay where the slot decays, else 0.
// No host synchronisation: the norm stays on the device.
#include "common.cuh"

#define VD_ADAMW_THREADS 256
#define VD_ADAMW_PER_THREAD 8
#define VD_ADAMW_TILE (VD_ADAMW_THREADS * VD_ADAMW_PER_THREAD)

// One parameter tensor and its state. Mirrored by `AdamwSlot` in
// src/backend/gpu/optim.rs (56 bytes).
struct VdAdamwSlot {
    float* p;
    const float* g;
    float* m;
    float* v;
    i64 n;
    i64 tile_start;
    int decay;
    int pad_;
};

// Hyper-parameters of one step. Mirrored by `AdamwArgs` (48 bytes).
struct VdAdamwArgs {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float max_norm;
    float bc1;  // 1 − β1^step
    float bc2;  // 1 − β2^step
    int clip;   // 1: clip to max_norm
    int nslots;
    i64 tiles;
};

// The slot owning `tile`: the last s with tile_start_s ≤ tile (slots are in
// ascending tile_start, none empty).
VD_DEVICE int vd_adamw_find_slot(const VdAdamwSlot* __restrict__ table, int nslots, i64 tile) {
    int lo = 0, hi = nslots - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (table[mid].tile_start <= tile)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

extern "C" __global__ void vd_optim_adamw_sumsq(const VdAdamwSlot* __restrict__ table, int nslots, i64 tiles,
                                                float* __restrict__ partials) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (i64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int s = vd_adamw_find_slot(table, nslots, tile);
        const float* g = table[s].g;
        const i64 n = table[s].n;
        const i64 base = (tile - table[s].tile_start) * VD_ADAMW_TILE + threadIdx.x;
#pragma unroll
        for (int j = 0; j < VD_ADAMW_PER_THREAD; ++j) {
            const i64 i = base + (i64)j * VD_ADAMW_THREADS;
            if (i < n) acc = fmaf(g[i], g[i], acc);
        }
    }
    acc = vd_block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void vd_optim_adamw_norm(const float* __restrict__ partials, int count, float* __restrict__ norm) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = (int)threadIdx.x; i < count; i += (int)blockDim.x) s += partials[i];
    s = vd_block_sum(s, scratch);
    if (threadIdx.x == 0) norm[0] = sqrtf(s);
}

extern "C" __global__ void vd_optim_adamw_update(const VdAdamwSlot* __restrict__ table, VdAdamwArgs a,
                                                 const float* __restrict__ norm) {
    const float gn = norm[0];
    const float clip = (a.clip && !(gn < a.max_norm)) ? a.max_norm / gn : 1.0f;
    const float b1 = a.beta1, b2 = a.beta2, one_b1 = 1.0f - a.beta1, one_b2 = 1.0f - a.beta2;
    for (i64 tile = blockIdx.x; tile < a.tiles; tile += gridDim.x) {
        const int s = vd_adamw_find_slot(table, a.nslots, tile);
        float* __restrict__ p = table[s].p;
        const float* __restrict__ g = table[s].g;
        float* __restrict__ m = table[s].m;
        float* __restrict__ v = table[s].v;
        const i64 n = table[s].n;
        const float wd = table[s].decay ? a.weight_decay : 0.0f;
        const i64 base = (tile - table[s].tile_start) * VD_ADAMW_TILE + threadIdx.x;
#pragma unroll
        for (int j = 0; j < VD_ADAMW_PER_THREAD; ++j) {
            const i64 i = base + (i64)j * VD_ADAMW_THREADS;
            if (i < n) {
                const float gc = g[i] * clip;
                const float mi = b1 * m[i] + one_b1 * gc;
                const float vi = b2 * v[i] + one_b2 * gc * gc;
                const float mhat = mi / a.bc1, vhat = vi / a.bc2;
                const float pi = p[i];
                m[i] = mi;
                v[i] = vi;
                p[i] = pi - a.lr * (mhat / (sqrtf(vhat) + a.eps) + wd * pi);
            }
        }
    }
}
