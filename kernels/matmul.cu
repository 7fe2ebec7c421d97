// Batched matrix products c[β] = op(a[β]) · op(b[β]) (src/backend/gpu/matmul.rs
// launches them and documents the geometry, the instruction mix and the floor).
//
// Operands are row-major: a is [M, K] (stored [K, M] when ta), b is [K, N]
// (stored [N, K] when tb), c is [M, N]; matrix β starts at β·M·K, β·K·N,
// β·M·N. Every kernel accumulates in f32 and predicates the tile edges (loads
// outside the matrices read zeros, stores outside are skipped), so M, N, K need
// not be multiples of a tile.
//
// - vd_matmul_bmm_f32: FMA tiles, the transposes read through strides.
// - vd_matmul_bmm_bf16_{nn,nt,tn,tt} (n = as stored, t = transposed; a's flag
//   first): tensor cores, mma.sync m16n8k16 fed by ldmatrix (.trans for the
//   operands whose contiguous dimension is not K), staged by cp.async in a
//   two-stage pipeline when the operand's contiguous extent is a multiple of 8.
#include "common.cuh"

// Mirrors `BmmArgs` in src/backend/gpu/matmul.rs (56 bytes).
struct VdBmmArgs {
    const void* a;
    const void* b;
    void* c;
    int batch;
    int m;
    int n;
    int k;
    int ta;     // f32 kernel: a is stored [K, M]
    int tb;     // f32 kernel: b is stored [N, K]
    int a_vec;  // bf16 kernels: a's contiguous extent is a multiple of 8 (cp.async)
    int b_vec;  // bf16 kernels: likewise for b
};

// ------------------------------------------------------------------- f32
// A 64 × 64 tile of c per block of 256 threads; thread (ty, tx) =
// (tid / 16, tid % 16) owns rows 4·ty + i and columns 4·tx + j (i, j < 4). The
// K loop stages 16 columns of A (sa[k][m]) and B (sb[k][n]) per step: each
// thread loads 4 elements of each, consecutive threads along the operand's
// contiguous dimension (coalesced for either flag), then every thread does
// 16 × 16 fused multiply-adds from float4 reads of the two tiles.
#define VD_BMM_F32_BM 64
#define VD_BMM_F32_BN 64
#define VD_BMM_F32_BK 16
#define VD_BMM_F32_THREADS 256

extern "C" __global__ void vd_matmul_bmm_f32(const VdBmmArgs p) {
    __shared__ __align__(16) float sa[VD_BMM_F32_BK][VD_BMM_F32_BM + 4];
    __shared__ __align__(16) float sb[VD_BMM_F32_BK][VD_BMM_F32_BN + 4];
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const int m = p.m, n = p.n, k = p.k;
    const int m0 = blockIdx.y * VD_BMM_F32_BM, n0 = blockIdx.x * VD_BMM_F32_BN;
    for (int z = blockIdx.z; z < p.batch; z += gridDim.z) {
        const float* __restrict__ a = static_cast<const float*>(p.a) + (i64)z * m * k;
        const float* __restrict__ b = static_cast<const float*>(p.b) + (i64)z * k * n;
        float* __restrict__ c = static_cast<float*>(p.c) + (i64)z * m * n;
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
        for (int k0 = 0; k0 < k; k0 += VD_BMM_F32_BK) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int e = tid + r * VD_BMM_F32_THREADS;
                // A(i, kk): k contiguous unless ta.
                const int am = p.ta ? e % VD_BMM_F32_BM : e / VD_BMM_F32_BK;
                const int ak = p.ta ? e / VD_BMM_F32_BM : e % VD_BMM_F32_BK;
                const int gi = m0 + am, gk = k0 + ak;
                sa[ak][am] = (gi < m && gk < k) ? a[p.ta ? (i64)gk * m + gi : (i64)gi * k + gk] : 0.0f;
                // B(kk, j): n contiguous unless tb.
                const int bn = p.tb ? e / VD_BMM_F32_BK : e % VD_BMM_F32_BN;
                const int bk = p.tb ? e % VD_BMM_F32_BK : e / VD_BMM_F32_BN;
                const int gj = n0 + bn, gk2 = k0 + bk;
                sb[bk][bn] = (gk2 < k && gj < n) ? b[p.tb ? (i64)gj * k + gk2 : (i64)gk2 * n + gj] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < VD_BMM_F32_BK; ++kk) {
                const float4 a4 = vd_load_f32x4(&sa[kk][ty * 4]);
                const float4 b4 = vd_load_f32x4(&sb[kk][tx * 4]);
                const float av[4] = {a4.x, a4.y, a4.z, a4.w};
                const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
            }
            __syncthreads();
        }
        const int col = n0 + tx * 4;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = m0 + ty * 4 + i;
            if (row >= m) continue;
            float* out = c + (i64)row * n + col;
            if (n % 4 == 0 && col + 3 < n) {
                vd_store_f32x4(out, make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (col + j < n) out[j] = acc[i][j];
            }
        }
    }
}

// ------------------------------------------------------------------ bf16
// A 64 × 64 tile of c per block of 128 threads (4 warps in a 2 × 2 grid, each
// 32 rows × 32 columns = 2 × 4 m16n8 tiles). K steps of 32 columns.
//
// Shared layout: each operand tile is staged with its global contiguous
// dimension contiguous, rows padded by 8 elements (80- or 144-byte rows: 16-byte
// aligned for ldmatrix and cp.async, and the 8 rows of an 8 × 8 matrix fall in
// distinct banks):
//   a as stored [M, K] → sa[m][k] (64 × 40), read by ldmatrix;
//   a stored [K, M] (ta) → sa[k][m] (32 × 72), read by ldmatrix.trans;
//   b stored [N, K] (tb) → sb[n][k] (64 × 40), read by ldmatrix;
//   b stored [K, N] → sb[k][n] (32 × 72), read by ldmatrix.trans.
// Either way a warp gets the mma's A (row) and B (col) fragments.
//
// Loader: a tile is 256 chunks of 8 contiguous elements; thread t moves chunks
// t and t + 128 of each operand per step: one cp.async of 16 bytes when the
// operand's contiguous extent is a multiple of 8 (every chunk is then wholly
// inside or wholly outside the matrix: zero-filled outside), else 8 predicated
// element loads and one 16-byte shared store. Each chunk keeps its global
// address and moves it by one K step per step (a pointer add and a bound test
// per chunk, no index arithmetic in the K loop). Two stages: the copies of step
// s + 1 are in flight while the tensor cores work on step s.
#define VD_BMM_BM 64
#define VD_BMM_BN 64
#define VD_BMM_BK 32
#define VD_BMM_THREADS 128
// At most 128 registers per thread, so 4 blocks (16 warps) fit on an SM.
#define VD_BMM_MIN_BLOCKS 4

// One operand's share of the loads: a tile of R rows × C contiguous columns
// (rows padded by 8 in shared memory) of a row-major matrix with `ld`
// contiguous elements per row. K runs along the columns (K_ALONG_C: a as
// [M, K], b as [N, K]) or along the rows (a as [K, M], b as [K, N]).
template <int R, int C, bool K_ALONG_C>
struct VdBmmOperand {
    static constexpr int PITCH = C + 8;
    static constexpr int ELEMS = R * PITCH;
    static constexpr int PER_THREAD = R * C / 8 / VD_BMM_THREADS;
    static_assert(PER_THREAD * 8 * VD_BMM_THREADS == R * C, "every thread moves the same number of chunks");

    const bf16* base;          // the matrix (a mapped address for zero-filled copies)
    const bf16* g[PER_THREAD]; // each chunk's first element at the current step
    int dst[PER_THREAD];       // its offset in a shared stage
    int kc[PER_THREAD];        // its K offset within the tile
    // K along columns: 8 when the chunk's row is inside the matrix, else 0;
    // K along rows: the chunk's elements inside the matrix's columns (0..8).
    int span[PER_THREAD];
    i64 advance;               // elements from one K step to the next

    // The tile whose first row and column are (r0, c0) at K step 0.
    VD_DEVICE void init(const bf16* __restrict__ matrix, int rows, int ld, int r0, int c0) {
        base = matrix;
        advance = K_ALONG_C ? VD_BMM_BK : (i64)VD_BMM_BK * ld;
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const int q = (int)threadIdx.x + i * VD_BMM_THREADS;
            const int r = q / (C / 8), c = (q % (C / 8)) * 8;
            g[i] = matrix + (i64)(r0 + r) * ld + c0 + c;
            dst[i] = r * PITCH + c;
            kc[i] = K_ALONG_C ? c : r;
            span[i] = K_ALONG_C ? (r0 + r < rows ? 8 : 0) : max(0, min(8, ld - c0 - c));
        }
    }

    // Stages the tile of the step whose first K index is k0 into `s` (K = k
    // columns in all), then moves to the next step.
    VD_DEVICE void load(bf16* s, int k0, int k, bool vec) {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const int kin = k - k0 - kc[i];  // K indices left from the chunk's start
            const int count = K_ALONG_C ? min(span[i], max(kin, 0)) : (kin > 0 ? span[i] : 0);
            if (vec) {
                vd_cp_async<16>(s + dst[i], count > 0 ? g[i] : base, count > 0);
            } else {
                u32 w[4];
#pragma unroll
                for (int e = 0; e < 8; e += 2) {
                    const u32 lo = e < count ? bf16_bits(g[i][e]) : 0u;
                    const u32 hi = e + 1 < count ? bf16_bits(g[i][e + 1]) : 0u;
                    w[e / 2] = lo | (hi << 16);
                }
                vd_store16(s + dst[i], make_uint4(w[0], w[1], w[2], w[3]));
            }
            g[i] += advance;
        }
    }
};

template <bool TA, bool TB>
VD_DEVICE void vd_bmm_bf16(const VdBmmArgs p) {
    // a tile: [m][k], or [k][m] when TA; b tile: [n][k] when TB, else [k][n].
    typedef VdBmmOperand<TA ? VD_BMM_BK : VD_BMM_BM, TA ? VD_BMM_BM : VD_BMM_BK, !TA> OperandA;
    typedef VdBmmOperand<TB ? VD_BMM_BN : VD_BMM_BK, TB ? VD_BMM_BK : VD_BMM_BN, TB> OperandB;
    __shared__ __align__(16) bf16 sa[2][OperandA::ELEMS];
    __shared__ __align__(16) bf16 sb[2][OperandB::ELEMS];

    const int m = p.m, n = p.n, k = p.k;
    const int lane = (int)vd_lane(), warp = (int)vd_warp();
    const int wm = warp % 2, wn = warp / 2;
    const int m0 = blockIdx.y * VD_BMM_BM, n0 = blockIdx.x * VD_BMM_BN;
    const bool a_vec = p.a_vec != 0, b_vec = p.b_vec != 0;
    const int steps = (k + VD_BMM_BK - 1) / VD_BMM_BK;

    for (int z = blockIdx.z; z < p.batch; z += gridDim.z) {
        const bf16* __restrict__ a = static_cast<const bf16*>(p.a) + (i64)z * m * k;
        const bf16* __restrict__ b = static_cast<const bf16*>(p.b) + (i64)z * k * n;
        bf16* __restrict__ c = static_cast<bf16*>(p.c) + (i64)z * m * n;
        float acc[2][4][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

        // a stored [M, K] (or [K, M]), b stored [N, K] (or [K, N]); tiles at K step 0.
        OperandA la;
        OperandB lb;
        if (TA)
            la.init(a, k, m, 0, m0);
        else
            la.init(a, m, k, m0, 0);
        if (TB)
            lb.init(b, n, k, n0, 0);
        else
            lb.init(b, k, n, 0, n0);
        // Stages K step s into buffer `buf` and closes its cp.async group.
        auto issue = [&](int s, int buf) {
            la.load(sa[buf], s * VD_BMM_BK, k, a_vec);
            lb.load(sb[buf], s * VD_BMM_BK, k, b_vec);
            vd_cp_async_commit();
        };
        issue(0, 0);
        for (int s = 0; s < steps; ++s) {
            const int buf = s & 1;
            if (s + 1 < steps)
                issue(s + 1, buf ^ 1);
            else
                vd_cp_async_commit();  // an empty group keeps "all but the newest" meaning step s
            vd_cp_async_wait<1>();
            __syncthreads();  // step s has landed for every thread
            const bf16* ta_s = sa[buf];
            const bf16* tb_s = sb[buf];
#pragma unroll
            for (int k16 = 0; k16 < VD_BMM_BK; k16 += 16) {
                u32 af[2][4], bfr[4][2];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    const int mb = wm * 32 + mi * 16;
                    if (TA)  // matrices: (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15)
                        vd_ldmatrix_x4_trans(af[mi], ta_s + (k16 + (lane / 16) * 8 + lane % 8) * OperandA::PITCH + mb +
                                                         ((lane / 8) % 2) * 8);
                    else  // matrices: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
                        vd_ldmatrix_x4(af[mi], ta_s + (mb + lane % 16) * OperandA::PITCH + k16 + (lane / 16) * 8);
                }
#pragma unroll
                for (int np = 0; np < 2; ++np) {
                    const int nb = wn * 32 + np * 16;
                    u32 r[4];
                    if (TB)  // matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
                        vd_ldmatrix_x4(r, tb_s + (nb + (lane / 16) * 8 + lane % 8) * OperandB::PITCH + k16 +
                                              ((lane / 8) % 2) * 8);
                    else  // the same matrices from sb[k][n], transposed
                        vd_ldmatrix_x4_trans(r, tb_s + (k16 + ((lane / 8) % 2) * 8 + lane % 8) * OperandB::PITCH + nb +
                                                    (lane / 16) * 8);
                    bfr[2 * np][0] = r[0];
                    bfr[2 * np][1] = r[1];
                    bfr[2 * np + 1][0] = r[2];
                    bfr[2 * np + 1][1] = r[3];
                }
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) vd_mma_bf16_16816(acc[mi][ni], af[mi], bfr[ni], acc[mi][ni]);
            }
            __syncthreads();  // the buffer is consumed before step s + 2 overwrites it
        }

        // Accumulator fragment (lane = 4g + q): acc[mi][ni][2h + e] is row
        // 16·mi + g + 8h, column 8·ni + 2q + e of the warp's 32 × 32 tile.
        const int g = lane / 4, q = lane % 4;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + wm * 32 + mi * 16 + g + 8 * h;
                if (row >= m) continue;
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) {
                    const int col = n0 + wn * 32 + ni * 8 + 2 * q;
                    const float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
                    bf16* out = c + (i64)row * n + col;
                    if (n % 2 == 0 && col + 1 < n) {
                        *reinterpret_cast<u32*>(out) = vd_pack_bf16x2(v0, v1);  // 4-byte aligned: n, col even
                    } else {
                        if (col < n) out[0] = f32_to_bf16(v0);
                        if (col + 1 < n) out[1] = f32_to_bf16(v1);
                    }
                }
            }
    }
}

extern "C" __global__ void __launch_bounds__(VD_BMM_THREADS, VD_BMM_MIN_BLOCKS)
    vd_matmul_bmm_bf16_nn(const VdBmmArgs p) {
    vd_bmm_bf16<false, false>(p);
}
extern "C" __global__ void __launch_bounds__(VD_BMM_THREADS, VD_BMM_MIN_BLOCKS)
    vd_matmul_bmm_bf16_nt(const VdBmmArgs p) {
    vd_bmm_bf16<false, true>(p);
}
extern "C" __global__ void __launch_bounds__(VD_BMM_THREADS, VD_BMM_MIN_BLOCKS)
    vd_matmul_bmm_bf16_tn(const VdBmmArgs p) {
    vd_bmm_bf16<true, false>(p);
}
extern "C" __global__ void __launch_bounds__(VD_BMM_THREADS, VD_BMM_MIN_BLOCKS)
    vd_matmul_bmm_bf16_tt(const VdBmmArgs p) {
    vd_bmm_bf16<true, true>(p);
}
