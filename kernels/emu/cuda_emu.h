// The CUDA execution model on the CPU: what a kernel source sees when it is
// compiled as C++17 for the emulation (kernels/common.cuh includes this when
// __CUDACC__ is not defined). The runtime behind it is kernels/emu/runtime.cpp
// (blocks, fibers, barriers) and kernels/emu/warp.cpp (warp collectives and the
// mma / ldmatrix / cp.async twins).
//
// Model:
// - A grid's blocks are spread over a small pool of OS threads; one OS thread
//   runs one block at a time, each CUDA thread of the block as a fiber with its
//   own stack (guard page below it). Global memory is host memory, so atomics are
//   real atomics.
// - threadIdx / blockIdx / blockDim / gridDim read the running fiber's values.
// - __shared__ variables are thread_local statics: one instance per OS thread,
//   which runs one block at a time, so one instance per running block.
//   Dynamic shared memory (VD_DYNAMIC_SMEM) is allocated per block launch and
//   poisoned (0xFF bytes: NaN as f32 and bf16) before the block starts.
// - __syncthreads() switches fibers until every live thread of the block waits
//   at the same __syncthreads (same source line); exited threads count as
//   arrived. A barrier that cannot complete is reported as an error, never a hang.
// - Warp collectives wait until every non-exited lane named in the mask arrives
//   at a collective of the same kind and mask, then compute every lane's result
//   at once. A value read from a lane that does not take part is poison.
#pragma once

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

#define VD_EMU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local
#define __constant__ static const

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

constexpr int warpSize = 32;

namespace vd_emu {

// The coordinates of one CUDA thread (the public part of a fiber).
struct ThreadState {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned linear;  // x + block_dim.x · (y + block_dim.y · z)
    unsigned lane;    // linear % 32
    unsigned warp;    // linear / 32
};

// The fiber running on this OS thread.
extern thread_local ThreadState* current;

// Block barrier at source line `line` of `file`.
void syncthreads(const char* file, int line);
// Ends the whole launch with an error naming the kernel, block and thread.
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// This block's dynamic shared memory (16-byte aligned; may be null if none was requested).
unsigned char* dynamic_smem();
unsigned dynamic_smem_bytes();

// Warp collectives (kernels/emu/warp.cpp).
enum ShflKind { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_XOR = 3 };
enum VoteKind { VOTE_BALLOT = 0, VOTE_ANY = 1, VOTE_ALL = 2 };
enum ReduceKind { RED_ADD_U = 0, RED_MIN_U = 1, RED_MAX_U = 2, RED_ADD_I = 3, RED_MIN_I = 4, RED_MAX_I = 5 };
unsigned long long shfl(ShflKind kind, unsigned mask, unsigned long long bits, int arg, int width);
unsigned vote(VoteKind kind, unsigned mask, int pred);
unsigned reduce(ReduceKind kind, unsigned mask, unsigned value);
void syncwarp(unsigned mask);
unsigned activemask();
void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]);
void ldmatrix(unsigned* regs, int num, bool trans, const void* row);
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);

// The poison a lane reads from a lane that did not take part in a shuffle.
constexpr unsigned long long POISON64 = 0xFFFFFFFFFFFFFFFFull;

// ---------------------------------------------------------------- launch table
// Unpacks a `void**` argument array (one pointer per parameter, as cuLaunchKernel
// takes them) into the kernel's typed parameters.
template <typename... A, size_t... I>
inline void invoke_impl(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
inline void invoke(void (*kernel)(A...), void** args) {
    invoke_impl(kernel, args, std::index_sequence_for<A...>{});
}
// The kind of a kernel parameter, as the launch checks it: 0 pointer,
// 1 floating point, 2 integer, 3 anything else (a struct passed by value).
template <typename T>
constexpr unsigned param_kind() {
    return std::is_pointer<T>::value ? 0u : std::is_floating_point<T>::value ? 1u : std::is_integral<T>::value ? 2u : 3u;
}
// Sizes and kinds of the kernel's parameters; returns their count.
template <typename... A>
inline int param_layout(void (*)(A...), unsigned* sizes, unsigned* kinds, int cap) {
    constexpr int n = sizeof...(A);
    const unsigned s[n + 1] = {static_cast<unsigned>(sizeof(A))..., 0};
    const unsigned k[n + 1] = {param_kind<std::remove_cv_t<A>>()..., 0};
    for (int i = 0; i < n && i < cap; ++i) {
        sizes[i] = s[i];
        kinds[i] = k[i];
    }
    return n;
}

template <typename T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace vd_emu

#define threadIdx (vd_emu::current->thread_idx)
#define blockIdx (vd_emu::current->block_idx)
#define blockDim (vd_emu::current->block_dim)
#define gridDim (vd_emu::current->grid_dim)

#define __syncthreads() vd_emu::syncthreads(__FILE__, __LINE__)

// ------------------------------------------------------------- warp functions
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    return vd_emu::from_bits<T>(vd_emu::shfl(vd_emu::SHFL_IDX, mask, vd_emu::to_bits(v), src, width));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return vd_emu::from_bits<T>(vd_emu::shfl(vd_emu::SHFL_UP, mask, vd_emu::to_bits(v), (int)delta, width));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return vd_emu::from_bits<T>(vd_emu::shfl(vd_emu::SHFL_DOWN, mask, vd_emu::to_bits(v), (int)delta, width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    return vd_emu::from_bits<T>(vd_emu::shfl(vd_emu::SHFL_XOR, mask, vd_emu::to_bits(v), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return vd_emu::vote(vd_emu::VOTE_BALLOT, mask, pred); }
inline int __any_sync(unsigned mask, int pred) { return (int)vd_emu::vote(vd_emu::VOTE_ANY, mask, pred); }
inline int __all_sync(unsigned mask, int pred) { return (int)vd_emu::vote(vd_emu::VOTE_ALL, mask, pred); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { vd_emu::syncwarp(mask); }
inline unsigned __activemask() { return vd_emu::activemask(); }
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return vd_emu::reduce(vd_emu::RED_ADD_U, mask, v); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return vd_emu::reduce(vd_emu::RED_MIN_U, mask, v); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return vd_emu::reduce(vd_emu::RED_MAX_U, mask, v); }
inline int __reduce_add_sync(unsigned mask, int v) { return (int)vd_emu::reduce(vd_emu::RED_ADD_I, mask, (unsigned)v); }
inline int __reduce_min_sync(unsigned mask, int v) { return (int)vd_emu::reduce(vd_emu::RED_MIN_I, mask, (unsigned)v); }
inline int __reduce_max_sync(unsigned mask, int v) { return (int)vd_emu::reduce(vd_emu::RED_MAX_I, mask, (unsigned)v); }

// -------------------------------------------------------------------- atomics
// Real atomics: blocks run concurrently on the thread pool.
inline float atomicAdd(float* p, float v) {
    unsigned* u = reinterpret_cast<unsigned*>(p);
    unsigned old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        float f;
        std::memcpy(&f, &old, 4);
        f += v;
        unsigned nw;
        std::memcpy(&nw, &f, 4);
        if (__atomic_compare_exchange_n(u, &old, nw, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            std::memcpy(&f, &old, 4);
            return f;
        }
    }
}
inline double atomicAdd(double* p, double v) {
    unsigned long long* u = reinterpret_cast<unsigned long long*>(p);
    unsigned long long old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        double f;
        std::memcpy(&f, &old, 8);
        f += v;
        unsigned long long nw;
        std::memcpy(&nw, &f, 8);
        if (__atomic_compare_exchange_n(u, &old, nw, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            std::memcpy(&f, &old, 8);
            return f;
        }
    }
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <typename T>
inline T vd_atomic_max(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <typename T>
inline T vd_atomic_min(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicMax(int* p, int v) { return vd_atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return vd_atomic_max(p, v); }
inline long long atomicMax(long long* p, long long v) { return vd_atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return vd_atomic_max(p, v); }
inline int atomicMin(int* p, int v) { return vd_atomic_min(p, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return vd_atomic_min(p, v); }
inline long long atomicMin(long long* p, long long v) { return vd_atomic_min(p, v); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return vd_atomic_min(p, v); }
template <typename T>
inline T vd_atomic_cas(T* p, T compare, T val) {
    __atomic_compare_exchange_n(p, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;  // the old value, whether or not the swap happened
}
inline int atomicCAS(int* p, int c, int v) { return vd_atomic_cas(p, c, v); }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return vd_atomic_cas(p, c, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
    return vd_atomic_cas(p, c, v);
}
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
inline float atomicExch(float* p, float v) {
    unsigned nv;
    std::memcpy(&nv, &v, 4);
    unsigned old = __atomic_exchange_n(reinterpret_cast<unsigned*>(p), nv, __ATOMIC_SEQ_CST);
    float f;
    std::memcpy(&f, &old, 4);
    return f;
}
inline int atomicAnd(int* p, int v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAnd(unsigned* p, unsigned v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// --------------------------------------------------------------- math / bits
// The precise functions are the C library's (same as the CPU backend's). The
// fast intrinsics map to the precise ones: they are within the hardware
// intrinsics' documented error of them.
using std::abs;
using std::ceil;
using std::floor;
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __exp10f(float x) { return exp10f(x); }
inline void __sincosf(float x, float* s, float* c) {
    *s = sinf(x);
    *c = cosf(x);
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline int __float_as_int(float x) {
    int u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __int_as_float(int u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
    return (x >> 16) | (x << 16);
}
// CUDA's overloaded integer/float min and max.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
