// The portable layer every kernel family includes. It compiles two ways:
// - with NVRTC (__CUDACC__): CUDA's own types and intrinsics, and the only raw
//   inline PTX of the project (mma.sync, ldmatrix, cp.async);
// - as C++17 for the CPU emulation: kernels/emu/cuda_emu.h, where each PTX
//   wrapper has a twin that follows the PTX ISA's fragment layouts.
// Kernels use what is defined here and plain CUDA C++ (threadIdx, __shared__,
// __syncthreads, __shfl*_sync, atomics, math functions), nothing else.
//
// Rules (docs/cuda.md):
// - entry points are `extern "C" __global__ void vd_<family>_<op>[_<variant>]`;
// - dynamic shared memory only through VD_DYNAMIC_SMEM;
// - 16-byte vector accesses only through vd_load16 / vd_store16 and friends;
// - bf16 only through bf16_to_f32 / f32_to_bf16 (round to nearest even);
// - no block waits on another block (cross-block work: two stages or atomics).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#define VD_DEVICE __device__ __forceinline__
typedef __nv_bfloat16 bf16;
VD_DEVICE float bf16_to_f32(bf16 v) { return __bfloat162float(v); }
VD_DEVICE bf16 f32_to_bf16(float v) { return __float2bfloat16_rn(v); }
VD_DEVICE unsigned short bf16_bits(bf16 v) { return __bfloat16_as_ushort(v); }
VD_DEVICE bf16 bf16_from_bits(unsigned short b) { return __ushort_as_bfloat16(b); }
// The block's dynamic shared memory as `T* name` (16-byte aligned).
#define VD_DYNAMIC_SMEM(T, name)                                 \
    extern __shared__ __align__(16) unsigned char vd_dyn_smem_[]; \
    T* name = reinterpret_cast<T*>(vd_dyn_smem_)
#define VD_CHECK_ALIGN(p, n, what) ((void)0)
#else
#include "emu/cuda_emu.h"
#define VD_DEVICE inline __attribute__((always_inline))
// bf16 as the hardware stores it: the upper half of an f32.
struct bf16 {
    unsigned short bits;
};
VD_DEVICE float bf16_to_f32(bf16 v) { return __uint_as_float((unsigned)v.bits << 16); }
// Round to nearest even; NaN becomes the canonical 0x7FFF (as cvt.rn.bf16.f32).
VD_DEVICE bf16 f32_to_bf16(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{0x7FFF};
    u += 0x7FFFu + ((u >> 16) & 1u);
    return bf16{(unsigned short)(u >> 16)};
}
VD_DEVICE unsigned short bf16_bits(bf16 v) { return v.bits; }
VD_DEVICE bf16 bf16_from_bits(unsigned short b) { return bf16{b}; }
#define VD_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(vd_emu::dynamic_smem())
#define VD_CHECK_ALIGN(p, n, what)                                                   \
    do {                                                                             \
        if (reinterpret_cast<unsigned long long>(p) % (n) != 0)                      \
            vd_emu::fail("misaligned %d-byte %s at %p", (int)(n), what, (const void*)(p)); \
    } while (0)
#endif

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// ------------------------------------------------------------------ indexing
// Linear thread index within the block (x fastest), its warp and lane.
VD_DEVICE u32 vd_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
VD_DEVICE u32 vd_block_threads() { return blockDim.x * blockDim.y * blockDim.z; }
VD_DEVICE u32 vd_lane() { return vd_tid() & 31u; }
VD_DEVICE u32 vd_warp() { return vd_tid() >> 5; }

// ------------------------------------------------------------- vector access
// 16 bytes at once; `p` must be 16-byte aligned (checked in emulation).
VD_DEVICE uint4 vd_load16(const void* p) {
    VD_CHECK_ALIGN(p, 16, "vector load");
    return *reinterpret_cast<const uint4*>(p);
}
VD_DEVICE void vd_store16(void* p, uint4 v) {
    VD_CHECK_ALIGN(p, 16, "vector store");
    *reinterpret_cast<uint4*>(p) = v;
}
VD_DEVICE float4 vd_load_f32x4(const float* p) {
    VD_CHECK_ALIGN(p, 16, "vector load");
    return *reinterpret_cast<const float4*>(p);
}
VD_DEVICE void vd_store_f32x4(float* p, float4 v) {
    VD_CHECK_ALIGN(p, 16, "vector store");
    *reinterpret_cast<float4*>(p) = v;
}
// Two bf16 in one register: `lo` in bits 0..15 (the lower address / index).
VD_DEVICE u32 vd_pack_bf16x2(float lo, float hi) {
    return (u32)bf16_bits(f32_to_bf16(lo)) | ((u32)bf16_bits(f32_to_bf16(hi)) << 16);
}
VD_DEVICE float vd_bf16x2_lo(u32 r) { return __uint_as_float(r << 16); }
VD_DEVICE float vd_bf16x2_hi(u32 r) { return __uint_as_float(r & 0xFFFF0000u); }
// 8 bf16 (one 16-byte vector) to and from 8 floats.
VD_DEVICE void vd_unpack_bf16x8(uint4 v, float out[8]) {
    out[0] = vd_bf16x2_lo(v.x);
    out[1] = vd_bf16x2_hi(v.x);
    out[2] = vd_bf16x2_lo(v.y);
    out[3] = vd_bf16x2_hi(v.y);
    out[4] = vd_bf16x2_lo(v.z);
    out[5] = vd_bf16x2_hi(v.z);
    out[6] = vd_bf16x2_lo(v.w);
    out[7] = vd_bf16x2_hi(v.w);
}
VD_DEVICE uint4 vd_pack_bf16x8(const float in[8]) {
    uint4 v;
    v.x = vd_pack_bf16x2(in[0], in[1]);
    v.y = vd_pack_bf16x2(in[2], in[3]);
    v.z = vd_pack_bf16x2(in[4], in[5]);
    v.w = vd_pack_bf16x2(in[6], in[7]);
    return v;
}

// ------------------------------------------------- typed element access
// Element i of an f32 or bf16 array as f32, and back (f32 → bf16 rounds to
// nearest even); 8 consecutive elements at p (16-byte aligned) at once.
VD_DEVICE float vd_ld(const float* p, i64 i = 0) { return p[i]; }
VD_DEVICE float vd_ld(const bf16* p, i64 i = 0) { return bf16_to_f32(p[i]); }
VD_DEVICE void vd_st(float* p, float v) { *p = v; }
VD_DEVICE void vd_st(bf16* p, float v) { *p = f32_to_bf16(v); }
VD_DEVICE void vd_st(float* p, i64 i, float v) { p[i] = v; }
VD_DEVICE void vd_st(bf16* p, i64 i, float v) { p[i] = f32_to_bf16(v); }
VD_DEVICE void vd_ld8(const float* p, float v[8]) {
    const float4 a = vd_load_f32x4(p), b = vd_load_f32x4(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
VD_DEVICE void vd_ld8(const bf16* p, float v[8]) { vd_unpack_bf16x8(vd_load16(p), v); }
VD_DEVICE void vd_st8(float* p, const float v[8]) {
    vd_store_f32x4(p, make_float4(v[0], v[1], v[2], v[3]));
    vd_store_f32x4(p + 4, make_float4(v[4], v[5], v[6], v[7]));
}
VD_DEVICE void vd_st8(bf16* p, const float v[8]) { vd_store16(p, vd_pack_bf16x8(v)); }

// ---------------------------------------------------------- warp reductions
// Butterfly reductions over the full warp: every lane gets the result. All 32
// lanes must be live (launch blocks of a multiple of 32 threads, no early exit
// before the call); in emulation a missing lane reads as NaN poison.
VD_DEVICE float vd_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
VD_DEVICE float vd_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
VD_DEVICE float vd_warp_min(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
VD_DEVICE int vd_warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// Block-wide sum, returned to every thread. `scratch` is 32 floats of shared
// memory; blockDim is a multiple of 32. Contains two __syncthreads, so every
// thread of the block must call it.
VD_DEVICE float vd_block_sum(float v, float* scratch) {
    const u32 lane = vd_lane(), warp = vd_warp(), nwarps = vd_block_threads() >> 5;
    v = vd_warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return vd_warp_sum(lane < nwarps ? scratch[lane] : 0.0f);
}

// ---------------------------------------------------------- tensor cores
// D = A·B + C on one m16n8k16 tile: A 16×16 bf16 (row), B 16×8 bf16 (col),
// C and D 16×8 f32, fragments as in the PTX ISA (see kernels/emu/warp.cpp for
// the layouts). All 32 lanes of the warp take part.
VD_DEVICE void vd_mma_bf16_16816(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
#if defined(__CUDACC__)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    vd_emu::mma_m16n8k16_bf16(d, a, b, c);
#endif
}

// ldmatrix.m8n8 (b16): lane 8·m + r passes the shared-memory address of row r
// of matrix m (16-byte aligned); lane l receives, per matrix m, register r[m]
// holding row l/4, columns 2(l%4) and 2(l%4)+1 (.trans: the transpose).
#if defined(__CUDACC__)
#define VD_LDMATRIX(NAME, NUM, SUFFIX, REGS, ...)                                           \
    VD_DEVICE void NAME(u32 r[NUM], const void* smem_row) {                                  \
        u32 addr = (u32)__cvta_generic_to_shared(smem_row);                                  \
        asm volatile("ldmatrix.sync.aligned.m8n8" SUFFIX ".shared.b16 " REGS ", [%" #NUM "];\n" \
                     : __VA_ARGS__                                                           \
                     : "r"(addr));                                                           \
    }
VD_LDMATRIX(vd_ldmatrix_x1, 1, ".x1", "{%0}", "=r"(r[0]))
VD_LDMATRIX(vd_ldmatrix_x2, 2, ".x2", "{%0,%1}", "=r"(r[0]), "=r"(r[1]))
VD_LDMATRIX(vd_ldmatrix_x4, 4, ".x4", "{%0,%1,%2,%3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
VD_LDMATRIX(vd_ldmatrix_x1_trans, 1, ".x1.trans", "{%0}", "=r"(r[0]))
VD_LDMATRIX(vd_ldmatrix_x2_trans, 2, ".x2.trans", "{%0,%1}", "=r"(r[0]), "=r"(r[1]))
VD_LDMATRIX(vd_ldmatrix_x4_trans, 4, ".x4.trans", "{%0,%1,%2,%3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]),
            "=r"(r[3]))
#undef VD_LDMATRIX
#else
VD_DEVICE void vd_ldmatrix_x1(u32 r[1], const void* p) { vd_emu::ldmatrix(r, 1, false, p); }
VD_DEVICE void vd_ldmatrix_x2(u32 r[2], const void* p) { vd_emu::ldmatrix(r, 2, false, p); }
VD_DEVICE void vd_ldmatrix_x4(u32 r[4], const void* p) { vd_emu::ldmatrix(r, 4, false, p); }
VD_DEVICE void vd_ldmatrix_x1_trans(u32 r[1], const void* p) { vd_emu::ldmatrix(r, 1, true, p); }
VD_DEVICE void vd_ldmatrix_x2_trans(u32 r[2], const void* p) { vd_emu::ldmatrix(r, 2, true, p); }
VD_DEVICE void vd_ldmatrix_x4_trans(u32 r[4], const void* p) { vd_emu::ldmatrix(r, 4, true, p); }
#endif

// ------------------------------------------------------------- async copies
// cp.async global → shared of 4, 8 or 16 bytes (both addresses aligned to the
// size). With `valid == false` nothing is read and the destination is zero-filled
// (`src` must still be a mapped address: pass a clamped one). Copies land when
// their group is waited for: vd_cp_async_commit() closes a group,
// vd_cp_async_wait<N>() waits until at most N newest groups are pending. The
// data is visible to other threads only after a __syncthreads that follows the
// wait. (Emulation performs a thread's copies at its wait, so a missing wait or
// barrier shows up as stale data.)
template <int BYTES>
VD_DEVICE void vd_cp_async(void* smem_dst, const void* gmem_src, bool valid = true) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDACC__)
    u32 dst = (u32)__cvta_generic_to_shared(smem_dst);
    int src_bytes = valid ? BYTES : 0;
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(gmem_src), "n"(BYTES),
                     "r"(src_bytes));
#else
    vd_emu::cp_async(smem_dst, gmem_src, BYTES, valid ? BYTES : 0);
#endif
}
VD_DEVICE void vd_cp_async_commit() {
#if defined(__CUDACC__)
    asm volatile("cp.async.commit_group;\n" ::);
#else
    vd_emu::cp_async_commit();
#endif
}
template <int N>
VD_DEVICE void vd_cp_async_wait() {
#if defined(__CUDACC__)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#else
    vd_emu::cp_async_wait(N);
#endif
}
