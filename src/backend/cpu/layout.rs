//! Channel concat/slice, spatial crop/pad, upsampling and max pooling, and
//! the permutation of dims.
//!
//! All but permute are NDHWC. Each op is a gather: one parallel task per
//! output (n, d) plane writes its own rows, so no two tasks touch the same
//! output element and the results do not depend on scheduling. Inner loops
//! run over whole channel vectors (contiguous in NDHWC).
//!
//! permute walks the [`PermutePlan`]: when x's innermost run stays innermost
//! it copies runs (tasks of ≈ 16 K elements of output rows); otherwise it
//! transposes 32 × 32 tiles of the output's last group against the group that
//! is contiguous in x, one task per (other groups, tile row), so both the
//! reads and the writes of a tile stay in L1.
use super::{check_ndhwc, view, view_mut, CpuBackend};
use crate::ops::layout::{permute_plan, PermutePlan};
use crate::ops::LayoutOps;
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// Check `t` is an f32 NDHWC tensor on this backend; return its shape.
fn ndhwc<'a>(t: &'a Tensor, what: &str) -> Result<(&'a [f32], Shape)> {
    let s = view(t, what)?;
    check_ndhwc(t, what)?;
    Ok((s, t.shape()))
}

/// Offset of voxel (n, d, h, w) in an NDHWC tensor of extents `sp`, in voxels.
#[inline(always)]
fn vox(sp: [usize; 3], n: usize, d: usize, h: usize, w: usize) -> usize {
    ((n * sp[0] + d) * sp[1] + h) * sp[2] + w
}

/// Run `f(n, d, plane)` in parallel over the (n, d) planes of an output of
/// shape `out` (each `plane` is the H·W·C slice of that plane).
fn for_each_plane(out: &Tensor, f: impl Fn(usize, usize, &mut [f32]) + Send + Sync) {
    let sh = out.shape();
    let plane = sh.h() * sh.w() * sh.c();
    if plane == 0 {
        return;
    }
    let d = sh.d();
    view_mut(out)
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(i, p)| f(i / d, i % d, p));
}

impl LayoutOps for CpuBackend {
    /// Concatenate along channels: `y[…, off_i + c] = x_i[…, c]`, `off_i = Σ_{j<i} C_j`.
    fn concat_c(&self, xs: &[&Tensor]) -> Result<Tensor> {
        ensure!(!xs.is_empty(), "concat_c: no tensors to concatenate");
        let (_, first) = ndhwc(xs[0], "concat_c: tensor 0")?;
        let mut parts = Vec::with_capacity(xs.len());
        let mut c_total = 0;
        for (i, x) in xs.iter().enumerate() {
            let (s, sh) = ndhwc(x, &format!("concat_c: tensor {i}"))?;
            ensure!(
                sh.dims()[..4] == first.dims()[..4],
                "concat_c: tensor {i} has shape {sh} but tensor 0 has {first} (N, D, H, W must match)"
            );
            parts.push((s, sh.c(), c_total));
            c_total += sh.c();
        }
        let y = self.out_uninit(first.with_c(c_total))?;
        let rows_per_plane = first.h() * first.w();
        for_each_plane(&y, |n, d, plane| {
            let row0 = (n * first.d() + d) * rows_per_plane;
            for (r, out) in plane.chunks_exact_mut(c_total).enumerate() {
                for &(s, c, off) in &parts {
                    let src = (row0 + r) * c;
                    out[off..off + c].copy_from_slice(&s[src..src + c]);
                }
            }
        });
        Ok(y)
    }

    /// Channels `[start, start + len)` of x.
    fn slice_c(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let (s, sh) = ndhwc(x, "slice_c: x")?;
        ensure!(len >= 1, "slice_c: len must be at least 1");
        ensure!(
            start.checked_add(len).is_some_and(|e| e <= sh.c()),
            "slice_c: channels [{start}, {start}+{len}) outside the {} channels of x ({sh})",
            sh.c()
        );
        let y = self.out_uninit(sh.with_c(len))?;
        let (c, rows_per_plane) = (sh.c(), sh.h() * sh.w());
        for_each_plane(&y, |n, d, plane| {
            let row0 = (n * sh.d() + d) * rows_per_plane;
            for (r, out) in plane.chunks_exact_mut(len).enumerate() {
                let src = (row0 + r) * c + start;
                out.copy_from_slice(&s[src..src + len]);
            }
        });
        Ok(y)
    }

    /// `y[n, p, c] = x[n, origin + p, c]` for p in the box of extents `size`.
    fn crop(&self, x: &Tensor, origin: [usize; 3], size: [usize; 3]) -> Result<Tensor> {
        let (s, sh) = ndhwc(x, "crop: x")?;
        check_box("crop", origin, size, sh.spatial())?;
        let y = self.out_uninit(sh.with_spatial(size))?;
        let (c, sp) = (sh.c(), sh.spatial());
        let row = size[2] * c;
        for_each_plane(&y, |n, d, plane| {
            for (h, out) in plane.chunks_exact_mut(row).enumerate() {
                let src = vox(sp, n, origin[0] + d, origin[1] + h, origin[2]) * c;
                out.copy_from_slice(&s[src..src + row]);
            }
        });
        Ok(y)
    }

    /// Zeros of extents `full` with x at `origin` (the adjoint of [`crop`]).
    fn pad(&self, x: &Tensor, origin: [usize; 3], full: [usize; 3]) -> Result<Tensor> {
        let (s, sh) = ndhwc(x, "pad: x")?;
        check_box("pad", origin, sh.spatial(), full)?;
        let y = self.out(sh.with_spatial(full))?;
        let (c, sp) = (sh.c(), sh.spatial());
        let row = sp[2] * c;
        for_each_plane(&y, |n, d, plane| {
            if d < origin[0] || d >= origin[0] + sp[0] {
                return; // the output starts zeroed
            }
            for h in 0..sp[1] {
                let dst = ((origin[1] + h) * full[2] + origin[2]) * c;
                let src = vox(sp, n, d - origin[0], h, 0) * c;
                plane[dst..dst + row].copy_from_slice(&s[src..src + row]);
            }
        });
        Ok(y)
    }

    /// Nearest neighbour: `y[n, p, c] = x[n, ⌊p / f⌋, c]`, out = in·f.
    fn upsample(&self, x: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        let (s, sh) = ndhwc(x, "upsample: x")?;
        check_factor("upsample", factor)?;
        let sp = sh.spatial();
        let mut out = [0; 3];
        for i in 0..3 {
            out[i] = sp[i]
                .checked_mul(factor[i])
                .ok_or_else(|| anyhow::anyhow!("upsample: output extent overflows"))?;
        }
        let y = self.out_uninit(sh.with_spatial(out))?;
        let c = sh.c();
        for_each_plane(&y, |n, d, plane| {
            for (i, o) in plane.chunks_exact_mut(c).enumerate() {
                let (h, w) = (i / out[2], i % out[2]);
                let src = vox(sp, n, d / factor[0], h / factor[1], w / factor[2]) * c;
                o.copy_from_slice(&s[src..src + c]);
            }
        });
        Ok(y)
    }

    /// Adjoint of [`upsample`]: `dx[n, q, c] = Σ_{p in block q} dy[n, p, c]`, the
    /// block's voxels summed in D, H, W scan order (f32). dy's extents must be
    /// multiples of the factors.
    fn upsample_bwd(&self, dy: &Tensor, factor: [usize; 3]) -> Result<Tensor> {
        let (s, sh) = ndhwc(dy, "upsample_bwd: dy")?;
        check_factor("upsample_bwd", factor)?;
        let sp = sh.spatial();
        let mut out = [0; 3];
        for i in 0..3 {
            ensure!(
                sp[i] % factor[i] == 0,
                "upsample_bwd: dy extents {sp:?} are not multiples of the factors {factor:?}"
            );
            out[i] = sp[i] / factor[i];
        }
        let dx = self.out(sh.with_spatial(out))?;
        let c = sh.c();
        for_each_plane(&dx, |n, d, plane| {
            for (i, o) in plane.chunks_exact_mut(c).enumerate() {
                let (h, w) = (i / out[2], i % out[2]);
                for kd in 0..factor[0] {
                    for kh in 0..factor[1] {
                        for kw in 0..factor[2] {
                            let src = vox(
                                sp,
                                n,
                                d * factor[0] + kd,
                                h * factor[1] + kh,
                                w * factor[2] + kw,
                            ) * c;
                            for (a, &g) in o.iter_mut().zip(&s[src..src + c]) {
                                *a += g;
                            }
                        }
                    }
                }
            }
        });
        Ok(dx)
    }

    /// Max pooling, window = stride, ceil mode (edge windows clipped).
    /// A NaN in a window makes its maximum NaN.
    fn maxpool(&self, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        let (s, sh) = ndhwc(x, "maxpool: x")?;
        let sp = sh.spatial();
        let out = pooled("maxpool", sp, window)?;
        let y = self.out_uninit(sh.with_spatial(out))?;
        let c = sh.c();
        for_each_plane(&y, |n, d, plane| {
            for (i, o) in plane.chunks_exact_mut(c).enumerate() {
                let mut first = true;
                window_scan(sp, window, n, [d, i / out[2], i % out[2]], |v| {
                    let row = &s[v * c..v * c + c];
                    if first {
                        o.copy_from_slice(row);
                        first = false;
                    } else {
                        for (m, &x) in o.iter_mut().zip(row) {
                            if x > *m || x.is_nan() {
                                *m = x;
                            }
                        }
                    }
                });
            }
        });
        Ok(y)
    }

    /// Backward of [`maxpool`]: `dx[argmax of window] = dy[window]`, where the
    /// argmax is the first voxel in D, H, W scan order equal to the maximum (for a
    /// window holding NaN: its first NaN, so the NaN's gradient slot receives dy).
    /// Windows do not overlap, so each dx element receives at most one value.
    /// Parallel over (n, output-d) planes, each writing the input planes of its
    /// windows — disjoint between tasks.
    fn maxpool_bwd(&self, dy: &Tensor, x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
        let (xs, sh) = ndhwc(x, "maxpool_bwd: x")?;
        let (gs, gsh) = ndhwc(dy, "maxpool_bwd: dy")?;
        let sp = sh.spatial();
        let out = pooled("maxpool_bwd", sp, window)?;
        ensure!(
            gsh == sh.with_spatial(out),
            "maxpool_bwd: dy has shape {gsh}, but pooling x ({sh}) by {window:?} gives {}",
            sh.with_spatial(out)
        );
        let dx = self.out(sh)?;
        let c = sh.c();
        if dx.numel() == 0 {
            return Ok(dx);
        }
        // One task per (n, output d): it owns input planes [od·w0, min(od·w0 + w0, D)).
        let in_plane = sp[1] * sp[2] * c;
        let slab = window[0] * in_plane;
        let per_sample = sp[0] * in_plane;
        let dxs = view_mut(&dx);
        let tasks: Vec<(usize, usize, &mut [f32])> = dxs
            .chunks_mut(per_sample)
            .enumerate()
            .flat_map(|(n, sample)| {
                sample
                    .chunks_mut(slab)
                    .enumerate()
                    .map(move |(od, s)| (n, od, s))
            })
            .collect();
        tasks.into_par_iter().for_each(|(n, od, slab_out)| {
            let base = vox(sp, n, od * window[0], 0, 0);
            let mut best = vec![0usize; c];
            let mut max = vec![0f32; c];
            for oh in 0..out[1] {
                for ow in 0..out[2] {
                    let mut first = true;
                    window_scan(sp, window, n, [od, oh, ow], |v| {
                        let row = &xs[v * c..v * c + c];
                        if first {
                            max.copy_from_slice(row);
                            best.fill(v);
                            first = false;
                        } else {
                            for ((m, bi), &x) in max.iter_mut().zip(best.iter_mut()).zip(row) {
                                if x > *m || (x.is_nan() && !m.is_nan()) {
                                    *m = x;
                                    *bi = v;
                                }
                            }
                        }
                    });
                    let g = &gs[vox(out, n, od, oh, ow) * c..][..c];
                    for ci in 0..c {
                        slab_out[(best[ci] - base) * c + ci] = g[ci];
                    }
                }
            }
        });
        Ok(dx)
    }

    /// Output dim k is x's dim `perm[k]` (see [`PermutePlan`]).
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        let xs = view(x, "permute: x")?;
        let plan = permute_plan(x.shape(), perm)?;
        let y = self.out_uninit(plan.out)?;
        if y.numel() == 0 {
            return Ok(y);
        }
        if plan.keeps_last() {
            permute_runs(xs, view_mut(&y), &plan);
        } else {
            permute_tiles(xs, view_mut(&y), &plan);
        }
        Ok(y)
    }
}

/// Elements of output per task of the run copy.
const PERMUTE_TASK: usize = 1 << 14;
/// Tile edge of the transposing permute.
const PERMUTE_TILE: usize = 32;

/// x offset of the output position whose coordinates in the groups `0..g_end`
/// are the digits of `index` (row-major over `plan.dims[..g_end]`).
fn src_offset(plan: &PermutePlan, g_end: usize, mut index: usize) -> usize {
    let mut off = 0;
    for g in (0..g_end).rev() {
        off += (index % plan.dims[g]) * plan.src_strides[g];
        index /= plan.dims[g];
    }
    off
}

/// permute when the last group is contiguous in x: output row r (a run of
/// `dims[last]` elements) is x's run at `src_offset(r)`.
fn permute_runs(xs: &[f32], ys: &mut [f32], plan: &PermutePlan) {
    let last = plan.rank - 1;
    let run = plan.dims[last];
    let rows_per_task = (PERMUTE_TASK / run).max(1);
    ys.par_chunks_mut(run * rows_per_task)
        .enumerate()
        .for_each(|(t, chunk)| {
            for (i, out) in chunk.chunks_exact_mut(run).enumerate() {
                let off = src_offset(plan, last, t * rows_per_task + i);
                out.copy_from_slice(&xs[off..off + run]);
            }
        });
}

/// The output as a raw pointer for tasks that write disjoint elements.
struct DisjointOut(*mut f32);
// SAFETY: shared only by `permute_tiles`, whose tasks write disjoint elements.
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    /// # Safety
    /// `i` is in bounds and no other task writes element `i`.
    unsafe fn write(&self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// permute when the last group moves: for each position of the other groups,
/// the (q, last) plane is an I × J transpose (q = the group contiguous in x,
/// I = dims[q], J = dims[last]), done in tiles of 32 × 32 staged in a local
/// buffer: read as 32 contiguous runs of x, written as 32 contiguous runs of
/// the output (no strided access, whatever the strides' alignment).
fn permute_tiles(xs: &[f32], ys: &mut [f32], plan: &PermutePlan) {
    let (q, last) = (plan.contiguous_group(), plan.rank - 1);
    let (ni, nj) = (plan.dims[q], plan.dims[last]);
    let (sj, dq) = (plan.src_strides[last], plan.dst_strides[q]);
    let outer = ys.len() / (ni * nj);
    let i_tiles = ni.div_ceil(PERMUTE_TILE);
    let len = ys.len();
    let out = DisjointOut(ys.as_mut_ptr());
    (0..outer * i_tiles).into_par_iter().for_each(|task| {
        let (b, it) = (task / i_tiles, task % i_tiles);
        // The other groups' coordinates are the digits of b (q and last skipped).
        let (mut src, mut dst, mut rest) = (0, 0, b);
        for g in (0..last).rev().filter(|&g| g != q) {
            let c = rest % plan.dims[g];
            rest /= plan.dims[g];
            src += c * plan.src_strides[g];
            dst += c * plan.dst_strides[g];
        }
        let i0 = it * PERMUTE_TILE;
        let ti = PERMUTE_TILE.min(ni - i0);
        let mut tile = [0f32; PERMUTE_TILE * PERMUTE_TILE]; // tile[j][i]
        for j0 in (0..nj).step_by(PERMUTE_TILE) {
            let tj = PERMUTE_TILE.min(nj - j0);
            for j in 0..tj {
                let run = src + (j0 + j) * sj + i0;
                tile[j * PERMUTE_TILE..j * PERMUTE_TILE + ti].copy_from_slice(&xs[run..run + ti]);
            }
            for i in 0..ti {
                let row = dst + (i0 + i) * dq + j0;
                assert!(row + tj <= len);
                for j in 0..tj {
                    // SAFETY: in bounds (asserted); element (b, i, j) of the
                    // output belongs to this task alone (b and i's tile).
                    unsafe { out.write(row + j, tile[j * PERMUTE_TILE + i]) };
                }
            }
        }
    });
}

/// Check the box `[origin, origin + size)` lies inside extents `full`, size ≥ 1.
fn check_box(op: &str, origin: [usize; 3], size: [usize; 3], full: [usize; 3]) -> Result<()> {
    for i in 0..3 {
        ensure!(
            size[i] >= 1,
            "{op}: box size {size:?} has an empty dimension"
        );
        ensure!(
            origin[i].checked_add(size[i]).is_some_and(|e| e <= full[i]),
            "{op}: box at origin {origin:?} of size {size:?} exceeds the extents {full:?}"
        );
    }
    Ok(())
}

fn check_factor(op: &str, f: [usize; 3]) -> Result<()> {
    ensure!(
        f.iter().all(|&k| k >= 1),
        "{op}: factors must be at least 1, got {f:?}"
    );
    Ok(())
}

/// Output extents of a ceil-mode pooling: `ceil(in / window)`.
fn pooled(op: &str, sp: [usize; 3], window: [usize; 3]) -> Result<[usize; 3]> {
    ensure!(
        window.iter().all(|&k| k >= 1),
        "{op}: window must be at least 1 in every dimension, got {window:?}"
    );
    Ok([
        sp[0].div_ceil(window[0]),
        sp[1].div_ceil(window[1]),
        sp[2].div_ceil(window[2]),
    ])
}

/// Visit the input voxels of pooling window `o` (clipped at the edge) in
/// D, H, W scan order, calling `f(offset_in_voxels)`.
#[inline(always)]
fn window_scan(
    sp: [usize; 3],
    window: [usize; 3],
    n: usize,
    o: [usize; 3],
    mut f: impl FnMut(usize),
) {
    let lo = [o[0] * window[0], o[1] * window[1], o[2] * window[2]];
    let hi = [
        (lo[0] + window[0]).min(sp[0]),
        (lo[1] + window[1]).min(sp[1]),
        (lo[2] + window[2]).min(sp[2]),
    ];
    for d in lo[0]..hi[0] {
        for h in lo[1]..hi[1] {
            for w in lo[2]..hi[2] {
                f(vox(sp, n, d, h, w));
            }
        }
    }
}
