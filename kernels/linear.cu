// Dense layers on per-sample f32 vectors (src/backend/gpu/linear.rs launches
// them and documents the launch geometry). The three ops are one strided GEMM:
//   forward  y[M,N]  = x[M,K] · w[K,N] + b
//   dgrad    dx[M,K] = dy[M,N] · w[K,N]ᵀ
//   wgrad    dw[K,N] = x[M,K]ᵀ · dy[M,N]
// plus a column sum for the bias gradient db[N] = Σ_m dy[m, :].
#include "common.cuh"

#define VD_LINEAR_TILE 16

// Mirrors `GemmArgs` in src/backend/gpu/linear.rs.
// c[i, j] = bias[j] + Σ_{k < depth} A(i, k) · B(k, j), i < rows, j < cols, with
// A(i, k) = a[i · a_row + k · a_col] and B(k, j) = b[k · b_row + j · b_col]
// (the strides express the transposes). bias may be null. c is row-major.
struct VdLinearGemmArgs {
    const float* a;
    const float* b;
    const float* bias;
    float* c;
    int rows;
    int cols;
    int depth;
    int a_row;
    int a_col;
    int b_row;
    int b_col;
    int pad_;
};

// A 16 × 16 block of threads computes a 16 × 16 tile of c, one element per
// thread; the K loop stages 16 × 16 tiles of A and B in shared memory and each
// thread accumulates its dot product in k order with fused multiply-adds.
extern "C" __global__ void vd_linear_gemm(VdLinearGemmArgs p) {
    __shared__ float sa[VD_LINEAR_TILE][VD_LINEAR_TILE + 1];  // sa[i][k]
    __shared__ float sb[VD_LINEAR_TILE][VD_LINEAR_TILE + 1];  // sb[k][j]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.y * VD_LINEAR_TILE + ty, j = blockIdx.x * VD_LINEAR_TILE + tx;
    const float* __restrict__ a = p.a;
    const float* __restrict__ b = p.b;
    float acc = 0.0f;
    for (int k0 = 0; k0 < p.depth; k0 += VD_LINEAR_TILE) {
        const int ka = k0 + tx, kb = k0 + ty;
        sa[ty][tx] = (i < p.rows && ka < p.depth) ? a[(i64)i * p.a_row + (i64)ka * p.a_col] : 0.0f;
        sb[ty][tx] = (kb < p.depth && j < p.cols) ? b[(i64)kb * p.b_row + (i64)j * p.b_col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < VD_LINEAR_TILE; ++kk) acc = fmaf(sa[ty][kk], sb[kk][tx], acc);
        __syncthreads();
    }
    if (i < p.rows && j < p.cols) p.c[(i64)i * p.cols + j] = acc + (p.bias ? p.bias[j] : 0.0f);
}

// db[j] = Σ_{i < rows} dy[i · cols + j] (rows ascending); one thread per column.
extern "C" __global__ void vd_linear_bias_grad(const float* __restrict__ dy, float* __restrict__ db, int rows,
                                               int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float s = 0.0f;
    for (int i = 0; i < rows; ++i) s += dy[(i64)i * cols + j];
    db[j] = s;
}
