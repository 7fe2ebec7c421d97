// Fused group norm (instance norm: groups == C) with affine, FiLM, residual and
// activation, forward and backward (src/backend/gpu/norm.rs launches the passes
// and documents the launch geometry and the bytes each moves).
//
// For sample n and group g (channels g·cpg .. (g + 1)·cpg, cpg = C / G) over
// its M = rows·cpg elements:
//   μ = mean x, σ² = mean (x − μ)² (biased), r = 1 / sqrt(σ² + eps), x̂ = (x − μ)·r
//   u = (x − μ)·A[n,c] + B[n,c] (+ residual),   y = act(u)
//   A = r·k, k = γ·(1 + s),  B = β·(1 + s) + h     (γ = 1, β = 0, s = h = 0 when absent)
// which is ((x̂·γ + β)·(1 + s) + h) regrouped so each element costs one
// subtract and one multiply-add.
//
// Backward, du = dy·act'(u) (u recomputed from x and the stats):
//   S1[n,c] = Σ_rows du,  S2[n,c] = Σ_rows du·x̂
//   m1[n,g] = (1/M) Σ_{c∈g} k·S1,  m2[n,g] = (1/M) Σ_{c∈g} k·S2
//   dx = r·(k·du − m1 − x̂·m2)
//   dγ[c] = Σ_n (1 + s)·S2,  dβ[c] = Σ_n (1 + s)·S1
//   dscale[n,c] = γ·S2 + β·S1,  dshift[n,c] = S1,  dresidual = du
//
// Passes (no block waits on another; every reduction has a fixed order, so
// results do not depend on scheduling):
//   forward   vd_norm_stats_*      per-(n, chunk, c) Welford (mean, M2) partials
//             vd_norm_stats_merge  per (n, g): Chan's combination → (μ, r)
//             vd_norm_apply_*      y = act(u)
//   backward  vd_norm_bwd_reduce_* per-(n, chunk, c) partial (S1, S2); writes du
//                                  when a residual takes a gradient
//             vd_norm_bwd_merge    per g: S1, S2 → dγ, dβ, dscale, dshift, (m1, m2)
//             vd_norm_bwd_dx_*     dx
// The *_ passes use the column-tile geometry of channel_rows.cuh; variants
// f32x8 / bf16x8 (8 channels per thread, 16-byte accesses; C % 8 == 0) and
// f32x1 / bf16x1 (one channel per thread, any C).
#include "activation.cuh"
#include "channel_rows.cuh"

// Mirrored by `NormKernelArgs` in src/backend/gpu/norm.rs. Null pointers mark
// absent inputs and gradients that are not wanted.
struct VdNormArgs {
    const void* x;         // [N, rows, C], the variant's dtype
    const void* residual;  // like x, or null
    const void* dy;        // backward: upstream gradient, like x
    void* out;             // forward: y; backward: dx (like x)
    void* du;              // backward: du = dresidual (like x), or null (no residual)
    const float* gamma;    // [C] or null
    const float* beta;     // [C] or null
    const float* scale;    // [N, C] or null (FiLM; shift is given with it)
    const float* shift;    // [N, C] or null
    float* stats;          // [N, G, 2]: (μ, r)
    float* partial;        // workspace [N, chunks, C, 2]
    float* moments;        // backward workspace [N, G, 2]: (m1, m2)
    float* dgamma;         // [C] or null
    float* dbeta;          // [C] or null
    float* dscale;         // [N, C] or null
    float* dshift;         // [N, C] or null
    i64 rows;              // voxels per sample
    i64 rows_per_chunk;    // R of the column-tile geometry
    int samples;           // N
    int c;                 // channels
    int groups;            // G
    int lanes;             // column vectors per row: C / VEC
    int chunks;            // chunks per sample
    int act;               // activation (activation.cuh)
    float eps;
    int pad_;
};

// The epilogue coefficients of one channel (see the top of the file).
struct VdNormCoef {
    float mean, rstd, k, a, b;
};
VD_DEVICE VdNormCoef vd_norm_coef(const VdNormArgs p, i64 n, int c) {
    const int g = c / (p.c / p.groups);
    VdNormCoef e;
    e.mean = p.stats[(n * p.groups + g) * 2];
    e.rstd = p.stats[(n * p.groups + g) * 2 + 1];
    const float gamma = p.gamma ? p.gamma[c] : 1.0f;
    const float beta = p.beta ? p.beta[c] : 0.0f;
    const float s1 = p.scale ? 1.0f + p.scale[n * p.c + c] : 1.0f;
    const float h = p.shift ? p.shift[n * p.c + c] : 0.0f;
    e.k = gamma * s1;
    e.a = e.rstd * e.k;
    e.b = fmaf(beta, s1, h);
    return e;
}

// ------------------------------------------------------------------ forward
// Per-(n, chunk, c) Welford partials. Thread (tx, ty) folds its rows into a
// Welford state per channel (mean, M2; count = rows visited); the by states of
// a column are combined by a tree over ty (Chan), and ty == 0 writes
// partial[n, chunk, c] = (mean, M2). The chunk's count is implicit:
// min(R, rows − chunk·R). Dynamic shared memory: bx·by·(1 + 2·VEC) floats.
template <typename T, int VEC>
VD_DEVICE void vd_norm_stats(const VdNormArgs p) {
    VD_DYNAMIC_SMEM(float, sm);
    const VdRowTile t = vd_row_tile(p.rows, p.rows_per_chunk, p.lanes);
    const int bx = blockDim.x, by = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    float cnt = 0.0f, mean[VEC], m2[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) mean[j] = 0.0f, m2[j] = 0.0f;
    if (t.active) {
        const T* x = static_cast<const T*>(p.x) + t.n * p.rows * p.c + t.col * VEC;
        for (i64 r = t.r0 + ty; r < t.r1; r += by) {
            float v[VEC];
            vd_rows_load<VEC>(x + r * p.c, v);
            cnt += 1.0f;
            const float inv = 1.0f / cnt;
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                const float d = v[j] - mean[j];
                mean[j] = fmaf(d, inv, mean[j]);
                m2[j] = fmaf(d, v[j] - mean[j], m2[j]);
            }
        }
    }
    // Shared layout: counts [by·bx], means [by·bx·VEC], M2s [by·bx·VEC].
    const int me = ty * bx + tx, plane = by * bx;
    float* s_cnt = sm;
    float* s_mean = sm + plane;
    float* s_m2 = sm + plane + plane * VEC;
    s_cnt[me] = cnt;
#pragma unroll
    for (int j = 0; j < VEC; ++j) s_mean[me * VEC + j] = mean[j], s_m2[me * VEC + j] = m2[j];
    __syncthreads();
    for (int s = by >> 1; s > 0; s >>= 1) {
        if (ty < s) {
            const int o = me + s * bx;
            const float nb = s_cnt[o];
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                float na = cnt;
                vd_welford_combine(na, mean[j], m2[j], nb, s_mean[o * VEC + j], s_m2[o * VEC + j]);
                s_mean[me * VEC + j] = mean[j];
                s_m2[me * VEC + j] = m2[j];
            }
            cnt += nb;
            s_cnt[me] = cnt;
        }
        __syncthreads();
    }
    if (ty == 0 && t.active) {
        float* out = p.partial + ((t.n * p.chunks + blockIdx.x) * p.c + t.col * VEC) * 2;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[2 * j] = mean[j], out[2 * j + 1] = m2[j];
    }
}
extern "C" __global__ void vd_norm_stats_f32x8(const VdNormArgs p) { vd_norm_stats<float, 8>(p); }
extern "C" __global__ void vd_norm_stats_f32x1(const VdNormArgs p) { vd_norm_stats<float, 1>(p); }
extern "C" __global__ void vd_norm_stats_bf16x8(const VdNormArgs p) { vd_norm_stats<bf16, 8>(p); }
extern "C" __global__ void vd_norm_stats_bf16x1(const VdNormArgs p) { vd_norm_stats<bf16, 1>(p); }

// (μ, r) of group blockIdx.x of sample blockIdx.y. A 1-D block of T threads
// (a power of two): thread i folds the partials e = i, i + T, … of the group
// (e = chunk·cpg + k, channel g·cpg + k) into one Welford state with Chan's
// combination; a tree over the T states in shared memory (3·T floats) gives
// the group's (count, mean, M2); thread 0 writes μ and r = 1/sqrt(M2/count + eps).
extern "C" __global__ void vd_norm_stats_merge(const VdNormArgs p) {
    VD_DYNAMIC_SMEM(float, sm);
    const int nt = blockDim.x, tid = threadIdx.x, g = blockIdx.x;
    const i64 n = blockIdx.y;
    const int cpg = p.c / p.groups;
    const int entries = p.chunks * cpg;
    float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (int e = tid; e < entries; e += nt) {
        const int j = e / cpg, k = e - j * cpg;
        const float* q = p.partial + ((n * p.chunks + j) * p.c + g * cpg + k) * 2;
        const float rows = (float)min(p.rows_per_chunk, p.rows - (i64)j * p.rows_per_chunk);
        vd_welford_combine(cnt, mean, m2, rows, q[0], q[1]);
    }
    float* s_cnt = sm;
    float* s_mean = sm + nt;
    float* s_m2 = sm + 2 * nt;
    s_cnt[tid] = cnt, s_mean[tid] = mean, s_m2[tid] = m2;
    __syncthreads();
    for (int s = nt >> 1; s > 0; s >>= 1) {
        if (tid < s) {
            vd_welford_combine(cnt, mean, m2, s_cnt[tid + s], s_mean[tid + s], s_m2[tid + s]);
            s_cnt[tid] = cnt, s_mean[tid] = mean, s_m2[tid] = m2;
        }
        __syncthreads();
    }
    if (tid == 0) {
        const float var = fmaxf(m2 / cnt, 0.0f);
        p.stats[(n * p.groups + g) * 2] = mean;
        p.stats[(n * p.groups + g) * 2 + 1] = 1.0f / sqrtf(var + p.eps);
    }
}

// y = act((x − μ)·A + B (+ residual)): each thread computes the coefficients of
// its VEC channels once, then walks its rows.
template <typename T, int VEC>
VD_DEVICE void vd_norm_apply(const VdNormArgs p) {
    const VdRowTile t = vd_row_tile(p.rows, p.rows_per_chunk, p.lanes);
    if (!t.active) return;
    float mean[VEC], a[VEC], b[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
        const VdNormCoef e = vd_norm_coef(p, t.n, t.col * VEC + j);
        mean[j] = e.mean, a[j] = e.a, b[j] = e.b;
    }
    const i64 base = t.n * p.rows * p.c + t.col * VEC;
    const T* x = static_cast<const T*>(p.x) + base;
    const T* res = p.residual ? static_cast<const T*>(p.residual) + base : nullptr;
    T* y = static_cast<T*>(p.out) + base;
    for (i64 r = t.r0 + threadIdx.y; r < t.r1; r += blockDim.y) {
        float v[VEC], rv[VEC];
        vd_rows_load<VEC>(x + r * p.c, v);
        if (res) {
            vd_rows_load<VEC>(res + r * p.c, rv);
        } else {
#pragma unroll
            for (int j = 0; j < VEC; ++j) rv[j] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = vd_act(p.act, fmaf(v[j] - mean[j], a[j], b[j]) + rv[j]);
        vd_rows_store<VEC>(y + r * p.c, v);
    }
}
extern "C" __global__ void vd_norm_apply_f32x8(const VdNormArgs p) { vd_norm_apply<float, 8>(p); }
extern "C" __global__ void vd_norm_apply_f32x1(const VdNormArgs p) { vd_norm_apply<float, 1>(p); }
extern "C" __global__ void vd_norm_apply_bf16x8(const VdNormArgs p) { vd_norm_apply<bf16, 8>(p); }
extern "C" __global__ void vd_norm_apply_bf16x1(const VdNormArgs p) { vd_norm_apply<bf16, 1>(p); }

// ----------------------------------------------------------------- backward
// du of VEC channels of one row, from dy and (unless the activation is the
// identity) the recomputed pre-activation u.
template <int VEC>
VD_DEVICE void vd_norm_du(int act, const float xm[VEC], const float a[VEC], const float b[VEC],
                          const float rv[VEC], float dyv[VEC]) {
    if (act == VD_ACT_IDENTITY) return;
#pragma unroll
    for (int j = 0; j < VEC; ++j) dyv[j] *= vd_act_grad(act, fmaf(xm[j], a[j], b[j]) + rv[j]);
}

// Per-(n, chunk, c) partial sums (Σ du, Σ du·(x − μ)) (the merge multiplies
// the second by r to get S2); thread (tx, ty) sums its rows, a tree over ty in
// shared memory (2·bx·by·VEC floats) adds the column's by sums, ty == 0 writes
// the partial. With a residual, du (the residual's gradient) is stored here.
template <typename T, int VEC>
VD_DEVICE void vd_norm_bwd_reduce(const VdNormArgs p) {
    VD_DYNAMIC_SMEM(float, sm);
    const VdRowTile t = vd_row_tile(p.rows, p.rows_per_chunk, p.lanes);
    const int bx = blockDim.x, by = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    float s1[VEC], s2[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) s1[j] = 0.0f, s2[j] = 0.0f;
    if (t.active) {
        float mean[VEC], a[VEC], b[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const VdNormCoef e = vd_norm_coef(p, t.n, t.col * VEC + j);
            mean[j] = e.mean, a[j] = e.a, b[j] = e.b;
        }
        const i64 base = t.n * p.rows * p.c + t.col * VEC;
        const T* x = static_cast<const T*>(p.x) + base;
        const T* dy = static_cast<const T*>(p.dy) + base;
        const T* res = p.residual ? static_cast<const T*>(p.residual) + base : nullptr;
        T* du = p.du ? static_cast<T*>(p.du) + base : nullptr;
        for (i64 r = t.r0 + ty; r < t.r1; r += by) {
            float xm[VEC], g[VEC], rv[VEC];
            vd_rows_load<VEC>(x + r * p.c, xm);
            vd_rows_load<VEC>(dy + r * p.c, g);
            if (res) {
                vd_rows_load<VEC>(res + r * p.c, rv);
            } else {
#pragma unroll
                for (int j = 0; j < VEC; ++j) rv[j] = 0.0f;
            }
#pragma unroll
            for (int j = 0; j < VEC; ++j) xm[j] -= mean[j];
            vd_norm_du<VEC>(p.act, xm, a, b, rv, g);
#pragma unroll
            for (int j = 0; j < VEC; ++j) s1[j] += g[j], s2[j] = fmaf(g[j], xm[j], s2[j]);
            if (du) vd_rows_store<VEC>(du + r * p.c, g);
        }
    }
    const int me = ty * bx + tx, plane = by * bx * VEC;
    float* s_1 = sm;
    float* s_2 = sm + plane;
#pragma unroll
    for (int j = 0; j < VEC; ++j) s_1[me * VEC + j] = s1[j], s_2[me * VEC + j] = s2[j];
    __syncthreads();
    for (int s = by >> 1; s > 0; s >>= 1) {
        if (ty < s) {
            const int o = (me + s * bx) * VEC;
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                s1[j] += s_1[o + j], s2[j] += s_2[o + j];
                s_1[me * VEC + j] = s1[j], s_2[me * VEC + j] = s2[j];
            }
        }
        __syncthreads();
    }
    if (ty == 0 && t.active) {
        float* out = p.partial + ((t.n * p.chunks + blockIdx.x) * p.c + t.col * VEC) * 2;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[2 * j] = s1[j], out[2 * j + 1] = s2[j];
    }
}
extern "C" __global__ void vd_norm_bwd_reduce_f32x8(const VdNormArgs p) { vd_norm_bwd_reduce<float, 8>(p); }
extern "C" __global__ void vd_norm_bwd_reduce_f32x1(const VdNormArgs p) { vd_norm_bwd_reduce<float, 1>(p); }
extern "C" __global__ void vd_norm_bwd_reduce_bf16x8(const VdNormArgs p) { vd_norm_bwd_reduce<bf16, 8>(p); }
extern "C" __global__ void vd_norm_bwd_reduce_bf16x1(const VdNormArgs p) { vd_norm_bwd_reduce<bf16, 1>(p); }

// The per-channel and per-group gradients of group blockIdx.x, all samples.
// A 1-D block of T threads (a power of two) as slices × slots: slots =
// min(cpg, T) channels side by side, slices = the largest power of two with
// slices·slots ≤ T. For each tile of `slots` channels and each sample n (in
// order): thread (slice, slot) sums the partials of chunks slice, slice +
// slices, …; a tree over slices (shared memory) gives S1 and Σ du·(x − μ) of
// the channel, times r = S2;
// slice 0 writes dshift, dscale, accumulates dγ, dβ over n and leaves k·S1,
// k·S2 in shared memory, which thread 0 adds in channel order into
// moments[n, g]. Finally moments are divided by M. Shared: 4·T floats.
extern "C" __global__ void vd_norm_bwd_merge(const VdNormArgs p) {
    VD_DYNAMIC_SMEM(float, sm);
    const int nt = blockDim.x, tid = threadIdx.x, g = blockIdx.x;
    const int cpg = p.c / p.groups;
    const int slots = min(cpg, nt);
    int slices = 1;
    while (slices * 2 * slots <= nt) slices *= 2;
    const int slot = tid % slots, slice = tid / slots;
    float* s_1 = sm;
    float* s_2 = sm + nt;
    float* k_1 = sm + 2 * nt;
    float* k_2 = sm + 3 * nt;
    for (int k0 = 0; k0 < cpg; k0 += slots) {
        const int c = g * cpg + k0 + slot;
        const bool valid = slice < slices && k0 + slot < cpg;
        const float gamma = valid && p.gamma ? p.gamma[c] : 1.0f;
        const float beta = valid && p.beta ? p.beta[c] : 0.0f;
        float dg = 0.0f, db = 0.0f;
        for (int n = 0; n < p.samples; ++n) {
            float s1 = 0.0f, s2 = 0.0f;
            if (valid) {
                for (int j = slice; j < p.chunks; j += slices) {
                    const float* q = p.partial + (((i64)n * p.chunks + j) * p.c + c) * 2;
                    s1 += q[0], s2 += q[1];
                }
            }
            s_1[tid] = s1, s_2[tid] = s2;
            __syncthreads();
            for (int h = slices >> 1; h > 0; h >>= 1) {
                if (valid && slice < h) {
                    s1 += s_1[tid + h * slots], s2 += s_2[tid + h * slots];
                    s_1[tid] = s1, s_2[tid] = s2;
                }
                __syncthreads();
            }
            if (valid && slice == 0) {
                s2 *= p.stats[((i64)n * p.groups + g) * 2 + 1];  // Σ du·(x − μ) → S2 = Σ du·x̂
                const i64 nc = (i64)n * p.c + c;
                const float sc1 = p.scale ? 1.0f + p.scale[nc] : 1.0f;
                if (p.dshift) p.dshift[nc] = s1;
                if (p.dscale) p.dscale[nc] = fmaf(gamma, s2, beta * s1);
                dg = fmaf(sc1, s2, dg);
                db = fmaf(sc1, s1, db);
                const float k = gamma * sc1;
                k_1[slot] = k * s1, k_2[slot] = k * s2;
            }
            __syncthreads();
            if (tid == 0) {
                float m1 = 0.0f, m2 = 0.0f;
                const int kn = min(slots, cpg - k0);
                for (int i = 0; i < kn; ++i) m1 += k_1[i], m2 += k_2[i];
                float* mo = p.moments + ((i64)n * p.groups + g) * 2;
                mo[0] = k0 == 0 ? m1 : mo[0] + m1;
                mo[1] = k0 == 0 ? m2 : mo[1] + m2;
            }
            __syncthreads();
        }
        if (valid && slice == 0) {
            if (p.dgamma) p.dgamma[c] = dg;
            if (p.dbeta) p.dbeta[c] = db;
        }
    }
    if (tid == 0) {
        const float inv_m = 1.0f / (float)(p.rows * cpg);
        for (int n = 0; n < p.samples; ++n) {
            float* mo = p.moments + ((i64)n * p.groups + g) * 2;
            mo[0] *= inv_m, mo[1] *= inv_m;
        }
    }
}

// dx = r·(k·du − m1 − x̂·m2) = P·du + Q·(x − μ) + R with P = r·k,
// Q = −r²·m2, R = −r·m1 per channel; du is read back from the residual
// gradient when one was stored, else recomputed from dy, x (and the residual).
template <typename T, int VEC>
VD_DEVICE void vd_norm_bwd_dx(const VdNormArgs p) {
    const VdRowTile t = vd_row_tile(p.rows, p.rows_per_chunk, p.lanes);
    if (!t.active) return;
    float mean[VEC], a[VEC], b[VEC], cp[VEC], cq[VEC], cr[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
        const int c = t.col * VEC + j;
        const VdNormCoef e = vd_norm_coef(p, t.n, c);
        const float* mo = p.moments + (t.n * p.groups + c / (p.c / p.groups)) * 2;
        mean[j] = e.mean, a[j] = e.a, b[j] = e.b;
        cp[j] = e.rstd * e.k;
        cq[j] = -e.rstd * e.rstd * mo[1];
        cr[j] = -e.rstd * mo[0];
    }
    const i64 base = t.n * p.rows * p.c + t.col * VEC;
    const T* x = static_cast<const T*>(p.x) + base;
    const T* dy = static_cast<const T*>(p.dy) + base;
    const T* res = p.residual ? static_cast<const T*>(p.residual) + base : nullptr;
    const T* du = p.du ? static_cast<const T*>(p.du) + base : nullptr;
    T* dx = static_cast<T*>(p.out) + base;
    for (i64 r = t.r0 + threadIdx.y; r < t.r1; r += blockDim.y) {
        float xm[VEC], g[VEC];
        vd_rows_load<VEC>(x + r * p.c, xm);
#pragma unroll
        for (int j = 0; j < VEC; ++j) xm[j] -= mean[j];
        if (du) {
            vd_rows_load<VEC>(du + r * p.c, g);
        } else {
            float rv[VEC];
            vd_rows_load<VEC>(dy + r * p.c, g);
            if (res) {
                vd_rows_load<VEC>(res + r * p.c, rv);
            } else {
#pragma unroll
                for (int j = 0; j < VEC; ++j) rv[j] = 0.0f;
            }
            vd_norm_du<VEC>(p.act, xm, a, b, rv, g);
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) g[j] = fmaf(cp[j], g[j], fmaf(cq[j], xm[j], cr[j]));
        vd_rows_store<VEC>(dx + r * p.c, g);
    }
}
extern "C" __global__ void vd_norm_bwd_dx_f32x8(const VdNormArgs p) { vd_norm_bwd_dx<float, 8>(p); }
extern "C" __global__ void vd_norm_bwd_dx_f32x1(const VdNormArgs p) { vd_norm_bwd_dx<float, 1>(p); }
extern "C" __global__ void vd_norm_bwd_dx_bf16x8(const VdNormArgs p) { vd_norm_bwd_dx<bf16, 8>(p); }
extern "C" __global__ void vd_norm_bwd_dx_bf16x1(const VdNormArgs p) { vd_norm_bwd_dx<bf16, 1>(p); }
