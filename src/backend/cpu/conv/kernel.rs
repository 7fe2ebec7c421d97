//! The three register-blocked micro-kernels every convolution reduces to,
//! their arguments, and the choice of instruction set.
//!
//! The first two compute a small output tile held in registers as `R` rows ×
//! `NV` vectors of 16 f32 lanes by broadcasting one operand and loading the
//! other as whole vectors (an outer-product update per reduction step):
//!
//! - [`RowTile`] (forward and data gradient): `y[j, n] = bias[n] +
//!   Σ_rows Σ_{q<k} a_row[j·astride + q] · b_row[q, n]` for `R` output voxels
//!   `j` of one output row and `NV·16` channels `n`. `a_row` is an input row
//!   (NDHWC, so the `k = KW·C` values one output voxel reads along W are
//!   contiguous and consecutive output voxels start `astride = stride_w·C`
//!   apart — implicit GEMM without im2col); `b_row` is a packed weight panel
//!   `[k][NV·16]`. Loop order: rows, q, then the `R × NV` FMAs.
//! - [`WgradTile`] (weight gradient): `acc[j, n] += Σ_{t<count} a[t·astride + j]
//!   · b[t·bstride + n]` for `R` consecutive reduction coordinates `j` (input
//!   channels of one tap) and `NV·16` output channels `n`, summing over the
//!   output voxels `t` of several rows (segments); the accumulator tile lives
//!   in memory between calls and in registers during one.
//! - [`DotTile`] (forward and data gradient with at most 8 output channels):
//!   the [`RowTile`] sum for `R` voxels × `C ≤ 4` channels with vectors along
//!   the reduction `q` instead (16 products per FMA), reduced across lanes once
//!   at the end; the panel is `[C][kp]`, `q` zero-padded to a multiple of 16,
//!   and the input's last partial chunk is loaded masked.
//!
//! The last vector of a tile may be partial: `lanes_last` lanes are stored
//! (and, for the weight gradient, loaded); packed weight panels are
//! zero-padded so the forward never needs masked loads.
use super::kernel_portable;
#[cfg(target_arch = "x86_64")]
use super::{kernel_avx2, kernel_avx512};
use anyhow::{bail, Result};
use std::sync::OnceLock;

/// Largest tile height: 14 rows × 2 vectors = 28 accumulators of the 32 zmm
/// registers, leaving room for the two weight vectors and one broadcast.
pub(super) const MAX_R: usize = 14;

/// Largest tile height of the AVX2 and portable kernels: 3 rows × 2 16-lane
/// vectors are 12 ymm accumulators of AVX2's 16 registers.
pub(super) const PORTABLE_MAX_R: usize = 3;

/// The instruction set the micro-kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512F intrinsics, 16-lane zmm registers.
    Avx512,
    /// AVX2 + FMA intrinsics, 8-lane ymm registers.
    Avx2,
    /// The portable kernels for the build target (x86-64: SSE2, no FMA).
    Portable,
}

impl Isa {
    /// Tallest forward and weight-gradient tile.
    pub(super) fn max_rows(self) -> usize {
        match self {
            Isa::Avx512 => MAX_R,
            Isa::Avx2 | Isa::Portable => PORTABLE_MAX_R,
        }
    }
}

/// The environment variable that overrides instruction-set detection:
/// `avx512`, `avx2`, `portable`, or `auto` (the default when unset).
pub(super) const ISA_ENV: &str = "VOXDIFF_CPU_ISA";

/// The ISA convolutions use, chosen once per process: the best the CPU
/// supports (AVX-512F, else AVX2 + FMA, else portable); [`ISA_ENV`] overrides
/// it (tests use that to run every path on one machine).
pub(super) fn isa() -> Result<Isa> {
    static CHOICE: OnceLock<Result<Isa, String>> = OnceLock::new();
    let choice = CHOICE.get_or_init(|| {
        let (avx512, avx2) = detect();
        let best = if avx512 {
            Isa::Avx512
        } else if avx2 {
            Isa::Avx2
        } else {
            Isa::Portable
        };
        match std::env::var(ISA_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(best),
            Ok("portable") => Ok(Isa::Portable),
            Ok("avx2") if avx2 => Ok(Isa::Avx2),
            Ok("avx512") if avx512 => Ok(Isa::Avx512),
            Ok(name @ ("avx2" | "avx512")) => {
                Err(format!("{ISA_ENV}={name} but this CPU does not support it"))
            }
            Ok(other) => Err(format!(
                "{ISA_ENV}={other:?} is not one of auto, avx512, avx2, portable"
            )),
        }
    });
    match choice {
        Ok(isa) => Ok(*isa),
        Err(e) => bail!("{e}"),
    }
}

/// (AVX-512F, AVX2 + FMA) support of this CPU.
fn detect() -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        (
            std::arch::is_x86_feature_detected!("avx512f"),
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (false, false)
    }
}

/// One input row of a [`RowTile`]: where its `a` values start and the packed
/// weight panel `[k][NV·16]` they multiply.
#[derive(Clone, Copy)]
pub(super) struct RowOperand {
    pub a: *const f32,
    pub b: *const f32,
}

/// Arguments of the forward/data-gradient tile (see the module docs).
pub(super) struct RowTile<'a> {
    pub rows: &'a [RowOperand],
    /// Reduction length per row (`KW · C_in`).
    pub k: usize,
    /// Distance in floats between the `a` values of consecutive output voxels.
    pub astride: usize,
    /// Output of voxel 0, channel 0 of the tile.
    pub y: *mut f32,
    /// Distance in floats between consecutive output voxels in `y`.
    pub ystride: usize,
    /// `NV·16` bias values (zero-padded), or null for none.
    pub bias: *const f32,
    /// Valid lanes of the last vector (1..=16).
    pub lanes_last: usize,
}

/// One run of reduction steps of a [`WgradTile`]: `a[t·astride + j]` and
/// `b[t·bstride + n]` for `t < count`.
#[derive(Clone, Copy)]
pub(super) struct Segment {
    pub a: *const f32,
    pub b: *const f32,
    pub count: usize,
}

/// Arguments of the dot tile (see the module docs). `rows[i].b` points at the
/// `[C][kp]` panel of the tile's channel group.
pub(super) struct DotTile<'a> {
    pub rows: &'a [RowOperand],
    pub k: usize,
    /// Padded reduction length: the distance between channels in a panel.
    pub kp: usize,
    pub astride: usize,
    pub y: *mut f32,
    pub ystride: usize,
    /// `C` bias values, or null.
    pub bias: *const f32,
}

/// Tallest dot tile for `c` channels (1..=4): `R·C` accumulators plus `C`
/// weight vectors and one input vector within the 32 zmm registers.
pub(super) fn dot_max_rows(isa: Isa, c: usize) -> usize {
    match isa {
        Isa::Avx512 => [14, 12, 8, 6][c - 1],
        Isa::Avx2 | Isa::Portable => PORTABLE_MAX_R,
    }
}

/// Arguments of the weight-gradient tile (see the module docs): the tile sums
/// over every segment, so one load and store of the accumulators serves many
/// rows.
pub(super) struct WgradTile<'a> {
    /// Accumulator element `[0, 0]`; row `j` starts at `acc + j·ld`.
    pub acc: *mut f32,
    pub ld: usize,
    pub segments: &'a [Segment],
    pub astride: usize,
    pub bstride: usize,
    /// Valid lanes of the last vector (1..=16).
    pub lanes_last: usize,
}

pub(super) type RowTileFn = unsafe fn(&RowTile);
pub(super) type WgradTileFn = unsafe fn(&WgradTile);
pub(super) type DotTileFn = unsafe fn(&DotTile);

/// The forward tile for `r` rows (1..=`Isa::max_rows`) and `nv` vectors (1 or 2).
pub(super) fn row_tile_fn(isa: Isa, r: usize, nv: usize) -> RowTileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernel_avx512::row_tile_fn(r, nv),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernel_avx2::row_tile_fn(r, nv),
        // Off x86-64 `isa` only returns Portable.
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 | Isa::Avx2 => kernel_portable::row_tile_fn(r, nv),
        Isa::Portable => kernel_portable::row_tile_fn(r, nv),
    }
}

/// The weight-gradient tile for `r` rows (1..=`Isa::max_rows`) and `nv` vectors.
pub(super) fn wgrad_tile_fn(isa: Isa, r: usize, nv: usize) -> WgradTileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernel_avx512::wgrad_tile_fn(r, nv),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernel_avx2::wgrad_tile_fn(r, nv),
        // Off x86-64 `isa` only returns Portable.
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 | Isa::Avx2 => kernel_portable::wgrad_tile_fn(r, nv),
        Isa::Portable => kernel_portable::wgrad_tile_fn(r, nv),
    }
}

/// The dot tile for `r` rows (1..=`dot_max_rows(isa, c)`) and `c` channels (1..=4).
pub(super) fn dot_tile_fn(isa: Isa, r: usize, c: usize) -> DotTileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernel_avx512::dot_tile_fn(r, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernel_avx2::dot_tile_fn(r, c),
        // Off x86-64 `isa` only returns Portable.
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 | Isa::Avx2 => kernel_portable::dot_tile_fn(r, c),
        Isa::Portable => kernel_portable::dot_tile_fn(r, c),
    }
}

/// Lane mask of the last vector of a tile with `lanes` valid lanes.
#[inline]
pub(super) fn lane_mask(lanes: usize) -> u16 {
    debug_assert!((1..=16).contains(&lanes));
    ((1u32 << lanes) - 1) as u16
}

/// Split `len` into `ceil(len / max)` nearly equal consecutive pieces
/// `(start, size)`, so no piece is much smaller than the others (none when
/// `len == 0`).
pub(super) fn balanced_split(len: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let pieces = len.div_ceil(max.max(1));
    let base = len.checked_div(pieces).unwrap_or(0);
    let extra = len.checked_rem(pieces).unwrap_or(0);
    (0..pieces).scan(0usize, move |start, i| {
        let size = base + usize::from(i < extra);
        let s = *start;
        *start += size;
        Some((s, size))
    })
}
