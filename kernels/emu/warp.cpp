// Warp collectives of the CUDA emulation: shuffles, votes, reductions,
// __syncwarp, and the emulation twins of the mma.sync / ldmatrix / cp.async
// wrappers in kernels/common.cuh.
//
// A lane calling a collective stores its request in its fiber and parks. When
// no fiber of the block can run, the scheduler calls release_warp_ops: a
// collective completes once every lane named in its mask that exists and has
// not exited waits at a collective of the same kind with the same mask; then
// every participant's result is computed at once (so no scratch area can be
// overwritten by a fast lane before a slow one read it). A participant waiting
// at a different collective or mask is an error; one waiting at __syncthreads
// leaves the collective pending (a deadlock if nothing else can move).
//
// mma and ldmatrix follow the PTX ISA's fragment layouts (ISA 9.0, "Matrix
// Fragments for mma.m16n8k16 with floating point type" and "ldmatrix"), with
// groupID = lane >> 2 and threadID_in_group t = lane % 4:
//   A 16×16 bf16, 4 regs:  a0,a1 = A[g][2t..2t+1]     a2,a3 = A[g+8][2t..2t+1]
//                          a4,a5 = A[g][2t+8..2t+9]   a6,a7 = A[g+8][2t+8..2t+9]
//   B 16×8 bf16, 2 regs:   b0,b1 = B[2t..2t+1][g]     b2,b3 = B[2t+8..2t+9][g]
//   C/D 16×8 f32, 4 regs:  c0,c1 = C[g][2t..2t+1]     c2,c3 = C[g+8][2t..2t+1]
//   (the lower-numbered element in the low 16 bits of a register)
//   ldmatrix .x{1,2,4}: lane 8·m + r gives the address of row r of matrix m;
//   lane l receives register m = M_m[l/4][2(l%4)], M_m[l/4][2(l%4)+1]
//   (.trans: M_m[2(l%4)][l/4], M_m[2(l%4)+1][l/4]).
#include "runtime.h"

#include <string>

namespace vd_emu {

namespace {

void wait_warp(Fiber& f, WarpOp op, int sub, unsigned mask, const char* what) {
    if (!(mask & (1u << f.ts.lane)))
        fail("%s with mask 0x%08x that does not name the calling lane %u", what, mask, f.ts.lane);
    f.op = op;
    f.sub = sub;
    f.mask = mask;
    f.state = FiberState::AtWarpOp;
    park(f);
    f.op = WarpOp::None;
}

float bits_to_f32(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
unsigned f32_to_bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
float bf16_lo(unsigned r) { return bits_to_f32(r << 16); }
float bf16_hi(unsigned r) { return bits_to_f32(r & 0xFFFF0000u); }

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::Shfl:
            return "a shuffle";
        case WarpOp::Vote:
            return "a vote";
        case WarpOp::Reduce:
            return "a warp reduction";
        case WarpOp::SyncWarp:
            return "__syncwarp";
        case WarpOp::Mma:
            return "mma";
        case WarpOp::Ldmatrix:
            return "ldmatrix";
        default:
            return "?";
    }
}

// Computes the results of one complete group. `lanes[l]` is the fiber of lane l
// (null when it does not exist), `part` the participating lanes.
void complete(Worker& w, Fiber** lanes, unsigned part, WarpOp op, int sub) {
    auto each = [&](auto fn) {
        for (int l = 0; l < 32; ++l)
            if (part & (1u << l)) fn(l, *lanes[l]);
    };
    switch (op) {
        case WarpOp::Shfl:
            each([&](int l, Fiber& f) {
                const int width = f.in_width, arg = f.in_arg;
                const int base = l & ~(width - 1);
                int src = l;
                switch ((ShflKind)sub) {
                    case SHFL_IDX:
                        src = base + (arg & (width - 1));
                        break;
                    case SHFL_UP:
                        src = (l - base) >= arg ? l - arg : l;
                        break;
                    case SHFL_DOWN:
                        src = (l - base) + arg < width ? l + arg : l;
                        break;
                    case SHFL_XOR:
                        src = l ^ arg;
                        if (src >= base + width || src < 0) src = l;  // later groups: own value
                        break;
                }
                f.out_bits = (src >= 0 && src < 32 && (part & (1u << src))) ? lanes[src]->in_bits : POISON64;
            });
            break;
        case WarpOp::Vote: {
            unsigned ballot = 0;
            each([&](int l, Fiber& f) {
                if (f.in_arg) ballot |= 1u << l;
            });
            each([&](int, Fiber& f) {
                switch ((VoteKind)sub) {
                    case VOTE_BALLOT:
                        f.out_bits = ballot;
                        break;
                    case VOTE_ANY:
                        f.out_bits = ballot != 0;
                        break;
                    case VOTE_ALL:
                        f.out_bits = ballot == part;
                        break;
                }
            });
            break;
        }
        case WarpOp::Reduce: {
            const ReduceKind k = (ReduceKind)sub;
            bool first = true;
            unsigned long long acc = 0;
            each([&](int, Fiber& f) {
                unsigned v = (unsigned)f.in_bits;
                if (first) {
                    acc = v;
                    first = false;
                    return;
                }
                unsigned a = (unsigned)acc;
                switch (k) {
                    case RED_ADD_U:
                    case RED_ADD_I:
                        acc = a + v;
                        break;
                    case RED_MIN_U:
                        acc = v < a ? v : a;
                        break;
                    case RED_MAX_U:
                        acc = v > a ? v : a;
                        break;
                    case RED_MIN_I:
                        acc = (int)v < (int)a ? v : a;
                        break;
                    case RED_MAX_I:
                        acc = (int)v > (int)a ? v : a;
                        break;
                }
            });
            each([&](int, Fiber& f) { f.out_bits = (unsigned)acc; });
            break;
        }
        case WarpOp::SyncWarp:
            break;
        case WarpOp::Mma: {
            float A[16][16], B[16][8], C[16][8];
            for (int l = 0; l < 32; ++l) {
                const unsigned* r = lanes[l]->in_regs;
                const int g = l >> 2, t = l & 3;
                A[g][2 * t] = bf16_lo(r[0]);
                A[g][2 * t + 1] = bf16_hi(r[0]);
                A[g + 8][2 * t] = bf16_lo(r[1]);
                A[g + 8][2 * t + 1] = bf16_hi(r[1]);
                A[g][2 * t + 8] = bf16_lo(r[2]);
                A[g][2 * t + 9] = bf16_hi(r[2]);
                A[g + 8][2 * t + 8] = bf16_lo(r[3]);
                A[g + 8][2 * t + 9] = bf16_hi(r[3]);
                B[2 * t][g] = bf16_lo(r[4]);
                B[2 * t + 1][g] = bf16_hi(r[4]);
                B[2 * t + 8][g] = bf16_lo(r[5]);
                B[2 * t + 9][g] = bf16_hi(r[5]);
                C[g][2 * t] = bits_to_f32(r[6]);
                C[g][2 * t + 1] = bits_to_f32(r[7]);
                C[g + 8][2 * t] = bits_to_f32(r[8]);
                C[g + 8][2 * t + 1] = bits_to_f32(r[9]);
            }
            // D = C + Σ_k A[i][k]·B[k][j], f32, k ascending (bf16 products are exact in f32).
            float D[16][8];
            for (int i = 0; i < 16; ++i)
                for (int j = 0; j < 8; ++j) {
                    float acc = C[i][j];
                    for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];
                    D[i][j] = acc;
                }
            for (int l = 0; l < 32; ++l) {
                unsigned* o = lanes[l]->out_regs;
                const int g = l >> 2, t = l & 3;
                o[0] = f32_to_bits(D[g][2 * t]);
                o[1] = f32_to_bits(D[g][2 * t + 1]);
                o[2] = f32_to_bits(D[g + 8][2 * t]);
                o[3] = f32_to_bits(D[g + 8][2 * t + 1]);
            }
            break;
        }
        case WarpOp::Ldmatrix: {
            const int num = sub & 0xF;
            const bool trans = (sub >> 4) & 1;
            for (int m = 0; m < num; ++m) {
                const unsigned short* rows[8];
                for (int r = 0; r < 8; ++r) {
                    const void* p = lanes[8 * m + r]->in_ptr;
                    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
                        char buf[160];
                        snprintf(buf, sizeof buf, "warp %u: ldmatrix row address %p of lane %d is not 16-byte aligned",
                                 lanes[0]->ts.warp, p, 8 * m + r);
                        block_error(w, buf);
                        return;
                    }
                    rows[r] = static_cast<const unsigned short*>(p);
                }
                for (int l = 0; l < 32; ++l) {
                    const int row = l >> 2, col = 2 * (l & 3);
                    unsigned lo, hi;
                    if (!trans) {
                        lo = rows[row][col];
                        hi = rows[row][col + 1];
                    } else {
                        lo = rows[col][row];
                        hi = rows[col + 1][row];
                    }
                    lanes[l]->out_regs[m] = lo | (hi << 16);
                }
            }
            break;
        }
        case WarpOp::None:
            break;
    }
}

}  // namespace

bool release_warp_ops(Worker& w) {
    bool released = false;
    const int nwarps = (w.nthreads + 31) / 32;
    for (int warp = 0; warp < nwarps; ++warp) {
        Fiber* lanes[32] = {};
        unsigned exist = 0, live = 0;
        for (int l = 0; l < 32 && warp * 32 + l < w.nthreads; ++l) {
            lanes[l] = &w.fibers[warp * 32 + l];
            exist |= 1u << l;
            if (lanes[l]->state != FiberState::Done) live |= 1u << l;
        }
        unsigned handled = 0;
        for (int l = 0; l < 32; ++l) {
            if (!(live & (1u << l)) || (handled & (1u << l))) continue;
            Fiber& f = *lanes[l];
            if (f.state != FiberState::AtWarpOp) continue;
            const unsigned part = f.mask & live;
            bool ready = true;
            for (int p = 0; p < 32; ++p) {
                if (!(part & (1u << p))) continue;
                Fiber& q = *lanes[p];
                if (q.state != FiberState::AtWarpOp) {
                    ready = false;  // at __syncthreads: pending (deadlock if nothing moves)
                    continue;
                }
                if (q.op != f.op || q.sub != f.sub || q.mask != f.mask) {
                    char buf[256];
                    snprintf(buf, sizeof buf,
                             "warp %d: lane %d waits at %s (mask 0x%08x) while lane %d waits at %s (mask 0x%08x)",
                             warp, l, op_name(f.op), f.mask, p, op_name(q.op), q.mask);
                    block_error(w, std::string("mismatched warp collectives: ") + buf);
                    return false;
                }
            }
            if (!ready) continue;
            if ((f.op == WarpOp::Mma || f.op == WarpOp::Ldmatrix) && (part != 0xffffffffu || exist != 0xffffffffu)) {
                char buf[200];
                snprintf(buf, sizeof buf,
                         "warp %d: %s needs all 32 lanes of the warp (mask 0x%08x, live lanes 0x%08x)", warp,
                         op_name(f.op), f.mask, live);
                block_error(w, buf);
                return false;
            }
            complete(w, lanes, part, f.op, f.sub);
            if (w.failed) return false;
            for (int p = 0; p < 32; ++p)
                if (part & (1u << p)) lanes[p]->state = FiberState::Ready;
            handled |= part;
            released = true;
        }
    }
    return released;
}

// ------------------------------------------------------------ fiber-side calls

unsigned long long shfl(ShflKind kind, unsigned mask, unsigned long long bits, int arg, int width) {
    Fiber& f = running_fiber("__shfl*_sync");
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("shuffle width %d is not a power of two in 1..32", width);
    f.in_bits = bits;
    f.in_arg = arg;
    f.in_width = width;
    wait_warp(f, WarpOp::Shfl, kind, mask, "shuffle");
    return f.out_bits;
}

unsigned vote(VoteKind kind, unsigned mask, int pred) {
    Fiber& f = running_fiber("__ballot/__any/__all_sync");
    f.in_arg = pred != 0;
    wait_warp(f, WarpOp::Vote, kind, mask, "vote");
    return (unsigned)f.out_bits;
}

unsigned reduce(ReduceKind kind, unsigned mask, unsigned value) {
    Fiber& f = running_fiber("__reduce_*_sync");
    f.in_bits = value;
    wait_warp(f, WarpOp::Reduce, kind, mask, "warp reduction");
    return (unsigned)f.out_bits;
}

void syncwarp(unsigned mask) {
    Fiber& f = running_fiber("__syncwarp");
    wait_warp(f, WarpOp::SyncWarp, 0, mask, "__syncwarp");
}

unsigned activemask() {
    Worker& w = worker();
    Fiber& f = running_fiber("__activemask");
    unsigned m = 0;
    for (int l = 0; l < 32; ++l) {
        int i = (int)(f.ts.warp * 32 + l);
        if (i < w.nthreads && w.fibers[i].state != FiberState::Done) m |= 1u << l;
    }
    return m;
}

void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    Fiber& f = running_fiber("mma.sync");
    for (int i = 0; i < 4; ++i) f.in_regs[i] = a[i];
    f.in_regs[4] = b[0];
    f.in_regs[5] = b[1];
    for (int i = 0; i < 4; ++i) f.in_regs[6 + i] = f32_to_bits(c[i]);
    wait_warp(f, WarpOp::Mma, 0, 0xffffffffu, "mma.sync");
    for (int i = 0; i < 4; ++i) d[i] = bits_to_f32(f.out_regs[i]);
}

void ldmatrix(unsigned* regs, int num, bool trans, const void* row) {
    Fiber& f = running_fiber("ldmatrix");
    f.in_ptr = row;
    wait_warp(f, WarpOp::Ldmatrix, num | (trans ? 16 : 0), 0xffffffffu, "ldmatrix");
    for (int i = 0; i < num; ++i) regs[i] = f.out_regs[i];
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    Fiber& f = running_fiber("cp.async");
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of %d bytes (4, 8 or 16)", bytes);
    if (reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
        fail("cp.async of %d bytes from %p to %p: both addresses must be %d-byte aligned", bytes, src, dst, bytes);
    if (src_bytes < 0 || src_bytes > bytes) fail("cp.async source size %d outside 0..%d", src_bytes, bytes);
    f.cp_pending.push_back({static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), bytes,
                            src_bytes, -1});
}

void cp_async_commit() {
    Fiber& f = running_fiber("cp.async.commit_group");
    for (CpAsyncCopy& c : f.cp_pending)
        if (c.group < 0) c.group = f.cp_next_group;
    ++f.cp_next_group;  // an empty group counts too, as in PTX
}

void cp_async_wait(int pending) {
    Fiber& f = running_fiber("cp.async.wait_group");
    cp_async_complete(f, pending);
}

void cp_async_complete(Fiber& f, int keep) {
    // Groups numbered below `limit` complete; uncommitted copies only at exit (keep < 0).
    const int limit = keep < 0 ? INT_MAX : f.cp_next_group - keep;
    size_t out = 0;
    for (size_t i = 0; i < f.cp_pending.size(); ++i) {
        CpAsyncCopy& c = f.cp_pending[i];
        bool done_now = keep < 0 || (c.group >= 0 && c.group < limit);
        if (done_now) {
            std::memcpy(c.dst, c.src, (size_t)c.src_bytes);
            std::memset(c.dst + c.src_bytes, 0, (size_t)(c.bytes - c.src_bytes));
        } else {
            f.cp_pending[out++] = c;
        }
    }
    f.cp_pending.resize(out);
}

}  // namespace vd_emu
