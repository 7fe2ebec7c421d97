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

// ------------------------------------------------------------ flash attention
// The fused softmax attention of the custom op src/nn/flash_attention.rs (its
// module docs hold the math and the launch geometry): O = softmax(Q Kᵀ·scale) V
// for [BH, T, d] q, k, v, with the per-row log-sum-exp kept for the backward;
// the T × T matrix is never written. Every block owns one tile of BR query
// (or key) rows of one matrix bh = blockIdx.x / tiles; the K/V (or Q/dO)
// tiles stream through shared memory.
#define VD_FLASH_NEG_INF __int_as_float(0xff800000)
#define VD_FLASH_ACC 8  // accumulator entries per thread: d ≤ 8·(256 / BR)

// One BR × d tile of a [T, d] matrix (rows from r0) into shared f32 rows of
// pitch d + 1; rows at or past t read zeros.
template <typename T>
VD_DEVICE void vd_flash_stage(float* __restrict__ s, const T* __restrict__ m, i64 r0, i64 t, int d, int br) {
    const int dp = d + 1;
    for (int e = (int)threadIdx.x; e < br * d; e += VD_ATTN_THREADS) {
        const int r = e / d, c = e % d;
        s[r * dp + c] = r0 + r < t ? vd_ld(m, (r0 + r) * d + c) : 0.0f;
    }
}

// The f32-arithmetic forward (any d ≤ 8·256/BR; f32 or bf16 storage). Shared:
// sq [BR][d+1], skv [BR][d+1] (K, then V), ss [BR][BR+1] (scores, then
// probabilities), sa [BR] (each row's rescale, at the end its sum). Thread
// tid owns row tid / TPR, channels tid % TPR + TPR·e of the output; warp w
// runs the online softmax of rows BR/8·w .. with lane = key.
template <typename T, int BR>
VD_DEVICE void vd_flash_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            T* __restrict__ o, float* __restrict__ lse, i64 t, int d, float scale) {
    constexpr int TPR = VD_ATTN_THREADS / BR, NS = BR * BR / VD_ATTN_THREADS, RPW = BR / 8;
    VD_DYNAMIC_SMEM(float, smem);
    const int dp = d + 1, tid = (int)threadIdx.x, lane = (int)vd_lane(), warp = (int)vd_warp();
    float* sq = smem;
    float* skv = sq + BR * dp;
    float* ss = skv + BR * dp;
    float* sa = ss + BR * (BR + 1);
    const i64 tiles = (t + BR - 1) / BR;
    const i64 bh = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * BR;
    const i64 base = bh * t * d;
    vd_flash_stage(sq, q + base, q0, t, d, BR);
    const int ar = tid / TPR, ac = tid % TPR;
    float acc[VD_FLASH_ACC], m[RPW], l[RPW];
#pragma unroll
    for (int e = 0; e < VD_FLASH_ACC; ++e) acc[e] = 0.0f;
#pragma unroll
    for (int r = 0; r < RPW; ++r) m[r] = VD_FLASH_NEG_INF, l[r] = 0.0f;
    for (i64 k0 = 0; k0 < t; k0 += BR) {
        __syncthreads();  // Q has landed; the last tile's V and P are consumed
        vd_flash_stage(skv, k + base, k0, t, d, BR);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            const int e = tid + j * VD_ATTN_THREADS, r = e / BR, key = e % BR;
            float s = 0.0f;
            for (int c = 0; c < d; ++c) s += sq[r * dp + c] * skv[key * dp + c];
            ss[r * (BR + 1) + key] = k0 + key < t ? s * scale : VD_FLASH_NEG_INF;
        }
        __syncthreads();  // the scores are in, K is consumed
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) {
            const int r = warp * RPW + rr;
            const float s = lane < BR ? ss[r * (BR + 1) + lane] : VD_FLASH_NEG_INF;
            const float mn = fmaxf(m[rr], vd_warp_max(s));  // finite: key k0 < t is in the tile
            const float p = expf(s - mn);
            const float alpha = expf(m[rr] - mn);
            l[rr] = l[rr] * alpha + vd_warp_sum(p);
            m[rr] = mn;
            if (lane < BR) ss[r * (BR + 1) + lane] = p;
            if (lane == 0) sa[r] = alpha;
        }
        vd_flash_stage(skv, v + base, k0, t, d, BR);
        __syncthreads();
        const float alpha = sa[ar];
        const float* pr = ss + ar * (BR + 1);
#pragma unroll
        for (int e = 0; e < VD_FLASH_ACC; ++e) {
            const int c = ac + TPR * e;
            if (c >= d) continue;
            float a = acc[e] * alpha;
#pragma unroll 4
            for (int j = 0; j < BR; ++j) a += pr[j] * skv[j * dp + c];
            acc[e] = a;
        }
    }
    __syncthreads();  // every rescale is read
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        const int r = warp * RPW + rr;
        if (lane == 0) {
            sa[r] = l[rr];
            if (q0 + r < t) lse[bh * t + q0 + r] = m[rr] + logf(l[rr]);
        }
    }
    __syncthreads();
    if (q0 + ar >= t) return;
    const float inv = 1.0f / sa[ar];
#pragma unroll
    for (int e = 0; e < VD_FLASH_ACC; ++e) {
        const int c = ac + TPR * e;
        if (c < d) vd_st(o, base + (q0 + ar) * d + c, acc[e] * inv);
    }
}
extern "C" __global__ void vd_attention_flash_fwd_f32(const float* __restrict__ q, const float* __restrict__ k,
        const float* __restrict__ v, float* __restrict__ o, float* __restrict__ lse, i64 t, int d, float scale) {
    vd_flash_fwd<float, 32>(q, k, v, o, lse, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_fwd_wide_f32(const float* __restrict__ q, const float* __restrict__ k,
        const float* __restrict__ v, float* __restrict__ o, float* __restrict__ lse, i64 t, int d, float scale) {
    vd_flash_fwd<float, 16>(q, k, v, o, lse, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_fwd_bf16(const bf16* __restrict__ q, const bf16* __restrict__ k,
        const bf16* __restrict__ v, bf16* __restrict__ o, float* __restrict__ lse, i64 t, int d, float scale) {
    vd_flash_fwd<bf16, 32>(q, k, v, o, lse, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_fwd_wide_bf16(const bf16* __restrict__ q, const bf16* __restrict__ k,
        const bf16* __restrict__ v, bf16* __restrict__ o, float* __restrict__ lse, i64 t, int d, float scale) {
    vd_flash_fwd<bf16, 16>(q, k, v, o, lse, t, d, scale);
}

// The backward's row dots D_i = Σ_c dO_ic O_ic (f32 [BH·T]), one warp per row.
template <typename T>
VD_DEVICE void vd_flash_bwd_dot(const T* __restrict__ dy, const T* __restrict__ o, float* __restrict__ dot, i64 b,
                                i64 n, int d) {
    const int lane = (int)vd_lane();
    VD_ATTN_FOR_TOKENS(b, n) {
        float s = 0.0f;
        for (int c = lane; c < d; c += 32) s += vd_ld(dy, tok * d + c) * vd_ld(o, tok * d + c);
        s = vd_warp_sum(s);
        if (lane == 0) dot[tok] = s;
    }
}
extern "C" __global__ void vd_attention_flash_bwd_dot_f32(const float* __restrict__ dy, const float* __restrict__ o,
                                                          float* __restrict__ dot, i64 b, i64 n, int d) {
    vd_flash_bwd_dot(dy, o, dot, b, n, d);
}
extern "C" __global__ void vd_attention_flash_bwd_dot_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ o,
                                                           float* __restrict__ dot, i64 b, i64 n, int d) {
    vd_flash_bwd_dot(dy, o, dot, b, n, d);
}

// The backward passes share one shape: a block stages its own BR rows of two
// matrices once (KV: K and V of its keys; Q: Q and dO of its queries) and
// streams the tiles of the other two, with the rows' lse and D. For each pair
// (query i, key j) of the two tiles: p = exp(s − lse_i), dp = dO_i·V_j,
// ds = p (dp − D_i). KV pass: dV_j += Σ_i p dO_i, dK_j += Σ_i ds Q_i (·scale
// at the end); Q pass: dQ_i += Σ_j ds K_j (·scale). Each gradient row is
// summed by one thread in a fixed order: no atomics, the same bits every run.
// Shared: sq, sdo, sk, sv [BR][d+1], sp, sds [BR][BR+1], sl, sd [BR].
template <typename T, int BR, bool KV>
VD_DEVICE void vd_flash_bwd(const T* __restrict__ dy, const T* __restrict__ q, const T* __restrict__ k,
                            const T* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ dot,
                            T* __restrict__ g0, T* __restrict__ g1, i64 t, int d, float scale) {
    constexpr int TPR = VD_ATTN_THREADS / BR, NS = BR * BR / VD_ATTN_THREADS;
    VD_DYNAMIC_SMEM(float, smem);
    const int dp = d + 1, tid = (int)threadIdx.x;
    float* sq = smem;
    float* sdo = sq + BR * dp;
    float* sk = sdo + BR * dp;
    float* sv = sk + BR * dp;
    float* sp = sv + BR * dp;
    float* sds = sp + BR * (BR + 1);
    float* sl = sds + BR * (BR + 1);
    float* sd = sl + BR;
    const i64 tiles = (t + BR - 1) / BR;
    const i64 bh = blockIdx.x / tiles, r0 = (blockIdx.x % tiles) * BR;
    const i64 base = bh * t * d;
    const float* lr = lse + bh * t;
    const float* dr = dot + bh * t;
    // Stages the query rows from i0: Q, dO, lse, D.
    auto stage_q = [&](i64 i0) {
        vd_flash_stage(sq, q + base, i0, t, d, BR);
        vd_flash_stage(sdo, dy + base, i0, t, d, BR);
        if (tid < BR) {
            sl[tid] = i0 + tid < t ? lr[i0 + tid] : 0.0f;
            sd[tid] = i0 + tid < t ? dr[i0 + tid] : 0.0f;
        }
    };
    auto stage_kv = [&](i64 j0) {
        vd_flash_stage(sk, k + base, j0, t, d, BR);
        vd_flash_stage(sv, v + base, j0, t, d, BR);
    };
    if (KV)
        stage_kv(r0);
    else
        stage_q(r0);
    const int ar = tid / TPR, ac = tid % TPR;
    float a0[VD_FLASH_ACC], a1[VD_FLASH_ACC];
#pragma unroll
    for (int e = 0; e < VD_FLASH_ACC; ++e) a0[e] = 0.0f, a1[e] = 0.0f;
    for (i64 s0 = 0; s0 < t; s0 += BR) {
        __syncthreads();  // the block's own rows have landed; the last tile is consumed
        if (KV)
            stage_q(s0);
        else
            stage_kv(s0);
        __syncthreads();
        const i64 i0 = KV ? s0 : r0, j0 = KV ? r0 : s0;
#pragma unroll
        for (int jj = 0; jj < NS; ++jj) {
            // Entry [own row][streamed row]: KV: [key j][query i], Q: [query i][key j].
            const int e = tid + jj * VD_ATTN_THREADS, own = e / BR, other = e % BR;
            const int i = KV ? other : own, j = KV ? own : other;
            float p = 0.0f, ds = 0.0f;
            if (i0 + i < t && j0 + j < t) {
                float s = 0.0f, dpv = 0.0f;
                for (int c = 0; c < d; ++c) {
                    s += sq[i * dp + c] * sk[j * dp + c];
                    dpv += sdo[i * dp + c] * sv[j * dp + c];
                }
                p = expf(s * scale - sl[i]);
                ds = p * (dpv - sd[i]);
            }
            sp[own * (BR + 1) + other] = p;
            sds[own * (BR + 1) + other] = ds;
        }
        __syncthreads();
        const float* pr = sp + ar * (BR + 1);
        const float* dsr = sds + ar * (BR + 1);
#pragma unroll
        for (int e = 0; e < VD_FLASH_ACC; ++e) {
            const int c = ac + TPR * e;
            if (c >= d) continue;
            float x0 = a0[e], x1 = a1[e];
#pragma unroll 4
            for (int o = 0; o < BR; ++o) {
                if (KV) {
                    x0 += dsr[o] * sq[o * dp + c];  // dK
                    x1 += pr[o] * sdo[o * dp + c];  // dV
                } else {
                    x0 += dsr[o] * sk[o * dp + c];  // dQ
                }
            }
            a0[e] = x0, a1[e] = x1;
        }
    }
    if (r0 + ar >= t) return;
#pragma unroll
    for (int e = 0; e < VD_FLASH_ACC; ++e) {
        const int c = ac + TPR * e;
        if (c >= d) continue;
        vd_st(g0, base + (r0 + ar) * d + c, a0[e] * scale);
        if (KV) vd_st(g1, base + (r0 + ar) * d + c, a1[e]);
    }
}
extern "C" __global__ void vd_attention_flash_bwd_kv_f32(const float* __restrict__ dy, const float* __restrict__ q,
        const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, float* __restrict__ g0, float* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<float, 32, true>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_bwd_kv_wide_f32(const float* __restrict__ dy, const float* __restrict__ q,
        const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, float* __restrict__ g0, float* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<float, 16, true>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_bwd_kv_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ q,
        const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, bf16* __restrict__ g0, bf16* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<bf16, 32, true>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_bwd_kv_wide_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ q,
        const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, bf16* __restrict__ g0, bf16* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<bf16, 16, true>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_bwd_q_f32(const float* __restrict__ dy, const float* __restrict__ q,
        const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, float* __restrict__ g0, float* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<float, 32, false>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_bwd_q_wide_f32(const float* __restrict__ dy, const float* __restrict__ q,
        const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, float* __restrict__ g0, float* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<float, 16, false>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_bwd_q_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ q,
        const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, bf16* __restrict__ g0, bf16* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<bf16, 32, false>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}
extern "C" __global__ void vd_attention_flash_bwd_q_wide_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ q,
        const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ lse,
        const float* __restrict__ dot, bf16* __restrict__ g0, bf16* __restrict__ g1, i64 t, int d, float scale) {
    vd_flash_bwd<bf16, 16, false>(dy, q, k, v, lse, dot, g0, g1, t, d, scale);
}

// The bf16 forward on tensor cores for d = D ∈ {32, 64, 128}: blocks of 4
// warps own 64 query rows (16 per warp); K and V stream in tiles of 64 keys
// through shared memory (rows padded by 8 elements, staged by cp.async, rows at
// or past t zero-filled). Per tile a warp computes its 16 × 64 scores S = Q Kᵀ
// with mma.sync m16n8k16 (Q's A fragments loaded once, K's B fragments by
// ldmatrix as b stored [N, K] in vd_bmm_bf16), applies the online softmax on
// the accumulator fragments (lane 4g + q holds rows g and g + 8; the row max
// and sum over the quad by shuffles), rescales O and adds P V with P's
// accumulator fragments repacked as the A fragments of the next mma (V's B
// fragments by ldmatrix.trans). P is rounded to bf16 for the product; the row
// sums and the log-sum-exp are f32.
#define VD_FLASH_MMA_ROWS 64
#define VD_FLASH_MMA_THREADS 128

// Rows [r0, r0 + 64) of a [t, D] bf16 matrix into s (pitch D + 8) as one
// cp.async group; rows at or past t are zero-filled.
template <int D>
VD_DEVICE void vd_flash_mma_stage(bf16* __restrict__ s, const bf16* __restrict__ m, i64 r0, i64 t) {
    constexpr int CH = D / 8, P = D + 8;
    for (int e = (int)threadIdx.x; e < VD_FLASH_MMA_ROWS * CH; e += VD_FLASH_MMA_THREADS) {
        const int r = e / CH, c = (e % CH) * 8;
        const bool in = r0 + r < t;
        vd_cp_async<16>(s + r * P + c, in ? m + (r0 + r) * D + c : m, in);
    }
    vd_cp_async_commit();
}

template <int D>
VD_DEVICE void vd_flash_fwd_mma(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                                bf16* __restrict__ o, float* __restrict__ lse, i64 t, float scale) {
    constexpr int BR = VD_FLASH_MMA_ROWS, P = D + 8, KD = D / 16, ND = D / 8;
    __shared__ __align__(16) bf16 sk[BR * P];
    __shared__ __align__(16) bf16 sv[BR * P];
    const int lane = (int)vd_lane(), warp = (int)vd_warp(), g = lane / 4, qd = lane % 4;
    const i64 tiles = (t + BR - 1) / BR;
    const i64 bh = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * BR;
    const i64 base = bh * t * D;
    // Q passes through sk into the warps' A fragments.
    vd_flash_mma_stage<D>(sk, q + base, q0, t);
    vd_cp_async_wait<0>();
    __syncthreads();
    u32 qf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk)
        vd_ldmatrix_x4(qf[kk], sk + (warp * 16 + lane % 16) * P + kk * 16 + (lane / 16) * 8);
    float acc[ND][4], m[2] = {VD_FLASH_NEG_INF, VD_FLASH_NEG_INF}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[nd][r] = 0.0f;
    for (i64 k0 = 0; k0 < t; k0 += BR) {
        __syncthreads();  // Q's fragments, the last tile's K and V are read
        vd_flash_mma_stage<D>(sk, k + base, k0, t);
        vd_flash_mma_stage<D>(sv, v + base, k0, t);
        vd_cp_async_wait<1>();  // K has landed; V may still be in flight
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) s[ni][r] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk)
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                u32 r[4];
                vd_ldmatrix_x4(r, sk + (np * 16 + (lane / 16) * 8 + lane % 8) * P + kk * 16 + ((lane / 8) % 2) * 8);
                const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                vd_mma_bf16_16816(s[2 * np], qf[kk], b0, s[2 * np]);
                vd_mma_bf16_16816(s[2 * np + 1], qf[kk], b1, s[2 * np + 1]);
            }
        // Online softmax of rows g (h = 0) and g + 8 (h = 1): s[ni][2h + e] is
        // key k0 + 8·ni + 2·qd + e.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = VD_FLASH_NEG_INF;
#pragma unroll
            for (int ni = 0; ni < 8; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float x = k0 + 8 * ni + 2 * qd + e < t ? s[ni][2 * h + e] * scale : VD_FLASH_NEG_INF;
                    s[ni][2 * h + e] = x;
                    mx = fmaxf(mx, x);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mn = fmaxf(m[h], mx);  // finite: key k0 < t is in the tile
            const float alpha = expf(m[h] - mn);
            m[h] = mn;
            float rs = 0.0f;
#pragma unroll
            for (int ni = 0; ni < 8; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = expf(s[ni][2 * h + e] - mn);
                    s[ni][2 * h + e] = p;
                    rs += p;
                }
            l[h] = l[h] * alpha + rs;  // this lane's part of the row sum
#pragma unroll
            for (int nd = 0; nd < ND; ++nd) acc[nd][2 * h] *= alpha, acc[nd][2 * h + 1] *= alpha;
        }
        vd_cp_async_wait<0>();
        __syncthreads();  // V has landed
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
            const u32 a[4] = {vd_pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), vd_pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                              vd_pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              vd_pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int np = 0; np < D / 16; ++np) {
                u32 r[4];
                vd_ldmatrix_x4_trans(r, sv + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * P + np * 16 + (lane / 16) * 8);
                const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                vd_mma_bf16_16816(acc[2 * np], a, b0, acc[2 * np]);
                vd_mma_bf16_16816(acc[2 * np + 1], a, b1, acc[2 * np + 1]);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = l[h] + __shfl_xor_sync(0xffffffffu, l[h], 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const i64 row = q0 + warp * 16 + g + 8 * h;
        if (row >= t) continue;
        const float inv = 1.0f / sum;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd)  // 4-byte aligned: D and the column are even
            *reinterpret_cast<u32*>(o + base + row * D + 8 * nd + 2 * qd) =
                vd_pack_bf16x2(acc[nd][2 * h] * inv, acc[nd][2 * h + 1] * inv);
        if (qd == 0) lse[bh * t + row] = m[h] + logf(sum);
    }
}
extern "C" __global__ void __launch_bounds__(VD_FLASH_MMA_THREADS)
    vd_attention_flash_fwd_mma_d32_bf16(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                        const bf16* __restrict__ v, bf16* __restrict__ o, float* __restrict__ lse, i64 t,
                                        float scale) {
    vd_flash_fwd_mma<32>(q, k, v, o, lse, t, scale);
}
extern "C" __global__ void __launch_bounds__(VD_FLASH_MMA_THREADS)
    vd_attention_flash_fwd_mma_d64_bf16(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                        const bf16* __restrict__ v, bf16* __restrict__ o, float* __restrict__ lse, i64 t,
                                        float scale) {
    vd_flash_fwd_mma<64>(q, k, v, o, lse, t, scale);
}
extern "C" __global__ void __launch_bounds__(VD_FLASH_MMA_THREADS)
    vd_attention_flash_fwd_mma_d128_bf16(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v, bf16* __restrict__ o, float* __restrict__ lse,
                                         i64 t, float scale) {
    vd_flash_fwd_mma<128>(q, k, v, o, lse, t, scale);
}
