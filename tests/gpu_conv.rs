//! The convolution kernels (forward, data gradient, weight gradient with the
//! bias gradient) on the device under test (Emu, or a GPU with
//! VOXDIFF_TEST_DEVICE=cuda) against the CPU backend and an f64 evaluation of
//! the ConvSpec contract (both on the same inputs), for every ConvSpec family the
//! backends support: 3×3×3, 1×3×3, 1×1×1, 2×2×2 stride 2 (odd extents: a zero
//! plane at the end), transposed 2×2×2, the 1×2×2 2D variants, and general
//! kernel/stride combinations (including kernel == stride with padding before).
//! Extents are odd, channel counts are not tile multiples (1, 3, 5, 17, 33, 70),
//! N is 1 or 2; outputs are poisoned (NaN) by the device allocator, so an
//! element a kernel never writes fails the comparison.
//!
//! Tolerance: |got − want| ≤ rtol·|want| + floor·Σ|terms| per element, where
//! Σ|terms| is the sum of the absolute products that make up the element (the
//! scale of the rounding error of a sum that cancels). f32 activations:
//! rtol = floor = 1e-5. bf16 activations: the CPU and f64 references run on
//! the bf16-rounded activations (and the f32 weights); rtol = 1e-2 and floor = 2.5e-3 (above the 2⁻⁹
//! relative rounding of a bf16 output or weight, below the 1/taps share a
//! single wrong term would have).

mod common;
mod gpu_support;

use common::Rng;
use std::sync::Arc;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::ConvSpec;
use voxdiff::tensor::{DType, Shape, Tensor};

/// One test problem: a spec, the input shape, the output channels.
#[derive(Clone, Copy, Debug)]
struct Case {
    spec: ConvSpec,
    x: [usize; 5],
    cout: usize,
}

fn case(
    kernel: [usize; 3],
    stride: [usize; 3],
    transposed: bool,
    x: [usize; 5],
    cout: usize,
) -> Case {
    Case {
        spec: ConvSpec::new(kernel, stride, transposed),
        x,
        cout,
    }
}

/// (x voxel, y voxel, tap) for every product term of the convolution of one sample.
fn pairs(spec: ConvSpec, xd: [usize; 3]) -> Vec<(usize, usize, usize)> {
    let yd = spec.out_spatial(xd);
    let pad = spec.pad_lo(xd);
    let k = spec.kernel;
    let mut out = Vec::new();
    let (src, dst) = if spec.transposed { (xd, yd) } else { (yd, xd) };
    for a in 0..src[0] {
        for b in 0..src[1] {
            for c in 0..src[2] {
                for td in 0..k[0] {
                    for th in 0..k[1] {
                        for tw in 0..k[2] {
                            let q = [
                                (a * spec.stride[0] + td) as i64 - pad[0] as i64,
                                (b * spec.stride[1] + th) as i64 - pad[1] as i64,
                                (c * spec.stride[2] + tw) as i64 - pad[2] as i64,
                            ];
                            if (0..3).any(|i| q[i] < 0 || q[i] >= dst[i] as i64) {
                                continue;
                            }
                            let s = (a * src[1] + b) * src[2] + c;
                            let d =
                                (q[0] as usize * dst[1] + q[1] as usize) * dst[2] + q[2] as usize;
                            let t = (td * k[1] + th) * k[2] + tw;
                            // regular: src is y (o), dst is x (o·s + t − pad); transposed: src is x.
                            out.push(if spec.transposed {
                                (s, d, t)
                            } else {
                                (d, s, t)
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Values and Σ|terms| of a reference result.
struct Want {
    v: Vec<f64>,
    scale: Vec<f64>,
}

impl Want {
    fn zeros(n: usize) -> Want {
        Want {
            v: vec![0.0; n],
            scale: vec![0.0; n],
        }
    }
    fn add(&mut self, i: usize, term: f64) {
        self.v[i] += term;
        self.scale[i] += term.abs();
    }
}

/// f64 forward, data gradient and weight gradient (+ bias gradient) of a case.
struct Reference {
    y: Want,
    dx: Want,
    dw: Want,
    db: Want,
}

fn reference(c: &Case, x: &[f32], w: &[f32], bias: &[f32], dy: &[f32]) -> Reference {
    let [n, d, h, wd, cin] = c.x;
    let xd = [d, h, wd];
    let yd = c.spec.out_spatial(xd);
    let (xv, yv) = (d * h * wd, yd.iter().product::<usize>());
    let cout = c.cout;
    let mut r = Reference {
        y: Want::zeros(n * yv * cout),
        dx: Want::zeros(n * xv * cin),
        dw: Want::zeros(c.spec.taps() * cin * cout),
        db: Want::zeros(cout),
    };
    for (i, o) in (0..n * yv).flat_map(|i| (0..cout).map(move |o| (i, o))) {
        r.y.add(i * cout + o, bias[o] as f64);
        r.db.add(o, dy[i * cout + o] as f64);
    }
    let p = pairs(c.spec, xd);
    for s in 0..n {
        for &(xi, yi, t) in &p {
            let xo = (s * xv + xi) * cin;
            let yo = (s * yv + yi) * cout;
            for ci in 0..cin {
                for co in 0..cout {
                    let wi = (t * cin + ci) * cout + co;
                    r.y.add(yo + co, x[xo + ci] as f64 * w[wi] as f64);
                    r.dx.add(xo + ci, dy[yo + co] as f64 * w[wi] as f64);
                    r.dw.add(wi, x[xo + ci] as f64 * dy[yo + co] as f64);
                }
            }
        }
    }
    r
}

fn check(what: &str, got: &[f32], want: &Want, rtol: f64, floor: f64) {
    assert_eq!(got.len(), want.v.len(), "{what}: length");
    for (i, &g) in got.iter().enumerate() {
        assert!(
            g.is_finite(),
            "{what}: element {i} is {g} (want {})",
            want.v[i]
        );
        let err = (g as f64 - want.v[i]).abs();
        let lim = rtol * want.v[i].abs() + floor * want.scale[i] + 1e-30;
        assert!(
            err <= lim,
            "{what}: element {i}: got {g}, want {} (|err| {err:.3e} > {lim:.3e}, Σ|terms| {:.3e})",
            want.v[i],
            want.scale[i]
        );
    }
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// Runs forward, dgrad and wgrad of `c` on `gpu` in its activation dtype and
/// compares every output element with the f64 reference.
fn run_case(gpu: &GpuBackend, c: &Case, seed: u64, with_bias: bool) {
    let act = gpu.act_dtype();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let xs = Shape::new(&c.x);
    let ws = c.spec.weight_shape(xs.c(), c.cout);
    let ys = xs
        .with_spatial(c.spec.out_spatial(xs.spatial()))
        .with_c(c.cout);
    let mut x = rng.vec(xs.numel(), -1.0, 1.0);
    let w = rng.vec(ws.numel(), -0.5, 0.5);
    let bias = if with_bias {
        rng.vec(c.cout, -1.0, 1.0)
    } else {
        vec![0.0; c.cout]
    };
    let mut dy = rng.vec(ys.numel(), -1.0, 1.0);
    let (rtol, floor) = match act {
        DType::F32 => (1e-5, 1e-5),
        DType::BF16 => {
            x = round_bf16(&x);
            dy = round_bf16(&dy);
            (1e-2, 2.5e-3)
        }
    };
    let r = reference(c, &x, &w, &bias, &dy);
    let what = format!("{:?} x{:?} cout {} {}", c.spec, c.x, c.cout, act.name());

    let up = |b: &dyn Backend, v: &[f32], s: Shape, d: DType| b.upload(v, s, d).unwrap();
    let bias_shape = Shape::new(&[c.cout]);
    let (xt, wt, bt, dyt) = (
        up(gpu, &x, xs, act),
        up(gpu, &w, ws, DType::F32),
        up(gpu, &bias, bias_shape, DType::F32),
        up(gpu, &dy, ys, act),
    );
    let (cx, cw, cb, cdy) = (
        up(&cpu, &x, xs, DType::F32),
        up(&cpu, &w, ws, DType::F32),
        up(&cpu, &bias, bias_shape, DType::F32),
        up(&cpu, &dy, ys, DType::F32),
    );
    // Every output against the CPU backend and against the f64 evaluation.
    let compare = |op: &str, got: &Tensor, cpu_out: &Tensor, want: &Want| {
        let got = gpu.download(got).unwrap();
        let by_cpu = Want {
            v: cpu
                .download(cpu_out)
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect(),
            scale: want.scale.clone(),
        };
        check(&format!("{what} {op} vs cpu"), &got, &by_cpu, rtol, floor);
        check(&format!("{what} {op} vs f64"), &got, want, rtol, floor);
    };

    let y = gpu
        .conv3d(&xt, &wt, with_bias.then_some(&bt), c.spec)
        .unwrap_or_else(|e| panic!("{what}: conv3d: {e:#}"));
    assert_eq!((y.shape(), y.dtype()), (ys, act), "{what}: output");
    let cy = cpu
        .conv3d(&cx, &cw, with_bias.then_some(&cb), c.spec)
        .unwrap();
    compare("forward", &y, &cy, &r.y);

    let dx = gpu
        .conv3d_dgrad(&dyt, &wt, xs, c.spec)
        .unwrap_or_else(|e| panic!("{what}: dgrad: {e:#}"));
    assert_eq!((dx.shape(), dx.dtype()), (xs, act), "{what}: dx");
    let cdx = cpu.conv3d_dgrad(&cdy, &cw, xs, c.spec).unwrap();
    compare("dgrad", &dx, &cdx, &r.dx);

    let (dw, db) = gpu
        .conv3d_wgrad(&xt, &dyt, c.spec, with_bias)
        .unwrap_or_else(|e| panic!("{what}: wgrad: {e:#}"));
    assert_eq!((dw.shape(), dw.dtype()), (ws, DType::F32), "{what}: dw");
    let (cdw, cdb) = cpu.conv3d_wgrad(&cx, &cdy, c.spec, with_bias).unwrap();
    compare("wgrad", &dw, &cdw, &r.dw);
    match (db, cdb) {
        (Some(db), Some(cdb)) => {
            assert!(with_bias, "{what}: a bias gradient nobody asked for");
            compare("bias grad", &db, &cdb, &r.db);
        }
        (None, None) => assert!(!with_bias, "{what}: no bias gradient"),
        _ => panic!("{what}: the gpu and the CPU disagree on returning a bias gradient"),
    }
}

fn run_cases(cases: &[Case], with_bias: bool) {
    for act in [DType::F32, DType::BF16] {
        let gpu = GpuBackend::with_act_dtype(gpu_support::device(), act);
        for (i, c) in cases.iter().enumerate() {
            run_case(&gpu, c, 100 + i as u64, with_bias);
        }
    }
}

#[test]
fn conv_3x3x3() {
    run_cases(
        &[
            case([3, 3, 3], [1, 1, 1], false, [2, 3, 5, 7, 3], 17),
            case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 33], 5),
        ],
        true,
    );
}

#[test]
fn conv_1x3x3_2d() {
    run_cases(
        &[case([1, 3, 3], [1, 1, 1], false, [2, 1, 7, 9, 17], 33)],
        true,
    );
}

#[test]
fn conv_1x1x1() {
    run_cases(
        &[
            case([1, 1, 1], [1, 1, 1], false, [2, 3, 5, 7, 33], 70),
            case([1, 1, 1], [1, 1, 1], false, [1, 3, 5, 7, 1], 3),
        ],
        true,
    );
}

#[test]
fn conv_down_2x2x2_stride_2_odd_extents() {
    run_cases(
        &[
            case([2, 2, 2], [2, 2, 2], false, [2, 3, 5, 7, 5], 17),
            case([1, 2, 2], [1, 2, 2], false, [2, 1, 7, 9, 3], 33),
        ],
        true,
    );
}

#[test]
fn conv_transposed_up_2x2x2() {
    run_cases(
        &[
            case([2, 2, 2], [2, 2, 2], true, [1, 3, 5, 7, 17], 3),
            case([1, 2, 2], [1, 2, 2], true, [2, 1, 7, 9, 33], 1),
        ],
        true,
    );
}

#[test]
fn conv_general_kernels_and_strides() {
    run_cases(
        &[
            // 3×3×3 stride 2: the strided data gradient visits taps between positions.
            case([3, 3, 3], [2, 2, 2], false, [1, 3, 5, 7, 3], 5),
            // mixed kernel and stride per axis, stride > kernel on W.
            case([2, 3, 1], [1, 2, 3], false, [2, 4, 5, 7, 5], 3),
            // kernel == stride 3 with padding before (pad_lo = 1 on H and W).
            case([1, 3, 3], [1, 3, 3], false, [1, 1, 4, 7, 17], 5),
            // transposed 1×3×2.
            case([1, 3, 2], [1, 3, 2], true, [1, 2, 3, 5, 5], 3),
        ],
        true,
    );
}

/// Channel counts that are multiples of 8 take the cp.async pipeline for bf16
/// (forward and data gradient, whichever side's channels are the GEMM's input),
/// including K tails shorter than a step (72 = 2·32 + 8 columns) and channel
/// tiles that are not full (40).
#[test]
fn conv_channels_multiple_of_8() {
    use voxdiff::backend::gpu::conv::gemm_kernel;
    use voxdiff::backend::gpu::registry::Kernel;
    assert_eq!(
        gemm_kernel(true, DType::BF16),
        Kernel::Conv3dScatterAsyncBf16
    );
    assert_eq!(gemm_kernel(false, DType::BF16), Kernel::Conv3dGatherBf16);
    assert_eq!(gemm_kernel(false, DType::F32), Kernel::Conv3dGatherF32);
    run_cases(
        &[
            case([3, 3, 3], [1, 1, 1], false, [2, 3, 5, 7, 16], 24),
            case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 8], 8),
            case([2, 2, 2], [2, 2, 2], false, [1, 3, 5, 7, 8], 16),
            case([2, 2, 2], [2, 2, 2], true, [1, 3, 5, 7, 24], 8),
            case([1, 3, 3], [1, 1, 1], false, [2, 1, 7, 9, 8], 40),
            case([3, 3, 3], [2, 2, 2], false, [1, 3, 5, 7, 8], 8),
            case([1, 1, 1], [1, 1, 1], false, [1, 3, 5, 7, 72], 8),
        ],
        true,
    );
}

/// Every tile and split of the pipelined bf16 forward / data gradient
/// (`fprop_tiling`), with channels that need padding (17, 33) and outputs
/// that are not tile multiples: the dispatch picks the kernel the case names,
/// the emulator launches it, and the results match the references.
#[test]
fn conv_pipelined_tiles_and_split_k() {
    use voxdiff::backend::gpu::conv::fprop_tiling;
    use voxdiff::backend::gpu::emu::launches;
    use voxdiff::backend::gpu::registry::Kernel;
    // (case, forward kernel, forward splits)
    let cases = [
        (
            case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 8], 5),
            Kernel::Conv3dFprop128x32Bf16,
            1,
        ),
        (
            case([3, 3, 3], [1, 1, 1], false, [2, 3, 5, 7, 17], 5),
            Kernel::Conv3dFprop128x32SplitkBf16,
            2,
        ),
        (
            case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 8], 40),
            Kernel::Conv3dFprop64x64Bf16,
            1,
        ),
        (
            case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 33], 70),
            Kernel::Conv3dFprop64x64SplitkBf16,
            4,
        ),
        (
            case([1, 1, 1], [1, 1, 1], false, [1, 16, 33, 33, 8], 40),
            Kernel::Conv3dFprop128x64Bf16,
            1,
        ),
    ];
    let gpu = GpuBackend::with_act_dtype(gpu_support::device(), DType::BF16);
    for (i, (c, kernel, splits)) in cases.iter().enumerate() {
        let rows = c.x[0]
            * c.spec
                .out_spatial([c.x[1], c.x[2], c.x[3]])
                .iter()
                .product::<usize>();
        let t = fprop_tiling(rows, c.cout, c.spec.taps() * c.x[4].next_multiple_of(8));
        assert_eq!((t.kernel, t.splits), (*kernel, *splits), "{c:?}");
        let before = launches(*kernel);
        run_case(&gpu, c, 300 + i as u64, true);
        if gpu_support::is_emu(gpu.device()) {
            assert!(
                launches(*kernel) > before,
                "{c:?}: {} did not run",
                kernel.name()
            );
        }
    }
}

/// Every tile of the pipelined bf16 weight gradient, regular and transposed,
/// with channels that need padding on either side, and a K split.
#[test]
fn conv_wgrad_pipelined_tiles_and_split_k() {
    use voxdiff::backend::gpu::conv::{wgrad_splits, WGRAD_BK};
    use voxdiff::backend::gpu::emu::launches;
    use voxdiff::backend::gpu::registry::Kernel;
    let cases = [
        (
            case([3, 3, 3], [1, 1, 1], false, [2, 3, 5, 7, 3], 17),
            Kernel::Conv3dWgradPipe128x32Bf16,
        ),
        (
            case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 8], 40),
            Kernel::Conv3dWgradPipe64x64Bf16,
        ),
        (
            case([2, 2, 2], [2, 2, 2], true, [1, 3, 5, 7, 8], 40),
            Kernel::Conv3dWgradPipeTransposed64x64Bf16,
        ),
        (
            case([2, 2, 2], [2, 2, 2], true, [1, 3, 5, 7, 17], 3),
            Kernel::Conv3dWgradPipeTransposed128x32Bf16,
        ),
    ];
    // The first case (2 M tiles of 27 · 8 + 1 rows, 1 N tile) splits its K of 2 · 105 dy voxels in two.
    assert_eq!(wgrad_splits(2, 210, WGRAD_BK).1, 2);
    let gpu = GpuBackend::with_act_dtype(gpu_support::device(), DType::BF16);
    for (i, (c, kernel)) in cases.iter().enumerate() {
        let before = launches(*kernel);
        run_case(&gpu, c, 400 + i as u64, true);
        if gpu_support::is_emu(gpu.device()) {
            assert!(
                launches(*kernel) > before,
                "{c:?}: {} did not run",
                kernel.name()
            );
        }
    }
}

#[test]
fn conv_without_bias() {
    run_cases(
        &[case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 3], 5)],
        false,
    );
}

/// Every kernel of the family under a shuffled fiber order: a missing barrier
/// would make a thread read a tile another thread has not written yet.
#[test]
fn conv_shuffled_fiber_order() {
    for (act, seed) in [
        (DType::F32, 0x5EED),
        (DType::BF16, 0x5EED),
        (DType::F32, 7),
        (DType::BF16, 7),
    ] {
        let gpu = GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(Some(seed))), act);
        for (i, c) in [
            case([3, 3, 3], [1, 1, 1], false, [2, 3, 5, 7, 17], 5),
            case([2, 2, 2], [2, 2, 2], false, [1, 3, 5, 7, 3], 17),
            case([2, 2, 2], [2, 2, 2], true, [1, 3, 5, 7, 5], 3),
            case([3, 3, 3], [1, 1, 1], false, [1, 3, 5, 7, 16], 8),
            case([2, 2, 2], [2, 2, 2], true, [1, 3, 5, 7, 8], 16),
        ]
        .iter()
        .enumerate()
        {
            run_case(&gpu, c, 200 + i as u64, true);
        }
    }
}

#[test]
fn conv_rejects_bad_arguments() {
    let gpu = gpu_support::backend();
    let x = gpu.zeros(Shape::ndhwc(1, 3, 5, 7, 4), DType::BF16).unwrap();
    let w = gpu
        .zeros(ConvSpec::K3.weight_shape(3, 8), DType::F32)
        .unwrap();
    let err = gpu.conv3d(&x, &w, None, ConvSpec::K3).unwrap_err();
    assert!(format!("{err:#}").contains("input channels"), "{err:#}");
    let w4 = gpu
        .zeros(ConvSpec::K3.weight_shape(4, 8), DType::F32)
        .unwrap();
    let bad = ConvSpec::new([3, 3, 3], [2, 2, 2], true);
    let err = gpu.conv3d(&x, &w4, None, bad).unwrap_err();
    assert!(format!("{err:#}").contains("kernel == stride"), "{err:#}");
    let dy = gpu.zeros(Shape::ndhwc(1, 3, 5, 6, 8), DType::BF16).unwrap();
    let err = gpu
        .conv3d_dgrad(&dy, &w4, x.shape(), ConvSpec::K3)
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("output gradient has shape"),
        "{err:#}"
    );
    let err = gpu.conv3d_wgrad(&x, &dy, ConvSpec::K3, true).unwrap_err();
    assert!(
        format!("{err:#}").contains("output gradient has shape"),
        "{err:#}"
    );
}
