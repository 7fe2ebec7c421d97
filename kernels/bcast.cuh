// Broadcast indexing, shared by the pointwise family (binary ops with a
// broadcast y) and the reduce family (expand). As in src/ops/bcast.rs, x is
// seen as [outer, mid, inner] and y as [outer, inner]: element i of x meets
//   y[(i / per_outer)·inner + i mod inner],  per_outer = mid·inner.
// A thread handling consecutive elements finds the index of its first one
// with two divisions (vd_bcast_at) and steps it along (vd_bcast_next).
#pragma once
#include "common.cuh"

struct VdBcastIter {
    i64 e;     // i mod per_outer
    i64 base;  // (i / per_outer)·inner: the start of y's row
    int ch;    // i mod inner
};

VD_DEVICE VdBcastIter vd_bcast_at(i64 i, i64 per_outer, int inner) {
    VdBcastIter it;
    it.e = i % per_outer;
    it.base = (i / per_outer) * inner;
    it.ch = (int)(it.e % inner);
    return it;
}

// The index into y of the current element.
VD_DEVICE i64 vd_bcast_index(const VdBcastIter& it) { return it.base + it.ch; }

// Advance to the next element (per_outer is a multiple of inner, so ch wraps
// to 0 whenever e does).
VD_DEVICE void vd_bcast_next(VdBcastIter& it, i64 per_outer, int inner) {
    if (++it.ch == inner) it.ch = 0;
    if (++it.e == per_outer) it.e = 0, it.base += inner;
}
