// Attention kernels: the position linear attention of the custom op
// src/nn/linear_attention.rs (its module docs hold the math, the passes and
// the launch geometry). Activations T are f32 or bf16; stats, dnum and dden
// are f32; all arithmetic is f32.
#include "common.cuh"

#define VD_ATTN_THREADS 256
#define VD_ATTN_E 4      // entries of S per thread (gpu::ENTRIES)
#define VD_ATTN_TILE 32  // tokens whose inverse norms are staged at once

// ------------------------------------------------------------ stats
// Partials of one sample's S = ca·cb + ca + cb entries
//   [Σ â_t b_tᵀ (row-major ca × cb) | Σ â_t s_t | Σ b_t]
// over the tokens [p·chunk, min((p+1)·chunk, n)) of part p = blockIdx.x, for
// the entries of group blockIdx.y, sample blockIdx.z; â = a / ‖a‖ per token,
// s = 1 when absent. Thread (lane, slot) = (tid / width, tid % width) owns
// entries e0 + j·width + slot (j < VD_ATTN_E) and tokens lane, lane + lanes,
// … of each tile; the lanes are summed in lane order at the end, so the bits
// do not depend on timing. part is [B, parts, S].
template <typename TA, typename TB>
VD_DEVICE void vd_attn_stats(const TA* __restrict__ a, const TB* __restrict__ b, const float* __restrict__ s,
                             float* __restrict__ part, i64 n, int ca, int cb, i64 chunk, int width) {
    __shared__ float inv[VD_ATTN_TILE];
    __shared__ float sv[VD_ATTN_TILE];
    __shared__ float red[VD_ATTN_THREADS * VD_ATTN_E];
    const int tid = (int)threadIdx.x;
    const int lanes = VD_ATTN_THREADS / width, lane = tid / width, slot = tid % width;
    const i64 sample = blockIdx.z;
    const i64 kvn = (i64)ca * cb, S = kvn + ca + cb;
    const i64 e0 = (i64)blockIdx.y * width * VD_ATTN_E;
    const i64 t0 = (i64)blockIdx.x * chunk;
    const i64 t1 = t0 + chunk < n ? t0 + chunk : n;
    // Entry j: kind 0 = KV[ia][ib], 1 = ks[ia], 2 = vs[ib], 3 = none.
    int kind[VD_ATTN_E], ia[VD_ATTN_E], ib[VD_ATTN_E];
    float acc[VD_ATTN_E];
#pragma unroll
    for (int j = 0; j < VD_ATTN_E; ++j) {
        const i64 e = e0 + (i64)j * width + slot;
        acc[j] = 0.0f;
        ia[j] = 0;
        ib[j] = 0;
        if (e < kvn) {
            kind[j] = 0;
            ia[j] = (int)(e / cb);
            ib[j] = (int)(e % cb);
        } else if (e < kvn + ca) {
            kind[j] = 1;
            ia[j] = (int)(e - kvn);
        } else if (e < S) {
            kind[j] = 2;
            ib[j] = (int)(e - kvn - ca);
        } else {
            kind[j] = 3;
        }
    }
    const TA* as = a + sample * n * ca;
    const TB* bs = b + sample * n * cb;
    for (i64 tile = t0; tile < t1; tile += VD_ATTN_TILE) {
        const int len = (int)(t1 - tile < VD_ATTN_TILE ? t1 - tile : VD_ATTN_TILE);
        if (tid < len) {
            float q = 0.0f;
            for (int i = 0; i < ca; ++i) {
                const float x = vd_ld(as, (tile + tid) * ca + i);
                q += x * x;
            }
            inv[tid] = 1.0f / sqrtf(q);
            sv[tid] = s ? s[sample * n + tile + tid] : 1.0f;
        }
        __syncthreads();
        for (int t = lane; t < len; t += lanes) {
            const i64 tok = tile + t;
#pragma unroll
            for (int j = 0; j < VD_ATTN_E; ++j) {
                if (kind[j] == 3) continue;
                const float av = kind[j] == 2 ? 1.0f : vd_ld(as, tok * ca + ia[j]) * inv[t];
                const float bv = kind[j] == 1 ? sv[t] : vd_ld(bs, tok * cb + ib[j]);
                acc[j] += av * bv;
            }
        }
        __syncthreads();  // inv and sv are rewritten by the next tile
    }
#pragma unroll
    for (int j = 0; j < VD_ATTN_E; ++j) red[(lane * VD_ATTN_E + j) * width + slot] = acc[j];
    __syncthreads();
    if (lane == 0) {
        float* out = part + (sample * gridDim.x + blockIdx.x) * S;
        for (int j = 0; j < VD_ATTN_E; ++j) {
            const i64 e = e0 + (i64)j * width + slot;
            if (e >= S) continue;
            float sum = 0.0f;
            for (int l = 0; l < lanes; ++l) sum += red[(l * VD_ATTN_E + j) * width + slot];
            out[e] = sum;
        }
    }
}
extern "C" __global__ void vd_attention_linear_stats_f32(const float* __restrict__ k, const float* __restrict__ v,
                                                         float* __restrict__ part, i64 n, int ck, int c, i64 chunk,
                                                         int width) {
    vd_attn_stats<float, float>(k, v, nullptr, part, n, ck, c, chunk, width);
}
extern "C" __global__ void vd_attention_linear_stats_bf16(const bf16* __restrict__ k, const bf16* __restrict__ v,
                                                          float* __restrict__ part, i64 n, int ck, int c, i64 chunk,
                                                          int width) {
    vd_attn_stats<bf16, bf16>(k, v, nullptr, part, n, ck, c, chunk, width);
}
// The backward's sums: a = q, b = dnum, s = dden.
extern "C" __global__ void vd_attention_linear_stats_bwd_f32(const float* __restrict__ q,
                                                             const float* __restrict__ dnum,
                                                             const float* __restrict__ dden, float* __restrict__ part,
                                                             i64 n, int ck, int c, i64 chunk, int width) {
    vd_attn_stats<float, float>(q, dnum, dden, part, n, ck, c, chunk, width);
}
extern "C" __global__ void vd_attention_linear_stats_bwd_bf16(const bf16* __restrict__ q,
                                                              const float* __restrict__ dnum,
                                                              const float* __restrict__ dden, float* __restrict__ part,
                                                              i64 n, int ck, int c, i64 chunk, int width) {
    vd_attn_stats<bf16, float>(q, dnum, dden, part, n, ck, c, chunk, width);
}

// ------------------------------------------------------------ token passes
// One warp per token (grid-stride over the b·n tokens), lanes over channels;
// the loop bounds are warp-uniform, so every lane reaches every warp sum.
#define VD_ATTN_FOR_TOKENS(b, n)                                                                  \
    const i64 vd_warps = (i64)gridDim.x * (blockDim.x >> 5);                                     \
    for (i64 tok = (i64)blockIdx.x * (blockDim.x >> 5) + vd_warp(); tok < (b) * (n); tok += vd_warps)

// out_n = (vs + q̂_nᵀ KV) / (N + q̂_n·(ks + ε)).
template <typename T>
VD_DEVICE void vd_attn_out(const T* __restrict__ q, const float* __restrict__ stats, T* __restrict__ out, i64 b,
                           i64 n, int ck, int c, float eps) {
    const int lane = (int)vd_lane();
    const i64 S = (i64)ck * c + ck + c;
    VD_ATTN_FOR_TOKENS(b, n) {
        const float* kv = stats + (tok / n) * S;
        const float* ks = kv + (i64)ck * c;
        const float* vs = ks + ck;
        const T* qr = q + tok * ck;
        float ss = 0.0f, qk = 0.0f;
        for (int i = lane; i < ck; i += 32) {
            const float x = vd_ld(qr, i);
            ss += x * x;
            qk += x * (ks[i] + eps);
        }
        ss = vd_warp_sum(ss);
        qk = vd_warp_sum(qk);
        const float r = 1.0f / sqrtf(ss);
        const float inv = 1.0f / ((float)n + qk * r);
        for (int cc = lane; cc < c; cc += 32) {
            float att = 0.0f;
            for (int i = 0; i < ck; ++i) att += vd_ld(qr, i) * kv[(i64)i * c + cc];
            vd_st(out, tok * c + cc, (vs[cc] + att * r) * inv);
        }
    }
}
extern "C" __global__ void vd_attention_linear_out_f32(const float* __restrict__ q, const float* __restrict__ stats,
                                                       float* __restrict__ out, i64 b, i64 n, int ck, int c,
                                                       float eps) {
    vd_attn_out(q, stats, out, b, n, ck, c, eps);
}
extern "C" __global__ void vd_attention_linear_out_bf16(const bf16* __restrict__ q, const float* __restrict__ stats,
                                                        bf16* __restrict__ out, i64 b, i64 n, int ck, int c,
                                                        float eps) {
    vd_attn_out(q, stats, out, b, n, ck, c, eps);
}

// The q pass of the backward: dnum = g / den, dden = −g·out / den,
// dq = (dq̂ − q̂ (q̂·dq̂)) / ‖q‖ with dq̂ = KV·dnum + dden (ks + ε) and
// q̂·dq̂ = Σ_c dnum_c (num_c − vs_c) + dden·(den − N).
template <typename T>
VD_DEVICE void vd_attn_bwd_q(const T* __restrict__ dy, const T* __restrict__ q, const float* __restrict__ stats,
                             T* __restrict__ dq, float* __restrict__ dnum, float* __restrict__ dden, i64 b, i64 n,
                             int ck, int c, float eps) {
    const int lane = (int)vd_lane();
    const i64 S = (i64)ck * c + ck + c;
    VD_ATTN_FOR_TOKENS(b, n) {
        const float* kv = stats + (tok / n) * S;
        const float* ks = kv + (i64)ck * c;
        const float* vs = ks + ck;
        const T* qr = q + tok * ck;
        float* dn = dnum + tok * c;
        float ss = 0.0f, qk = 0.0f;
        for (int i = lane; i < ck; i += 32) {
            const float x = vd_ld(qr, i);
            ss += x * x;
            qk += x * (ks[i] + eps);
        }
        ss = vd_warp_sum(ss);
        qk = vd_warp_sum(qk);
        const float r = 1.0f / sqrtf(ss);
        qk *= r;
        const float inv = 1.0f / ((float)n + qk);
        float g_out = 0.0f, dot = 0.0f;
        for (int cc = lane; cc < c; cc += 32) {
            float att = 0.0f;
            for (int i = 0; i < ck; ++i) att += vd_ld(qr, i) * kv[(i64)i * c + cc];
            att *= r;
            const float d = vd_ld(dy, tok * c + cc) * inv;
            g_out += d * (att + vs[cc]);
            dot += d * att;
            dn[cc] = d;
        }
        g_out = vd_warp_sum(g_out);
        dot = vd_warp_sum(dot);
        const float dd = -g_out * inv;
        if (lane == 0) dden[tok] = dd;
        dot += dd * qk;
        __syncwarp();  // dn is read across lanes below
        for (int i = lane; i < ck; i += 32) {
            float dqh = dd * (ks[i] + eps);
            for (int cc = 0; cc < c; ++cc) dqh += kv[(i64)i * c + cc] * dn[cc];
            vd_st(dq, tok * ck + i, (dqh - vd_ld(qr, i) * r * dot) * r);
        }
    }
}
extern "C" __global__ void vd_attention_linear_bwd_q_f32(const float* __restrict__ dy, const float* __restrict__ q,
                                                         const float* __restrict__ stats, float* __restrict__ dq,
                                                         float* __restrict__ dnum, float* __restrict__ dden, i64 b,
                                                         i64 n, int ck, int c, float eps) {
    vd_attn_bwd_q(dy, q, stats, dq, dnum, dden, b, n, ck, c, eps);
}
extern "C" __global__ void vd_attention_linear_bwd_q_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ q,
                                                          const float* __restrict__ stats, bf16* __restrict__ dq,
                                                          float* __restrict__ dnum, float* __restrict__ dden, i64 b,
                                                          i64 n, int ck, int c, float eps) {
    vd_attn_bwd_q(dy, q, stats, dq, dnum, dden, b, n, ck, c, eps);
}

// The kv pass of the backward, from dstats = [dKV | dks | dvs]:
// dv = dKVᵀ k̂ + dvs, dk = (dk̂ − k̂ (k̂·dk̂)) / ‖k‖ with dk̂ = dKV·v + dks and
// k̂·dk̂ = Σ_c v_c (dKVᵀ k̂)_c + k̂·dks.
template <typename T>
VD_DEVICE void vd_attn_bwd_kv(const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ dstats,
                              T* __restrict__ dk, T* __restrict__ dv, i64 b, i64 n, int ck, int c) {
    const int lane = (int)vd_lane();
    const i64 S = (i64)ck * c + ck + c;
    VD_ATTN_FOR_TOKENS(b, n) {
        const float* dkv = dstats + (tok / n) * S;
        const float* dks = dkv + (i64)ck * c;
        const float* dvs = dks + ck;
        const T* kr = k + tok * ck;
        const T* vr = v + tok * c;
        float ss = 0.0f;
        for (int i = lane; i < ck; i += 32) {
            const float x = vd_ld(kr, i);
            ss += x * x;
        }
        const float r = 1.0f / sqrtf(vd_warp_sum(ss));
        float dot = 0.0f;
        for (int cc = lane; cc < c; cc += 32) {
            float u = 0.0f;
            for (int i = 0; i < ck; ++i) u += vd_ld(kr, i) * dkv[(i64)i * c + cc];
            u *= r;
            vd_st(dv, tok * c + cc, u + dvs[cc]);
            dot += vd_ld(vr, cc) * u;
        }
        for (int i = lane; i < ck; i += 32) dot += vd_ld(kr, i) * r * dks[i];
        dot = vd_warp_sum(dot);
        for (int i = lane; i < ck; i += 32) {
            float dkh = dks[i];
            for (int cc = 0; cc < c; ++cc) dkh += dkv[(i64)i * c + cc] * vd_ld(vr, cc);
            vd_st(dk, tok * ck + i, (dkh - vd_ld(kr, i) * r * dot) * r);
        }
    }
}
extern "C" __global__ void vd_attention_linear_bwd_kv_f32(const float* __restrict__ k, const float* __restrict__ v,
                                                          const float* __restrict__ dstats, float* __restrict__ dk,
                                                          float* __restrict__ dv, i64 b, i64 n, int ck, int c) {
    vd_attn_bwd_kv(k, v, dstats, dk, dv, b, n, ck, c);
}
extern "C" __global__ void vd_attention_linear_bwd_kv_bf16(const bf16* __restrict__ k, const bf16* __restrict__ v,
                                                           const float* __restrict__ dstats, bf16* __restrict__ dk,
                                                           bf16* __restrict__ dv, i64 b, i64 n, int ck, int c) {
    vd_attn_bwd_kv(k, v, dstats, dk, dv, b, n, ck, c);
}
