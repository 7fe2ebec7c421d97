// The CUDA emulation runtime: fibers, the per-block scheduler with its barrier
// and deadlock logic, the thread pool that spreads blocks, and the C entry
// points the Rust Emu device calls (vd_emu_launch, vd_emu_switch_ns).
//
// A launch of grid G and block B runs every block exactly once. The calling
// thread and up to VOXDIFF_EMU_THREADS - 1 pool threads (default: the number of
// cores) take block indices from an atomic counter. A block runs on one OS
// thread: its B CUDA threads are fibers, started in order (thread x fastest, or
// a seeded shuffle of that order); each runs until it parks at a barrier or a
// warp collective or exits. When none can run, the scheduler releases the warp
// collectives whose participants have all arrived, else the block barrier if
// every live thread waits at the same __syncthreads, else it reports a deadlock.
#include "runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

// ------------------------------------------------------------ context switch
// vd_emu_switch(save, next): saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer in *save, loads
// `next` and restores the same from it. A new fiber's stack is prepared so the
// first switch "returns" into vd_emu_fiber_start with r12 = Fiber*, r13 = entry.
extern "C" void vd_emu_switch(void** save, void* next);
extern "C" void vd_emu_fiber_start();
asm(R"(
    .text
    .globl vd_emu_switch
    .type vd_emu_switch,@function
vd_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size vd_emu_switch, .-vd_emu_switch

    .globl vd_emu_fiber_start
    .type vd_emu_fiber_start,@function
vd_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size vd_emu_fiber_start, .-vd_emu_fiber_start
)");

namespace vd_emu {

thread_local ThreadState* current = nullptr;

struct Launch {
    void (*thunk)(void**);
    const char* name;
    dim3 grid, block;
    size_t smem;
    void** args;
    bool shuffle;
    unsigned long long seed;
    unsigned long long nblocks;
    std::atomic<unsigned long long> next{0};
    std::atomic<unsigned long long> finished{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::condition_variable done;
    std::string error;
};

// This thread's Worker once constructed (read by the crash handler).
extern thread_local Worker* tls_worker_ptr;

namespace {

size_t page_size() {
    static size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

size_t env_size(const char* name, size_t fallback) {
    const char* v = getenv(name);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    unsigned long long x = strtoull(v, &end, 10);
    return (end && *end == 0 && x > 0) ? (size_t)x : fallback;
}

// Fiber stack size (VOXDIFF_EMU_STACK_KIB, default 128 KiB; virtual memory only
// until touched).
size_t stack_bytes() {
    static size_t s = env_size("VOXDIFF_EMU_STACK_KIB", 128) * 1024;
    return (s + page_size() - 1) / page_size() * page_size();
}

unsigned long long splitmix(unsigned long long& x) {
    x += 0x9E3779B97F4A7C15ull;
    unsigned long long z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void ensure_stack(Fiber& f) {
    if (f.mapping) return;
    size_t total = stack_bytes() + page_size();
    void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "voxdiff emu: cannot map a %zu-byte fiber stack\n", total);
        abort();
    }
    // The guard page: a stack overflow faults instead of corrupting memory.
    mprotect(m, page_size(), PROT_NONE);
    f.mapping = static_cast<unsigned char*>(m);
    f.mapping_bytes = total;
}

// The body of every fiber: run the kernel, finish its copies, park as Done.
void fiber_main(Fiber* f) {
    Worker& w = worker();
    w.launch->thunk(w.launch->args);
    cp_async_complete(*f, -1);
    f->state = FiberState::Done;
    vd_emu_switch(&f->sp, w.sched_sp);
    __builtin_unreachable();
}

// Lays out the initial frame vd_emu_switch pops (see the asm above).
void init_context(Fiber& f) {
    unsigned char* top = f.mapping + f.mapping_bytes;
    top = reinterpret_cast<unsigned char*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15));
    void** sp = reinterpret_cast<void**>(top - 80);
    unsigned ctrl[2];
    asm volatile("stmxcsr %0" : "=m"(ctrl[0]));
    asm volatile("fnstcw %0" : "=m"(ctrl[1]));
    ctrl[1] &= 0xFFFF;
    std::memcpy(&sp[0], ctrl, 8);                          // MXCSR, x87 CW
    sp[1] = nullptr;                                        // r15
    sp[2] = nullptr;                                        // r14
    sp[3] = reinterpret_cast<void*>(&fiber_main);           // r13: entry
    sp[4] = &f;                                             // r12: argument
    sp[5] = nullptr;                                        // rbx
    sp[6] = nullptr;                                        // rbp
    sp[7] = reinterpret_cast<void*>(&vd_emu_fiber_start);  // return address
    f.sp = sp;
}

std::string basename_of(const char* path) {
    const char* s = strrchr(path, '/');
    return s ? s + 1 : path;
}

std::string thread_label(const ThreadState& t) {
    char buf[64];
    snprintf(buf, sizeof buf, "thread (%u,%u,%u)", t.thread_idx.x, t.thread_idx.y, t.thread_idx.z);
    return buf;
}

// "threads 0-15: at …; threads 16-31: at …" over the waiting fibers.
std::string describe_waiters(Worker& w) {
    std::string out;
    int i = 0;
    while (i < w.nthreads) {
        const Fiber& f = w.fibers[i];
        if (f.state == FiberState::Done) {
            ++i;
            continue;
        }
        std::string d = describe_wait(f);
        int j = i + 1;
        while (j < w.nthreads && w.fibers[j].state != FiberState::Done && describe_wait(w.fibers[j]) == d) ++j;
        char buf[48];
        if (j - i == 1)
            snprintf(buf, sizeof buf, "thread %d", i);
        else
            snprintf(buf, sizeof buf, "threads %d-%d", i, j - 1);
        if (!out.empty()) out += "; ";
        out += std::string(buf) + ": " + d;
        i = j;
    }
    return out + " (threads numbered x-fastest)";
}

// Releases the block barrier when every live thread waits at it. Threads waiting
// at different __syncthreads (different source lines) can never all arrive at
// one: that is reported as a deadlock.
bool release_barrier(Worker& w) {
    const Fiber* first = nullptr;
    for (int i = 0; i < w.nthreads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == FiberState::Done) continue;
        if (f.state != FiberState::AtBarrier) return false;
        if (!first) {
            first = &f;
        } else if (f.bar_line != first->bar_line ||
                   (f.bar_file != first->bar_file && strcmp(f.bar_file, first->bar_file) != 0)) {
            block_error(w, "deadlock: threads wait at different __syncthreads: " + describe_waiters(w));
            return false;
        }
    }
    if (!first) return false;
    for (int i = 0; i < w.nthreads; ++i)
        if (w.fibers[i].state == FiberState::AtBarrier) w.fibers[i].state = FiberState::Ready;
    return true;
}

void shuffle_order(Worker& w, unsigned long long& rng) {
    for (int i = w.nthreads - 1; i > 0; --i) {
        int j = (int)(splitmix(rng) % (unsigned long long)(i + 1));
        std::swap(w.order[i], w.order[j]);
    }
}

void run_block(Worker& w, Launch& L, unsigned long long b) {
    const dim3 g = L.grid, bd = L.block;
    const int n = (int)(bd.x * bd.y * bd.z);
    w.launch = &L;
    w.block_idx = {(unsigned)(b % g.x), (unsigned)((b / g.x) % g.y), (unsigned)(b / ((unsigned long long)g.x * g.y))};
    w.nthreads = n;
    w.failed = false;
    w.error.clear();
    if ((int)w.fibers.size() < n) w.fibers.resize(n);
    if (L.smem > w.smem_cap) {
        free(w.smem);
        w.smem = static_cast<unsigned char*>(aligned_alloc(128, (L.smem + 127) / 128 * 128));
        if (!w.smem) {
            block_error(w, "cannot allocate dynamic shared memory");
            return;
        }
        w.smem_cap = (L.smem + 127) / 128 * 128;
    }
    w.smem_bytes = L.smem;
    if (L.smem) memset(w.smem, 0xFF, L.smem);  // poison: NaN as f32 and bf16
    for (int i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        ensure_stack(f);
        ThreadState& t = f.ts;
        t.thread_idx = {(unsigned)i % bd.x, ((unsigned)i / bd.x) % bd.y, (unsigned)i / (bd.x * bd.y)};
        t.block_idx = w.block_idx;
        t.block_dim = bd;
        t.grid_dim = g;
        t.linear = (unsigned)i;
        t.lane = (unsigned)i % 32;
        t.warp = (unsigned)i / 32;
        f.state = FiberState::Ready;
        f.op = WarpOp::None;
        f.cp_pending.clear();
        f.cp_next_group = 0;
        init_context(f);
    }
    w.order.resize(n);
    for (int i = 0; i < n; ++i) w.order[i] = i;
    unsigned long long rng = L.seed ^ (b * 0xD1B54A32D192ED03ull);
    if (L.shuffle) shuffle_order(w, rng);

    int live = n;
    for (;;) {
        for (int k = 0; k < n; ++k) {
            Fiber& f = w.fibers[w.order[k]];
            if (f.state != FiberState::Ready) continue;
            current = &f.ts;
            w.running = &f;
            vd_emu_switch(&w.sched_sp, f.sp);
            w.running = nullptr;
            current = nullptr;
            if (w.failed) return;
            if (f.state == FiberState::Done) --live;
        }
        if (live == 0) return;
        // Every live fiber now waits at a barrier or a warp collective.
        bool released = release_warp_ops(w);
        if (w.failed) return;
        if (!released) released = release_barrier(w);
        if (w.failed) return;
        if (!released) {
            block_error(w, "deadlock: no thread can proceed: " + describe_waiters(w));
            return;
        }
        if (L.shuffle) shuffle_order(w, rng);
    }
}

// ---------------------------------------------------------------- crash report
struct sigaction g_old_segv, g_old_bus;

void crash_handler(int sig, siginfo_t* info, void* uctx) {
    // worker() would construct; only report when this thread already runs a block.
    Worker* w = tls_worker_ptr;
    if (w && w->running && w->launch) {
        const Fiber& f = *w->running;
        const unsigned char* a = static_cast<const unsigned char*>(info->si_addr);
        bool guard = a >= f.mapping && a < f.mapping + page_size();
        // No allocation here: the fault may have happened inside malloc.
        char buf[512];
        int len = snprintf(buf, sizeof buf,
                           "voxdiff emu: %s in kernel %s, block (%u,%u,%u), thread (%u,%u,%u), address %p\n",
                           guard ? "fiber stack overflow (raise VOXDIFF_EMU_STACK_KIB)" : "invalid memory access",
                           w->launch->name, w->block_idx.x, w->block_idx.y, w->block_idx.z, f.ts.thread_idx.x,
                           f.ts.thread_idx.y, f.ts.thread_idx.z, info->si_addr);
        if (len > 0) {
            ssize_t ignored = write(2, buf, (size_t)len < sizeof buf ? (size_t)len : sizeof buf - 1);
            (void)ignored;
        }
    }
    // Hand the fault to whoever handled it before (the fault repeats on return).
    sigaction(sig, sig == SIGSEGV ? &g_old_segv : &g_old_bus, nullptr);
    (void)uctx;
}

void install_crash_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = crash_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
}

// A signal stack for this thread if it has none (a fiber's stack overflow must
// be reported from a stack that is not the overflowed one).
void ensure_signal_stack() {
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;
    static thread_local std::unique_ptr<unsigned char[]> mem;
    const size_t size = 64 * 1024;
    mem.reset(new unsigned char[size]);
    stack_t ss;
    ss.ss_sp = mem.get();
    ss.ss_size = size;
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
}

// ------------------------------------------------------------------ thread pool
void finish_block(Launch& L) {
    if (L.finished.fetch_add(1) + 1 == L.nblocks) {
        std::lock_guard<std::mutex> g(L.mu);
        L.done.notify_all();
    }
}

void work_on(Launch& L) {
    Worker& w = worker();
    for (;;) {
        unsigned long long b = L.next.fetch_add(1);
        if (b >= L.nblocks) return;
        if (!L.failed.load()) {
            run_block(w, L, b);
            if (w.failed) {
                std::lock_guard<std::mutex> g(L.mu);
                if (!L.failed.exchange(true)) L.error = w.error;
            }
            w.launch = nullptr;
        }
        finish_block(L);
    }
}

struct Pool {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::shared_ptr<Launch>> queue;
    unsigned threads;

    Pool() {
        unsigned hw = std::thread::hardware_concurrency();
        threads = (unsigned)env_size("VOXDIFF_EMU_THREADS", hw ? hw : 1);
        for (unsigned i = 1; i < threads; ++i) std::thread([this] { loop(); }).detach();
    }
    void loop() {
        ensure_signal_stack();
        for (;;) {
            std::shared_ptr<Launch> L;
            {
                std::unique_lock<std::mutex> lk(mu);
                cv.wait(lk, [&] { return !queue.empty(); });
                L = queue.front();
                if (L->next.load() >= L->nblocks) {
                    queue.pop_front();
                    continue;
                }
            }
            work_on(*L);
            remove(L);
        }
    }
    void remove(const std::shared_ptr<Launch>& L) {
        std::lock_guard<std::mutex> g(mu);
        for (auto it = queue.begin(); it != queue.end(); ++it)
            if (*it == L) {
                queue.erase(it);
                break;
            }
    }
};

Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: its threads outlive main
    return *p;
}

}  // namespace

thread_local Worker* tls_worker_ptr = nullptr;

Worker::~Worker() {
    for (Fiber& f : fibers)
        if (f.mapping) munmap(f.mapping, f.mapping_bytes);
    free(smem);
    tls_worker_ptr = nullptr;
}

Worker& worker() {
    static thread_local Worker w;
    tls_worker_ptr = &w;
    return w;
}

Fiber& running_fiber(const char* what) {
    Worker& w = worker();
    if (!w.running) {
        fprintf(stderr, "voxdiff emu: %s called outside an emulated kernel\n", what);
        abort();
    }
    return *w.running;
}

void park(Fiber& f) { vd_emu_switch(&f.sp, worker().sched_sp); }

std::string block_label(const Worker& w) {
    char buf[256];
    snprintf(buf, sizeof buf, "kernel %s, block (%u,%u,%u)", w.launch ? w.launch->name : "?", w.block_idx.x,
             w.block_idx.y, w.block_idx.z);
    return buf;
}

void block_error(Worker& w, const std::string& msg) {
    if (w.failed) return;
    w.failed = true;
    w.error = block_label(w) + ": " + msg;
}

void syncthreads(const char* file, int line) {
    Fiber& f = running_fiber("__syncthreads");
    f.bar_file = file;
    f.bar_line = line;
    f.state = FiberState::AtBarrier;
    park(f);
}

void fail(const char* fmt, ...) {
    Worker& w = worker();
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!w.running) {
        fprintf(stderr, "voxdiff emu: %s (outside an emulated kernel)\n", msg);
        abort();
    }
    Fiber& f = *w.running;
    block_error(w, thread_label(f.ts) + ": " + msg);
    f.state = FiberState::Done;
    vd_emu_switch(&f.sp, w.sched_sp);
    __builtin_unreachable();
}

unsigned char* dynamic_smem() { return worker().smem_bytes ? worker().smem : nullptr; }
unsigned dynamic_smem_bytes() { return (unsigned)worker().smem_bytes; }

std::string describe_wait(const Fiber& f) {
    char buf[160];
    switch (f.state) {
        case FiberState::AtBarrier:
            snprintf(buf, sizeof buf, "at __syncthreads (%s:%d)", basename_of(f.bar_file).c_str(), f.bar_line);
            return buf;
        case FiberState::AtWarpOp: {
            static const char* names[] = {"?", "a shuffle", "a vote", "a warp reduction", "__syncwarp", "mma",
                                          "ldmatrix"};
            snprintf(buf, sizeof buf, "at %s (mask 0x%08x)", names[(int)f.op], f.mask);
            return buf;
        }
        case FiberState::Ready:
            return "ready";
        case FiberState::Done:
            return "exited";
    }
    return "?";
}

}  // namespace vd_emu

using namespace vd_emu;

// Runs a whole grid. Returns 0, or 1 with a message in `err`.
extern "C" int vd_emu_launch(void (*thunk)(void**), const char* name, const unsigned* grid, const unsigned* block,
                             size_t smem, void** args, int shuffle, unsigned long long seed, char* err,
                             size_t errcap) {
    auto say = [&](const std::string& m) {
        snprintf(err, errcap, "%s", m.c_str());
        return 1;
    };
    unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024)
        return say(std::string("kernel ") + name + ": block of " + std::to_string(threads) +
                   " threads (CUDA allows 1..1024)");
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0)
        return say(std::string("kernel ") + name + ": empty grid");
    install_crash_handler();
    ensure_signal_stack();
    auto L = std::make_shared<Launch>();
    L->thunk = thunk;
    L->name = name;
    L->grid = {grid[0], grid[1], grid[2]};
    L->block = {block[0], block[1], block[2]};
    L->smem = smem;
    L->args = args;
    L->shuffle = shuffle != 0;
    L->seed = seed;
    L->nblocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    Pool& p = pool();
    bool shared = L->nblocks > 1 && p.threads > 1;
    if (shared) {
        std::lock_guard<std::mutex> g(p.mu);
        p.queue.push_back(L);
        p.cv.notify_all();
    }
    work_on(*L);
    {
        std::unique_lock<std::mutex> lk(L->mu);
        L->done.wait(lk, [&] { return L->finished.load() == L->nblocks; });
    }
    if (shared) p.remove(L);
    if (L->failed.load()) return say(L->error);
    return 0;
}

// Threads the block pool uses (VOXDIFF_EMU_THREADS, default: the core count).
extern "C" unsigned vd_emu_pool_threads() { return pool().threads; }

// Measures the raw fiber switch: ns per switch over `iters` round trips.
extern "C" double vd_emu_switch_ns(long iters) {
    struct PingPong {
        void* main_sp;
        Fiber fiber;
        long left;
    };
    static thread_local PingPong* pp;
    PingPong state;
    state.left = iters;
    pp = &state;
    Fiber& f = state.fiber;
    ensure_stack(f);
    // A fiber body that switches straight back, `iters` times.
    struct Body {
        static void run(Fiber* self) {
            (void)self;
            for (;;) vd_emu_switch(&pp->fiber.sp, pp->main_sp);
        }
    };
    unsigned char* top = f.mapping + f.mapping_bytes;
    void** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15)) - 80);
    unsigned ctrl[2];
    asm volatile("stmxcsr %0" : "=m"(ctrl[0]));
    asm volatile("fnstcw %0" : "=m"(ctrl[1]));
    ctrl[1] &= 0xFFFF;
    std::memcpy(&sp[0], ctrl, 8);
    sp[1] = sp[2] = nullptr;
    sp[3] = reinterpret_cast<void*>(&Body::run);
    sp[4] = &f;
    sp[5] = sp[6] = nullptr;
    sp[7] = reinterpret_cast<void*>(&vd_emu_fiber_start);
    f.sp = sp;
    auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters; ++i) vd_emu_switch(&state.main_sp, f.sp);
    auto t1 = std::chrono::steady_clock::now();
    munmap(f.mapping, f.mapping_bytes);
    f.mapping = nullptr;
    double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    return ns / (2.0 * (double)iters);
}
