// Internal structures of the CUDA emulation runtime, shared by runtime.cpp (the
// block scheduler, fibers, thread pool) and warp.cpp (warp collectives). Kernel
// sources never include this; they see kernels/emu/cuda_emu.h only.
#pragma once

#include <string>
#include <vector>

#include "cuda_emu.h"

namespace vd_emu {

enum class FiberState : unsigned char { Ready, AtBarrier, AtWarpOp, Done };

// What a fiber waiting at a warp collective asked for.
enum class WarpOp : unsigned char { None, Shfl, Vote, Reduce, SyncWarp, Mma, Ldmatrix };

// One cp.async copy, performed when its group is waited for (or at thread exit).
struct CpAsyncCopy {
    unsigned char* dst;
    const unsigned char* src;
    int bytes;
    int src_bytes;  // bytes read from src; the rest of dst is zero-filled
    int group;      // -1 while not yet committed
};

// One CUDA thread.
struct Fiber {
    ThreadState ts;  // what threadIdx & co. read
    void* sp = nullptr;
    unsigned char* mapping = nullptr;  // guard page + stack
    size_t mapping_bytes = 0;
    FiberState state = FiberState::Done;
    // __syncthreads site
    const char* bar_file = nullptr;
    int bar_line = 0;
    // warp collective request and result
    WarpOp op = WarpOp::None;
    int sub = 0;  // ShflKind / VoteKind / ReduceKind / ldmatrix (num | trans << 4)
    unsigned mask = 0;
    unsigned long long in_bits = 0;
    int in_arg = 0;
    int in_width = 32;
    const void* in_ptr = nullptr;
    unsigned in_regs[10] = {};
    unsigned long long out_bits = 0;
    unsigned out_regs[4] = {};
    // cp.async
    std::vector<CpAsyncCopy> cp_pending;
    int cp_next_group = 0;
};

struct Launch;

// Per OS thread: the fibers of the block it runs and the scheduler's context.
struct Worker {
    std::vector<Fiber> fibers;
    std::vector<int> order;
    void* sched_sp = nullptr;
    Fiber* running = nullptr;
    Launch* launch = nullptr;
    uint3 block_idx = {0, 0, 0};
    int nthreads = 0;
    bool failed = false;
    std::string error;
    unsigned char* smem = nullptr;  // dynamic shared memory
    size_t smem_cap = 0;
    size_t smem_bytes = 0;
    ~Worker();
};

Worker& worker();
// The fiber running on this OS thread; fails loudly when called outside a kernel.
Fiber& running_fiber(const char* what);
// Parks the running fiber (its state already set) and resumes the scheduler.
void park(Fiber& f);
// "kernel vd_x, block (bx,by,bz)" of the running block.
std::string block_label(const Worker& w);
// Records a scheduler-side error for the running block.
void block_error(Worker& w, const std::string& msg);
// Completes every warp collective whose participants have all arrived
// (warp.cpp). Returns true when at least one was released.
bool release_warp_ops(Worker& w);
// Performs the running fiber's cp.async copies of groups older than the newest
// `keep` committed groups (keep < 0: all copies, committed or not).
void cp_async_complete(Fiber& f, int keep);
// Description of a waiting fiber for deadlock reports.
std::string describe_wait(const Fiber& f);

}  // namespace vd_emu
