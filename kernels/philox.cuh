// Counter-based noise: Philox4x32-10 (Salmon et al., SC'11) + Box–Muller, the
// definition in src/backend/philox.rs, so every backend draws the same noise:
// element e of stream `seed` is lane e % 4 of block b = e / 4, where
//   (r0..r3) = philox4x32_10(counter = (b_lo, b_hi, 0, 0), key = (seed_lo, seed_hi)),
//   u_j = r_j · 2⁻³² + 2⁻³³ in f32 (bit-identical to the CPU: the product by a
//         power of two is exact, so fused or not the sum rounds once),
//   lanes 0, 1 = √(−2 ln u0) · (cos, sin)(2π u1); lanes 2, 3 from (u2, u3).
#pragma once
#include "common.cuh"

VD_DEVICE void vd_philox4x32_10(u32 ctr[4], u32 key0, u32 key1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key0 += W0;
            key1 += W1;
        }
        const u32 hi0 = __umulhi(M0, ctr[0]), lo0 = M0 * ctr[0];
        const u32 hi1 = __umulhi(M1, ctr[2]), lo1 = M1 * ctr[2];
        const u32 c0 = hi1 ^ ctr[1] ^ key0, c2 = hi0 ^ ctr[3] ^ key1;
        ctr[0] = c0;
        ctr[1] = lo1;
        ctr[2] = c2;
        ctr[3] = lo0;
    }
}

// Uniform in (0, 1) from 32 random bits.
VD_DEVICE float vd_philox_uniform(u32 r) { return __uint2float_rn(r) * 2.3283064365386963e-10f + 1.1641532182693481e-10f; }

// The four normals of Philox block `block` of stream `seed`.
VD_DEVICE void vd_philox_normals4(u64 seed, u64 block, float out[4]) {
    u32 r[4] = {(u32)block, (u32)(block >> 32), 0u, 0u};
    vd_philox4x32_10(r, (u32)seed, (u32)(seed >> 32));
#pragma unroll
    for (int pair = 0; pair < 2; ++pair) {
        const float u0 = vd_philox_uniform(r[2 * pair]);
        const float u1 = vd_philox_uniform(r[2 * pair + 1]);
        const float rad = sqrtf(-2.0f * logf(u0));
        const float theta = 6.28318530717958647692f * u1;
        out[2 * pair] = rad * cosf(theta);
        out[2 * pair + 1] = rad * sinf(theta);
    }
}
