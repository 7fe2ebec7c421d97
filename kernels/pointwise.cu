// Pointwise kernels: unary maps (activation.cuh) and their backward, the
// per-(sample, channel) broadcast add (src/backend/gpu/pointwise.rs launches
// them and documents the launch geometry).
//
// unary, unary_bwd and add_nc cut the n elements into chunks of VD_PW_CHUNK = 8
// consecutive elements (one 16-byte vector of bf16, two of f32) handed out by a
// grid-stride loop; full chunks use 16-byte accesses (every tensor starts on a
// 256-byte boundary), the last partial chunk goes element by element.
#include "activation.cuh"

#define VD_PW_CHUNK 8

// ------------------------------------------------------------- unary maps
// y[i] = f(x[i]), f = the map `op` with parameter `p`.
template <typename T>
VD_DEVICE void vd_pw_unary(const T* __restrict__ x, T* __restrict__ y, i64 n, int op, float p) {
    const i64 chunks = (n + VD_PW_CHUNK - 1) / VD_PW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_PW_CHUNK;
        if (i0 + VD_PW_CHUNK <= n) {
            float v[8];
            vd_ld8(x + i0, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = vd_unary(op, p, v[j]);
            vd_st8(y + i0, v);
        } else {
            for (i64 i = i0; i < n; ++i) vd_st(y + i, vd_unary(op, p, vd_ld(x + i)));
        }
    }
}
extern "C" __global__ void vd_pointwise_unary_f32(const float* __restrict__ x, float* __restrict__ y, i64 n, int op,
                                                  float p) {
    vd_pw_unary(x, y, n, op, p);
}
extern "C" __global__ void vd_pointwise_unary_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, i64 n, int op,
                                                   float p) {
    vd_pw_unary(x, y, n, op, p);
}

// dx[i] = dy[i]·f'(x[i]).
template <typename T>
VD_DEVICE void vd_pw_unary_bwd(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, i64 n, int op,
                               float p) {
    const i64 chunks = (n + VD_PW_CHUNK - 1) / VD_PW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_PW_CHUNK;
        if (i0 + VD_PW_CHUNK <= n) {
            float g[8], v[8];
            vd_ld8(dy + i0, g);
            vd_ld8(x + i0, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) g[j] *= vd_unary_grad(op, p, v[j]);
            vd_st8(dx + i0, g);
        } else {
            for (i64 i = i0; i < n; ++i) vd_st(dx + i, vd_ld(dy + i) * vd_unary_grad(op, p, vd_ld(x + i)));
        }
    }
}
extern "C" __global__ void vd_pointwise_unary_bwd_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                      float* __restrict__ dx, i64 n, int op, float p) {
    vd_pw_unary_bwd(dy, x, dx, n, op, p);
}
extern "C" __global__ void vd_pointwise_unary_bwd_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ x,
                                                       bf16* __restrict__ dx, i64 n, int op, float p) {
    vd_pw_unary_bwd(dy, x, dx, n, op, p);
}

// ----------------------------------------------------------------- add_nc
// y[n, v, c] = x[n, v, c] + b[n, c] over the flat index i = (n·rows + v)·C + c,
// n elements in all, per_sample = rows·C. A chunk finds its (sample, channel)
// once with two divisions and steps them along its 8 elements.
template <typename T>
VD_DEVICE void vd_pw_add_nc(const T* __restrict__ x, const float* __restrict__ b, T* __restrict__ y, i64 n,
                            i64 per_sample, int c) {
    const i64 chunks = (n + VD_PW_CHUNK - 1) / VD_PW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < chunks; k += stride) {
        const i64 i0 = k * VD_PW_CHUNK;
        // Element i0 is channel ch of voxel e / C of its sample, whose row of b
        // starts at sb; both advance along the chunk.
        i64 e = i0 % per_sample, sb = (i0 / per_sample) * c;
        int ch = (int)(e % c);
        float v[8];
        const bool full = i0 + VD_PW_CHUNK <= n;
        if (full) vd_ld8(x + i0, v);
#pragma unroll
        for (int j = 0; j < VD_PW_CHUNK; ++j) {
            if (!full && i0 + j < n) v[j] = vd_ld(x + i0 + j);
            if (full || i0 + j < n) v[j] += b[sb + ch];
            if (++ch == c) ch = 0;
            if (++e == per_sample) e = 0, sb += c;
        }
        if (full) {
            vd_st8(y + i0, v);
        } else {
            for (int j = 0; i0 + j < n; ++j) vd_st(y + i0 + j, v[j]);
        }
    }
}
extern "C" __global__ void vd_pointwise_add_nc_f32(const float* __restrict__ x, const float* __restrict__ b,
                                                   float* __restrict__ y, i64 n, i64 per_sample, int c) {
    vd_pw_add_nc(x, b, y, n, per_sample, c);
}
extern "C" __global__ void vd_pointwise_add_nc_bf16(const bf16* __restrict__ x, const float* __restrict__ b,
                                                    bf16* __restrict__ y, i64 n, i64 per_sample, int c) {
    vd_pw_add_nc(x, b, y, n, per_sample, c);
}
