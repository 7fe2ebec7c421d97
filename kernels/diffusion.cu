// Diffusion kernels. So far: counter-based Gaussian noise (kernels/philox.cuh),
// launched by src/backend/gpu/diffusion.rs.
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
