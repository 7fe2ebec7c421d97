// Pointwise kernels: unary maps (activation.cuh) and their backward, binary
// ops with a broadcast operand (bcast.cuh). src/backend/gpu/pointwise.rs
// launches them and documents the launch geometry.
//
// Every kernel cuts the n elements into chunks of VD_PW_CHUNK = 8
// consecutive elements (one 16-byte vector of bf16, two of f32) handed out by a
// grid-stride loop; full chunks use 16-byte accesses (every tensor starts on a
// 256-byte boundary), the last partial chunk goes element by element.
#include "activation.cuh"
#include "bcast.cuh"

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

// ----------------------------------------------------------------- binary
// out = x ∘ y, op: 0 add, 1 sub, 2 mul, 3 div (uniform across the grid).
VD_DEVICE float vd_binary(int op, float a, float b) {
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    default: return a / b;
    }
}

// y of x's shape and dtype: both read as 16-byte vectors.
template <typename T>
VD_DEVICE void vd_pw_binary(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out, i64 n, int op) {
    const i64 chunks = (n + VD_PW_CHUNK - 1) / VD_PW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_PW_CHUNK;
        if (i0 + VD_PW_CHUNK <= n) {
            float a[8], b[8];
            vd_ld8(x + i0, a);
            vd_ld8(y + i0, b);
#pragma unroll
            for (int j = 0; j < 8; ++j) a[j] = vd_binary(op, a[j], b[j]);
            vd_st8(out + i0, a);
        } else {
            for (i64 i = i0; i < n; ++i) vd_st(out, i, vd_binary(op, vd_ld(x, i), vd_ld(y, i)));
        }
    }
}
extern "C" __global__ void vd_pointwise_binary_f32(const float* __restrict__ x, const float* __restrict__ y,
                                                   float* __restrict__ out, i64 n, int op) {
    vd_pw_binary(x, y, out, n, op);
}
extern "C" __global__ void vd_pointwise_binary_bf16(const bf16* __restrict__ x, const bf16* __restrict__ y,
                                                    bf16* __restrict__ out, i64 n, int op) {
    vd_pw_binary(x, y, out, n, op);
}

// An f32 y broadcast over x seen as [outer, mid, inner] (bcast.cuh): a chunk
// finds its first element's y index with two divisions and steps it along.
template <typename T>
VD_DEVICE void vd_pw_binary_bcast(const T* __restrict__ x, const float* __restrict__ y, T* __restrict__ out, i64 n,
                                  i64 per_outer, int inner, int op) {
    const i64 chunks = (n + VD_PW_CHUNK - 1) / VD_PW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < chunks; k += stride) {
        const i64 i0 = k * VD_PW_CHUNK;
        VdBcastIter it = vd_bcast_at(i0, per_outer, inner);
        float v[8];
        const bool full = i0 + VD_PW_CHUNK <= n;
        if (full) vd_ld8(x + i0, v);
#pragma unroll
        for (int j = 0; j < VD_PW_CHUNK; ++j) {
            if (!full && i0 + j < n) v[j] = vd_ld(x, i0 + j);
            if (full || i0 + j < n) v[j] = vd_binary(op, v[j], y[vd_bcast_index(it)]);
            vd_bcast_next(it, per_outer, inner);
        }
        if (full) {
            vd_st8(out + i0, v);
        } else {
            for (int j = 0; i0 + j < n; ++j) vd_st(out, i0 + j, v[j]);
        }
    }
}
extern "C" __global__ void vd_pointwise_binary_bcast_f32(const float* __restrict__ x, const float* __restrict__ y,
                                                         float* __restrict__ out, i64 n, i64 per_outer, int inner,
                                                         int op) {
    vd_pw_binary_bcast(x, y, out, n, per_outer, inner, op);
}
extern "C" __global__ void vd_pointwise_binary_bcast_bf16(const bf16* __restrict__ x, const float* __restrict__ y,
                                                          bf16* __restrict__ out, i64 n, i64 per_outer, int inner,
                                                          int op) {
    vd_pw_binary_bcast(x, y, out, n, per_outer, inner, op);
}
