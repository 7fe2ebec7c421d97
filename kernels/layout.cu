// Layout kernels on NDHWC tensors: channel copies (concat, slice), spatial
// gathers (crop, pad, nearest upsampling), the upsampling backward, and max
// pooling forward and backward; and the permutation of the dims of any tensor
// (src/backend/gpu/layout.rs launches them and documents the launch geometry).
//
// Units: a thread moves a column vector of VEC channels of one voxel — VEC = 8
// (16-byte accesses for bf16, two for f32) when every channel count and offset
// involved is a multiple of 8, else VEC = 1. Variants f32x8, f32x1, bf16x8,
// bf16x1. Every output element is written exactly once (gathers: zeros where
// nothing is read), so no output needs clearing first.
//
// Spatial kernels walk the rows (n, d, h) of the grid named "out" below: block
// x = one row, blockIdx.y · blockDim.x + threadIdx.x = the unit (w, lane) of
// the row, u = w·lanes + lane.
#include "channel_rows.cuh"

// ---------------------------------------------------------- channel copies
// dst[row, dst_off + k] = src[row, src_off + k] for k < len, every row
// (voxel) of both tensors; units of VEC channels over a flat grid-stride loop
// (u → row = u / (len / VEC), one 64-bit division per unit).
template <typename T, int VEC>
VD_DEVICE void vd_layout_channels(const T* __restrict__ src, T* __restrict__ dst, i64 rows, int src_c, int src_off,
                                  int dst_c, int dst_off, int len) {
    const int units = len / VEC;
    const i64 total = rows * units;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 u = (i64)blockIdx.x * blockDim.x + threadIdx.x; u < total; u += stride) {
        const i64 row = u / units;
        const int k = (int)(u - row * units) * VEC;
        float v[VEC];
        vd_rows_load<VEC>(src + row * src_c + src_off + k, v);
        vd_rows_store<VEC>(dst + row * dst_c + dst_off + k, v);
    }
}
extern "C" __global__ void vd_layout_channels_f32x8(const float* __restrict__ src, float* __restrict__ dst, i64 rows, int src_c,
                                                int src_off, int dst_c, int dst_off, int len) {
    vd_layout_channels<float, 8>(src, dst, rows, src_c, src_off, dst_c, dst_off, len);
}
extern "C" __global__ void vd_layout_channels_f32x1(const float* __restrict__ src, float* __restrict__ dst, i64 rows, int src_c,
                                                int src_off, int dst_c, int dst_off, int len) {
    vd_layout_channels<float, 1>(src, dst, rows, src_c, src_off, dst_c, dst_off, len);
}
extern "C" __global__ void vd_layout_channels_bf16x8(const bf16* __restrict__ src, bf16* __restrict__ dst, i64 rows, int src_c,
                                                int src_off, int dst_c, int dst_off, int len) {
    vd_layout_channels<bf16, 8>(src, dst, rows, src_c, src_off, dst_c, dst_off, len);
}
extern "C" __global__ void vd_layout_channels_bf16x1(const bf16* __restrict__ src, bf16* __restrict__ dst, i64 rows, int src_c,
                                                int src_off, int dst_c, int dst_off, int len) {
    vd_layout_channels<bf16, 1>(src, dst, rows, src_c, src_off, dst_c, dst_off, len);
}

// ---------------------------------------------------------- spatial kernels
// Mirrored by `LayoutArgs` in src/backend/gpu/layout.rs.
struct VdLayoutArgs {
    const void* src;  // gather, upsample_bwd, maxpool: the input; maxpool_bwd: dy (pooled grid)
    const void* aux;  // maxpool_bwd: x
    void* dst;        // the output
    int out_d, out_h, out_w;  // the grid the kernel walks (see each kernel)
    int in_d, in_h, in_w;     // the other tensor's extents
    int c;                    // channels (both tensors)
    int lanes;                // units per voxel: c / VEC
    int lo_d, lo_h, lo_w;     // gather: offset of the source box in the output grid
    int f_d, f_h, f_w;        // gather: upsampling factor; upsample_bwd: factor; maxpool: window
    int pad0_, pad1_;
};

// This thread's unit: sample n, out-grid voxel (d, h, w), lane; false when
// the thread is past the end of its row.
struct VdLayoutUnit {
    int n, d, h, w, lane;
};
VD_DEVICE bool vd_layout_unit(const VdLayoutArgs a, VdLayoutUnit& q) {
    const int u = (int)(blockIdx.y * blockDim.x + threadIdx.x);
    if (u >= a.out_w * a.lanes) return false;
    q.w = u / a.lanes;
    q.lane = u - q.w * a.lanes;
    const int row = (int)blockIdx.x;
    q.h = row % a.out_h;
    const int nd = row / a.out_h;
    q.d = nd % a.out_d;
    q.n = nd / a.out_d;
    return true;
}
// Element offset of voxel (n, d, h, w), lane `lane` of a tensor of extents (D, H, W) and c channels.
VD_DEVICE i64 vd_layout_at(int n, int d, int h, int w, int D, int H, int W, int c, int lane, int vec) {
    return ((((i64)n * D + d) * H + h) * W + w) * c + (i64)lane * vec;
}

// Gather (walks dst; out = dst extents, in = src extents):
//   dst[n, q, c] = src[n, (q − lo) / f, c]  where 0 ≤ q − lo < in·f per dim, else 0.
// crop: lo = −origin, f = 1; pad: lo = origin, f = 1; upsample: lo = 0, f = factor.
template <typename T, int VEC>
VD_DEVICE void vd_layout_gather(const VdLayoutArgs a) {
    VdLayoutUnit q;
    if (!vd_layout_unit(a, q)) return;
    const int td = q.d - a.lo_d, th = q.h - a.lo_h, tw = q.w - a.lo_w;
    float v[VEC];
    if (td >= 0 && td < a.in_d * a.f_d && th >= 0 && th < a.in_h * a.f_h && tw >= 0 && tw < a.in_w * a.f_w) {
        const i64 s = vd_layout_at(q.n, td / a.f_d, th / a.f_h, tw / a.f_w, a.in_d, a.in_h, a.in_w, a.c, q.lane, VEC);
        vd_rows_load<VEC>(static_cast<const T*>(a.src) + s, v);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = 0.0f;
    }
    const i64 o = vd_layout_at(q.n, q.d, q.h, q.w, a.out_d, a.out_h, a.out_w, a.c, q.lane, VEC);
    vd_rows_store<VEC>(static_cast<T*>(a.dst) + o, v);
}
extern "C" __global__ void vd_layout_gather_f32x8(const VdLayoutArgs a) { vd_layout_gather<float, 8>(a); }
extern "C" __global__ void vd_layout_gather_f32x1(const VdLayoutArgs a) { vd_layout_gather<float, 1>(a); }
extern "C" __global__ void vd_layout_gather_bf16x8(const VdLayoutArgs a) { vd_layout_gather<bf16, 8>(a); }
extern "C" __global__ void vd_layout_gather_bf16x1(const VdLayoutArgs a) { vd_layout_gather<bf16, 1>(a); }

// Upsampling backward (walks dx; out = dx extents, in = dy extents = out·f):
//   dx[n, p, c] = Σ_{k < f} dy[n, p·f + k, c], summed in f32 in (d, h, w) scan order.
template <typename T, int VEC>
VD_DEVICE void vd_layout_upsample_bwd(const VdLayoutArgs a) {
    VdLayoutUnit q;
    if (!vd_layout_unit(a, q)) return;
    const T* dy = static_cast<const T*>(a.src);
    float acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0.0f;
    for (int kd = 0; kd < a.f_d; ++kd)
        for (int kh = 0; kh < a.f_h; ++kh)
            for (int kw = 0; kw < a.f_w; ++kw) {
                float v[VEC];
                vd_rows_load<VEC>(dy + vd_layout_at(q.n, q.d * a.f_d + kd, q.h * a.f_h + kh, q.w * a.f_w + kw, a.in_d,
                                                    a.in_h, a.in_w, a.c, q.lane, VEC),
                                  v);
#pragma unroll
                for (int j = 0; j < VEC; ++j) acc[j] += v[j];
            }
    const i64 o = vd_layout_at(q.n, q.d, q.h, q.w, a.out_d, a.out_h, a.out_w, a.c, q.lane, VEC);
    vd_rows_store<VEC>(static_cast<T*>(a.dst) + o, acc);
}
extern "C" __global__ void vd_layout_upsample_bwd_f32x8(const VdLayoutArgs a) { vd_layout_upsample_bwd<float, 8>(a); }
extern "C" __global__ void vd_layout_upsample_bwd_f32x1(const VdLayoutArgs a) { vd_layout_upsample_bwd<float, 1>(a); }
extern "C" __global__ void vd_layout_upsample_bwd_bf16x8(const VdLayoutArgs a) { vd_layout_upsample_bwd<bf16, 8>(a); }
extern "C" __global__ void vd_layout_upsample_bwd_bf16x1(const VdLayoutArgs a) { vd_layout_upsample_bwd<bf16, 1>(a); }

// The window of pooled voxel (d, h, w): [o·f, min(o·f + f, in)) per dim
// (ceil mode: the last window is clipped at the edge, never empty).
struct VdPoolWindow {
    int d0, d1, h0, h1, w0, w1;
};
VD_DEVICE VdPoolWindow vd_pool_window(const VdLayoutArgs a, const VdLayoutUnit q) {
    VdPoolWindow b;
    b.d0 = q.d * a.f_d, b.d1 = min(b.d0 + a.f_d, a.in_d);
    b.h0 = q.h * a.f_h, b.h1 = min(b.h0 + a.f_h, a.in_h);
    b.w0 = q.w * a.f_w, b.w1 = min(b.w0 + a.f_w, a.in_w);
    return b;
}

// Max pooling (walks y; out = pooled extents ceil(in / f), in = x extents):
//   y[n, o, c] = max over the window of o of x[n, ·, c].
template <typename T, int VEC>
VD_DEVICE void vd_layout_maxpool(const VdLayoutArgs a) {
    VdLayoutUnit q;
    if (!vd_layout_unit(a, q)) return;
    const VdPoolWindow b = vd_pool_window(a, q);
    const T* x = static_cast<const T*>(a.src);
    float best[VEC];
    vd_rows_load<VEC>(x + vd_layout_at(q.n, b.d0, b.h0, b.w0, a.in_d, a.in_h, a.in_w, a.c, q.lane, VEC), best);
    for (int d = b.d0; d < b.d1; ++d)
        for (int h = b.h0; h < b.h1; ++h)
            for (int w = b.w0; w < b.w1; ++w) {
                float v[VEC];
                vd_rows_load<VEC>(x + vd_layout_at(q.n, d, h, w, a.in_d, a.in_h, a.in_w, a.c, q.lane, VEC), v);
#pragma unroll
                for (int j = 0; j < VEC; ++j) best[j] = v[j] > best[j] ? v[j] : best[j];
            }
    const i64 o = vd_layout_at(q.n, q.d, q.h, q.w, a.out_d, a.out_h, a.out_w, a.c, q.lane, VEC);
    vd_rows_store<VEC>(static_cast<T*>(a.dst) + o, best);
}
extern "C" __global__ void vd_layout_maxpool_f32x8(const VdLayoutArgs a) { vd_layout_maxpool<float, 8>(a); }
extern "C" __global__ void vd_layout_maxpool_f32x1(const VdLayoutArgs a) { vd_layout_maxpool<float, 1>(a); }
extern "C" __global__ void vd_layout_maxpool_bf16x8(const VdLayoutArgs a) { vd_layout_maxpool<bf16, 8>(a); }
extern "C" __global__ void vd_layout_maxpool_bf16x1(const VdLayoutArgs a) { vd_layout_maxpool<bf16, 1>(a); }

// Max pooling backward (walks the pooled grid: out = pooled extents, in = x
// and dx extents): the thread of pooled voxel o finds, per channel, the first
// voxel of o's window in (d, h, w) scan order that holds the maximum (strict >
// while scanning), then writes the whole window of dx: dy[n, o, c] there, 0
// elsewhere. Windows tile the input exactly (stride = window), so every dx
// element is written once and no two threads write the same element.
template <typename T, int VEC>
VD_DEVICE void vd_layout_maxpool_bwd(const VdLayoutArgs a) {
    VdLayoutUnit q;
    if (!vd_layout_unit(a, q)) return;
    const VdPoolWindow b = vd_pool_window(a, q);
    const T* x = static_cast<const T*>(a.aux);
    T* dx = static_cast<T*>(a.dst);
    float best[VEC], g[VEC];
    int arg[VEC];
    vd_rows_load<VEC>(x + vd_layout_at(q.n, b.d0, b.h0, b.w0, a.in_d, a.in_h, a.in_w, a.c, q.lane, VEC), best);
#pragma unroll
    for (int j = 0; j < VEC; ++j) arg[j] = 0;
    int i = 0;
    for (int d = b.d0; d < b.d1; ++d)
        for (int h = b.h0; h < b.h1; ++h)
            for (int w = b.w0; w < b.w1; ++w, ++i) {
                float v[VEC];
                vd_rows_load<VEC>(x + vd_layout_at(q.n, d, h, w, a.in_d, a.in_h, a.in_w, a.c, q.lane, VEC), v);
#pragma unroll
                for (int j = 0; j < VEC; ++j)
                    if (v[j] > best[j]) best[j] = v[j], arg[j] = i;
            }
    vd_rows_load<VEC>(
        static_cast<const T*>(a.src) + vd_layout_at(q.n, q.d, q.h, q.w, a.out_d, a.out_h, a.out_w, a.c, q.lane, VEC), g);
    i = 0;
    for (int d = b.d0; d < b.d1; ++d)
        for (int h = b.h0; h < b.h1; ++h)
            for (int w = b.w0; w < b.w1; ++w, ++i) {
                float v[VEC];
#pragma unroll
                for (int j = 0; j < VEC; ++j) v[j] = arg[j] == i ? g[j] : 0.0f;
                vd_rows_store<VEC>(dx + vd_layout_at(q.n, d, h, w, a.in_d, a.in_h, a.in_w, a.c, q.lane, VEC), v);
            }
}
extern "C" __global__ void vd_layout_maxpool_bwd_f32x8(const VdLayoutArgs a) { vd_layout_maxpool_bwd<float, 8>(a); }
extern "C" __global__ void vd_layout_maxpool_bwd_f32x1(const VdLayoutArgs a) { vd_layout_maxpool_bwd<float, 1>(a); }
extern "C" __global__ void vd_layout_maxpool_bwd_bf16x8(const VdLayoutArgs a) { vd_layout_maxpool_bwd<bf16, 8>(a); }
extern "C" __global__ void vd_layout_maxpool_bwd_bf16x1(const VdLayoutArgs a) { vd_layout_maxpool_bwd<bf16, 1>(a); }

// ----------------------------------------------------------------- permute
// Mirrored by `PermuteArgs` in src/backend/gpu/layout.rs: the merged plan of
// ops::layout::PermutePlan (rank groups; group g has extent dims[g] and steps
// the source by src_strides[g], the output by dst_strides[g] elements).
struct VdPermuteArgs {
    const void* src;
    void* dst;
    i64 n;     // elements
    int rank;  // groups, 1..5
    int q;     // transpose: the group contiguous in src
    int dims[5];
    int pad_;
    i64 src_strides[5];
    i64 dst_strides[5];
};

// VEC elements from src to dst, bits unchanged (16-byte accesses when they
// fill whole vectors).
template <typename T, int VEC>
VD_DEVICE void vd_copy_bits(const T* src, T* dst) {
    if constexpr (VEC * sizeof(T) % 16 == 0) {
#pragma unroll
        for (int b = 0; b < (int)(VEC * sizeof(T) / 16); ++b)
            vd_store16(reinterpret_cast<char*>(dst) + 16 * b, vd_load16(reinterpret_cast<const char*>(src) + 16 * b));
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) dst[e] = src[e];
    }
}

// The last group is contiguous in src: the output is runs of dims[rank − 1]
// elements copied from their place in src. Units of VEC elements (VEC = 8 when
// the run is a multiple of 8: every unit then starts 16-byte aligned on both
// sides) over a flat grid-stride loop.
template <typename T, int VEC>
VD_DEVICE void vd_layout_permute_copy(const VdPermuteArgs a) {
    const T* __restrict__ src = static_cast<const T*>(a.src);
    T* __restrict__ dst = static_cast<T*>(a.dst);
    i64 run = 1;
#pragma unroll
    for (int g = 0; g < 5; ++g)
        if (g == a.rank - 1) run = a.dims[g];
    const i64 units = a.n / VEC, stride = (i64)gridDim.x * blockDim.x;
    for (i64 u = (i64)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride) {
        const i64 e = u * VEC;
        i64 row = e / run, off = e - row * run;
#pragma unroll
        for (int g = 3; g >= 0; --g)
            if (g < a.rank - 1) {
                const i64 c = row % a.dims[g];
                row /= a.dims[g];
                off += c * a.src_strides[g];
            }
        vd_copy_bits<T, VEC>(src + off, dst + e);
    }
}
extern "C" __global__ void vd_layout_permute_copy_f32x8(const VdPermuteArgs a) { vd_layout_permute_copy<float, 8>(a); }
extern "C" __global__ void vd_layout_permute_copy_f32x1(const VdPermuteArgs a) { vd_layout_permute_copy<float, 1>(a); }
extern "C" __global__ void vd_layout_permute_copy_bf16x8(const VdPermuteArgs a) { vd_layout_permute_copy<bf16, 8>(a); }
extern "C" __global__ void vd_layout_permute_copy_bf16x1(const VdPermuteArgs a) { vd_layout_permute_copy<bf16, 1>(a); }

// The last group moves: for each position of the other groups, the plane of
// group q (I = dims[q], contiguous in src) and the last group (J, contiguous
// in dst) is an I × J transpose. A block of 32 × 8 threads moves one 32 × 32
// tile through shared memory (rows padded to 33: conflict-free column reads
// for 4- and 2-byte elements): reads with consecutive threads along i, writes
// along j, both coalesced. Grid (ceil(I / 32), ceil(J / 32), positions of the
// other groups, walked by z with a stride of gridDim.z).
#define VD_PERMUTE_TILE 32
template <typename T>
VD_DEVICE void vd_layout_permute_transpose(const VdPermuteArgs a) {
    __shared__ T tile[VD_PERMUTE_TILE][VD_PERMUTE_TILE + 1];  // tile[j][i]
    const T* __restrict__ src = static_cast<const T*>(a.src);
    T* __restrict__ dst = static_cast<T*>(a.dst);
    i64 ni = 1, nj = 1, sj = 0, dq = 0;
#pragma unroll
    for (int g = 0; g < 5; ++g) {
        if (g == a.q) {
            ni = a.dims[g];
            dq = a.dst_strides[g];
        }
        if (g == a.rank - 1) {
            nj = a.dims[g];
            sj = a.src_strides[g];
        }
    }
    const int tx = threadIdx.x, ty = threadIdx.y;
    const i64 i0 = (i64)blockIdx.x * VD_PERMUTE_TILE, j0 = (i64)blockIdx.y * VD_PERMUTE_TILE;
    const i64 outer = a.n / (ni * nj);
    for (i64 b = blockIdx.z; b < outer; b += gridDim.z) {
        // The other groups' coordinates are the digits of b.
        i64 rest = b, s0 = 0, d0 = 0;
#pragma unroll
        for (int g = 3; g >= 0; --g)
            if (g < a.rank - 1 && g != a.q) {
                const i64 c = rest % a.dims[g];
                rest /= a.dims[g];
                s0 += c * a.src_strides[g];
                d0 += c * a.dst_strides[g];
            }
#pragma unroll
        for (int r = 0; r < VD_PERMUTE_TILE; r += 8) {
            const i64 i = i0 + tx, j = j0 + ty + r;
            if (i < ni && j < nj) tile[ty + r][tx] = src[s0 + i + j * sj];
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < VD_PERMUTE_TILE; r += 8) {
            const i64 i = i0 + ty + r, j = j0 + tx;
            if (i < ni && j < nj) dst[d0 + i * dq + j] = tile[tx][ty + r];
        }
        __syncthreads();  // the tile is read before the next position overwrites it
    }
}
extern "C" __global__ void vd_layout_permute_transpose_f32(const VdPermuteArgs a) {
    vd_layout_permute_transpose<float>(a);
}
extern "C" __global__ void vd_layout_permute_transpose_bf16(const VdPermuteArgs a) {
    vd_layout_permute_transpose<bf16>(a);
}
