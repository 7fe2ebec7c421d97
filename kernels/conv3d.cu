// 3D convolution as implicit GEMM over NDHWC tensors: forward, data gradient
// and weight gradient of every ConvSpec (src/backend/gpu/conv.rs picks the
// kernel and the index mapping of each case and documents the launches).
//
// The GEMM of a forward or data-gradient kernel:
//   out[m, co] = bias[co] + Σ_{k = (tap, ci)} A[m, k] · B[k, co]
// with M = the rows (voxels, batch included), N = output channels and
// K = taps · input channels, k = tap · Cin + ci (ci fastest). A is gathered from
// the input activation through an index mapping (zero where the mapping leaves
// the input: padding, or a tap that does not land on an input voxel), B is the
// f32 weight read through three strides (so the data gradient uses the
// forward's weight tensor transposed and without a copy).
//
// Two mappings (template parameter SCATTER):
// - gather (SCATTER = false): row m is an output voxel o = (n, od, oh, ow);
//   for tap t = (td, th, tw) and each spatial dim, q = o·a + t·b + c; the input
//   voxel is q / e when q ≥ 0, q ≡ 0 (mod e) and q / e < in, else A is 0.
//     regular forward:            a = s, b = 1,  c = −pad_lo, e = 1
//     data gradient (any spec but kernel == stride):
//                                 a = 1, b = −1, c = pad_lo,  e = s
//     data gradient, transposed:  a = s, b = 1,  c = 0,       e = 1
// - scatter (SCATTER = true): a kernel of the kernel == stride family, where
//   every output voxel receives exactly one tap. The grid's z index is the tap
//   t; row m is an input voxel i, A[m, ci] = x[i, ci] (K = Cin), and the row is
//   written to the output voxel o = i·a + t·b + c (rows that land outside the
//   output are dropped).
//     transposed forward:                      a = s, b = 1, c = 0
//     data gradient of kernel == stride convs: a = s, b = 1, c = −pad_lo
//
// bf16 gathers with e == 1 (every forward, every data gradient but strided
// ones whose kernel is not the stride and those of kernel == stride) run on
// the pipelined kernels of conv3d_pipe.cuh (vd_conv3d_fprop_*): per-row
// offsets and tap masks computed once, a K loop of adds and mask tests,
// multi-stage cp.async, tiles chosen per layer, split K, 16-byte epilogue
// stores; channels that are not a multiple of 8 are zero-padded first
// (vd_conv3d_pad_channels). What follows is the general path.
//
// Tiling (both mappings, and the weight gradient below): a block of 256
// threads computes a 64 × 64 tile of `out` (VD_CONV_BM rows × VD_CONV_BN
// channels). The K loop takes VD_CONV_BK = 16 columns per step: each thread
// gathers 4 elements of A and 4 of B into registers (the loader), the block
// stages them in shared memory and a compute core multiplies the staged tiles
// into the accumulators (the step), f32 accumulation throughout:
// - VdConvFmaCore (f32 activations): tiles in f32, each thread a 4 × 4
//   micro-tile, 16 · 16 fused multiply-adds per step;
// - VdConvMmaCore (bf16 activations): tiles in bf16, ldmatrix +
//   mma.sync.m16n8k16 per warp (the forward's f32 weights round to bf16).
// The cores live in conv3d_tiles.cuh. bf16 scatters (channels zero-padded to
// a multiple of 8) load through a two-stage cp.async pipeline of 32-column
// steps instead (see "cp.async pipeline" below); the register loader serves
// f32 and the bf16 gathers with e > 1.
//
// The weight gradient (f32 here; bf16 on the pipelined loop of
// conv3d_pipe.cuh), per tap group z (regular convs: one group of all taps;
// transposed: one group per tap):
//   dw[t, ci, co] = Σ_v A[(t, ci), v] · B[v, co]
// is a GEMM with M = taps_per_group · Cin, N = Cout, K = N · voxels of the
// iteration space, split into K ranges across blocks (grid y). Each block writes
// its partial tile to a workspace; vd_conv3d_wgrad_reduce sums the partials in
// split order (deterministic, no atomics) and the bias gradient alongside.
#include "conv3d_pipe.cuh"

// Mirrors `ConvGemmArgs` in src/backend/gpu/conv.rs.
struct VdConvArgs {
    const void* x;      // GEMM input activation [n, in_d, in_h, in_w, cin]
    const float* w;     // weight, element (t, ci, co) at t·w_tap + ci·w_ci + co·w_co
    const float* bias;  // [cout] or null
    void* y;            // output [n, out_d, out_h, out_w, cout]
    int n;
    int cin;   // channels of x
    int cout;  // channels of y
    int rows;  // GEMM M: n · out voxels (gather) or n · in voxels (scatter)
    int in_dims[3];
    int out_dims[3];
    int kernel[3];  // tap extents
    int map_a[3];   // the index mapping q = o·a + t·b + c, input q / e (see top)
    int map_b[3];
    int map_c[3];
    int map_e[3];
    int w_tap;
    int w_ci;
    int w_co;
};

// The loader's view of one GEMM row m: the flat voxel base (gather: n · input
// voxels; scatter: the input voxel itself; −1 past the last row) and, in
// gather, o·a + c per axis.
struct VdConvRow {
    int base, qd, qh, qw;
};

template <bool SCATTER>
VD_DEVICE VdConvRow vd_conv_row(const VdConvArgs a, int m) {
    VdConvRow r = {-1, 0, 0, 0};
    if (m >= a.rows) return r;
    if (SCATTER) {
        r.base = m;
    } else {
        const int out_d = a.out_dims[0], out_h = a.out_dims[1], out_w = a.out_dims[2];
        const int ow = m % out_w, oh = (m / out_w) % out_h, od = (m / (out_w * out_h)) % out_d;
        r.base = m / (out_w * out_h * out_d) * (a.in_dims[0] * a.in_dims[1] * a.in_dims[2]);
        r.qd = od * a.map_a[0] + a.map_c[0];
        r.qh = oh * a.map_a[1] + a.map_c[1];
        r.qw = ow * a.map_a[2] + a.map_c[2];
    }
    return r;
}

// Element offset of A[m, k] in x for the row `r` and K column `ks`, or −1 when
// it is zero (past the last row, past K, outside the input).
template <bool SCATTER>
VD_DEVICE i64 vd_conv_a_offset(const VdConvArgs a, const VdConvRow r, const VdConvKState ks, int taps_k) {
    if (r.base < 0 || ks.tap >= taps_k) return -1;
    if (SCATTER) return (i64)r.base * a.cin + ks.ci;
    const int in_d = a.in_dims[0], in_h = a.in_dims[1], in_w = a.in_dims[2];
    const int id = vd_conv_map_axis(r.qd + ks.td * a.map_b[0], a.map_e[0], in_d);
    const int ih = vd_conv_map_axis(r.qh + ks.th * a.map_b[1], a.map_e[1], in_h);
    const int iw = vd_conv_map_axis(r.qw + ks.tw * a.map_b[2], a.map_e[2], in_w);
    if (id < 0 || ih < 0 || iw < 0) return -1;
    return ((i64)r.base + (id * in_h + ih) * in_w + iw) * a.cin + ks.ci;
}

// The scatter tap of this block (grid z) as (td, th, tw).
VD_DEVICE void vd_conv_z_tap(const VdConvArgs a, int& td, int& th, int& tw) {
    const int t = blockIdx.z, kh = a.kernel[1], kw = a.kernel[2];
    td = t / (kh * kw);
    th = (t / kw) % kh;
    tw = t % kw;
}

// Epilogue of the forward / data-gradient kernels: bias, conversion and store
// of the thread's 4 rows × 4 channels of the tile at (m0, n0). Gather rows are
// output voxels; scatter rows are input voxels written to o = i·a + t·b + c.
template <typename T, bool SCATTER, typename Core>
VD_DEVICE void vd_conv_epilogue(const VdConvArgs a, const Core& core, int m0, int n0) {
    T* __restrict__ y = static_cast<T*>(a.y);
    const int in_d = a.in_dims[0], in_h = a.in_dims[1], in_w = a.in_dims[2];
    const int out_d = a.out_dims[0], out_h = a.out_dims[1], out_w = a.out_dims[2];
    int zt_d = 0, zt_h = 0, zt_w = 0;
    if (SCATTER) vd_conv_z_tap(a, zt_d, zt_h, zt_w);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + core.row(i);
        if (m >= a.rows) continue;
        i64 out_vox = m;
        if (SCATTER) {
            const int iw = m % in_w, ih = (m / in_w) % in_h, id = (m / (in_w * in_h)) % in_d;
            const int nn = m / (in_w * in_h * in_d);
            const int od = id * a.map_a[0] + zt_d * a.map_b[0] + a.map_c[0];
            const int oh = ih * a.map_a[1] + zt_h * a.map_b[1] + a.map_c[1];
            const int ow = iw * a.map_a[2] + zt_w * a.map_b[2] + a.map_c[2];
            if (od < 0 || od >= out_d || oh < 0 || oh >= out_h || ow < 0 || ow >= out_w) continue;
            out_vox = (((i64)nn * out_d + od) * out_h + oh) * out_w + ow;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = n0 + core.col(j);
            if (co >= a.cout) continue;
            const float v = core.value(i, j) + (a.bias ? a.bias[co] : 0.0f);
            vd_st(y, out_vox * a.cout + co, v);
        }
    }
}

// Forward / data-gradient implicit GEMM with the register loader (any channel
// count). Grid (ceil(M / 64), ceil(N / 64), 1 for gather or taps for scatter),
// 256 threads; VD_CONV_BK = 16 columns per step.
template <typename T, bool SCATTER, typename Core>
VD_DEVICE void vd_conv_implicit_gemm(const VdConvArgs a) {
    __shared__ __align__(16) typename Core::Smem tile;
    const T* __restrict__ x = static_cast<const T*>(a.x);
    const float* __restrict__ w = a.w;
    const int tid = threadIdx.x;
    const int m0 = blockIdx.x * VD_CONV_BM, n0 = blockIdx.y * VD_CONV_BN;
    const int cin = a.cin, cout = a.cout;
    // Gather walks every tap along K; scatter has one tap (the grid's z) and K = cin.
    const int k_kh = SCATTER ? 1 : a.kernel[1], k_kw = SCATTER ? 1 : a.kernel[2];
    const int taps_k = SCATTER ? 1 : a.kernel[0] * a.kernel[1] * a.kernel[2];
    const int z_tap = SCATTER ? (int)blockIdx.z : 0;

    // Loader roles: this thread stages K column lk of A for rows lr + 16j, and of
    // B for channels lr + 16j (j = 0..3).
    const int lk = tid % VD_CONV_BK, lr = tid / VD_CONV_BK;
    VdConvRow rows[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) rows[j] = vd_conv_row<SCATTER>(a, m0 + lr + 16 * j);
    VdConvKState ks = {0, 0, 0, 0, 0};
    vd_conv_k_advance(ks, lk, cin, k_kh, k_kw);

    Core core;
    core.init();

    const int k_total = taps_k * cin;
    for (int k0 = 0; k0 < k_total; k0 += VD_CONV_BK) {
        // Gather this step's A and B elements into registers.
        float av[4], bv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 off = vd_conv_a_offset<SCATTER>(a, rows[j], ks, taps_k);
            av[j] = off >= 0 ? vd_ld(x, off) : 0.0f;
        }
        const bool k_ok = ks.tap < taps_k;
        const i64 w_row = (i64)(SCATTER ? z_tap : ks.tap) * a.w_tap + (i64)ks.ci * a.w_ci;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = n0 + lr + 16 * j;
            bv[j] = (k_ok && co < cout) ? w[w_row + (i64)co * a.w_co] : 0.0f;
        }
        vd_conv_k_advance(ks, VD_CONV_BK, cin, k_kh, k_kw);

        __syncthreads();  // the previous step's tile has been consumed
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            Core::stage_a(tile, lr + 16 * j, lk, av[j]);
            Core::stage_b(tile, lk, lr + 16 * j, bv[j]);
        }
        __syncthreads();
        core.step(tile);
    }
    vd_conv_epilogue<T, SCATTER>(a, core, m0, n0);
}

// f32 activations on the FMA core, bf16 activations on tensor cores.
extern "C" __global__ void vd_conv3d_gather_f32(VdConvArgs a) {
    vd_conv_implicit_gemm<float, false, VdConvFmaCore>(a);
}
extern "C" __global__ void vd_conv3d_gather_bf16(VdConvArgs a) { vd_conv_implicit_gemm<bf16, false, VdConvMmaCore16>(a); }
extern "C" __global__ void vd_conv3d_scatter_f32(VdConvArgs a) { vd_conv_implicit_gemm<float, true, VdConvFmaCore>(a); }

// ------------------------------------------------- bf16, cp.async pipeline
// A scatter's input channels are a multiple of 8 (padded by the host where
// they are not), so a K chunk of 8 columns is 16 contiguous bytes of one
// input voxel, and
// A moves global → shared with cp.async (zero-filled where the mapping leaves
// the input) and B from a bf16 copy of the weight packed by
// vd_conv3d_pack_weights as bt[tap][n][ci] (the data gradient's transpose is
// done by the packing). Steps of VD_CONV_ABK = 32 columns, two stages: the
// copies of step s + 1 are in flight while the tensor cores work on step s.
// Loader roles: row / channel tid / 4, 8-column chunk tid % 4 (one 16-byte
// copy of A and one of B per thread per step).
#define VD_CONV_ABK 32
typedef VdConvMmaCore<VD_CONV_ABK> VdConvMmaCore32;

template <bool SCATTER>
VD_DEVICE void vd_conv_implicit_gemm_async(const VdConvArgs a, const bf16* __restrict__ bt) {
    __shared__ __align__(16) VdConvMmaCore32::Smem tiles[2];
    const bf16* __restrict__ x = static_cast<const bf16*>(a.x);
    const int tid = threadIdx.x;
    const int m0 = blockIdx.x * VD_CONV_BM, n0 = blockIdx.y * VD_CONV_BN;
    const int cin = a.cin, cout = a.cout;
    const int k_kh = SCATTER ? 1 : a.kernel[1], k_kw = SCATTER ? 1 : a.kernel[2];
    const int taps_k = SCATTER ? 1 : a.kernel[0] * a.kernel[1] * a.kernel[2];
    const int z_tap = SCATTER ? (int)blockIdx.z : 0;

    const int lr = tid / 4, lc = (tid % 4) * 8;
    const VdConvRow row = vd_conv_row<SCATTER>(a, m0 + lr);
    const int co = n0 + lr;
    VdConvKState ks = {0, 0, 0, 0, 0};
    vd_conv_k_advance(ks, lc, cin, k_kh, k_kw);

    VdConvMmaCore32 core;
    core.init();

    const int steps = (taps_k * cin + VD_CONV_ABK - 1) / VD_CONV_ABK;
    int stage = 0;
    // Issues the copies of the loader's K chunk into `s` and moves to the next step.
    auto issue = [&](VdConvMmaCore32::Smem& s) {
        const i64 off = vd_conv_a_offset<SCATTER>(a, row, ks, taps_k);
        vd_cp_async<16>(&s.a[lr][lc], off >= 0 ? x + off : x, off >= 0);
        const bool b_ok = ks.tap < taps_k && co < cout;
        const i64 b_off = ((i64)(SCATTER ? z_tap : ks.tap) * cout + co) * cin + ks.ci;
        vd_cp_async<16>(&s.b[lr][lc], b_ok ? bt + b_off : bt, b_ok);
        vd_cp_async_commit();
        vd_conv_k_advance(ks, VD_CONV_ABK, cin, k_kh, k_kw);
    };
    issue(tiles[0]);
    for (int s = 0; s < steps; ++s) {
        if (s + 1 < steps)
            issue(tiles[stage ^ 1]);
        else
            vd_cp_async_commit();  // an empty group keeps "all but the newest" meaning step s
        vd_cp_async_wait<1>();
        __syncthreads();  // step s has landed for every thread
        core.step(tiles[stage]);
        __syncthreads();  // the tile is consumed before step s + 2 overwrites it
        stage ^= 1;
    }
    vd_conv_epilogue<bf16, SCATTER>(a, core, m0, n0);
}

extern "C" __global__ void vd_conv3d_scatter_async_bf16(VdConvArgs a, const bf16* __restrict__ bt) {
    vd_conv_implicit_gemm_async<true>(a, bt);
}

// One packing of vd_conv3d_pack_weights. Mirrored by `PackDesc` in
// src/backend/gpu/conv/operands.rs (56 bytes).
struct VdPackDesc {
    const float* w;  // f32 weight
    bf16* bt;        // its packing: taps · n_out · n_in_pad elements
    i64 start;       // the packing's first element in the launch's numbering
    int taps, n_out, n_in, n_in_pad;
    int w_tap, w_ci, w_co, pad_;
};

// For each packing d of the table:
// bt[(t · n_out + n) · n_in_pad + c] = bf16(w[t · w_tap + c · w_ci + n · w_co])
// for c < n_in, 0 for n_in ≤ c < n_in_pad (t < taps, n < n_out: the GEMM's N):
// the B operand of the cp.async kernels, its input channels zero-padded like
// the activation's. The packings' elements are numbered consecutively (packing
// d owns [start_d, start_d + taps_d · n_out_d · n_in_pad_d), ascending, none
// empty, `total` in all); one element per thread, grid-stride, the packing
// found by binary search over start. So one launch packs one layout of every
// weight a step trains.
extern "C" __global__ void vd_conv3d_pack_weights(const VdPackDesc* __restrict__ table, int count, i64 total) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 g = (i64)blockIdx.x * blockDim.x + threadIdx.x; g < total; g += stride) {
        int lo = 0, hi = count - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (table[mid].start <= g)
                lo = mid;
            else
                hi = mid - 1;
        }
        const VdPackDesc d = table[lo];
        const i64 i = g - d.start;
        const int c = (int)(i % d.n_in_pad);
        const int n = (int)((i / d.n_in_pad) % d.n_out);
        const int t = (int)(i / ((i64)d.n_in_pad * d.n_out));
        d.bt[i] = f32_to_bf16(c < d.n_in ? d.w[(i64)t * d.w_tap + (i64)c * d.w_ci + (i64)n * d.w_co] : 0.0f);
    }
}

// y[v, c] = x[v, c] for c < c_in, 0 for c_in ≤ c < c_pad (c_pad a multiple of
// 8): an activation with a channel count the 16-byte loaders cannot read
// (the stem's 15, the head gradient's 14) widened for them. One 16-byte output
// chunk per thread, grid-stride.
extern "C" __global__ void vd_conv3d_pad_channels(const bf16* __restrict__ x, bf16* __restrict__ y, i64 voxels,
                                                  int c_in, int c_pad) {
    const int chunks = c_pad / 8;
    const i64 total = voxels * chunks;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const i64 v = i / chunks;
        const int c0 = (int)(i - v * chunks) * 8;
        float out[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = c0 + e < c_in ? bf16_to_f32(x[v * c_in + c0 + e]) : 0.0f;
        vd_store16(y + v * c_pad + c0, vd_pack_bf16x8(out));
    }
}

// ------------------------------------------- bf16, pipelined forward / dgrad
// The gather mappings with e == 1 (forward, stride-1 and transposed data
// gradients) on the pipelined tensor-core loop of conv3d_pipe.cuh, one entry
// point per block tile (rows × channels, warp tile): 128 × 32 (warps 32 × 32)
// for 32-channel outputs, 128 × 64 (warps 64 × 32) where M is large, 64 × 64
// (warps 32 × 32) where it is small; `_splitk` writes f32 partials per K split.
extern "C" __global__ void vd_conv3d_fprop_128x32_bf16(VdConvPipeArgs a) {
    vd_conv_fprop_pipe<128, 32, 32, 32, 64, 3, false>(a);
}
extern "C" __global__ void vd_conv3d_fprop_128x64_bf16(VdConvPipeArgs a) {
    vd_conv_fprop_pipe<128, 64, 64, 32, 64, 3, false>(a);
}
extern "C" __global__ void vd_conv3d_fprop_64x64_bf16(VdConvPipeArgs a) {
    vd_conv_fprop_pipe<64, 64, 32, 32, 64, 3, false>(a);
}
extern "C" __global__ void vd_conv3d_fprop_128x32_splitk_bf16(VdConvPipeArgs a) {
    vd_conv_fprop_pipe<128, 32, 32, 32, 64, 3, true>(a);
}
extern "C" __global__ void vd_conv3d_fprop_64x64_splitk_bf16(VdConvPipeArgs a) {
    vd_conv_fprop_pipe<64, 64, 32, 32, 64, 3, true>(a);
}

// y[m, co] = bf16(bias[co] + Σ_{s < splits} ws[s][m][co]) in split order
// (deterministic): the end of a split-K forward / data gradient. One thread per
// 4 consecutive outputs (cout a multiple of 4: f32x4 loads), else per output;
// grid-stride.
extern "C" __global__ void vd_conv3d_splitk_reduce_bf16(const float* __restrict__ ws, const float* __restrict__ bias,
                                                        bf16* __restrict__ y, i64 elems, int cout, int splits) {
    const bool vec = (cout & 3) == 0;
    const i64 items = vec ? elems / 4 : elems;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        if (vec) {
            const i64 e = i * 4;
            float4 s = vd_load_f32x4(ws + e);
            for (int p = 1; p < splits; ++p) {
                const float4 t = vd_load_f32x4(ws + (i64)p * elems + e);
                s.x += t.x, s.y += t.y, s.z += t.z, s.w += t.w;
            }
            const int co = (int)(e % cout);
            if (bias) s.x += bias[co], s.y += bias[co + 1], s.z += bias[co + 2], s.w += bias[co + 3];
            *reinterpret_cast<uint2*>(y + e) = make_uint2(vd_pack_bf16x2(s.x, s.y), vd_pack_bf16x2(s.z, s.w));
        } else {
            float s = ws[i];
            for (int p = 1; p < splits; ++p) s += ws[(i64)p * elems + i];
            if (bias) s += bias[i % cout];
            y[i] = f32_to_bf16(s);
        }
    }
}

// ------------------------------------------------------------ weight gradient
// Mirrors `ConvWgradArgs` in src/backend/gpu/conv.rs.
struct VdConvWgradArgs {
    const void* x;   // [n, x dims, cin]
    const void* dy;  // [n, dy dims, cout]
    float* ws;       // partial dw: [splits][taps · cin][cout]
    float* ws_bias;  // partial db: [splits][tap groups][cout], or null
    int n;
    int cin;
    int cout;
    int taps_m;   // taps per tap group (regular: all; transposed: 1, the tap is blockIdx.z)
    int x_dims[3];
    int dy_dims[3];
    int kernel[3];
    int stride[3];
    int pad[3];   // pad_lo (regular)
    int n_tiles;  // channel tiles: grid.x = M tiles · n_tiles
    int k_total;  // GEMM K: n · voxels of the iteration space (dy for regular, x for transposed)
    int k_chunk;  // K per split, a multiple of VD_CONV_BK
};

// One block: M tile blockIdx.x / n_tiles, channel tile blockIdx.x % n_tiles,
// K range [blockIdx.y · k_chunk, + k_chunk), tap group blockIdx.z.
// Regular: the iteration voxel v is a dy voxel o, A[(t, ci), v] = x[o·s + t − pad, ci]
// (0 in the padding), B[v, co] = dy[o, co]. Transposed: v is an x voxel i,
// A = x[i, ci], B = dy[i·s + t, co] with t = blockIdx.z.
template <typename T, bool TRANSPOSED, typename Core>
VD_DEVICE void vd_conv_wgrad_partial(const VdConvWgradArgs a) {
    __shared__ __align__(16) typename Core::Smem tile;
    __shared__ float bias_part[4][VD_CONV_BN];
    const T* __restrict__ x = static_cast<const T*>(a.x);
    const T* __restrict__ dy = static_cast<const T*>(a.dy);
    const int tid = threadIdx.x;
    const int mt = blockIdx.x / a.n_tiles, nt = blockIdx.x % a.n_tiles;
    const int m0 = mt * VD_CONV_BM, n0 = nt * VD_CONV_BN;
    const int split = blockIdx.y, z = blockIdx.z;
    const int cin = a.cin, cout = a.cout;
    const int rows = a.taps_m * cin;
    const int x_d = a.x_dims[0], x_h = a.x_dims[1], x_w = a.x_dims[2];
    const int y_d = a.dy_dims[0], y_h = a.dy_dims[1], y_w = a.dy_dims[2];
    const int kh = a.kernel[1], kw = a.kernel[2];
    const int s_d = a.stride[0], s_h = a.stride[1], s_w = a.stride[2];
    // The iteration space: dy voxels (regular) or x voxels (transposed).
    const int v_d = TRANSPOSED ? x_d : y_d, v_h = TRANSPOSED ? x_h : y_h, v_w = TRANSPOSED ? x_w : y_w;

    // Loader roles: A row lm and B channel lm, K columns lk + 4j (j = 0..3).
    const int lm = tid % 64, lk = tid / 64;
    const int m = m0 + lm;
    const bool m_ok = m < rows;
    const int ci = m_ok ? m % cin : 0;
    const int tap = z * a.taps_m + (m_ok ? m / cin : 0);
    const int td = tap / (kh * kw), th = (tap / kw) % kh, tw = tap % kw;
    // Regular: x position = o·s + (t − pad).
    const int off_d = td - a.pad[0], off_h = th - a.pad[1], off_w = tw - a.pad[2];
    const int co_l = n0 + lm;
    const bool co_ok = co_l < cout;

    const int k_begin = split * a.k_chunk;
    const int k_end = min(k_begin + a.k_chunk, a.k_total);
    // Voxel state of the thread's 4 K columns: flat k and (vn, vd, vh, vw).
    int kv[4], vn[4], vd[4], vh[4], vw[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int k = k_begin + lk + 4 * j;
        kv[j] = k;
        vw[j] = k % v_w;
        vh[j] = (k / v_w) % v_h;
        vd[j] = (k / (v_w * v_h)) % v_d;
        vn[j] = k / (v_w * v_h * v_d);
    }
    const bool bias_block = a.ws_bias != nullptr && mt == 0;

    Core core;
    core.init();
    // Bias partial (blocks of the first M tile): each thread sums the dy values
    // it loads (channel lm, K columns lk + 4j); the 4 threads of a channel are
    // summed in lk order at the end.
    float bsum = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += VD_CONV_BK) {
        float av[4], bv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            av[j] = 0.0f;
            bv[j] = 0.0f;
            if (kv[j] < k_end) {
                if (TRANSPOSED) {
                    if (m_ok) av[j] = vd_ld(x, (i64)kv[j] * cin + ci);
                    if (co_ok) {
                        const i64 o = (((i64)vn[j] * y_d + vd[j] * s_d + td) * y_h + vh[j] * s_h + th) * y_w +
                                      vw[j] * s_w + tw;
                        bv[j] = vd_ld(dy, o * cout + co_l);
                    }
                } else {
                    if (m_ok) {
                        const int qd = vd[j] * s_d + off_d, qh = vh[j] * s_h + off_h, qw = vw[j] * s_w + off_w;
                        if (qd >= 0 && qd < x_d && qh >= 0 && qh < x_h && qw >= 0 && qw < x_w)
                            av[j] = vd_ld(x, ((((i64)vn[j] * x_d + qd) * x_h + qh) * x_w + qw) * cin + ci);
                    }
                    if (co_ok) bv[j] = vd_ld(dy, (i64)kv[j] * cout + co_l);
                }
            }
            // Next step: K columns move by VD_CONV_BK voxels.
            kv[j] += VD_CONV_BK;
            vw[j] += VD_CONV_BK;
            while (vw[j] >= v_w) {
                vw[j] -= v_w;
                if (++vh[j] == v_h) {
                    vh[j] = 0;
                    if (++vd[j] == v_d) {
                        vd[j] = 0;
                        ++vn[j];
                    }
                }
            }
        }
        __syncthreads();  // the previous step's tile has been consumed
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            Core::stage_a(tile, lm, lk + 4 * j, av[j]);
            Core::stage_b(tile, lk + 4 * j, lm, bv[j]);
            bsum += bv[j];
        }
        __syncthreads();
        core.step(tile);
    }

    // Every element of the partial tile is written (zeros for an empty K range).
    const i64 w_rows = (i64)gridDim.z * rows;  // taps · cin
    float* ws = a.ws + ((i64)split * w_rows + (i64)z * rows) * cout;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int mm = m0 + core.row(i);
        if (mm >= rows) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = n0 + core.col(j);
            if (co < cout) ws[(i64)mm * cout + co] = core.value(i, j);
        }
    }
    if (bias_block) {  // uniform per block
        bias_part[lk][lm] = bsum;
        __syncthreads();
        if (tid < VD_CONV_BN && n0 + tid < cout) {
            float* wb = a.ws_bias + ((i64)split * gridDim.z + z) * cout;
            wb[n0 + tid] = ((bias_part[0][tid] + bias_part[1][tid]) + bias_part[2][tid]) + bias_part[3][tid];
        }
    }
}

extern "C" __global__ void vd_conv3d_wgrad_f32(VdConvWgradArgs a) {
    vd_conv_wgrad_partial<float, false, VdConvFmaCore>(a);
}
extern "C" __global__ void vd_conv3d_wgrad_transposed_f32(VdConvWgradArgs a) {
    vd_conv_wgrad_partial<float, true, VdConvFmaCore>(a);
}

// bf16 weight gradients on the pipelined tensor-core loop of conv3d_pipe.cuh:
// block tile (rows of (tap, ci)) × (output channels) 128 × 32 for Cout ≤ 32,
// else 64 × 64; warp tiles 32 × 32; grid (M tiles, N tiles, splits · groups).
extern "C" __global__ void vd_conv3d_wgrad_pipe_128x32_bf16(VdConvWgradPipeArgs a, int splits) {
    vd_conv_wgrad_pipe<128, 32, 4, false>(a, splits);
}
extern "C" __global__ void vd_conv3d_wgrad_pipe_64x64_bf16(VdConvWgradPipeArgs a, int splits) {
    vd_conv_wgrad_pipe<64, 64, 4, false>(a, splits);
}
extern "C" __global__ void vd_conv3d_wgrad_pipe_transposed_128x32_bf16(VdConvWgradPipeArgs a, int splits) {
    vd_conv_wgrad_pipe<128, 32, 4, true>(a, splits);
}
extern "C" __global__ void vd_conv3d_wgrad_pipe_transposed_64x64_bf16(VdConvWgradPipeArgs a, int splits) {
    vd_conv_wgrad_pipe<64, 64, 4, true>(a, splits);
}

// dw[t, ci, co] = Σ_{s < splits} ws[s][(t · cin_pad + ci) · cout_pad + co]
// (split order) for ci < cin, co < cout — the partials may carry zero-padded
// channels — and when db is not null db[co] = Σ_{p < bias_parts}
// ws_bias[p · cout_pad + co] (p = split · groups + z). Grid-stride over the
// taps · cin · cout + cout outputs, one per thread.
extern "C" __global__ void vd_conv3d_wgrad_reduce(const float* __restrict__ ws, const float* __restrict__ ws_bias,
                                                  float* __restrict__ dw, float* __restrict__ db, int taps, int cin,
                                                  int cin_pad, int cout, int cout_pad, int splits,
                                                  int bias_parts) {
    const i64 w_elems = (i64)taps * cin * cout;
    const i64 split_stride = (i64)taps * cin_pad * cout_pad;
    const i64 total = w_elems + (db ? cout : 0);
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        float s = 0.0f;
        if (i < w_elems) {
            const int co = (int)(i % cout);
            const i64 r = i / cout;  // t · cin + ci
            const int ci = (int)(r % cin);
            const i64 src = ((r / cin) * cin_pad + ci) * cout_pad + co;
            for (int p = 0; p < splits; ++p) s += ws[(i64)p * split_stride + src];
            dw[i] = s;
        } else {
            const int co = (int)(i - w_elems);
            for (int p = 0; p < bias_parts; ++p) s += ws_bias[(i64)p * cout_pad + co];
            db[co] = s;
        }
    }
}
