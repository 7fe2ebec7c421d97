// The pipelined tensor-core convolution kernels (bf16 operands, f32
// accumulation) of kernels/conv3d.cu: the forward / data-gradient implicit GEMM
// ("fprop": gather mappings whose input index needs no division, e == 1) and
// the weight gradient, both over a multi-stage cp.async pipeline of 16-byte
// copies, warp tiles of MI × NI m16n8k16 mma.sync, and no integer division
// inside the K loop (src/backend/gpu/conv.rs documents the launches and the
// counted cost; tests/gpu_conv.rs reads the PTX for divisions).
#pragma once
#include "conv3d_tiles.cuh"

#define VD_PIPE_BK 32        // K voxels per weight-gradient step (2 mma k-slices)
#define VD_PIPE_THREADS 128  // 4 warps per block

// ------------------------------------------------------------ warp tile core
// acc[mi][ni] is the m16n8 accumulator fragment (PTX ISA C layout, lane
// l = 4g + q: acc[mi][ni][2h + e] is row 16·mi + g + 8h, column 8·ni + 2q + e
// of the warp tile). A is staged [m][k] (A_MK, k contiguous) or [k][m] (read
// with ldmatrix.trans), B [n][k] (B_NK) or [k][n]; pitches in elements are
// compile-time constants, rows 16-byte aligned. vd_warp_lane_a / _b give, once
// before the K loop, the element offset of the row this lane addresses for
// ldmatrix (relative to the warp tile's origin); vd_warp_mma_k16 then
// multiplies one 16-deep k-slice with immediate offsets only: per slice
// MI + NI/2 ldmatrix.x4 and MI · NI mma.
template <bool A_MK, int PITCH>
VD_DEVICE int vd_warp_lane_a(int lane) {
    const int q = lane >> 3, r = lane & 7;
    // matrices 0..3: rows 0-7 / 8-15 of the m16 tile × k 0-7, then × k 8-15
    return A_MK ? ((q & 1) * 8 + r) * PITCH + (q >> 1) * 8 : ((q >> 1) * 8 + r) * PITCH + (q & 1) * 8;
}
template <bool B_NK, int PITCH>
VD_DEVICE int vd_warp_lane_b(int lane) {
    const int q = lane >> 3, r = lane & 7;
    // matrices 0..3: n8 tile 0 × k 0-7 / 8-15, then tile 1 × k 0-7 / 8-15
    return B_NK ? ((q >> 1) * 8 + r) * PITCH + (q & 1) * 8 : ((q & 1) * 8 + r) * PITCH + (q >> 1) * 8;
}

// One k-slice at k = K16 of the staged tiles; `a` and `b` are the lane's
// ldmatrix rows (tile origin + vd_warp_lane_a / _b).
template <int MI, int NI, bool A_MK, bool B_NK, int A_PITCH, int B_PITCH, int K16>
VD_DEVICE void vd_warp_mma_k16(float (&acc)[MI][NI][4], const bf16* a, const bf16* b) {
    static_assert(NI % 2 == 0, "n8 tiles are loaded in pairs");
    u32 fa[MI][4], fb[NI][2];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
        if (A_MK)
            vd_ldmatrix_x4(fa[mi], a + mi * 16 * A_PITCH + K16);
        else
            vd_ldmatrix_x4_trans(fa[mi], a + K16 * A_PITCH + mi * 16);
    }
#pragma unroll
    for (int ni = 0; ni < NI; ni += 2) {
        u32 t[4];
        if (B_NK)
            vd_ldmatrix_x4(t, b + ni * 8 * B_PITCH + K16);
        else
            vd_ldmatrix_x4_trans(t, b + K16 * B_PITCH + ni * 8);
        fb[ni][0] = t[0];
        fb[ni][1] = t[1];
        fb[ni + 1][0] = t[2];
        fb[ni + 1][1] = t[3];
    }
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) vd_mma_bf16_16816(acc[mi][ni], fa[mi], fb[ni], acc[mi][ni]);
}

// Every k-slice of a BK-deep staged step.
template <int MI, int NI, bool A_MK, bool B_NK, int A_PITCH, int B_PITCH, int BK>
VD_DEVICE void vd_warp_mma_step(float (&acc)[MI][NI][4], const bf16* a, const bf16* b) {
    vd_warp_mma_k16<MI, NI, A_MK, B_NK, A_PITCH, B_PITCH, 0>(acc, a, b);
    vd_warp_mma_k16<MI, NI, A_MK, B_NK, A_PITCH, B_PITCH, 16>(acc, a, b);
    if constexpr (BK >= 64) {
        vd_warp_mma_k16<MI, NI, A_MK, B_NK, A_PITCH, B_PITCH, 32>(acc, a, b);
        vd_warp_mma_k16<MI, NI, A_MK, B_NK, A_PITCH, B_PITCH, 48>(acc, a, b);
    }
    static_assert(BK == 32 || BK == 64, "steps of 32 or 64 columns");
}

template <int MI, int NI>
VD_DEVICE void vd_warp_acc_zero(float (&acc)[MI][NI][4]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
}

// ------------------------------------------------------------ fprop / dgrad
// Mirrors `ConvPipeArgs` in src/backend/gpu/conv.rs.
struct VdConvPipeArgs {
    const bf16* x;      // GEMM input activation [n, in dims, cin] (cin a multiple of 8)
    const bf16* bt;     // packed weight bt[tap][cout][cin]
    const float* bias;  // [cout] or null
    bf16* y;            // output [rows, cout] (no split) ...
    float* ws;          // ... or f32 partials [splits][rows][cout] (split K)
    int rows;           // GEMM M: n · out voxels
    int cin;            // GEMM input channels (zero-padded to a multiple of 8)
    int cout;           // GEMM N
    int taps;           // ≤ 32
    int in_dims[3];
    int out_dims[3];
    int kernel[3];
    int map_a[3];  // per axis q = o·a + t·b + c, input index q (e == 1)
    int map_b[3];
    int map_c[3];
    // Element offset of A when the tap steps: along w; from the end of a w row
    // to the next h; from the end of an h plane to the next d.
    int tap_step[3];  // {w, h, d}
    int steps;        // K steps of VD_PIPE_BK columns in all
    int split_steps;  // K steps per split (blockIdx.z)
    int pad_;
};

// The K position of a loader thread: column k = tap · cin + ci with the tap's
// digits, and the element offsets of that column in A (before the row's own
// offset) and in the packed B (before the channel row's).
struct VdPipeK {
    int ci, tap, td, th, tw, a_k, b_k;
};

VD_DEVICE VdPipeK vd_pipe_k_at(const VdConvPipeArgs& a, int k) {
    VdPipeK s;
    s.tap = k / a.cin;  // once, before the K loop
    s.ci = k - s.tap * a.cin;
    const int kh = a.kernel[1], kw = a.kernel[2];
    s.tw = s.tap % kw;
    s.th = (s.tap / kw) % kh;
    s.td = s.tap / (kw * kh);
    const int in_h = a.in_dims[1], in_w = a.in_dims[2];
    s.a_k = ((s.td * a.map_b[0] * in_h + s.th * a.map_b[1]) * in_w + s.tw * a.map_b[2]) * a.cin + s.ci;
    s.b_k = s.tap * a.cout * a.cin + s.ci;
    return s;
}

// Moves the K position by BK columns: adds and compares only.
template <int BK>
VD_DEVICE void vd_pipe_k_advance(const VdConvPipeArgs& a, VdPipeK& s, int b_tap) {
    s.ci += BK;
    s.a_k += BK;
    s.b_k += BK;
    while (s.ci >= a.cin) {
        s.ci -= a.cin;
        s.b_k += b_tap;
        ++s.tap;
        if (++s.tw < a.kernel[2]) {
            s.a_k += a.tap_step[0] - a.cin;
        } else {
            s.tw = 0;
            if (++s.th < a.kernel[1]) {
                s.a_k += a.tap_step[1] - a.cin;
            } else {
                s.th = 0;
                ++s.td;
                s.a_k += a.tap_step[2] - a.cin;
            }
        }
    }
}

// One GEMM row of the loader: its element offset in x before the tap's (may
// be "outside" the tensor: only valid taps are read) and the taps that land
// inside the input (bit t), 0 past the last row.
struct VdPipeRow {
    int off;
    u32 taps;
};

VD_DEVICE VdPipeRow vd_pipe_row(const VdConvPipeArgs& a, int m) {
    VdPipeRow r = {0, 0u};
    if (m >= a.rows) return r;
    const int out_d = a.out_dims[0], out_h = a.out_dims[1], out_w = a.out_dims[2];
    const int in_d = a.in_dims[0], in_h = a.in_dims[1], in_w = a.in_dims[2];
    const int ow = m % out_w, oh = (m / out_w) % out_h, od = (m / (out_w * out_h)) % out_d;
    const int n = m / (out_w * out_h * out_d);
    const int qd = od * a.map_a[0] + a.map_c[0];
    const int qh = oh * a.map_a[1] + a.map_c[1];
    const int qw = ow * a.map_a[2] + a.map_c[2];
    r.off = (((n * in_d + qd) * in_h + qh) * in_w + qw) * a.cin;
    // The w taps inside the input, then every (td, th) pair inside it adds them.
    u32 wmask = 0;
    for (int tw = 0; tw < a.kernel[2]; ++tw) {
        const int q = qw + tw * a.map_b[2];
        if (q >= 0 && q < in_w) wmask |= 1u << tw;
    }
    for (int td = 0; td < a.kernel[0]; ++td) {
        const int q = qd + td * a.map_b[0];
        if (q < 0 || q >= in_d) continue;
        for (int th = 0; th < a.kernel[1]; ++th) {
            const int p = qh + th * a.map_b[1];
            if (p >= 0 && p < in_h) r.taps |= wmask << ((td * a.kernel[1] + th) * a.kernel[2]);
        }
    }
    return r;
}

// Forward / data-gradient implicit GEMM, block tile BM × BN, warp tile WM × WN,
// steps of BK columns, STAGES-deep cp.async pipeline. Thread t copies, per
// step, the 16-byte chunks (8 channels) at K column 8·(t % (BK/8)) of A rows
// t / (BK/8) + (1024/BK)·j and of B rows (output channels) likewise; its rows'
// addresses and tap masks are computed before the loop, so a chunk costs a
// 64-bit add, a mask test and a select. Without split K (SPLIT = false) the
// epilogue adds the bias, rounds to bf16, stages the tile in shared memory and
// stores 16-byte vectors; with it, blockIdx.z is the split and the f32
// partial tile goes to ws (vd_conv3d_splitk_reduce_bf16 finishes).
template <int BM, int BN, int WM, int WN, int BK, int STAGES, bool SPLIT>
VD_DEVICE void vd_conv_fprop_pipe(const VdConvPipeArgs& a) {
    constexpr int MI = WM / 16, NI = WN / 8;
    constexpr int WARPS_M = BM / WM;
    static_assert((BM / WM) * (BN / WN) * 32 == VD_PIPE_THREADS, "4 warps");
    constexpr int KPITCH = BK + 8;
    constexpr int ROW_CHUNKS = BK / 8, PASS_ROWS = VD_PIPE_THREADS / ROW_CHUNKS;
    constexpr int A_CHUNKS = BM / PASS_ROWS, B_CHUNKS = BN / PASS_ROWS;
    constexpr int STAGE_ELEMS = (BM + BN) * KPITCH;
    VD_DYNAMIC_SMEM(bf16, smem);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int wm0 = (warp % WARPS_M) * WM, wn0 = (warp / WARPS_M) * WN;
    const int lr = tid / ROW_CHUNKS, lc = (tid % ROW_CHUNKS) * 8;

    // Byte addresses of the rows' first elements (integers: a row outside the
    // input is never read), their tap masks, and the channel rows of B.
    u64 a_row[A_CHUNKS];
    u32 a_taps[A_CHUNKS];
#pragma unroll
    for (int j = 0; j < A_CHUNKS; ++j) {
        const VdPipeRow r = vd_pipe_row(a, m0 + lr + PASS_ROWS * j);
        a_row[j] = (u64)a.x + 2 * (i64)r.off;
        a_taps[j] = r.taps;
    }
    u64 b_row[B_CHUNKS];
    bool b_ok[B_CHUNKS];
#pragma unroll
    for (int j = 0; j < B_CHUNKS; ++j) {
        const int co = n0 + lr + PASS_ROWS * j;
        b_ok[j] = co < a.cout;
        b_row[j] = (u64)a.bt + 2 * (i64)(b_ok[j] ? co * a.cin : 0);
    }
    const int b_tap = (a.cout - 1) * a.cin;
    const int s_begin = SPLIT ? blockIdx.z * a.split_steps : 0;
    const int s_end = SPLIT ? min(s_begin + a.split_steps, a.steps) : a.steps;
    VdPipeK k = vd_pipe_k_at(a, s_begin * BK + lc);
    bf16* const dst0 = smem + lr * KPITCH + lc;
    const bf16* const a_ld = smem + wm0 * KPITCH + vd_warp_lane_a<true, KPITCH>(lane);
    const bf16* const b_ld = smem + BM * KPITCH + wn0 * KPITCH + vd_warp_lane_b<true, KPITCH>(lane);

    // Copies the loader's chunks of the current K position into stage `st`,
    // then moves K on.
    auto issue = [&](int st) {
        bf16* dst = dst0 + st * STAGE_ELEMS;
        const u32 tap_bit = k.tap < a.taps ? 1u << k.tap : 0u;
        const i64 a_k = 2 * (i64)k.a_k, b_k = 2 * (i64)k.b_k;
#pragma unroll
        for (int j = 0; j < A_CHUNKS; ++j) {
            const bool ok = (a_taps[j] & tap_bit) != 0;
            const bf16* src = ok ? reinterpret_cast<const bf16*>(a_row[j] + a_k) : a.x;
            vd_cp_async<16>(dst + PASS_ROWS * j * KPITCH, src, ok);
        }
#pragma unroll
        for (int j = 0; j < B_CHUNKS; ++j) {
            const bool ok = b_ok[j] && tap_bit != 0;
            const bf16* src = ok ? reinterpret_cast<const bf16*>(b_row[j] + b_k) : a.bt;
            vd_cp_async<16>(dst + (BM + PASS_ROWS * j) * KPITCH, src, ok);
        }
        vd_pipe_k_advance<BK>(a, k, b_tap);
    };

    float acc[MI][NI][4];
    vd_warp_acc_zero(acc);
    const int steps = s_end - s_begin;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) issue(s);
        vd_cp_async_commit();  // empty groups keep the group count per step
    }
    int read = 0, write = STAGES - 1;
    for (int s = 0; s < steps; ++s) {
        vd_cp_async_wait<STAGES - 2>();
        __syncthreads();  // step s has landed; every warp is done with step s − 1
        if (s + STAGES - 1 < steps) issue(write);
        vd_cp_async_commit();
        vd_warp_mma_step<MI, NI, true, true, KPITCH, KPITCH, BK>(acc, a_ld + read * STAGE_ELEMS,
                                                                 b_ld + read * STAGE_ELEMS);
        read = read + 1 == STAGES ? 0 : read + 1;
        write = write + 1 == STAGES ? 0 : write + 1;
    }
    vd_cp_async_wait<0>();

    const int g = lane >> 2, q4 = lane & 3;
    if (SPLIT) {
        float* ws = a.ws + (i64)blockIdx.z * a.rows * a.cout;
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + wm0 + mi * 16 + g + 8 * h;
                if (m >= a.rows) continue;
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int co = n0 + wn0 + ni * 8 + 2 * q4 + e;
                        if (co < a.cout) ws[(i64)m * a.cout + co] = acc[mi][ni][2 * h + e];
                    }
            }
        return;
    }
    // Stage the bf16 tile [BM][BN + 8] over the pipeline buffers, then store
    // rows of 8 channels as 16-byte vectors.
    constexpr int OPITCH = BN + 8;
    static_assert(BM * OPITCH <= STAGES * STAGE_ELEMS, "the output tile fits the pipeline buffers");
    __syncthreads();  // every warp is done reading the last stage
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
        const int col = wn0 + ni * 8 + 2 * q4;
        const int co = n0 + col;
        const float b0 = (a.bias && co < a.cout) ? a.bias[co] : 0.0f;
        const float b1 = (a.bias && co + 1 < a.cout) ? a.bias[co + 1] : 0.0f;
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = wm0 + mi * 16 + g + 8 * h;
                *reinterpret_cast<u32*>(smem + row * OPITCH + col) =
                    vd_pack_bf16x2(acc[mi][ni][2 * h] + b0, acc[mi][ni][2 * h + 1] + b1);
            }
    }
    __syncthreads();
    const bool vec = (a.cout & 7) == 0;
    for (int c = tid; c < BM * (BN / 8); c += VD_PIPE_THREADS) {
        const int row = c / (BN / 8), col = (c % (BN / 8)) * 8;
        const int m = m0 + row, co = n0 + col;
        if (m >= a.rows || co >= a.cout) continue;
        const bf16* src = smem + row * OPITCH + col;
        bf16* dst = a.y + (i64)m * a.cout + co;
        if (vec) {
            vd_store16(dst, vd_load16(src));
        } else {
            for (int e = 0; e < 8 && co + e < a.cout; ++e) dst[e] = src[e];
        }
    }
}
// ------------------------------------------------------------ weight gradient
// Mirrors `ConvWgradPipeArgs` in src/backend/gpu/conv.rs.
struct VdConvWgradPipeArgs {
    const bf16* x;   // [n, x dims, cin] (cin a multiple of 8)
    const bf16* dy;  // [n, dy dims, cout] (cout a multiple of 8)
    float* ws;       // partial dw: [splits][groups · rows][cout]
    float* ws_bias;  // partial db: [splits][groups][cout], or null (no ones row)
    int cin;
    int cout;
    int rows;     // GEMM M per tap group: taps_m · cin (the ones row, when ws_bias, is M row `rows`)
    int x_dims[3];
    int dy_dims[3];
    int kernel[3];
    int stride[3];
    int pad[3];     // pad_lo (regular)
    int k_total;    // GEMM K: n · voxels of the iteration space
    int k_chunk;    // K per split, a multiple of VD_PIPE_BK
};

// Weight gradient dw[(t, ci), co] = Σ_v A[(t, ci), v] · B[v, co] of one M tile
// (blockIdx.x), channel tile (blockIdx.y), K split (blockIdx.z % splits) and
// tap group (blockIdx.z / splits). Regular (TRANSPOSED = false): v runs over
// dy voxels o, A = x[o·s + t − pad, ci] (0 in the padding), B = dy[o, co], one
// group of all taps. Transposed: v runs over x voxels i, A = x[i, ci],
// B = dy[i·s + t, co], a group per tap t. Tiles are staged k-major (A [k][m],
// B [k][n], as they lie in memory) and read with ldmatrix.trans. Thread t's
// K column (voxel) is t / 4 for every chunk it copies: A chunks 8·(t % 4 + 4j)
// of the M tile, B chunks 8·(t % 4 + 4j) of the N tile; the voxel's
// coordinates move by VD_PIPE_BK per step with carries (no division). With
// ws_bias, M row `rows` is a row of ones: its product is Σ_v dy[v, co], the
// bias gradient.
template <int BM, int BN, int STAGES, bool TRANSPOSED>
VD_DEVICE void vd_conv_wgrad_pipe(const VdConvWgradPipeArgs& a, int splits) {
    constexpr int WM = 32, WN = 32, MI = WM / 16, NI = WN / 8;
    constexpr int WARPS_M = BM / WM;
    static_assert((BM / WM) * (BN / WN) * 32 == VD_PIPE_THREADS, "4 warps");
    constexpr int A_CHUNKS = BM / 32, B_CHUNKS = BN / 32;
    constexpr int APITCH = BM + 8, BPITCH = BN + 8;
    constexpr int STAGE_ELEMS = VD_PIPE_BK * (APITCH + BPITCH);
    VD_DYNAMIC_SMEM(bf16, smem);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int split = blockIdx.z % splits, group = blockIdx.z / splits;
    const int wm0 = (warp % WARPS_M) * WM, wn0 = (warp / WARPS_M) * WN;
    const int kk = tid >> 2, q = tid & 3;
    const int a_ld = wm0 + vd_warp_lane_a<false, APITCH>(lane);
    const int b_ld = wn0 + vd_warp_lane_b<false, BPITCH>(lane);
    const int x_d = a.x_dims[0], x_h = a.x_dims[1], x_w = a.x_dims[2];
    const int y_d = a.dy_dims[0], y_h = a.dy_dims[1], y_w = a.dy_dims[2];
    const int kh = a.kernel[1], kw = a.kernel[2];
    const int v_d = TRANSPOSED ? x_d : y_d, v_h = TRANSPOSED ? x_h : y_h, v_w = TRANSPOSED ? x_w : y_w;
    const int s_d = a.stride[0], s_h = a.stride[1], s_w = a.stride[2];

    // A chunks: the tap offset per axis (regular), the chunk's element offset
    // from the voxel's first element, and its kind: 0 = x, 1 = the ones row's
    // chunk, 2 = past M (zeros).
    int a_td[A_CHUNKS], a_th[A_CHUNKS], a_tw[A_CHUNKS], a_off[A_CHUNKS], a_kind[A_CHUNKS];
#pragma unroll
    for (int j = 0; j < A_CHUNKS; ++j) {
        const int m = m0 + 8 * (q + 4 * j);
        a_kind[j] = m < a.rows ? 0 : (m == a.rows && a.ws_bias) ? 1 : 2;
        const int mm = m < a.rows ? m : 0;
        const int tap = TRANSPOSED ? 0 : mm / a.cin;
        const int ci = mm - (mm / a.cin) * a.cin;
        a_td[j] = tap / (kh * kw) - a.pad[0];
        a_th[j] = (tap / kw) % kh - a.pad[1];
        a_tw[j] = tap % kw - a.pad[2];
        a_off[j] = TRANSPOSED ? ci : ((a_td[j] * x_h + a_th[j]) * x_w + a_tw[j]) * a.cin + ci;
    }
    bool b_ok[B_CHUNKS];
#pragma unroll
    for (int j = 0; j < B_CHUNKS; ++j) b_ok[j] = n0 + 8 * (q + 4 * j) < a.cout;
    // The group's tap (transposed).
    const int gt = TRANSPOSED ? group : 0;
    const int g_d = gt / (kh * kw), g_h = (gt / kw) % kh, g_w = gt % kw;

    const int k_begin = split * a.k_chunk;
    const int k_end = min(k_begin + a.k_chunk, a.k_total);
    const int steps = k_begin < k_end ? (k_end - k_begin + VD_PIPE_BK - 1) / VD_PIPE_BK : 0;
    // This thread's voxel: flat index and coordinates.
    int v = k_begin + kk;
    int vw = v % v_w, vh = (v / v_w) % v_h, vd = (v / (v_w * v_h)) % v_d, vn = v / (v_w * v_h * v_d);
    bf16* const dst_a = smem + kk * APITCH + 8 * q;
    bf16* const dst_b = smem + VD_PIPE_BK * APITCH + kk * BPITCH + 8 * q;

    auto issue = [&](int st) {
        const bool v_ok = v < k_end;
        // The voxel's position: regular, x at o·s (each chunk adds its tap);
        // transposed, x at i and dy at i·s + t.
        const int pd = vd * s_d, ph = vh * s_h, pw = vw * s_w;
        const int a_vox = TRANSPOSED ? v : ((vn * x_d + pd) * x_h + ph) * x_w + pw;
        const u64 a_base = (u64)a.x + 2 * ((i64)a_vox * a.cin);
        const int b_vox = TRANSPOSED ? ((vn * y_d + pd + g_d) * y_h + ph + g_h) * y_w + pw + g_w : v;
        const u64 b_base = (u64)a.dy + 2 * ((i64)b_vox * a.cout + n0 + 8 * q);
#pragma unroll
        for (int j = 0; j < A_CHUNKS; ++j) {
            bf16* dst = dst_a + st * STAGE_ELEMS + 32 * j;
            if (a_kind[j] == 1) {
                // the ones row: 1 in its first element for every voxel of the range
                vd_store16(dst, make_uint4(v_ok ? 0x3F80u : 0u, 0u, 0u, 0u));
                continue;
            }
            bool ok = v_ok && a_kind[j] == 0;
            if (!TRANSPOSED)
                ok = ok && (unsigned)(pd + a_td[j]) < (unsigned)x_d && (unsigned)(ph + a_th[j]) < (unsigned)x_h &&
                     (unsigned)(pw + a_tw[j]) < (unsigned)x_w;
            const bf16* src = ok ? reinterpret_cast<const bf16*>(a_base + 2 * (i64)a_off[j]) : a.x;
            vd_cp_async<16>(dst, src, ok);
        }
#pragma unroll
        for (int j = 0; j < B_CHUNKS; ++j) {
            const bool ok = v_ok && b_ok[j];
            const bf16* src = ok ? reinterpret_cast<const bf16*>(b_base + 2 * 32 * j) : a.dy;
            vd_cp_async<16>(dst_b + st * STAGE_ELEMS + 32 * j, src, ok);
        }
        // Next step: the voxel moves by VD_PIPE_BK.
        v += VD_PIPE_BK;
        vw += VD_PIPE_BK;
        while (vw >= v_w) {
            vw -= v_w;
            if (++vh == v_h) {
                vh = 0;
                if (++vd == v_d) {
                    vd = 0;
                    ++vn;
                }
            }
        }
    };

    float acc[MI][NI][4];
    vd_warp_acc_zero(acc);
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) issue(s);
        vd_cp_async_commit();
    }
    int read = 0, write = STAGES - 1;
    for (int s = 0; s < steps; ++s) {
        vd_cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (s + STAGES - 1 < steps) issue(write);
        vd_cp_async_commit();
        const bf16* sa = smem + read * STAGE_ELEMS;
        const bf16* sb = sa + VD_PIPE_BK * APITCH;
        vd_warp_mma_step<MI, NI, false, false, APITCH, BPITCH, VD_PIPE_BK>(acc, sa + a_ld, sb + b_ld);
        read = read + 1 == STAGES ? 0 : read + 1;
        write = write + 1 == STAGES ? 0 : write + 1;
    }
    vd_cp_async_wait<0>();

    // Every element of the partial tile is written (zeros for an empty K range).
    const int g = lane >> 2, q4 = lane & 3;
    const i64 all_rows = (i64)(gridDim.z / splits) * a.rows;
    float* ws = a.ws + ((i64)split * all_rows + (i64)group * a.rows) * a.cout;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + wm0 + mi * 16 + g + 8 * h;
            float* out = m < a.rows ? ws + (i64)m * a.cout
                         : (m == a.rows && a.ws_bias)
                             ? a.ws_bias + ((i64)split * (gridDim.z / splits) + group) * a.cout
                             : nullptr;
            if (!out) continue;
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int co = n0 + wn0 + ni * 8 + 2 * q4 + e;
                    if (co < a.cout) out[co] = acc[mi][ni][2 * h + e];
                }
        }
}
