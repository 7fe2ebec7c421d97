//! A 3D scan or label map in memory, with its grid.
//!
//! Voxels are f32 in the file's own order: D = k (slowest), H = j, W = i
//! (fastest), so `data[(d·H + h)·W + w]` is voxel (i = w, j = h, k = d) and the
//! buffer is exactly one NDHWC sample with C = 1 — no transpose on the way to
//! or from a [`Tensor`]. Label maps hold integer class ids as f32.

use super::affine::Affine;
use crate::backend::Backend;
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;

/// The NIfTI voxel types voxdiff reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    pub const ALL: [DataType; 10] = [
        DataType::U8,
        DataType::I8,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ];
    /// NIfTI-1 `datatype` code.
    pub fn code(self) -> i16 {
        match self {
            DataType::U8 => 2,
            DataType::I16 => 4,
            DataType::I32 => 8,
            DataType::F32 => 16,
            DataType::F64 => 64,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::U32 => 768,
            DataType::I64 => 1024,
            DataType::U64 => 1280,
        }
    }
    pub fn from_code(code: i16) -> Option<DataType> {
        DataType::ALL.into_iter().find(|t| t.code() == code)
    }
    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }
    /// The representable range of an integer type (as f64).
    pub fn range(self) -> (f64, f64) {
        match self {
            DataType::U8 => (0.0, u8::MAX as f64),
            DataType::I8 => (i8::MIN as f64, i8::MAX as f64),
            DataType::U16 => (0.0, u16::MAX as f64),
            DataType::I16 => (i16::MIN as f64, i16::MAX as f64),
            DataType::U32 => (0.0, u32::MAX as f64),
            DataType::I32 => (i32::MIN as f64, i32::MAX as f64),
            DataType::U64 => (0.0, u64::MAX as f64),
            DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
            DataType::F32 => (f32::MIN as f64, f32::MAX as f64),
            DataType::F64 => (f64::MIN, f64::MAX),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DataType::U8 => "uint8",
            DataType::I8 => "int8",
            DataType::U16 => "uint16",
            DataType::I16 => "int16",
            DataType::U32 => "uint32",
            DataType::I32 => "int32",
            DataType::U64 => "uint64",
            DataType::I64 => "int64",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
        }
    }
}

/// Where a volume came from: what a writer needs to put a result back on the
/// same grid in the same representation.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    pub datatype: DataType,
    /// Voxel value = raw · slope + inter (slope 1, inter 0 when unscaled).
    pub scl_slope: f32,
    pub scl_inter: f32,
    /// The header as read (qform/sform codes and parameters, units, text).
    pub header: nifti::NiftiHeader,
}

/// A volume: f32 voxels in D, H, W order, spacing and the voxel-to-world affine.
#[derive(Clone, Debug)]
pub struct Volume {
    pub data: Vec<f32>,
    /// Extents `[D, H, W]` (= NIfTI `[dim3, dim2, dim1]`).
    pub dims: [usize; 3],
    /// Voxel size in mm `[sd, sh, sw]` (= NIfTI `[pixdim3, pixdim2, pixdim1]`).
    pub spacing: [f64; 3],
    /// Voxel (i, j, k) = (w, h, d) to world (RAS+, mm).
    pub affine: Affine,
    /// The file it was read from, if any.
    pub source: Option<Source>,
}

impl Volume {
    /// A volume on an axis-aligned RAS grid with the origin at world (0, 0, 0).
    pub fn new(data: Vec<f32>, dims: [usize; 3], spacing: [f64; 3]) -> Result<Volume> {
        ensure!(
            data.len() == dims.iter().product::<usize>(),
            "volume data holds {} values, dims {:?} need {}",
            data.len(),
            dims,
            dims.iter().product::<usize>()
        );
        let affine = Affine::diagonal([spacing[2], spacing[1], spacing[0]], [0.0; 3]);
        Ok(Volume {
            data,
            dims,
            spacing,
            affine,
            source: None,
        })
    }

    /// New voxel data on the same grid (same dims, spacing, affine, source).
    pub fn with_data(&self, data: Vec<f32>) -> Volume {
        assert_eq!(data.len(), self.numel(), "with_data: wrong voxel count");
        Volume {
            data,
            dims: self.dims,
            spacing: self.spacing,
            affine: self.affine,
            source: self.source.clone(),
        }
    }

    pub fn numel(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// Linear index of voxel (d, h, w).
    #[inline]
    pub fn idx(&self, d: usize, h: usize, w: usize) -> usize {
        (d * self.dims[1] + h) * self.dims[2] + w
    }

    #[inline]
    pub fn at(&self, d: usize, h: usize, w: usize) -> f32 {
        self.data[self.idx(d, h, w)]
    }

    /// Minimum and maximum voxel value (NaN ignored).
    pub fn min_max(&self) -> (f32, f32) {
        self.data
            .iter()
            .filter(|v| !v.is_nan())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }

    /// The voxels that are NaN or ±∞: how many, and the first one's (d, h, w).
    pub fn nonfinite(&self) -> (usize, Option<[usize; 3]>) {
        let mut count = 0;
        let mut first = None;
        for (i, v) in self.data.iter().enumerate() {
            if !v.is_finite() {
                count += 1;
                if first.is_none() {
                    let [_, h, w] = self.dims;
                    first = Some([i / (h * w), (i / w) % h, i % w]);
                }
            }
        }
        (count, first)
    }

    /// A short name for messages: the source file, or "volume".
    pub fn name(&self) -> String {
        self.source
            .as_ref()
            .map(|s| s.path.display().to_string())
            .unwrap_or_else(|| "volume".into())
    }

    /// Check `other` lies on the same grid: equal dims and affines equal to
    /// `tol_mm` (entry-wise). The error names both volumes and the difference.
    pub fn check_same_grid(&self, other: &Volume, tol_mm: f64) -> Result<()> {
        ensure!(
            self.dims == other.dims,
            "{} and {} are not on the same grid: shape [D,H,W] {:?} vs {:?}",
            self.name(),
            other.name(),
            self.dims,
            other.dims
        );
        let diff = self.affine.max_abs_diff(&other.affine);
        ensure!(
            diff <= tol_mm,
            "{} and {} are not on the same grid: affines differ by up to {diff:.4} mm \
             ({:?} vs {:?})",
            self.name(),
            other.name(),
            self.affine.0,
            other.affine.0
        );
        Ok(())
    }

    /// Upload as one NDHWC sample `[1, D, H, W, 1]` in `dtype`.
    pub fn to_tensor(&self, b: &dyn Backend, dtype: DType) -> Result<Tensor> {
        let [d, h, w] = self.dims;
        b.upload(&self.data, Shape::ndhwc(1, d, h, w, 1), dtype)
            .with_context(|| format!("uploading {}", self.name()))
    }

    /// Download channel `c` of sample 0 of an NDHWC tensor onto the grid of
    /// `like` (its spatial extents must equal `like.dims`).
    pub fn from_tensor(b: &dyn Backend, t: &Tensor, c: usize, like: &Volume) -> Result<Volume> {
        let s = t.shape();
        ensure!(
            s.rank() == 5,
            "from_tensor: expected an NDHWC tensor, got shape {s}"
        );
        ensure!(
            s.spatial() == like.dims,
            "from_tensor: tensor spatial extents {:?} differ from the grid {:?} of {}",
            s.spatial(),
            like.dims,
            like.name()
        );
        ensure!(
            c < s.c(),
            "from_tensor: channel {c} of a {}-channel tensor",
            s.c()
        );
        let all = b.download(t)?;
        let nc = s.c();
        let data: Vec<f32> = if nc == 1 {
            all[..like.numel()].to_vec()
        } else {
            (0..like.numel()).map(|v| all[v * nc + c]).collect()
        };
        Ok(like.with_data(data))
    }
}
