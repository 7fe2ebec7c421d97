//! Tensors: a shape, a dtype and a handle to device storage. No strides.
//!
//! Layout is NDHWC (channels last) for every activation on every backend. Other
//! tensors (weights, per-sample vectors, scalars) use the row-major layout their
//! op documents in [`crate::backend`].
//!
//! Storage is a device address plus the allocator that owns it. On the CPU
//! backend and the emulated GPU the address is a host pointer; on CUDA it is a
//! device pointer. Ops allocate their outputs, so a tensor's contents are only
//! written by the op that produced it — with two documented exceptions: the
//! optimiser updates parameters and moments in place, and `Backend::fill` /
//! `Backend::write` overwrite a tensor the caller owns.

use std::fmt;
use std::sync::Arc;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
        }
    }
}

/// Maximum rank of a tensor (N, D, H, W, C).
pub const MAX_RANK: usize = 5;

/// A tensor shape of rank 1..=5. Rank-5 shapes are NDHWC activations.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    pub fn new(dims: &[usize]) -> Shape {
        assert!(
            !dims.is_empty() && dims.len() <= MAX_RANK,
            "rank {} not in 1..=5",
            dims.len()
        );
        let mut d = [1usize; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Shape {
            dims: d,
            rank: dims.len() as u8,
        }
    }
    /// An NDHWC activation shape.
    pub fn ndhwc(n: usize, d: usize, h: usize, w: usize, c: usize) -> Shape {
        Shape::new(&[n, d, h, w, c])
    }
    /// A scalar, stored as a one-element rank-1 tensor.
    pub fn scalar() -> Shape {
        Shape::new(&[1])
    }
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }
    pub fn rank(&self) -> usize {
        self.rank as usize
    }
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }
    fn assert5(&self) {
        assert_eq!(self.rank, 5, "expected an NDHWC shape, got {self:?}");
    }
    pub fn n(&self) -> usize {
        self.assert5();
        self.dims[0]
    }
    pub fn d(&self) -> usize {
        self.assert5();
        self.dims[1]
    }
    pub fn h(&self) -> usize {
        self.assert5();
        self.dims[2]
    }
    pub fn w(&self) -> usize {
        self.assert5();
        self.dims[3]
    }
    /// Channels: the last dimension (for any rank).
    pub fn c(&self) -> usize {
        self.dims[self.rank as usize - 1]
    }
    /// Spatial extents [D, H, W] of an NDHWC shape.
    pub fn spatial(&self) -> [usize; 3] {
        self.assert5();
        [self.dims[1], self.dims[2], self.dims[3]]
    }
    /// Voxels per sample (D·H·W) of an NDHWC shape.
    pub fn voxels(&self) -> usize {
        self.assert5();
        self.dims[1] * self.dims[2] * self.dims[3]
    }
    /// The same shape with a different channel count.
    pub fn with_c(&self, c: usize) -> Shape {
        let mut s = *self;
        s.dims[s.rank as usize - 1] = c;
        s
    }
    /// The same NDHWC shape with different spatial extents.
    pub fn with_spatial(&self, sp: [usize; 3]) -> Shape {
        self.assert5();
        Shape::ndhwc(self.dims[0], sp[0], sp[1], sp[2], self.dims[4])
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}
impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.dims().iter().map(|d| d.to_string()).collect();
        write!(f, "{}", s.join("×"))
    }
}

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Host memory: the address is a valid host pointer (CPU backend, emulated GPU).
    Host,
    /// CUDA device memory: the address is a device pointer.
    Cuda,
}

/// The owner of device memory: frees a buffer when its last tensor is dropped.
pub trait Memory: Send + Sync {
    fn kind(&self) -> MemoryKind;
    /// Return `bytes` bytes at `addr` to the allocator (called once, from `Drop`).
    fn free(&self, addr: u64, bytes: usize);
}

/// A block of device memory.
pub struct Buffer {
    addr: u64,
    bytes: usize,
    mem: Arc<dyn Memory>,
}

impl Buffer {
    /// Wrap memory obtained from `mem`; `mem.free` is called on drop.
    pub fn new(addr: u64, bytes: usize, mem: Arc<dyn Memory>) -> Buffer {
        Buffer { addr, bytes, mem }
    }
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn kind(&self) -> MemoryKind {
        self.mem.kind()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.mem.free(self.addr, self.bytes);
    }
}

/// A shape, a dtype and shared device storage. Cloning shares the storage.
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    dtype: DType,
    buf: Arc<Buffer>,
}

impl Tensor {
    /// Wrap a buffer; it must hold at least `shape.numel() * dtype.size()` bytes.
    pub fn from_buffer(shape: Shape, dtype: DType, buf: Arc<Buffer>) -> Tensor {
        assert!(
            buf.bytes() >= shape.numel() * dtype.size(),
            "buffer of {} bytes too small for {shape} {}",
            buf.bytes(),
            dtype.name()
        );
        Tensor { shape, dtype, buf }
    }
    pub fn shape(&self) -> Shape {
        self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// Device address of the first element.
    pub fn addr(&self) -> u64 {
        self.buf.addr()
    }
    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.buf
    }
    /// Same storage, a different shape with the same element count.
    pub fn reshape(&self, shape: Shape) -> Tensor {
        assert_eq!(
            shape.numel(),
            self.shape.numel(),
            "reshape {} to {shape}",
            self.shape
        );
        Tensor {
            shape,
            dtype: self.dtype,
            buf: self.buf.clone(),
        }
    }
    /// True when both tensors share storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// The elements as a host slice.
    ///
    /// # Safety
    /// The tensor must live in host memory, have element type `T` matching its
    /// dtype, and no one may write to it while the slice lives.
    pub unsafe fn host<T: bytemuck::Pod>(&self) -> &[T] {
        debug_assert_eq!(self.buf.kind(), MemoryKind::Host);
        debug_assert_eq!(std::mem::size_of::<T>(), self.dtype.size());
        std::slice::from_raw_parts(self.addr() as *const T, self.numel())
    }
    /// The elements as a mutable host slice.
    ///
    /// # Safety
    /// As [`Tensor::host`], and the caller must be the only one reading or
    /// writing the storage while the slice lives (an op writing its freshly
    /// allocated output, or the optimiser updating parameters in place).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn host_mut<T: bytemuck::Pod>(&self) -> &mut [T] {
        debug_assert_eq!(self.buf.kind(), MemoryKind::Host);
        debug_assert_eq!(std::mem::size_of::<T>(), self.dtype.size());
        std::slice::from_raw_parts_mut(self.addr() as *mut T, self.numel())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({} {} @{:#x})",
            self.shape,
            self.dtype.name(),
            self.addr()
        )
    }
}
