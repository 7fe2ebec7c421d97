// Channel attention kernels: the fused ChannelLinearAttention and DANet CAM
// custom ops of src/nn/channel_attention.rs (its module docs hold the math,
// the passes and the launch geometry). Activations T are f32 or bf16; the
// per-sample matrices are f32; all arithmetic is f32.
#include "common.cuh"

#define VD_CHATTN_THREADS 256
#define VD_CHATTN_E 4      // entries of S per thread (gpu::ENTRIES)
#define VD_CHATTN_TILE 32  // tokens whose norms and sums are staged at once

// ------------------------------------------------------------ per-sample sums
// Partials of one sample's S entries over the tokens [p·chunk, min((p+1)·chunk,
// n)) of part p = blockIdx.x, for the entries of group blockIdx.y, sample
// blockIdx.z; a and b are [B, n, c]. By MODE:
//   0 (Gram):          S = c²,     [Σ a_t b_tᵀ]
//   1 (linear fwd):    S = c² + c, [Σ â_t b_tᵀ | Σ â_t (Σ_i â_ti + ε)]
//   2 (linear bwd):    S = c² + c, [Σ â_t b_tᵀ | Σ b_t (Σ_i a_ti)]
// with â = a / ‖a‖ per token. Thread (lane, slot) = (tid / width, tid % width)
// owns entries e0 + j·width + slot (j < VD_CHATTN_E) and tokens lane, lane +
// lanes, … of each tile; the lanes are summed in lane order at the end, so the
// bits do not depend on timing. part is [B, parts, S].
template <int MODE, typename T>
VD_DEVICE void vd_chattn_stats(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ part, i64 n,
                               int c, i64 chunk, int width, float eps) {
    __shared__ float inv[VD_CHATTN_TILE];
    __shared__ float sum[VD_CHATTN_TILE];
    __shared__ float red[VD_CHATTN_THREADS * VD_CHATTN_E];
    const int tid = (int)threadIdx.x;
    const int lanes = VD_CHATTN_THREADS / width, lane = tid / width, slot = tid % width;
    const i64 sample = blockIdx.z;
    const i64 mat = (i64)c * c, S = MODE == 0 ? mat : mat + c;
    const i64 e0 = (i64)blockIdx.y * width * VD_CHATTN_E;
    const i64 t0 = (i64)blockIdx.x * chunk;
    const i64 t1 = t0 + chunk < n ? t0 + chunk : n;
    // Entry j: kind 0 = matrix [ia][ib], 1 = vector [ib], 2 = none.
    int kind[VD_CHATTN_E], ia[VD_CHATTN_E], ib[VD_CHATTN_E];
    float acc[VD_CHATTN_E];
#pragma unroll
    for (int j = 0; j < VD_CHATTN_E; ++j) {
        const i64 e = e0 + (i64)j * width + slot;
        acc[j] = 0.0f;
        ia[j] = 0;
        ib[j] = 0;
        if (e < mat) {
            kind[j] = 0;
            ia[j] = (int)(e / c);
            ib[j] = (int)(e % c);
        } else if (e < S) {
            kind[j] = 1;
            ib[j] = (int)(e - mat);
        } else {
            kind[j] = 2;
        }
    }
    const T* as = a + sample * n * c;
    const T* bs = b + sample * n * c;
    for (i64 tile = t0; tile < t1; tile += VD_CHATTN_TILE) {
        const int len = (int)(t1 - tile < VD_CHATTN_TILE ? t1 - tile : VD_CHATTN_TILE);
        if (MODE != 0 && tid < len) {
            float q = 0.0f, s = 0.0f;
            for (int i = 0; i < c; ++i) {
                const float x = vd_ld(as, (tile + tid) * c + i);
                q += x * x;
                s += x;
            }
            inv[tid] = 1.0f / sqrtf(q);
            sum[tid] = s;
        }
        __syncthreads();
        for (int t = lane; t < len; t += lanes) {
            const i64 tok = tile + t;
            const float r = MODE == 0 ? 1.0f : inv[t];
#pragma unroll
            for (int j = 0; j < VD_CHATTN_E; ++j) {
                if (kind[j] == 2) continue;
                if (kind[j] == 0) {
                    acc[j] += vd_ld(as, tok * c + ia[j]) * r * vd_ld(bs, tok * c + ib[j]);
                } else if (MODE == 1) {
                    acc[j] += vd_ld(as, tok * c + ib[j]) * r * (sum[t] * r + eps);
                } else {
                    acc[j] += vd_ld(bs, tok * c + ib[j]) * sum[t];
                }
            }
        }
        __syncthreads();  // inv and sum are rewritten by the next tile
    }
#pragma unroll
    for (int j = 0; j < VD_CHATTN_E; ++j) red[(lane * VD_CHATTN_E + j) * width + slot] = acc[j];
    __syncthreads();
    if (lane == 0) {
        float* out = part + (sample * gridDim.x + blockIdx.x) * S;
        for (int j = 0; j < VD_CHATTN_E; ++j) {
            const i64 e = e0 + (i64)j * width + slot;
            if (e >= S) continue;
            float s = 0.0f;
            for (int l = 0; l < lanes; ++l) s += red[(l * VD_CHATTN_E + j) * width + slot];
            out[e] = s;
        }
    }
}
// Σ a bᵀ: CAM's E = Σ x xᵀ (a = b = x) and its backward's G = Σ g xᵀ.
extern "C" __global__ void vd_channelattn_gram_f32(const float* __restrict__ a, const float* __restrict__ b,
                                                   float* __restrict__ part, i64 n, int c, i64 chunk, int width) {
    vd_chattn_stats<0, float>(a, b, part, n, c, chunk, width, 0.0f);
}
extern "C" __global__ void vd_channelattn_gram_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b,
                                                    float* __restrict__ part, i64 n, int c, i64 chunk, int width) {
    vd_chattn_stats<0, bf16>(a, b, part, n, c, chunk, width, 0.0f);
}
// The linear forward's [P = Σ x̂ xᵀ | t = Σ x̂ (s + ε)].
extern "C" __global__ void vd_channelattn_linear_stats_f32(const float* __restrict__ x, float* __restrict__ part,
                                                           i64 n, int c, i64 chunk, int width, float eps) {
    vd_chattn_stats<1, float>(x, x, part, n, c, chunk, width, eps);
}
extern "C" __global__ void vd_channelattn_linear_stats_bf16(const bf16* __restrict__ x, float* __restrict__ part,
                                                            i64 n, int c, i64 chunk, int width, float eps) {
    vd_chattn_stats<1, bf16>(x, x, part, n, c, chunk, width, eps);
}
// The linear backward's [G = Σ x̂ gᵀ | h = Σ g (Σ_i x_i)].
extern "C" __global__ void vd_channelattn_linear_stats_bwd_f32(const float* __restrict__ x,
                                                               const float* __restrict__ g, float* __restrict__ part,
                                                               i64 n, int c, i64 chunk, int width) {
    vd_chattn_stats<2, float>(x, g, part, n, c, chunk, width, 0.0f);
}
extern "C" __global__ void vd_channelattn_linear_stats_bwd_bf16(const bf16* __restrict__ x,
                                                                const bf16* __restrict__ g, float* __restrict__ part,
                                                                i64 n, int c, i64 chunk, int width) {
    vd_chattn_stats<2, bf16>(x, g, part, n, c, chunk, width, 0.0f);
}

// ------------------------------------------------------------ per-sample steps
// The linear backward's [dP | dden] from stats [P | t] and gstats [G | h], one
// thread per entry (grid-stride over b·(c² + c)), den_j = n + t_j:
// dP_mj = G_mj / den_j, dden_j = −(h_j + Σ_m P_mj G_mj) / den_j².
extern "C" __global__ void vd_channelattn_linear_dstats(const float* __restrict__ stats,
                                                        const float* __restrict__ gstats,
                                                        float* __restrict__ dstats, i64 b, i64 n, int c) {
    const i64 mat = (i64)c * c, S = mat + c;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < b * S; e += stride) {
        const i64 k = e % S;
        const float* P = stats + (e / S) * S;
        const float* G = gstats + (e / S) * S;
        if (k < mat) {
            dstats[e] = G[k] / ((float)n + P[mat + k % c]);
        } else {
            const int j = (int)(k - mat);
            const float den = (float)n + P[mat + j];
            float acc = G[mat + j];
            for (int m = 0; m < c; ++m) acc += P[(i64)m * c + j] * G[(i64)m * c + j];
            dstats[e] = -acc / (den * den);
        }
    }
}

// CAM's A = softmax_rows(−E), one warp per row (grid-stride over b·c rows).
extern "C" __global__ void vd_channelattn_cam_softmax(const float* __restrict__ e, float* __restrict__ a, i64 b,
                                                      int c) {
    const int lane = (int)vd_lane();
    const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
    for (i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + vd_warp(); row < b * c; row += warps) {
        const float* er = e + row * c;
        float lo = er[0];
        for (int m = lane; m < c; m += 32) lo = fminf(lo, er[m]);
        lo = vd_warp_min(lo);
        float z = 0.0f;
        for (int m = lane; m < c; m += 32) z += expf(lo - er[m]);
        const float rz = 1.0f / vd_warp_sum(z);
        for (int m = lane; m < c; m += 32) a[row * c + m] = expf(lo - er[m]) * rz;
    }
}

// CAM's backward, step 1: r_c = Σ_m A_cm G_cm, one warp per row.
extern "C" __global__ void vd_channelattn_cam_rowdot(const float* __restrict__ a, const float* __restrict__ g,
                                                     float* __restrict__ r, i64 b, int c) {
    const int lane = (int)vd_lane();
    const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
    for (i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + vd_warp(); row < b * c; row += warps) {
        float s = 0.0f;
        for (int m = lane; m < c; m += 32) s += a[row * c + m] * g[row * c + m];
        s = vd_warp_sum(s);
        if (lane == 0) r[row] = s;
    }
}

// CAM's backward, step 2: K = dE + dEᵀ with dE_cm = −A_cm (G_cm − r_c), one
// thread per entry (grid-stride over b·c²).
extern "C" __global__ void vd_channelattn_cam_dgram(const float* __restrict__ a, const float* __restrict__ g,
                                                    const float* __restrict__ r, float* __restrict__ k, i64 b,
                                                    int c) {
    const i64 mat = (i64)c * c;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < b * mat; e += stride) {
        const i64 s = e / mat, i = (e % mat) / c, j = e % c;
        const i64 ij = s * mat + i * c + j, ji = s * mat + j * c + i;
        k[e] = -a[ij] * (g[ij] - r[s * c + i]) - a[ji] * (g[ji] - r[s * c + j]);
    }
}

// ------------------------------------------------------------ token passes
// One warp per token (grid-stride over the b·n tokens), lanes over channels;
// the loop bounds are warp-uniform, so every lane reaches every warp sum.
#define VD_CHATTN_FOR_TOKENS(b, n)                                                                \
    const i64 vd_warps = (i64)gridDim.x * (blockDim.x >> 5);                                     \
    for (i64 tok = (i64)blockIdx.x * (blockDim.x >> 5) + vd_warp(); tok < (b) * (n); tok += vd_warps)

// out_j = (Σ_i x_i + Σ_m x̂_m P_mj) / (n + t_j).
template <typename T>
VD_DEVICE void vd_chattn_linear_out(const T* __restrict__ x, const float* __restrict__ stats, T* __restrict__ out,
                                    i64 b, i64 n, int c) {
    const int lane = (int)vd_lane();
    const i64 mat = (i64)c * c, S = mat + c;
    VD_CHATTN_FOR_TOKENS(b, n) {
        const float* P = stats + (tok / n) * S;
        const float* t = P + mat;
        const T* xr = x + tok * c;
        float ss = 0.0f, sm = 0.0f;
        for (int i = lane; i < c; i += 32) {
            const float v = vd_ld(xr, i);
            ss += v * v;
            sm += v;
        }
        const float r = 1.0f / sqrtf(vd_warp_sum(ss));
        sm = vd_warp_sum(sm);
        for (int j = lane; j < c; j += 32) {
            float att = 0.0f;
            for (int m = 0; m < c; ++m) att += vd_ld(xr, m) * P[(i64)m * c + j];
            vd_st(out, tok * c + j, (sm + att * r) / ((float)n + t[j]));
        }
    }
}
extern "C" __global__ void vd_channelattn_linear_out_f32(const float* __restrict__ x,
                                                         const float* __restrict__ stats, float* __restrict__ out,
                                                         i64 b, i64 n, int c) {
    vd_chattn_linear_out(x, stats, out, b, n, c);
}
extern "C" __global__ void vd_channelattn_linear_out_bf16(const bf16* __restrict__ x,
                                                          const float* __restrict__ stats, bf16* __restrict__ out,
                                                          i64 b, i64 n, int c) {
    vd_chattn_linear_out(x, stats, out, b, n, c);
}

// The linear backward's token pass, from g = dL/dout, stats [P | t] and
// dstats [dP | dden]; dn_j = g_j / (n + t_j), s = Σ x̂, ds = dden·x̂:
//   dx̂_m = Σ_j P_mj dn_j + Σ_j dP_mj x_j + dden_m (s + ε) + ds,
//   dx_j = Σ dn + Σ_m x̂_m dP_mj + (dx̂_j − x̂_j (x̂·dx̂)) / ‖x‖,
//   x̂·dx̂ = Σ_j dn_j (x̂ᵀP)_j + Σ_j x_j (x̂ᵀdP)_j + (2s + ε) ds.
template <typename T>
VD_DEVICE void vd_chattn_linear_bwd(const T* __restrict__ dy, const T* __restrict__ x,
                                    const float* __restrict__ stats, const float* __restrict__ dstats,
                                    T* __restrict__ dx, i64 b, i64 n, int c, float eps) {
    const int lane = (int)vd_lane();
    const i64 mat = (i64)c * c, S = mat + c;
    VD_CHATTN_FOR_TOKENS(b, n) {
        const float* P = stats + (tok / n) * S;
        const float* t = P + mat;
        const float* dP = dstats + (tok / n) * S;
        const float* dden = dP + mat;
        const T* xr = x + tok * c;
        const T* gr = dy + tok * c;
        float ss = 0.0f, sm = 0.0f, dsx = 0.0f;
        for (int i = lane; i < c; i += 32) {
            const float v = vd_ld(xr, i);
            ss += v * v;
            sm += v;
            dsx += dden[i] * v;
        }
        const float r = 1.0f / sqrtf(vd_warp_sum(ss));
        const float s = vd_warp_sum(sm) * r;
        const float ds = vd_warp_sum(dsx) * r;
        float dot = 0.0f, dv = 0.0f;
        for (int j = lane; j < c; j += 32) {
            float att = 0.0f, u = 0.0f;
            for (int m = 0; m < c; ++m) {
                const float v = vd_ld(xr, m);
                att += v * P[(i64)m * c + j];
                u += v * dP[(i64)m * c + j];
            }
            const float dn = vd_ld(gr, j) / ((float)n + t[j]);
            dot += dn * att + vd_ld(xr, j) * u;
            dv += dn;
        }
        dot = vd_warp_sum(dot) * r + (2.0f * s + eps) * ds;
        dv = vd_warp_sum(dv);
        for (int j = lane; j < c; j += 32) {
            float dxh = dden[j] * (s + eps) + ds, u = 0.0f;
            for (int m = 0; m < c; ++m) {
                const float v = vd_ld(xr, m);
                dxh += P[(i64)j * c + m] * (vd_ld(gr, m) / ((float)n + t[m])) + dP[(i64)j * c + m] * v;
                u += v * dP[(i64)m * c + j];
            }
            vd_st(dx, tok * c + j, dv + u * r + (dxh - vd_ld(xr, j) * r * dot) * r);
        }
    }
}
extern "C" __global__ void vd_channelattn_linear_bwd_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                         const float* __restrict__ stats,
                                                         const float* __restrict__ dstats, float* __restrict__ dx,
                                                         i64 b, i64 n, int c, float eps) {
    vd_chattn_linear_bwd(dy, x, stats, dstats, dx, b, n, c, eps);
}
extern "C" __global__ void vd_channelattn_linear_bwd_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ x,
                                                          const float* __restrict__ stats,
                                                          const float* __restrict__ dstats, bf16* __restrict__ dx,
                                                          i64 b, i64 n, int c, float eps) {
    vd_chattn_linear_bwd(dy, x, stats, dstats, dx, b, n, c, eps);
}

// CAM's output out_j = Σ_m A_jm x_m (a = A of the token's sample).
// CAM's backward dx_m = Σ_j A_jm g_j + Σ_j K_jm x_j (K symmetric).
// One template: with W = A, out_j = Σ_m W_jm x_m; with (A, K), the transposed
// products of the backward.
template <bool BWD, typename T>
VD_DEVICE void vd_chattn_cam_token(const T* __restrict__ x, const T* __restrict__ g, const float* __restrict__ a,
                                   const float* __restrict__ k, T* __restrict__ out, i64 b, i64 n, int c) {
    const int lane = (int)vd_lane();
    const i64 mat = (i64)c * c;
    VD_CHATTN_FOR_TOKENS(b, n) {
        const float* A = a + (tok / n) * mat;
        const T* xr = x + tok * c;
        if (!BWD) {
            for (int j = lane; j < c; j += 32) {
                float o = 0.0f;
                for (int m = 0; m < c; ++m) o += A[(i64)j * c + m] * vd_ld(xr, m);
                vd_st(out, tok * c + j, o);
            }
        } else {
            const float* K = k + (tok / n) * mat;
            const T* gr = g + tok * c;
            for (int j = lane; j < c; j += 32) {
                float o = 0.0f;
                for (int m = 0; m < c; ++m) {
                    o += A[(i64)m * c + j] * vd_ld(gr, m) + K[(i64)m * c + j] * vd_ld(xr, m);
                }
                vd_st(out, tok * c + j, o);
            }
        }
    }
}
extern "C" __global__ void vd_channelattn_cam_out_f32(const float* __restrict__ x, const float* __restrict__ a,
                                                      float* __restrict__ out, i64 b, i64 n, int c) {
    vd_chattn_cam_token<false, float>(x, nullptr, a, nullptr, out, b, n, c);
}
extern "C" __global__ void vd_channelattn_cam_out_bf16(const bf16* __restrict__ x, const float* __restrict__ a,
                                                       bf16* __restrict__ out, i64 b, i64 n, int c) {
    vd_chattn_cam_token<false, bf16>(x, nullptr, a, nullptr, out, b, n, c);
}
extern "C" __global__ void vd_channelattn_cam_bwd_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                      const float* __restrict__ a, const float* __restrict__ k,
                                                      float* __restrict__ dx, i64 b, i64 n, int c) {
    vd_chattn_cam_token<true, float>(x, dy, a, k, dx, b, n, c);
}
extern "C" __global__ void vd_channelattn_cam_bwd_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ x,
                                                       const float* __restrict__ a, const float* __restrict__ k,
                                                       bf16* __restrict__ dx, i64 b, i64 n, int c) {
    vd_chattn_cam_token<true, bf16>(x, dy, a, k, dx, b, n, c);
}
