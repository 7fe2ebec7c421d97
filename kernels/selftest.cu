// Self-tests of the execution model and of the common.cuh wrappers, run on the
// emulator by tests/emu_*.rs (and on a GPU with VOXDIFF_TEST_DEVICE=cuda). Each
// kernel's expected output is computed independently in the test.
#include "philox.cuh"

// Inclusive prefix sum of each block's segment of x (Hillis–Steele through shared
// memory: log2(blockDim) steps, two barriers each). Wrong without the barriers.
extern "C" __global__ void vd_selftest_block_scan(const int* __restrict__ x, int* __restrict__ y, int n) {
    __shared__ int buf[2][1024];
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    int cur = 0;
    buf[cur][t] = i < n ? x[i] : 0;
    __syncthreads();
    for (int step = 1; step < (int)blockDim.x; step *= 2) {
        buf[1 - cur][t] = buf[cur][t] + (t >= step ? buf[cur][t - step] : 0);
        cur = 1 - cur;
        __syncthreads();
    }
    if (i < n) y[i] = buf[cur][t];
}

// Reverses each block's segment of x through static shared memory.
extern "C" __global__ void vd_selftest_block_reverse(const float* __restrict__ x, float* __restrict__ y, int n) {
    __shared__ float s[1024];
    const int base = blockIdx.x * blockDim.x, t = threadIdx.x;
    const int count = min((int)blockDim.x, n - base);
    if (t < count) s[t] = x[base + t];
    __syncthreads();
    if (t < count) y[base + t] = s[count - 1 - t];
}

// Threads with t >= n exit before the barrier; exited threads count as arrived.
extern "C" __global__ void vd_selftest_early_exit(const float* __restrict__ x, float* __restrict__ y, int n) {
    __shared__ float s[1024];
    const int t = threadIdx.x;
    if (t >= n) return;
    s[t] = x[t];
    __syncthreads();
    y[t] = s[(t + 1) % n];
}

// Dynamic shared memory: each block stages its segment and writes
// y[i] = s[t] + s[(t + 1) mod blockDim]. The launch asks for blockDim + 1
// floats; the last one is never written and its bits go to poison[block].
extern "C" __global__ void vd_selftest_dynamic_smem(const float* __restrict__ x, float* __restrict__ y,
                                                    unsigned* __restrict__ poison) {
    VD_DYNAMIC_SMEM(float, s);
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = x[i];
    __syncthreads();
    y[i] = s[t] + s[(t + 1) % blockDim.x];
    if (t == 0) poison[blockIdx.x] = __float_as_uint(s[blockDim.x]);
}

// A barrier inside a divergent branch: threads 0..15 wait at one __syncthreads,
// the others at another. Must be reported as a deadlock.
extern "C" __global__ void vd_selftest_deadlock_barrier(int* y) {
    if (threadIdx.x < 16) {
        __syncthreads();
    }
    y[threadIdx.x] = 1;
    __syncthreads();
}

// Lanes 0..15 wait at __syncthreads while 16..31 wait at a full-warp shuffle
// that needs lanes 0..15: no thread can proceed.
extern "C" __global__ void vd_selftest_deadlock_warp(int* y) {
    int v = threadIdx.x;
    if (threadIdx.x < 16)
        __syncthreads();
    else
        v = __shfl_sync(0xffffffffu, v, 0);
    y[threadIdx.x] = v;
}

// Every shuffle and vote variant; 17 outputs per thread (see tests/emu_warp.rs).
#define VD_SHFL_OUTPUTS 17
extern "C" __global__ void vd_selftest_shuffles(const int* __restrict__ x, int* __restrict__ out) {
    const unsigned full = 0xffffffffu;
    const int t = threadIdx.x, l = t & 31, v = x[t];
    int* o = out + t * VD_SHFL_OUTPUTS;
    o[0] = __shfl_sync(full, v, l * 7 + 3);
    o[1] = __shfl_sync(full, v, l * 5 + 1, 8);
    o[2] = __shfl_up_sync(full, v, 3);
    o[3] = __shfl_up_sync(full, v, 2, 8);
    o[4] = __shfl_down_sync(full, v, 5);
    o[5] = __shfl_down_sync(full, v, 3, 16);
    o[6] = __shfl_xor_sync(full, v, 6);
    o[7] = __shfl_xor_sync(full, v, 8, 8);
    o[8] = (int)__ballot_sync(full, v & 1);
    o[9] = __any_sync(full, v > 1000);
    o[10] = __all_sync(full, v >= 0);
    o[11] = (int)__reduce_add_sync(full, (unsigned)v);
    if (l < 16)
        o[12] = __shfl_sync(0x0000ffffu, v, 15 - l);
    else
        o[12] = __shfl_sync(0xffff0000u, v, 47 - l);
    o[13] = (int)__float_as_uint(__shfl_down_sync(full, (float)v * 0.5f, 1));
    const long long wide = ((long long)v << 33) | l;
    const long long got = __shfl_xor_sync(full, wide, 1);
    o[14] = (int)(got & 0xffffffff);
    o[15] = (int)(got >> 32);
    // Lane 20 is outside the mask of lanes 0..15: undefined on a GPU, poison here.
    if (l < 16)
        o[16] = __shfl_sync(0x0000ffffu, v, 20);
    else
        o[16] = __shfl_sync(0xffff0000u, v, l);
}

// Block-wide and warp-wide sums through the common.cuh helpers:
// y[2b] = Σ x over block b's segment, y[2b+1] = Σ over each warp's warp_max.
extern "C" __global__ void vd_selftest_block_sum(const float* __restrict__ x, float* __restrict__ y) {
    __shared__ float scratch[32];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = x[i];
    const float s = vd_block_sum(v, scratch);
    const float m = vd_warp_max(v);
    const float ms = vd_block_sum(vd_lane() == 0 ? m : 0.0f, scratch);
    if (threadIdx.x == 0) {
        y[2 * blockIdx.x] = s;
        y[2 * blockIdx.x + 1] = ms;
    }
}

// Atomics from every thread of every block. x holds small integers, so the
// float sum is exact in any order. cells: [0] f32 sum, [1] i32 sum of i,
// [2] u32 count, [3] i32 max of h(i), [4] i32 min of h(i), [5] u32 CAS-loop
// count, [6] u32 exch: the last i written, [7] u32 or of bits.
extern "C" __global__ void vd_selftest_atomics(const float* __restrict__ x, float* fsum, int* cells, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(fsum, x[i]);
    atomicAdd(&cells[1], i);
    atomicAdd(reinterpret_cast<unsigned*>(&cells[2]), 1u);
    const int h = (i * 7919) % 1000 - 500;
    atomicMax(&cells[3], h);
    atomicMin(&cells[4], h);
    unsigned* cas = reinterpret_cast<unsigned*>(&cells[5]);
    unsigned old = *cas, assumed;
    do {
        assumed = old;
        old = atomicCAS(cas, assumed, assumed + 1);
    } while (old != assumed);
    atomicExch(reinterpret_cast<unsigned*>(&cells[6]), (unsigned)i);
    atomicOr(reinterpret_cast<unsigned*>(&cells[7]), 1u << (i % 32));
}

// One warp: D = A·B + C on a 16×8×16 tile. A is 16×16 row-major bf16; C, D are
// 16×8 row-major f32. B's storage and the fragment loads depend on `mode`:
// 0: B is K×N (16×8) row-major; A by ldmatrix.x4, B by ldmatrix.x2.trans;
// 1: B is K×N row-major; fragments loaded per lane from the PTX ISA formulas;
// 2: B is stored N×K (8×16, i.e. Bᵀ row-major); A by ldmatrix.x4, B by ldmatrix.x2.
extern "C" __global__ void vd_selftest_mma(const bf16* __restrict__ A, const bf16* __restrict__ B,
                                           const float* __restrict__ C, float* __restrict__ D, int mode) {
    __shared__ __align__(16) bf16 sa[16][16];
    __shared__ __align__(16) bf16 sb[16][16];  // K×N uses [k][0..7], N×K uses [n][0..15]
    const int l = threadIdx.x;
    for (int e = l; e < 256; e += 32) sa[e / 16][e % 16] = A[e];
    for (int e = l; e < 128; e += 32) {
        if (mode == 2)
            sb[e / 16][e % 16] = B[e];
        else
            sb[e / 8][e % 8] = B[e];
    }
    __syncthreads();
    const int g = l >> 2, tq = l & 3;
    u32 a[4], b[2];
    if (mode == 1) {
        auto pk = [](bf16 lo, bf16 hi) { return (u32)bf16_bits(lo) | ((u32)bf16_bits(hi) << 16); };
        a[0] = pk(sa[g][2 * tq], sa[g][2 * tq + 1]);
        a[1] = pk(sa[g + 8][2 * tq], sa[g + 8][2 * tq + 1]);
        a[2] = pk(sa[g][2 * tq + 8], sa[g][2 * tq + 9]);
        a[3] = pk(sa[g + 8][2 * tq + 8], sa[g + 8][2 * tq + 9]);
        b[0] = pk(sb[2 * tq][g], sb[2 * tq + 1][g]);
        b[1] = pk(sb[2 * tq + 8][g], sb[2 * tq + 9][g]);
    } else {
        // Matrices 0..3 of A: rows 0-7/8-15 × cols 0-7, then × cols 8-15.
        vd_ldmatrix_x4(a, &sa[l % 16][(l / 16) * 8]);
        if (mode == 0)
            vd_ldmatrix_x2_trans(b, &sb[l % 16][0]);  // matrices: k 0-7, k 8-15
        else
            vd_ldmatrix_x2(b, &sb[l % 8][((l / 8) % 2) * 8]);  // rows n, k 0-7 / 8-15
    }
    float c[4] = {C[g * 8 + 2 * tq], C[g * 8 + 2 * tq + 1], C[(g + 8) * 8 + 2 * tq], C[(g + 8) * 8 + 2 * tq + 1]};
    float d[4];
    vd_mma_bf16_16816(d, a, b, c);
    D[g * 8 + 2 * tq] = d[0];
    D[g * 8 + 2 * tq + 1] = d[1];
    D[(g + 8) * 8 + 2 * tq] = d[2];
    D[(g + 8) * 8 + 2 * tq + 1] = d[3];
}

// ldmatrix registers as loaded: four 8×8 b16 matrices stored with a row pitch
// of 24 elements (48 bytes); matrix m row r holds values M[m*64 + r*8 + c].
// out[(v*32 + lane)*4 + reg] for v = 0: x1, 1: x2, 2: x4 (.trans when `trans`).
extern "C" __global__ void vd_selftest_ldmatrix(const unsigned short* __restrict__ M, unsigned* __restrict__ out,
                                                int trans) {
    __shared__ __align__(16) unsigned short s[4 * 8][24];
    const int l = threadIdx.x;
    for (int e = l; e < 256; e += 32) s[e / 8][e % 8] = M[e];
    for (int e = l; e < 32 * 16; e += 32) s[e / 16][8 + e % 16] = 0xDEAD;  // padding
    __syncthreads();
    const void* row = &s[(l / 8) * 8 + l % 8][0];  // lane 8m + r: row r of matrix m
    u32 r[4] = {0, 0, 0, 0};
    unsigned* o = out + l * 4;
    if (trans) vd_ldmatrix_x1_trans(r, row); else vd_ldmatrix_x1(r, row);
    for (int k = 0; k < 4; ++k) o[k] = k < 1 ? r[k] : 0;
    if (trans) vd_ldmatrix_x2_trans(r, row); else vd_ldmatrix_x2(r, row);
    for (int k = 0; k < 4; ++k) o[32 * 4 + k] = k < 2 ? r[k] : 0;
    if (trans) vd_ldmatrix_x4_trans(r, row); else vd_ldmatrix_x4(r, row);
    for (int k = 0; k < 4; ++k) o[64 * 4 + k] = r[k];
}

// The bare mma.sync wrapper on registers given per lane (one warp): lane l
// passes a[4·l..], b[2·l..], c[4·l..] and writes its d to d[4·l..]. The
// fragment layouts are the test's to choose (tests/emu_cute_oracle.rs).
extern "C" __global__ void vd_selftest_mma_regs(const u32* __restrict__ a, const u32* __restrict__ b,
                                                const float* __restrict__ c, float* __restrict__ d) {
    const int l = threadIdx.x;
    const u32 ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    const u32 rb[2] = {b[2 * l], b[2 * l + 1]};
    const float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    float rd[4];
    vd_mma_bf16_16816(rd, ra, rb, rc);
    for (int k = 0; k < 4; ++k) d[4 * l + k] = rd[k];
}

// The bare ldmatrix wrappers with row addresses chosen per lane (one warp): 32
// rows of 8 b16 (`rows`, row pitch 16 elements in shared memory); lane l
// passes the address of row row_of_lane[l]. `variant` = 2·v + trans with v = 0
// (x1), 1 (x2), 2 (x4); out[4·l + r] is lane l's register r (0 past the count).
extern "C" __global__ void vd_selftest_ldmatrix_rows(const unsigned short* __restrict__ rows,
                                                     const int* __restrict__ row_of_lane, u32* __restrict__ out,
                                                     int variant) {
    __shared__ __align__(16) unsigned short s[32][16];
    const int l = threadIdx.x;
    for (int e = l; e < 32 * 16; e += 32) s[e / 16][e % 16] = e % 16 < 8 ? rows[(e / 16) * 8 + e % 16] : 0xDEAD;
    __syncthreads();
    const void* row = &s[row_of_lane[l]][0];
    u32 r[4] = {0, 0, 0, 0};
    switch (variant) {
        case 0: vd_ldmatrix_x1(r, row); break;
        case 1: vd_ldmatrix_x1_trans(r, row); break;
        case 2: vd_ldmatrix_x2(r, row); break;
        case 3: vd_ldmatrix_x2_trans(r, row); break;
        case 4: vd_ldmatrix_x4(r, row); break;
        default: vd_ldmatrix_x4_trans(r, row); break;
    }
    for (int k = 0; k < 4; ++k) out[4 * l + k] = r[k];
}

// cp.async: 64 threads stage `n` floats (n <= 256) into shared memory. Thread t
// copies the 16-byte chunk t in group 0 if t < 32, else in group 1; chunks past
// n are zero-filled (valid = false). The odd tail element uses a 4-byte copy.
// y receives the shared buffer (256 floats + 4 of the tail slot).
extern "C" __global__ void vd_selftest_cp_async(const float* __restrict__ x, float* __restrict__ y, int n) {
    __shared__ __align__(16) float s[260];
    const int t = threadIdx.x;
    const int full = n / 4;  // whole 16-byte chunks
    if (t < 32) vd_cp_async<16>(&s[4 * t], x + 4 * min(t, max(full - 1, 0)), t < full);
    vd_cp_async_commit();
    if (t >= 32) vd_cp_async<16>(&s[4 * t], x + 4 * min(t, max(full - 1, 0)), t < full);
    if (t < 4) vd_cp_async<4>(&s[256 + t], x + min(4 * full + t, n - 1), 4 * full + t < n);
    vd_cp_async_commit();
    vd_cp_async_wait<1>();  // group 0 landed
    vd_cp_async_wait<0>();  // group 1 landed
    __syncthreads();
    for (int e = t; e < 260; e += 64) y[e] = s[e];
}

// A missing barrier: each thread writes s[t] then reads its neighbour's slot
// without __syncthreads. In the default order thread t finishes before t + 1
// starts, so it reads poison; a shuffled order changes what is read.
extern "C" __global__ void vd_selftest_missing_barrier(float* __restrict__ y) {
    VD_DYNAMIC_SMEM(float, s);
    const int t = threadIdx.x;
    s[t] = (float)t;
    y[t] = s[(t + 1) % blockDim.x];
}

// A 16-byte load from a pointer that is not 16-byte aligned (an emulation error).
extern "C" __global__ void vd_selftest_misaligned(const float* __restrict__ x, float* __restrict__ y) {
    const float4 v = vd_load_f32x4(x + 1);
    y[threadIdx.x] = v.x;
}

// Raw Philox words and uniforms of blocks first .. first + count (one per thread):
// words[4b + j], uniforms[4b + j].
extern "C" __global__ void vd_selftest_philox(u32* __restrict__ words, float* __restrict__ uniforms, u64 seed,
                                              u64 first, int count) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= count) return;
    const u64 block = first + (u64)b;
    u32 r[4] = {(u32)block, (u32)(block >> 32), 0u, 0u};
    vd_philox4x32_10(r, (u32)seed, (u32)(seed >> 32));
    for (int j = 0; j < 4; ++j) {
        words[4 * b + j] = r[j];
        uniforms[4 * b + j] = vd_philox_uniform(r[j]);
    }
}

// `rounds` block barriers (emulator cost measurement): counter[t] = rounds.
extern "C" __global__ void vd_selftest_barriers(int* __restrict__ counter, int rounds) {
    __shared__ int s[1024];
    const int t = threadIdx.x;
    s[t] = 0;
    for (int r = 0; r < rounds; ++r) {
        s[t] += 1;
        __syncthreads();
    }
    counter[blockIdx.x * blockDim.x + t] = s[t];
}

// A 256 KiB local array: more than an emulated thread's stack (128 KiB by
// default), so the guard page below the fiber's stack must catch it.
extern "C" __global__ void vd_selftest_stack_overflow(float* __restrict__ y, int n) {
    float big[64 * 1024];
    for (int i = 0; i < n; ++i) big[i] = (float)i;
    y[threadIdx.x] = big[n - 1 - (int)threadIdx.x % n];
}
