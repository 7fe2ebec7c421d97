// Elementwise kernels: dtype casts, fills, and linear combinations of up to
// four tensors (src/backend/gpu/elementwise.rs launches them and documents the
// launch geometry).
//
// Work decomposition shared by every kernel here: the n elements are cut into
// chunks of VD_EW_CHUNK = 8 consecutive elements (one 16-byte vector of bf16,
// two of f32); a grid-stride loop hands chunk c to thread
// c mod (gridDim.x · blockDim.x). Full chunks use 16-byte vector accesses (the
// launcher checks every base pointer is 16-byte aligned); the last, partial
// chunk is done element by element.
#include "common.cuh"

#define VD_EW_CHUNK 8


// ------------------------------------------------------------------- cast
// y[i] = x[i] converted (f32 → bf16 rounds to nearest even; bf16 → f32 is exact).
template <typename TX, typename TY>
VD_DEVICE void vd_ew_cast(const TX* __restrict__ x, TY* __restrict__ y, i64 n) {
    const i64 chunks = (n + VD_EW_CHUNK - 1) / VD_EW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_EW_CHUNK;
        if (i0 + VD_EW_CHUNK <= n) {
            float v[8];
            vd_ld8(x + i0, v);
            vd_st8(y + i0, v);
        } else {
            for (i64 i = i0; i < n; ++i) vd_st(y, i, vd_ld(x, i));
        }
    }
}
extern "C" __global__ void vd_elementwise_cast_f32_bf16(const float* __restrict__ x, bf16* __restrict__ y, i64 n) {
    vd_ew_cast(x, y, n);
}
extern "C" __global__ void vd_elementwise_cast_bf16_f32(const bf16* __restrict__ x, float* __restrict__ y, i64 n) {
    vd_ew_cast(x, y, n);
}

// ------------------------------------------------------------------- fill
// y[i] = value (converted to the output dtype).
template <typename TY>
VD_DEVICE void vd_ew_fill(TY* __restrict__ y, float value, i64 n) {
    const i64 chunks = (n + VD_EW_CHUNK - 1) / VD_EW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    const float v[8] = {value, value, value, value, value, value, value, value};
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_EW_CHUNK;
        if (i0 + VD_EW_CHUNK <= n)
            vd_st8(y + i0, v);
        else
            for (i64 i = i0; i < n; ++i) vd_st(y, i, value);
    }
}
extern "C" __global__ void vd_elementwise_fill_f32(float* __restrict__ y, float value, i64 n) {
    vd_ew_fill(y, value, n);
}
extern "C" __global__ void vd_elementwise_fill_bf16(bf16* __restrict__ y, float value, i64 n) {
    vd_ew_fill(y, value, n);
}

// ---------------------------------------------------------------- lincomb
// y[i] = Σ_{t < terms} coef[t] · x_t[i], accumulated in f32 in term order with
// fused multiply-adds: acc = coef[0]·x_0; acc = fma(coef[t], x_t, acc). Each x_t
// is f32 or bf16 (x_is_bf16[t]); the output dtype is the kernel's variant.
// Mirrored by `LincombArgs` in src/backend/gpu/elementwise.rs.
struct VdLincombArgs {
    const void* x[4];
    float coef[4];
    int x_is_bf16[4];
    int terms;
    int pad_;
    i64 n;
};

template <typename TY>
VD_DEVICE void vd_ew_lincomb(const VdLincombArgs a, TY* __restrict__ y) {
    const i64 chunks = (a.n + VD_EW_CHUNK - 1) / VD_EW_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_EW_CHUNK;
        const int len = (int)min(a.n - i0, (i64)VD_EW_CHUNK);
        float acc[8];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            if (t >= a.terms) break;
            float v[8];
            if (len == VD_EW_CHUNK) {
                if (a.x_is_bf16[t])
                    vd_ld8(static_cast<const bf16*>(a.x[t]) + i0, v);
                else
                    vd_ld8(static_cast<const float*>(a.x[t]) + i0, v);
            } else {
#pragma unroll
                for (int j = 0; j < VD_EW_CHUNK; ++j)
                    v[j] = j >= len ? 0.0f
                           : a.x_is_bf16[t] ? vd_ld(static_cast<const bf16*>(a.x[t]), i0 + j)
                                            : vd_ld(static_cast<const float*>(a.x[t]), i0 + j);
            }
#pragma unroll
            for (int j = 0; j < VD_EW_CHUNK; ++j) acc[j] = t == 0 ? a.coef[0] * v[j] : fmaf(a.coef[t], v[j], acc[j]);
        }
        if (len == VD_EW_CHUNK) {
            vd_st8(y + i0, acc);
        } else {
#pragma unroll
            for (int j = 0; j < VD_EW_CHUNK; ++j)
                if (j < len) vd_st(y, i0 + j, acc[j]);
        }
    }
}
extern "C" __global__ void vd_elementwise_lincomb_f32(VdLincombArgs a, float* __restrict__ y) { vd_ew_lincomb(a, y); }
extern "C" __global__ void vd_elementwise_lincomb_bf16(VdLincombArgs a, bf16* __restrict__ y) { vd_ew_lincomb(a, y); }
