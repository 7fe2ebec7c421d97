// Diffusion kernels: counter-based Gaussian noise (kernels/philox.cuh),
// launched by src/backend/gpu/diffusion.rs; the [-1, 1]-space-to-logits map of
// the custom op src/diffusion/logits.rs.
#include "philox.cuh"

// y[i] = normal(seed, offset + i) for i < n (src/backend/philox.rs). Thread g of
// the grid-stride loop computes Philox block b = offset / 4 + g (four normals)
// and writes the lanes of that block that fall inside [offset, offset + n).
template <typename TY>
VD_DEVICE void vd_randn(TY* __restrict__ y, i64 n, u64 seed, u64 offset) {
    const u64 first = offset / 4, last = (offset + (u64)n + 3) / 4;  // blocks [first, last)
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 b = first + (u64)blockIdx.x * blockDim.x + threadIdx.x; b < last; b += stride) {
        float v[4];
        vd_philox_normals4(seed, b, v);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u64 e = 4 * b + (u64)j;
            if (e >= offset && e < offset + (u64)n) {
                if constexpr (sizeof(TY) == 4)
                    reinterpret_cast<float*>(y)[e - offset] = v[j];
                else
                    reinterpret_cast<bf16*>(y)[e - offset] = f32_to_bf16(v[j]);
            }
        }
    }
}
extern "C" __global__ void vd_diffusion_randn_f32(float* __restrict__ y, i64 n, u64 seed, u64 offset) {
    vd_randn(y, n, seed, offset);
}
extern "C" __global__ void vd_diffusion_randn_bf16(bf16* __restrict__ y, i64 n, u64 seed, u64 offset) {
    vd_randn(y, n, seed, offset);
}

// ------------------------------------------------------- scaled_to_logits
// Elementwise in chunks of 8 (16-byte vectors of bf16, two of f32; every
// tensor starts on a 256-byte boundary) over a grid-stride loop; the partial
// last chunk element by element.
#define VD_DIFF_CHUNK 8

// y = ln(clamp((x + 1)/2, eps, 1)); the clamp keeps NaN (fminf/fmaxf would not).
VD_DEVICE float vd_diff_scaled_to_logit(float x, float eps) {
    float p = (x + 1.0f) * 0.5f;
    p = p < eps ? eps : (p > 1.0f ? 1.0f : p);
    return logf(p);
}
template <typename T>
VD_DEVICE void vd_diff_scaled_to_logits(const T* __restrict__ x, T* __restrict__ y, i64 n, float eps) {
    const i64 chunks = (n + VD_DIFF_CHUNK - 1) / VD_DIFF_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_DIFF_CHUNK;
        if (i0 + VD_DIFF_CHUNK <= n) {
            float v[8];
            vd_ld8(x + i0, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = vd_diff_scaled_to_logit(v[j], eps);
            vd_st8(y + i0, v);
        } else {
            for (i64 i = i0; i < n; ++i) vd_st(y + i, vd_diff_scaled_to_logit(vd_ld(x + i), eps));
        }
    }
}
extern "C" __global__ void vd_diffusion_scaled_to_logits_f32(const float* __restrict__ x, float* __restrict__ y,
                                                             i64 n, float eps) {
    vd_diff_scaled_to_logits(x, y, n, eps);
}
extern "C" __global__ void vd_diffusion_scaled_to_logits_bf16(const bf16* __restrict__ x, bf16* __restrict__ y,
                                                              i64 n, float eps) {
    vd_diff_scaled_to_logits(x, y, n, eps);
}

// dx = dy / (x + 1) where eps < (x + 1)/2 < 1, NaN where x is NaN, else 0.
VD_DEVICE float vd_diff_scaled_to_logit_grad(float d, float x, float eps) {
    const float p = (x + 1.0f) * 0.5f;
    return (p > eps && p < 1.0f) ? d / (x + 1.0f) : (p != p ? p : 0.0f);
}
template <typename T>
VD_DEVICE void vd_diff_scaled_to_logits_bwd(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                                            i64 n, float eps) {
    const i64 chunks = (n + VD_DIFF_CHUNK - 1) / VD_DIFF_CHUNK;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 i0 = c * VD_DIFF_CHUNK;
        if (i0 + VD_DIFF_CHUNK <= n) {
            float d[8], v[8];
            vd_ld8(dy + i0, d);
            vd_ld8(x + i0, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) d[j] = vd_diff_scaled_to_logit_grad(d[j], v[j], eps);
            vd_st8(dx + i0, d);
        } else {
            for (i64 i = i0; i < n; ++i)
                vd_st(dx + i, vd_diff_scaled_to_logit_grad(vd_ld(dy + i), vd_ld(x + i), eps));
        }
    }
}
extern "C" __global__ void vd_diffusion_scaled_to_logits_bwd_f32(const float* __restrict__ dy,
                                                                 const float* __restrict__ x, float* __restrict__ dx,
                                                                 i64 n, float eps) {
    vd_diff_scaled_to_logits_bwd(dy, x, dx, n, eps);
}
extern "C" __global__ void vd_diffusion_scaled_to_logits_bwd_bf16(const bf16* __restrict__ dy,
                                                                  const bf16* __restrict__ x, bf16* __restrict__ dx,
                                                                  i64 n, float eps) {
    vd_diff_scaled_to_logits_bwd(dy, x, dx, n, eps);
}
