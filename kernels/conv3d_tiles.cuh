// The tiles of the conv3d kernels (kernels/conv3d.cu): block tile geometry,
// element loads and stores, the two compute cores (f32 FMA, bf16 tensor cores)
// and the K-column and index-mapping helpers of the loaders.
#pragma once
#include "common.cuh"

#define VD_CONV_BM 64
#define VD_CONV_BN 64
#define VD_CONV_BK 16
#define VD_CONV_THREADS 256
// Row pitches of the staged tiles: +4 floats keeps rows 16-byte aligned for the
// float4 reads and spreads the column stores of the gather over banks.
#define VD_CONV_APITCH (VD_CONV_BM + 4)
#define VD_CONV_BPITCH (VD_CONV_BN + 4)


// ------------------------------------------------------------ compute cores
// A core owns the staged tiles of one K step (`Smem`), the block's
// accumulators as a per-thread 4 × 4 set, and the step that multiplies the
// staged tiles into them. The loaders call stage_a(m, k) / stage_b(k, n); the
// epilogue reads value(i, j) for the tile row row(i) and channel col(j)
// (i, j in 0..3, compile-time constants in unrolled loops).

// FMA core (f32): thread (ty, tx) = (tid / 16, tid % 16) owns rows 4·ty + i and
// channels 4·tx + j; one step is 16 × 16 fused multiply-adds per thread.
struct VdConvFmaCore {
    struct Smem {
        float a[VD_CONV_BK][VD_CONV_APITCH];  // a[k][m]
        float b[VD_CONV_BK][VD_CONV_BPITCH];  // b[k][n]
    };
    float acc[4][4];
    int ty, tx;

    VD_DEVICE void init() {
        ty = (int)threadIdx.x / 16;
        tx = (int)threadIdx.x % 16;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    VD_DEVICE static void stage_a(Smem& s, int m, int k, float v) { s.a[k][m] = v; }
    VD_DEVICE static void stage_b(Smem& s, int k, int n, float v) { s.b[k][n] = v; }
    // acc[i][j] += Σ_k a[k][4·ty + i] · b[k][4·tx + j], k ascending.
    VD_DEVICE void step(const Smem& s) {
#pragma unroll
        for (int kk = 0; kk < VD_CONV_BK; ++kk) {
            const float4 a4 = vd_load_f32x4(&s.a[kk][ty * 4]);
            const float4 b4 = vd_load_f32x4(&s.b[kk][tx * 4]);
            const float av[4] = {a4.x, a4.y, a4.z, a4.w};
            const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }
    VD_DEVICE int row(int i) const { return ty * 4 + i; }
    VD_DEVICE int col(int j) const { return tx * 4 + j; }
    VD_DEVICE float value(int i, int j) const { return acc[i][j]; }
};

// Tensor-core core (bf16 operands, f32 accumulation) for steps of BK = 16·s
// columns: warp w computes rows 32·(w % 2) .. +32 and channels 16·(w / 2) .. +16
// of the 64 × 64 tile as 2 × 2 m16n8 tiles; per 16 columns of a step, two
// ldmatrix.x4 of A, one ldmatrix.x4 of B and four mma.sync.m16n8k16 per warp.
// A is staged [m][k] and B [n][k] (k contiguous, rows padded by 8 elements:
// 48 or 80 bytes, 16-byte aligned for ldmatrix and conflict-free across the 8
// rows of a matrix). Operands staged through stage_a/stage_b round to bf16
// (activations already are; f32 weights round to nearest even). Accumulator
// fragment (PTX ISA m16n8 C layout), lane l = 4g + q: acc[mi][ni][2h + e] is
// row 16·mi + g + 8h, column 8·ni + 2q + e.
template <int BK>
struct VdConvMmaCore {
    static constexpr int KPITCH = BK + 8;
    struct Smem {
        bf16 a[VD_CONV_BM][KPITCH];  // a[m][k]
        bf16 b[VD_CONV_BN][KPITCH];  // b[n][k]
    };
    float acc[2][2][4];
    int wm, wn, lane;

    VD_DEVICE void init() {
        lane = (int)vd_lane();
        wm = (int)vd_warp() % 2;
        wn = (int)vd_warp() / 2;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 2; ++ni)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;
    }
    VD_DEVICE static void stage_a(Smem& s, int m, int k, float v) { s.a[m][k] = f32_to_bf16(v); }
    VD_DEVICE static void stage_b(Smem& s, int k, int n, float v) { s.b[n][k] = f32_to_bf16(v); }
    VD_DEVICE void step(const Smem& s) {
#pragma unroll
        for (int k16 = 0; k16 < BK; k16 += 16) {
            u32 a[2][4], b[4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
                // matrices: rows 0-7 / 8-15 × k 0-7, then × k 8-15
                vd_ldmatrix_x4(a[mi], &s.a[wm * 32 + mi * 16 + lane % 16][k16 + (lane / 16) * 8]);
            // matrices: n-tile 0 × k 0-7 / 8-15, n-tile 1 × k 0-7 / 8-15
            vd_ldmatrix_x4(b, &s.b[wn * 16 + (lane / 16) * 8 + lane % 8][k16 + ((lane / 8) % 2) * 8]);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 2; ++ni) vd_mma_bf16_16816(acc[mi][ni], a[mi], &b[2 * ni], acc[mi][ni]);
        }
    }
    // i = 2·mi + h, j = 2·ni + e.
    VD_DEVICE int row(int i) const { return wm * 32 + (i / 2) * 16 + lane / 4 + (i % 2) * 8; }
    VD_DEVICE int col(int j) const { return wn * 16 + (j / 2) * 8 + (lane % 4) * 2 + j % 2; }
    VD_DEVICE float value(int i, int j) const { return acc[i / 2][j / 2][(i % 2) * 2 + j % 2]; }
};
typedef VdConvMmaCore<VD_CONV_BK> VdConvMmaCore16;

// The K-column state of a loader thread: k = tap · cin + ci, with the tap's
// coordinates (td, th, tw) in a kernel of extents kd × kh × kw.
struct VdConvKState {
    int tap, td, th, tw, ci;
};

// Moves k forward by `step` columns (the tap coordinates carry like digits).
VD_DEVICE void vd_conv_k_advance(VdConvKState& s, int step, int cin, int kh, int kw) {
    s.ci += step;
    while (s.ci >= cin) {
        s.ci -= cin;
        ++s.tap;
        if (++s.tw == kw) {
            s.tw = 0;
            if (++s.th == kh) {
                s.th = 0;
                ++s.td;
            }
        }
    }
}

// q = o·a + t·b + c on one axis; the input index q / e, or −1 when q is not an
// input voxel (before the start, between strided positions, or past the end).
VD_DEVICE int vd_conv_map_axis(int q, int e, int in) {
    if (q < 0) return -1;
    const int i = q / e;
    return (i * e == q && i < in) ? i : -1;
}
