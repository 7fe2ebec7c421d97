//! Weight-gradient partial sums: the f32 FMA kernel and the pipelined
//! tensor-core kernels (the reduction over splits is in `conv3d_wgrad`).

use super::*;

impl GpuBackend {
    /// The f32 weight gradient's partial sums (FMA core, register loader).
    pub(super) fn wgrad_f32(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<WgradPartials> {
        let (xs, ys) = (x.shape(), dy.shape());
        let x_dims = xs.spatial();
        let (cin, cout, taps) = (xs.c(), ys.c(), spec.taps());
        // Regular: one group of all taps, K over dy voxels; transposed: a group per tap, K over x voxels.
        let (groups, taps_m, k_total) = if spec.transposed {
            (taps, 1, xs.n() * xs.voxels())
        } else {
            (1, taps, ys.n() * ys.voxels())
        };
        // The kernel steps its voxel counters up to 4·CONV_BK past k_total.
        i32_of((k_total + 4 * CONV_BK) as i64, "voxels")?;
        let (m_tiles, n_tiles) = ((taps_m * cin).div_ceil(CONV_BM), cout.div_ceil(CONV_BN));
        let (k_chunk, splits) = wgrad_splits(m_tiles * n_tiles * groups, k_total, CONV_BK);
        let ws = self.alloc(Shape::new(&[splits * taps * cin * cout]), DType::F32)?;
        let ws_bias = if with_bias {
            Some(self.alloc(Shape::new(&[splits * groups * cout]), DType::F32)?)
        } else {
            None
        };
        let args = ConvWgradArgs {
            x: x.addr(),
            dy: dy.addr(),
            ws: ws.addr(),
            ws_bias: ws_bias.as_ref().map_or(0, |t| t.addr()),
            n: i32_of(xs.n() as i64, "batch")?,
            cin: i32_of(cin as i64, "input channels")?,
            cout: i32_of(cout as i64, "output channels")?,
            taps_m: i32_of(taps_m as i64, "taps")?,
            x_dims: dims_i32(x_dims, "input extent")?,
            dy_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(spec.kernel, "kernel")?,
            stride: dims_i32(spec.stride, "stride")?,
            pad: dims_i32(spec.pad_lo(x_dims), "padding")?,
            n_tiles: i32_of(n_tiles as i64, "channel tiles")?,
            k_total: i32_of(k_total as i64, "voxels")?,
            k_chunk: i32_of(k_chunk as i64, "voxels per split")?,
        };
        let kernel = if spec.transposed {
            Kernel::Conv3dWgradTransposedF32
        } else {
            Kernel::Conv3dWgradF32
        };
        let cfg = LaunchConfig {
            grid: [
                i32_of((m_tiles * n_tiles) as i64, "tiles")? as u32,
                splits as u32,
                u32::try_from(groups)
                    .ok()
                    .filter(|&g| g <= 65535)
                    .context("more than 65535 taps")?,
            ],
            block: [CONV_THREADS, 1, 1],
            shared_bytes: 0,
        };
        let mut kargs = KernelArgs::new().pod(&args);
        self.device()
            .launch(kernel, cfg, &mut kargs)
            .context("conv3d_wgrad partial sums")?;
        Ok(WgradPartials {
            ws,
            ws_bias,
            splits,
            groups,
            cin_pad: cin,
            cout_pad: cout,
        })
    }

    /// The bf16 weight gradient's partial sums on the pipelined tensor-core
    /// kernels (`vd_conv3d_wgrad_pipe_*`, see the module doc): x and dy with
    /// their channels zero-padded to multiples of 8 when they are not, and the
    /// bias gradient as the product of an extra M row of ones.
    pub(super) fn wgrad_pipelined(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: ConvSpec,
        with_bias: bool,
    ) -> Result<WgradPartials> {
        let (xs, ys) = (x.shape(), dy.shape());
        let x_dims = xs.spatial();
        let (cin, cout, taps) = (xs.c(), ys.c(), spec.taps());
        let (cin_pad, cout_pad) = (cin.next_multiple_of(8), cout.next_multiple_of(8));
        let (px, pdy);
        let x = if cin_pad != cin || !x.addr().is_multiple_of(16) {
            px = self.pad_channels(x, cin_pad)?;
            &px
        } else {
            x
        };
        let dy = if cout_pad != cout || !dy.addr().is_multiple_of(16) {
            pdy = self.pad_channels(dy, cout_pad)?;
            &pdy
        } else {
            dy
        };
        // 32-bit element offsets inside the kernel (64-bit for the voxel offsets).
        i32_of((xs.n() * xs.voxels() * cin_pad) as i64, "input elements")?;
        let (groups, taps_m, k_total) = if spec.transposed {
            (taps, 1, xs.n() * xs.voxels())
        } else {
            (1, taps, ys.n() * ys.voxels())
        };
        // The voxel counter runs up to WGRAD_BK · stages past k_total.
        i32_of((k_total + 8 * WGRAD_BK) as i64, "voxels")?;
        let rows = taps_m * cin_pad;
        let (bm, bn, kernel) = match (cout_pad <= 32, spec.transposed) {
            (true, false) => (128, 32, Kernel::Conv3dWgradPipe128x32Bf16),
            (false, false) => (64, 64, Kernel::Conv3dWgradPipe64x64Bf16),
            (true, true) => (128, 32, Kernel::Conv3dWgradPipeTransposed128x32Bf16),
            (false, true) => (64, 64, Kernel::Conv3dWgradPipeTransposed64x64Bf16),
        };
        let (m_tiles, n_tiles) = (
            (rows + with_bias as usize).div_ceil(bm),
            cout_pad.div_ceil(bn),
        );
        let (k_chunk, splits) = wgrad_splits(m_tiles * n_tiles * groups, k_total, WGRAD_BK);
        let ws = self.alloc(
            Shape::new(&[splits * taps * cin_pad * cout_pad]),
            DType::F32,
        )?;
        let ws_bias = if with_bias {
            Some(self.alloc(Shape::new(&[splits * groups * cout_pad]), DType::F32)?)
        } else {
            None
        };
        let args = ConvWgradPipeArgs {
            x: x.addr(),
            dy: dy.addr(),
            ws: ws.addr(),
            ws_bias: ws_bias.as_ref().map_or(0, |t| t.addr()),
            cin: cin_pad as i32,
            cout: cout_pad as i32,
            rows: i32_of(rows as i64, "weight rows")?,
            x_dims: dims_i32(x_dims, "input extent")?,
            dy_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(spec.kernel, "kernel")?,
            stride: dims_i32(spec.stride, "stride")?,
            pad: dims_i32(spec.pad_lo(x_dims), "padding")?,
            k_total: k_total as i32,
            k_chunk: k_chunk as i32,
        };
        let z = u32::try_from(splits * groups)
            .ok()
            .filter(|&z| z <= 65535)
            .context("more than 65535 splits × tap groups")?;
        let cfg = LaunchConfig {
            grid: [m_tiles as u32, n_tiles as u32, z],
            block: [PIPE_THREADS, 1, 1],
            shared_bytes: (4 * WGRAD_BK * (bm + 8 + bn + 8) * 2) as u32,
        };
        let mut kargs = KernelArgs::new().pod(&args).i32(splits as i32);
        self.device()
            .launch(kernel, cfg, &mut kargs)
            .context("conv3d_wgrad partial sums")?;
        Ok(WgradPartials {
            ws,
            ws_bias,
            splits,
            groups,
            cin_pad,
            cout_pad,
        })
    }
}

/// Partial sums of a weight gradient: `ws` `[splits][taps · cin_pad][cout_pad]`
/// (tap-major rows whatever the grouping) and, with a bias, `ws_bias`
/// `[splits][groups][cout_pad]`.
pub(super) struct WgradPartials {
    pub(super) ws: Tensor,
    pub(super) ws_bias: Option<Tensor>,
    pub(super) splits: usize,
    pub(super) groups: usize,
    pub(super) cin_pad: usize,
    pub(super) cout_pad: usize,
}
