//! Forward and data-gradient GEMM launches: the register / cp.async kernels
//! and the pipelined ones with their split-K reduction.

use super::*;

impl GpuBackend {
    /// One launch of `vd_conv3d_gather_*` / `vd_conv3d_scatter_*`: `x` is the
    /// GEMM's input activation, `y` its output (allocated by the caller, same dtype).
    pub(super) fn implicit_gemm(
        &self,
        plan: &GemmPlan,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<()> {
        let taps: usize = plan.kernel.iter().product();
        if takes_pipeline(plan.scatter, x.dtype(), plan.map_e, taps) {
            return self.fprop_pipelined(plan, x, w, bias, y);
        }
        let (xs, ys) = (x.shape(), y.shape());
        let kernel = gemm_kernel(plan.scatter, x.dtype());
        // The bf16 scatter reads 16-byte chunks: channels padded to a multiple of 8.
        let cin = xs.c();
        let cin_pad = if kernel == Kernel::Conv3dScatterAsyncBf16 {
            cin.next_multiple_of(8)
        } else {
            cin
        };
        let padded;
        let x = if kernel == Kernel::Conv3dScatterAsyncBf16
            && (cin_pad != cin || !x.addr().is_multiple_of(16))
        {
            padded = self.pad_channels(x, cin_pad)?;
            &padded
        } else {
            x
        };
        // Gather rows are output voxels; scatter rows are input voxels.
        let rows = if plan.scatter {
            xs.n() * xs.voxels()
        } else {
            ys.n() * ys.voxels()
        };
        let args = ConvGemmArgs {
            x: x.addr(),
            w: w.addr(),
            bias: bias.map_or(0, |b| b.addr()),
            y: y.addr(),
            n: i32_of(xs.n() as i64, "batch")?,
            cin: i32_of(cin_pad as i64, "input channels")?,
            cout: i32_of(ys.c() as i64, "output channels")?,
            rows: i32_of(rows as i64, "rows")?,
            in_dims: dims_i32(xs.spatial(), "input extent")?,
            out_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(plan.kernel, "kernel")?,
            map_a: map_i32(plan.map_a, "stride")?,
            map_b: map_i32(plan.map_b, "tap step")?,
            map_c: map_i32(plan.map_c, "padding")?,
            map_e: map_i32(plan.map_e, "stride")?,
            w_tap: i32_of(plan.w_tap as i64, "weight tap stride")?,
            w_ci: i32_of(plan.w_ci as i64, "weight channel stride")?,
            w_co: i32_of(plan.w_co as i64, "weight channel stride")?,
        };
        let grid = [
            i32_of(rows.div_ceil(CONV_BM) as i64, "row tiles")? as u32,
            i32_of(ys.c().div_ceil(CONV_BN) as i64, "channel tiles")? as u32,
            if plan.scatter {
                u32::try_from(taps)
                    .ok()
                    .filter(|&t| t <= 65535)
                    .context("more than 65535 taps")?
            } else {
                1
            },
        ];
        let cfg = LaunchConfig {
            grid,
            block: [CONV_THREADS, 1, 1],
            shared_bytes: 0,
        };
        if kernel != Kernel::Conv3dScatterAsyncBf16 {
            let mut kargs = KernelArgs::new().pod(&args);
            return self.device().launch(kernel, cfg, &mut kargs);
        }
        let bt = self.pack_weights(plan, w, taps, ys.c(), cin, cin_pad)?;
        let mut kargs = KernelArgs::new().pod(&args).ptr(bt);
        self.device().launch(kernel, cfg, &mut kargs)
    }

    /// A bf16 gather GEMM with e == 1 on the pipelined kernels
    /// (`vd_conv3d_fprop_*`, see the module doc): channels padded to a
    /// multiple of 8 when they are not, the weight packed, the tile chosen by
    /// [`fprop_tiling`], and with split K the reduction that adds the bias.
    fn fprop_pipelined(
        &self,
        plan: &GemmPlan,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<()> {
        let (xs, ys) = (x.shape(), y.shape());
        let (cin, cout) = (xs.c(), ys.c());
        let cin_pad = cin.next_multiple_of(8);
        let padded;
        let x = if cin_pad != cin || !x.addr().is_multiple_of(16) {
            padded = self.pad_channels(x, cin_pad)?;
            &padded
        } else {
            x
        };
        let taps: usize = plan.kernel.iter().product();
        let rows = ys.n() * ys.voxels();
        // 32-bit element offsets inside the kernel.
        i32_of((xs.n() * xs.voxels() * cin_pad) as i64, "input elements")?;
        i32_of((rows * cout) as i64, "output elements")?;
        let t = fprop_tiling(rows, cout, taps * cin_pad);
        let bt = self.pack_weights(plan, w, taps, cout, cin, cin_pad)?;
        let ws = if t.splits > 1 {
            i32_of((t.splits * rows * cout) as i64, "split-K workspace")?;
            Some(self.alloc(Shape::new(&[t.splits * rows * cout]), DType::F32)?)
        } else {
            None
        };
        let [_, in_h, in_w] = xs.spatial().map(|v| v as i64);
        let [_, kh, kw] = plan.kernel.map(|v| v as i64);
        let c = cin_pad as i64;
        // A's offset per tap step along w, h, d (map_b is ±1 per axis).
        let dw = plan.map_b[2] * c;
        let dh = plan.map_b[1] * in_w * c;
        let dd = plan.map_b[0] * in_h * in_w * c;
        let args = ConvPipeArgs {
            x: x.addr(),
            bt,
            bias: bias.map_or(0, |b| b.addr()),
            y: y.addr(),
            ws: ws.as_ref().map_or(0, |t| t.addr()),
            rows: i32_of(rows as i64, "rows")?,
            cin: i32_of(c, "input channels")?,
            cout: i32_of(cout as i64, "output channels")?,
            taps: taps as i32,
            in_dims: dims_i32(xs.spatial(), "input extent")?,
            out_dims: dims_i32(ys.spatial(), "output extent")?,
            kernel: dims_i32(plan.kernel, "kernel")?,
            map_a: map_i32(plan.map_a, "stride")?,
            map_b: map_i32(plan.map_b, "tap step")?,
            map_c: map_i32(plan.map_c, "padding")?,
            tap_step: map_i32(
                [dw, dh - (kw - 1) * dw, dd - (kh - 1) * dh - (kw - 1) * dw],
                "tap offset",
            )?,
            steps: i32_of(t.steps as i64, "K steps")?,
            split_steps: t.split_steps as i32,
            pad: 0,
        };
        let cfg = LaunchConfig {
            grid: [
                i32_of(rows.div_ceil(t.bm) as i64, "row tiles")? as u32,
                i32_of(cout.div_ceil(t.bn) as i64, "channel tiles")? as u32,
                t.splits as u32,
            ],
            block: [PIPE_THREADS, 1, 1],
            shared_bytes: t.shared_bytes,
        };
        let mut kargs = KernelArgs::new().pod(&args);
        self.device().launch(t.kernel, cfg, &mut kargs)?;
        let Some(ws) = ws else { return Ok(()) };
        // y = bias + Σ partials, split order: a thread per 4 outputs (per
        // output when Cout is not a multiple of 4), blocks of 256, grid ≤ 4096.
        let elems = rows * cout;
        let items = if cout.is_multiple_of(4) {
            elems / 4
        } else {
            elems
        };
        let blocks = items
            .div_ceil(REDUCE_THREADS as usize)
            .clamp(1, REDUCE_MAX_BLOCKS) as u32;
        let mut rargs = KernelArgs::new()
            .tensor(&ws)
            .ptr(bias.map_or(0, |b| b.addr()))
            .tensor(y)
            .i64(elems as i64)
            .i32(cout as i32)
            .i32(t.splits as i32);
        self.device()
            .launch(
                Kernel::Conv3dSplitkReduceBf16,
                LaunchConfig::linear(blocks, REDUCE_THREADS),
                &mut rargs,
            )
            .context("split-K reduction")
    }
}
