//! Which kernels each op of the GPU backend launches, and that together they
//! are every kernel of the registry. One sweep over every op (both activation
//! dtypes, both channel paths, every convolution path) on the emulator; the
//! emulator's launch counters before and after each op give the kernels it
//! launched, which must be exactly the ones named for it here. The per-family
//! tests check the values; this one checks dispatch (dtype, vector width,
//! convolution path) and that no entry point is left out. The self-test
//! kernels run in tests/emu_*; the registry must hold exactly those named in
//! `SELFTESTS`.

use std::collections::BTreeSet;
use std::sync::Arc;
use voxdiff::backend::gpu::emu::{launches, Emu};
use voxdiff::backend::gpu::registry::{Family, Kernel};
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::diffusion::logits::{ScaledToLogits, ScaledToLogitsGrad};
use voxdiff::nn::channel_attention::{Cam, CamGrad, ChannelLinear, ChannelLinearGrad};
use voxdiff::nn::flash_attention::{FlashAttention, FlashAttentionGrad};
use voxdiff::nn::linear_attention::{LinearAttention, LinearAttentionGrad};
use voxdiff::ops::custom;
use voxdiff::ops::{Act, AdamW, Bcast, Binary, ConvSpec, NormArgs, ParamSlot, Unary};
use voxdiff::tensor::{DType, Shape, Tensor};

fn rand(b: &dyn Backend, shape: Shape, dtype: DType, seed: u64) -> Tensor {
    b.randn(shape, dtype, seed, 0).unwrap()
}

/// Records, op by op, the kernels launched against those expected.
struct Dispatch {
    bf16: bool,
    mismatches: Vec<String>,
}

impl Dispatch {
    fn counts() -> Vec<u64> {
        Kernel::ALL.iter().map(|k| launches(*k)).collect()
    }
    /// Run `op`; it must launch exactly the kernels of `f32` (f32
    /// activations) or `bf16` (bf16 activations), each at least once.
    fn expect<R>(&mut self, what: &str, f32: &[&str], bf16: &[&str], op: impl FnOnce() -> R) -> R {
        let before = Self::counts();
        let r = op();
        let after = Self::counts();
        let got: BTreeSet<&str> = Kernel::ALL
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a > b)
            .map(|(k, _)| k.name())
            .collect();
        let want: BTreeSet<&str> = if self.bf16 { bf16 } else { f32 }.iter().copied().collect();
        if got != want {
            let act = if self.bf16 { "bf16" } else { "f32" };
            self.mismatches.push(format!(
                "{what} ({act} activations): launched {got:?}, expected {want:?}"
            ));
        }
        r
    }
}

/// Kernels of a convolution's three passes, each for f32 and bf16 activations.
type Passes = [[&'static [&'static str]; 2]; 3];

/// One small case of every op of the Backend trait, with the kernels it must launch.
fn sweep(b: &GpuBackend) -> Vec<String> {
    let act = b.act_dtype();
    let f32_ = DType::F32;
    let sh = |c| Shape::ndhwc(1, 3, 5, 7, c);
    let mut d = Dispatch {
        bf16: act == DType::BF16,
        mismatches: Vec::new(),
    };

    d.expect(
        "randn f32",
        &["vd_diffusion_randn_f32"],
        &["vd_diffusion_randn_f32"],
        || rand(b, sh(2), f32_, 41),
    );
    d.expect(
        "randn bf16",
        &["vd_diffusion_randn_bf16"],
        &["vd_diffusion_randn_bf16"],
        || rand(b, sh(2), DType::BF16, 40),
    );

    // Convolutions: every path. bf16 gathers whose index needs no division
    // take the pipelined kernels (channels padded to a multiple of 8 first
    // when they are not, the tile and K split chosen by fprop_tiling); the
    // strided 3×3×3 data gradient the general register loader; scatters the
    // cp.async pipeline for multiple-of-8 channels, else the register loader.
    // (spec, input extents, Cin, Cout, the kernels of [forward, dgrad, wgrad],
    // each as [f32 activations, bf16 activations]).
    const GATHER: &[&str] = &["vd_conv3d_gather_f32"];
    const SCATTER: &[&str] = &["vd_conv3d_scatter_f32"];
    // Weight gradients: [f32, bf16] for Cout ≤ 32 and > 32; `_PAD` when Cin
    // or Cout is padded to a multiple of 8 first.
    const WG_F32: &[&str] = &["vd_conv3d_wgrad_f32", "vd_conv3d_wgrad_reduce"];
    const WGT_F32: &[&str] = &["vd_conv3d_wgrad_reduce", "vd_conv3d_wgrad_transposed_f32"];
    const WG: [&[&str]; 2] = [
        WG_F32,
        &["vd_conv3d_wgrad_pipe_128x32_bf16", "vd_conv3d_wgrad_reduce"],
    ];
    const WG_PAD: [&[&str]; 2] = [
        WG_F32,
        &[
            "vd_conv3d_pad_channels",
            "vd_conv3d_wgrad_pipe_128x32_bf16",
            "vd_conv3d_wgrad_reduce",
        ],
    ];
    const WG64: [&[&str]; 2] = [
        WG_F32,
        &["vd_conv3d_wgrad_pipe_64x64_bf16", "vd_conv3d_wgrad_reduce"],
    ];
    const WGT_PAD: [&[&str]; 2] = [
        WGT_F32,
        &[
            "vd_conv3d_pad_channels",
            "vd_conv3d_wgrad_pipe_transposed_128x32_bf16",
            "vd_conv3d_wgrad_reduce",
        ],
    ];
    const WGT: [&[&str]; 2] = [
        WGT_F32,
        &[
            "vd_conv3d_wgrad_pipe_transposed_128x32_bf16",
            "vd_conv3d_wgrad_reduce",
        ],
    ];
    const WGT64: [&[&str]; 2] = [
        WGT_F32,
        &[
            "vd_conv3d_wgrad_pipe_transposed_64x64_bf16",
            "vd_conv3d_wgrad_reduce",
        ],
    ];
    const P128X32: &[&str] = &["vd_conv3d_fprop_128x32_bf16", "vd_conv3d_pack_weights"];
    const P128X32_PAD: &[&str] = &[
        "vd_conv3d_fprop_128x32_bf16",
        "vd_conv3d_pack_weights",
        "vd_conv3d_pad_channels",
    ];
    const P128X32_SPLIT: &[&str] = &[
        "vd_conv3d_fprop_128x32_splitk_bf16",
        "vd_conv3d_pack_weights",
        "vd_conv3d_splitk_reduce_bf16",
    ];
    const P64X64_SPLIT_PAD: &[&str] = &[
        "vd_conv3d_fprop_64x64_splitk_bf16",
        "vd_conv3d_pack_weights",
        "vd_conv3d_pad_channels",
        "vd_conv3d_splitk_reduce_bf16",
    ];
    const SCATTER_ASYNC: &[&str] = &["vd_conv3d_pack_weights", "vd_conv3d_scatter_async_bf16"];
    let small = [3, 5, 7];
    let convs: [(ConvSpec, [usize; 3], usize, usize, Passes); 11] = [
        (
            ConvSpec::K3,
            small,
            3,
            5,
            [[GATHER, P128X32_PAD], [GATHER, P128X32_PAD], WG_PAD],
        ),
        (
            ConvSpec::K3,
            small,
            8,
            16,
            [[GATHER, P128X32], [GATHER, P128X32], WG],
        ),
        (
            ConvSpec::K3,
            small,
            17,
            5,
            [
                [
                    GATHER,
                    &[
                        "vd_conv3d_fprop_128x32_splitk_bf16",
                        "vd_conv3d_pack_weights",
                        "vd_conv3d_pad_channels",
                        "vd_conv3d_splitk_reduce_bf16",
                    ],
                ],
                [GATHER, P128X32_PAD],
                WG_PAD,
            ],
        ),
        (
            ConvSpec::K3,
            small,
            8,
            40,
            [
                [
                    GATHER,
                    &["vd_conv3d_fprop_64x64_bf16", "vd_conv3d_pack_weights"],
                ],
                [GATHER, P128X32_SPLIT],
                WG64,
            ],
        ),
        (
            ConvSpec::K3,
            small,
            33,
            70,
            [
                [GATHER, P64X64_SPLIT_PAD],
                [GATHER, P64X64_SPLIT_PAD],
                [
                    WG_F32,
                    &[
                        "vd_conv3d_pad_channels",
                        "vd_conv3d_wgrad_pipe_64x64_bf16",
                        "vd_conv3d_wgrad_reduce",
                    ],
                ],
            ],
        ),
        (
            ConvSpec::K1,
            [16, 33, 33],
            8,
            40,
            [
                [
                    GATHER,
                    &["vd_conv3d_fprop_128x64_bf16", "vd_conv3d_pack_weights"],
                ],
                [SCATTER, SCATTER_ASYNC],
                WG64,
            ],
        ),
        (
            ConvSpec::DOWN2,
            small,
            8,
            8,
            [[GATHER, P128X32], [SCATTER, SCATTER_ASYNC], WG],
        ),
        (
            ConvSpec::new([3, 3, 3], [2, 2, 2], false),
            small,
            8,
            8,
            [[GATHER, P128X32], [GATHER, &["vd_conv3d_gather_bf16"]], WG],
        ),
        (
            ConvSpec::UP2,
            small,
            3,
            5,
            [
                [
                    SCATTER,
                    &[
                        "vd_conv3d_pack_weights",
                        "vd_conv3d_pad_channels",
                        "vd_conv3d_scatter_async_bf16",
                    ],
                ],
                [GATHER, P128X32_PAD],
                WGT_PAD,
            ],
        ),
        (
            ConvSpec::UP2,
            small,
            8,
            16,
            [[SCATTER, SCATTER_ASYNC], [GATHER, P128X32], WGT],
        ),
        (
            ConvSpec::UP2,
            small,
            8,
            40,
            [[SCATTER, SCATTER_ASYNC], [GATHER, P128X32], WGT64],
        ),
    ];
    for (spec, [dd, hh, ww], cin, cout, [fwd, dgrad, wgrad]) in convs {
        let case = format!(
            "{:?}/{:?} {dd}x{hh}x{ww} {cin}->{cout}",
            spec.kernel, spec.stride
        );
        let x = rand(b, Shape::ndhwc(1, dd, hh, ww, cin), act, 1);
        let w = rand(b, spec.weight_shape(cin, cout), f32_, 2);
        let bias = rand(b, Shape::new(&[cout]), f32_, 3);
        let y = d.expect(&format!("conv3d {case}"), fwd[0], fwd[1], || {
            b.conv3d(&x, &w, Some(&bias), spec).unwrap()
        });
        let dy = rand(b, y.shape(), act, 4);
        d.expect(&format!("conv3d_dgrad {case}"), dgrad[0], dgrad[1], || {
            b.conv3d_dgrad(&dy, &w, x.shape(), spec).unwrap()
        });
        d.expect(&format!("conv3d_wgrad {case}"), wgrad[0], wgrad[1], || {
            b.conv3d_wgrad(&x, &dy, spec, true).unwrap()
        });
    }

    // Products of f32 matrices (parameters, per-sample vectors: the dense
    // layer) whatever the activations.
    let xv = rand(b, Shape::new(&[2, 6]), f32_, 5);
    let wv = rand(b, Shape::new(&[6, 4]), f32_, 6);
    d.expect(
        "bmm of f32 matrices",
        &["vd_matmul_bmm_f32"],
        &["vd_matmul_bmm_f32"],
        || b.bmm(&xv, &wv, false, false).unwrap(),
    );

    // Batched products of activations, every transpose-flag pair (f32: one
    // kernel; bf16: one per pair).
    for (ta, tb, bf16_kernel) in [
        (false, false, "vd_matmul_bmm_bf16_nn"),
        (false, true, "vd_matmul_bmm_bf16_nt"),
        (true, false, "vd_matmul_bmm_bf16_tn"),
        (true, true, "vd_matmul_bmm_bf16_tt"),
    ] {
        let (m, n, k) = (3, 5, 7);
        let a_dims = if ta { [2, k, m] } else { [2, m, k] };
        let b_dims = if tb { [2, n, k] } else { [2, k, n] };
        let a = rand(b, Shape::new(&a_dims), act, 15);
        let bm = rand(b, Shape::new(&b_dims), act, 16);
        d.expect(
            &format!("bmm ta={ta} tb={tb}"),
            &["vd_matmul_bmm_f32"],
            &[bf16_kernel],
            || b.bmm(&a, &bm, ta, tb).unwrap(),
        );
    }

    // Permutes: run copies (runs of 8: vector units; of 5: single elements)
    // and a transpose (the last dim moves).
    let p8 = rand(b, Shape::new(&[2, 3, 8]), act, 17);
    d.expect(
        "permute keeping runs of 8",
        &["vd_layout_permute_copy_f32x8"],
        &["vd_layout_permute_copy_bf16x8"],
        || b.permute(&p8, &[1, 0, 2]).unwrap(),
    );
    let p5 = rand(b, Shape::new(&[2, 3, 5]), act, 18);
    d.expect(
        "permute keeping runs of 5",
        &["vd_layout_permute_copy_f32x1"],
        &["vd_layout_permute_copy_bf16x1"],
        || b.permute(&p5, &[1, 0, 2]).unwrap(),
    );
    d.expect(
        "permute moving the last dim",
        &["vd_layout_permute_transpose_f32"],
        &["vd_layout_permute_transpose_bf16"],
        || b.permute(&p5, &[0, 2, 1]).unwrap(),
    );

    // Norm with every epilogue part, and the channel-row ops, on both channel
    // paths: 8 channels (8-wide vectors) and 5 (one at a time).
    for c in [8, 5] {
        let x = rand(b, sh(c), act, 8);
        let gamma = rand(b, Shape::new(&[c]), f32_, 9);
        let beta = rand(b, Shape::new(&[c]), f32_, 10);
        let s = rand(b, Shape::new(&[1, c]), f32_, 11);
        let h = rand(b, Shape::new(&[1, c]), f32_, 12);
        let r = rand(b, sh(c), act, 13);
        let args = NormArgs {
            groups: c,
            eps: 1e-5,
            gamma: Some(&gamma),
            beta: Some(&beta),
            film: Some((&s, &h)),
            residual: Some(&r),
            act: Act::Gelu,
        };
        let o = d.expect(
            &format!("norm_fwd C={c}"),
            if c == 8 {
                &[
                    "vd_norm_apply_f32x8",
                    "vd_norm_stats_f32x8",
                    "vd_norm_stats_merge",
                ]
            } else {
                &[
                    "vd_norm_apply_f32x1",
                    "vd_norm_stats_f32x1",
                    "vd_norm_stats_merge",
                ]
            },
            if c == 8 {
                &[
                    "vd_norm_apply_bf16x8",
                    "vd_norm_stats_bf16x8",
                    "vd_norm_stats_merge",
                ]
            } else {
                &[
                    "vd_norm_apply_bf16x1",
                    "vd_norm_stats_bf16x1",
                    "vd_norm_stats_merge",
                ]
            },
            || b.norm_fwd(&x, &args).unwrap(),
        );
        d.expect(
            &format!("norm_bwd C={c}"),
            if c == 8 {
                &[
                    "vd_norm_bwd_dx_f32x8",
                    "vd_norm_bwd_merge",
                    "vd_norm_bwd_reduce_f32x8",
                ]
            } else {
                &[
                    "vd_norm_bwd_dx_f32x1",
                    "vd_norm_bwd_merge",
                    "vd_norm_bwd_reduce_f32x1",
                ]
            },
            if c == 8 {
                &[
                    "vd_norm_bwd_dx_bf16x8",
                    "vd_norm_bwd_merge",
                    "vd_norm_bwd_reduce_bf16x8",
                ]
            } else {
                &[
                    "vd_norm_bwd_dx_bf16x1",
                    "vd_norm_bwd_merge",
                    "vd_norm_bwd_reduce_bf16x1",
                ]
            },
            || b.norm_bwd(&x, &x, &o.stats, &args).unwrap(),
        );
        for op in Unary::ALL {
            d.expect(
                &format!("unary {op:?} C={c}"),
                &["vd_pointwise_unary_f32"],
                &["vd_pointwise_unary_bf16"],
                || b.unary(&x, op).unwrap(),
            );
            d.expect(
                &format!("unary_bwd {op:?} C={c}"),
                &["vd_pointwise_unary_bwd_f32"],
                &["vd_pointwise_unary_bwd_bf16"],
                || b.unary_bwd(&x, &x, op).unwrap(),
            );
        }
        for (y, to) in [(&s, "[N, C]"), (&gamma, "[C]")] {
            d.expect(
                &format!("binary by {to} C={c}"),
                &["vd_pointwise_binary_bcast_f32"],
                &["vd_pointwise_binary_bcast_bf16"],
                || b.binary(Binary::Mul, &x, y).unwrap(),
            );
        }
        d.expect(
            &format!("binary C={c}"),
            &["vd_pointwise_binary_f32"],
            &["vd_pointwise_binary_bf16"],
            || b.binary(Binary::Div, &x, &r).unwrap(),
        );
        d.expect(
            &format!("reduce_sum to [N, C] C={c}"),
            if c == 8 {
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_f32x8"]
            } else {
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_f32x1"]
            },
            if c == 8 {
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_bf16x8"]
            } else {
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_bf16x1"]
            },
            || b.reduce_sum(&x, Bcast::SampleChannel).unwrap(),
        );
        let y = d.expect(
            &format!("concat_c C={c}"),
            if c == 8 {
                &["vd_layout_channels_f32x8"]
            } else {
                &["vd_layout_channels_f32x1"]
            },
            if c == 8 {
                &["vd_layout_channels_bf16x8"]
            } else {
                &["vd_layout_channels_bf16x1"]
            },
            || b.concat_c(&[&x, &r]).unwrap(),
        );
        d.expect(
            &format!("slice_c C={c}"),
            &["vd_layout_channels_f32x1"],
            &["vd_layout_channels_bf16x1"],
            || b.slice_c(&y, 1, c).unwrap(),
        );
        let cr = d.expect(
            &format!("crop C={c}"),
            if c == 8 {
                &["vd_layout_gather_f32x8"]
            } else {
                &["vd_layout_gather_f32x1"]
            },
            if c == 8 {
                &["vd_layout_gather_bf16x8"]
            } else {
                &["vd_layout_gather_bf16x1"]
            },
            || b.crop(&x, [1, 1, 1], [2, 3, 4]).unwrap(),
        );
        d.expect(
            &format!("pad C={c}"),
            if c == 8 {
                &["vd_layout_gather_f32x8"]
            } else {
                &["vd_layout_gather_f32x1"]
            },
            if c == 8 {
                &["vd_layout_gather_bf16x8"]
            } else {
                &["vd_layout_gather_bf16x1"]
            },
            || b.pad(&cr, [1, 1, 1], [3, 5, 7]).unwrap(),
        );
        let up = d.expect(
            &format!("upsample C={c}"),
            if c == 8 {
                &["vd_layout_gather_f32x8"]
            } else {
                &["vd_layout_gather_f32x1"]
            },
            if c == 8 {
                &["vd_layout_gather_bf16x8"]
            } else {
                &["vd_layout_gather_bf16x1"]
            },
            || b.upsample(&x, [1, 2, 2]).unwrap(),
        );
        d.expect(
            &format!("upsample_bwd C={c}"),
            if c == 8 {
                &["vd_layout_upsample_bwd_f32x8"]
            } else {
                &["vd_layout_upsample_bwd_f32x1"]
            },
            if c == 8 {
                &["vd_layout_upsample_bwd_bf16x8"]
            } else {
                &["vd_layout_upsample_bwd_bf16x1"]
            },
            || b.upsample_bwd(&up, [1, 2, 2]).unwrap(),
        );
        let mp = d.expect(
            &format!("maxpool C={c}"),
            if c == 8 {
                &["vd_layout_maxpool_f32x8"]
            } else {
                &["vd_layout_maxpool_f32x1"]
            },
            if c == 8 {
                &["vd_layout_maxpool_bf16x8"]
            } else {
                &["vd_layout_maxpool_bf16x1"]
            },
            || b.maxpool(&x, [2, 2, 2]).unwrap(),
        );
        d.expect(
            &format!("maxpool_bwd C={c}"),
            if c == 8 {
                &["vd_layout_maxpool_bwd_f32x8"]
            } else {
                &["vd_layout_maxpool_bwd_f32x1"]
            },
            if c == 8 {
                &["vd_layout_maxpool_bwd_bf16x8"]
            } else {
                &["vd_layout_maxpool_bwd_bf16x1"]
            },
            || b.maxpool_bwd(&mp, &x, [2, 2, 2]).unwrap(),
        );
        d.expect(
            &format!("lincomb C={c}"),
            &["vd_elementwise_lincomb_f32"],
            &["vd_elementwise_lincomb_bf16"],
            || b.lincomb(&[(1.0, &x), (2.0, &r)]).unwrap(),
        );
        d.expect(
            &format!("cast to f32 C={c}"),
            &[],
            &["vd_elementwise_cast_bf16_f32"],
            || b.cast(&x, f32_).unwrap(),
        );
        d.expect(
            &format!("cast to bf16 C={c}"),
            &["vd_elementwise_cast_f32_bf16"],
            &[],
            || b.cast(&x, DType::BF16).unwrap(),
        );
        d.expect(
            &format!("fill C={c}"),
            &["vd_elementwise_fill_f32"],
            &["vd_elementwise_fill_bf16"],
            || b.fill(&x, 0.5).unwrap(),
        );
    }

    // Sums over rows (one thread per row of ≤ 32, a warp per row up to 4096
    // — 8-wide vectors when the length allows —, two stages beyond), to a
    // channel and to a scalar, and the broadcast back.
    for (len, kernels) in [
        (
            5,
            [
                &["vd_reduce_row_sum_thread_f32"][..],
                &["vd_reduce_row_sum_thread_bf16"][..],
            ],
        ),
        (
            40,
            [
                &["vd_reduce_row_sum_warp_f32"][..],
                &["vd_reduce_row_sum_warp_bf16"][..],
            ],
        ),
        (
            37,
            [
                &["vd_reduce_row_sum_warp_f32"][..],
                &["vd_reduce_row_sum_warp_bf16"][..],
            ],
        ),
        (
            4104,
            [
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_f32x8"][..],
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_bf16x8"][..],
            ],
        ),
        (
            4099,
            [
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_f32x1"][..],
                &["vd_reduce_sum_merge", "vd_reduce_sum_partial_bf16x1"][..],
            ],
        ),
    ] {
        let x = rand(b, Shape::new(&[3, len]), act, 15);
        d.expect(
            &format!("reduce_sum to rows of {len}"),
            kernels[0],
            kernels[1],
            || b.reduce_sum(&x, Bcast::Row).unwrap(),
        );
    }
    let x = rand(b, sh(5), act, 16);
    d.expect(
        "reduce_sum to [C] C=5",
        &["vd_reduce_sum_merge", "vd_reduce_sum_partial_f32x1"],
        &["vd_reduce_sum_merge", "vd_reduce_sum_partial_bf16x1"],
        || b.reduce_sum(&x, Bcast::Channel).unwrap(),
    );
    let x8 = rand(b, sh(8), act, 17);
    let s = d.expect(
        "reduce_sum to [1]",
        &["vd_reduce_sum_merge", "vd_reduce_sum_partial_f32x8"],
        &["vd_reduce_sum_merge", "vd_reduce_sum_partial_bf16x8"],
        || b.reduce_sum(&x8, Bcast::Scalar).unwrap(),
    );
    d.expect(
        "expand of [1]",
        &["vd_reduce_expand_f32"],
        &["vd_reduce_expand_bf16"],
        || b.expand(&s, sh(8), act).unwrap(),
    );

    // Segmentation heads and losses.
    let k = 3;
    let logits = rand(b, sh(k), act, 14);
    let ids: Vec<f32> = (0..105).map(|i| (i % k) as f32).collect();
    let labels = b.upload(&ids, sh(1), f32_).unwrap();
    // Labels stored in bf16 (class ids up to 256 are exact there).
    let labels_bf16 = b.upload(&ids, sh(1), DType::BF16).unwrap();
    let t = d.expect(
        "one_hot of f32 labels",
        &["vd_loss_one_hot_f32_f32"],
        &["vd_loss_one_hot_f32_bf16"],
        || b.one_hot(&labels, k, 1.0, 0.0).unwrap(),
    );
    d.expect(
        "one_hot of bf16 labels",
        &["vd_loss_one_hot_bf16_f32"],
        &["vd_loss_one_hot_bf16_bf16"],
        || b.one_hot(&labels_bf16, k, 1.0, 0.0).unwrap(),
    );
    let p = d.expect(
        "softmax C=3",
        &["vd_reduce_softmax_thread_f32"],
        &["vd_reduce_softmax_thread_bf16"],
        || b.softmax(&logits).unwrap(),
    );
    d.expect(
        "softmax_bwd C=3",
        &["vd_reduce_softmax_bwd_thread_f32"],
        &["vd_reduce_softmax_bwd_thread_bf16"],
        || b.softmax_bwd(&p, &p).unwrap(),
    );
    // Longer rows: a warp per row up to 1024, a block per row beyond.
    for (len, fwd, bwd) in [
        (
            40,
            ["vd_reduce_softmax_warp_f32", "vd_reduce_softmax_warp_bf16"],
            [
                "vd_reduce_softmax_bwd_warp_f32",
                "vd_reduce_softmax_bwd_warp_bf16",
            ],
        ),
        (
            1030,
            [
                "vd_reduce_softmax_block_f32",
                "vd_reduce_softmax_block_bf16",
            ],
            [
                "vd_reduce_softmax_bwd_block_f32",
                "vd_reduce_softmax_bwd_block_bf16",
            ],
        ),
    ] {
        let x = rand(b, Shape::new(&[3, len]), act, 18);
        let px = d.expect(
            &format!("softmax of rows of {len}"),
            &[fwd[0]],
            &[fwd[1]],
            || b.softmax(&x).unwrap(),
        );
        d.expect(
            &format!("softmax_bwd of rows of {len}"),
            &[bwd[0]],
            &[bwd[1]],
            || b.softmax_bwd(&px, &px).unwrap(),
        );
    }
    d.expect(
        "argmax_c",
        &["vd_loss_argmax_f32"],
        &["vd_loss_argmax_bf16"],
        || b.argmax_c(&logits).unwrap(),
    );
    let one = b.upload(&[1.0], Shape::scalar(), f32_).unwrap();
    d.expect(
        "cross_entropy",
        &["vd_loss_ce_partial_f32", "vd_loss_mean_partials"],
        &["vd_loss_ce_partial_bf16", "vd_loss_mean_partials"],
        || b.cross_entropy(&logits, &t).unwrap(),
    );
    d.expect(
        "cross_entropy_bwd",
        &["vd_loss_ce_bwd_f32"],
        &["vd_loss_ce_bwd_bf16"],
        || b.cross_entropy_bwd(&logits, &t, &one).unwrap(),
    );
    let (_, sums) = d.expect(
        "dice_loss",
        &["vd_loss_dice_finish", "vd_loss_dice_partial_f32"],
        &["vd_loss_dice_finish", "vd_loss_dice_partial_bf16"],
        || b.dice_loss(&p, &t).unwrap(),
    );
    d.expect(
        "dice_loss_bwd",
        &["vd_loss_dice_bwd_f32"],
        &["vd_loss_dice_bwd_bf16"],
        || b.dice_loss_bwd(&p, &t, &sums, &one).unwrap(),
    );
    d.expect(
        "mse",
        &["vd_loss_mean_partials", "vd_loss_mse_partial_f32"],
        &["vd_loss_mean_partials", "vd_loss_mse_partial_bf16"],
        || b.mse(&logits, &p).unwrap(),
    );
    d.expect(
        "mse_bwd",
        &["vd_loss_mse_bwd_f32"],
        &["vd_loss_mse_bwd_bf16"],
        || b.mse_bwd(&logits, &p, &one).unwrap(),
    );
    let x0 = b.lincomb(&[(2.0, &p), (-1.0, &t)]).unwrap();
    let l = d.expect(
        "scaled_to_logits (custom op)",
        &["vd_diffusion_scaled_to_logits_f32"],
        &["vd_diffusion_scaled_to_logits_bf16"],
        || {
            custom::run(b, &ScaledToLogits { eps: 1e-5 }, &[&x0])
                .unwrap()
                .remove(0)
        },
    );
    d.expect(
        "scaled_to_logits_bwd (custom op)",
        &["vd_diffusion_scaled_to_logits_bwd_f32"],
        &["vd_diffusion_scaled_to_logits_bwd_bf16"],
        || {
            custom::run(b, &ScaledToLogitsGrad { eps: 1e-5 }, &[&l, &x0])
                .unwrap()
                .remove(0)
        },
    );
    // The fused linear attention (custom op): S = 2·5 + 2 + 5 = 17 stats
    // per sample, so the f32 partials are summed one column at a time.
    let (qa, va) = (rand(b, sh(2), act, 50), rand(b, sh(5), act, 51));
    let la = d.expect(
        "linear_attention (custom op)",
        &[
            "vd_attention_linear_stats_f32",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_attention_linear_out_f32",
        ],
        &[
            "vd_attention_linear_stats_bf16",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_attention_linear_out_bf16",
        ],
        || custom::run(b, &LinearAttention { eps: 1e-6 }, &[&qa, &qa, &va]).unwrap(),
    );
    d.expect(
        "linear_attention_bwd (custom op)",
        &[
            "vd_attention_linear_bwd_q_f32",
            "vd_attention_linear_stats_bwd_f32",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_attention_linear_bwd_kv_f32",
        ],
        &[
            "vd_attention_linear_bwd_q_bf16",
            "vd_attention_linear_stats_bwd_bf16",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_attention_linear_bwd_kv_bf16",
        ],
        || {
            let ins = [&la[0], &qa, &qa, &va, &la[1]];
            custom::run(b, &LinearAttentionGrad { eps: 1e-6 }, &ins).unwrap()
        },
    );
    // The fused channel attentions (custom ops), C = 5: C² + C = 30 linear
    // stats and C² = 25 Gram entries per sample.
    let xa = rand(b, sh(5), act, 52);
    let cl = d.expect(
        "channel_linear_attention (custom op)",
        &[
            "vd_channelattn_linear_stats_f32",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_linear_out_f32",
        ],
        &[
            "vd_channelattn_linear_stats_bf16",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_linear_out_bf16",
        ],
        || custom::run(b, &ChannelLinear { eps: 1e-6 }, &[&xa]).unwrap(),
    );
    d.expect(
        "channel_linear_attention_bwd (custom op)",
        &[
            "vd_channelattn_linear_stats_bwd_f32",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_linear_dstats",
            "vd_channelattn_linear_bwd_f32",
        ],
        &[
            "vd_channelattn_linear_stats_bwd_bf16",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_linear_dstats",
            "vd_channelattn_linear_bwd_bf16",
        ],
        || {
            let ins = [&cl[0], &xa, &cl[1]];
            custom::run(b, &ChannelLinearGrad { eps: 1e-6 }, &ins).unwrap()
        },
    );
    let cam = d.expect(
        "channel_attention_cam (custom op)",
        &[
            "vd_channelattn_gram_f32",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_cam_softmax",
            "vd_channelattn_cam_out_f32",
        ],
        &[
            "vd_channelattn_gram_bf16",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_cam_softmax",
            "vd_channelattn_cam_out_bf16",
        ],
        || custom::run(b, &Cam, &[&xa]).unwrap(),
    );
    d.expect(
        "channel_attention_cam_bwd (custom op)",
        &[
            "vd_channelattn_gram_f32",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_cam_rowdot",
            "vd_channelattn_cam_dgram",
            "vd_channelattn_cam_bwd_f32",
        ],
        &[
            "vd_channelattn_gram_bf16",
            "vd_reduce_sum_partial_f32x1",
            "vd_reduce_sum_merge",
            "vd_channelattn_cam_rowdot",
            "vd_channelattn_cam_dgram",
            "vd_channelattn_cam_bwd_bf16",
        ],
        || custom::run(b, &CamGrad, &[&cam[0], &xa, &cam[1]]).unwrap(),
    );
    // The fused softmax attention (custom op) at each head width's kernel:
    // (d, forward with f32 / bf16 activations); the backward takes the wide
    // tile above d = 64.
    for (w, fwd_f32, fwd_bf16) in [
        (
            16,
            "vd_attention_flash_fwd_f32",
            "vd_attention_flash_fwd_bf16",
        ),
        (
            32,
            "vd_attention_flash_fwd_f32",
            "vd_attention_flash_fwd_mma_d32_bf16",
        ),
        (
            64,
            "vd_attention_flash_fwd_f32",
            "vd_attention_flash_fwd_mma_d64_bf16",
        ),
        (
            96,
            "vd_attention_flash_fwd_wide_f32",
            "vd_attention_flash_fwd_wide_bf16",
        ),
        (
            128,
            "vd_attention_flash_fwd_wide_f32",
            "vd_attention_flash_fwd_mma_d128_bf16",
        ),
    ] {
        let fsh = Shape::new(&[2, 9, w]);
        let (fq, fk, fv) = (
            rand(b, fsh, act, 52),
            rand(b, fsh, act, 53),
            rand(b, fsh, act, 54),
        );
        let scale = 1.0 / (w as f32).sqrt();
        let fo = d.expect(
            &format!("flash_attention d {w} (custom op)"),
            &[fwd_f32],
            &[fwd_bf16],
            || custom::run(b, &FlashAttention { scale }, &[&fq, &fk, &fv]).unwrap(),
        );
        // The backward at a narrow (d ≤ 64) and a wide head.
        let (bwd_f32, bwd_bf16) = match w {
            16 => (
                [
                    "vd_attention_flash_bwd_dot_f32",
                    "vd_attention_flash_bwd_kv_f32",
                    "vd_attention_flash_bwd_q_f32",
                ],
                [
                    "vd_attention_flash_bwd_dot_bf16",
                    "vd_attention_flash_bwd_kv_bf16",
                    "vd_attention_flash_bwd_q_bf16",
                ],
            ),
            96 => (
                [
                    "vd_attention_flash_bwd_dot_f32",
                    "vd_attention_flash_bwd_kv_wide_f32",
                    "vd_attention_flash_bwd_q_wide_f32",
                ],
                [
                    "vd_attention_flash_bwd_dot_bf16",
                    "vd_attention_flash_bwd_kv_wide_bf16",
                    "vd_attention_flash_bwd_q_wide_bf16",
                ],
            ),
            _ => continue,
        };
        d.expect(
            &format!("flash_attention_bwd d {w} (custom op)"),
            &bwd_f32,
            &bwd_bf16,
            || {
                let ins = [&fo[0], &fq, &fk, &fv, &fo[0], &fo[1]];
                custom::run(b, &FlashAttentionGrad { scale }, &ins).unwrap()
            },
        );
    }
    d.expect(
        "lincomb of [1] losses",
        &["vd_elementwise_lincomb_f32"],
        &["vd_elementwise_lincomb_f32"],
        || b.lincomb(&[(0.5, &one), (2.0, &one)]).unwrap(),
    );

    // The optimiser over two tensors.
    let params: Vec<Tensor> = (0..2)
        .map(|i| rand(b, Shape::new(&[7 + i]), f32_, 20 + i as u64))
        .collect();
    let grads: Vec<Tensor> = (0..2)
        .map(|i| rand(b, Shape::new(&[7 + i]), f32_, 30 + i as u64))
        .collect();
    let zeros: Vec<Tensor> = (0..4)
        .map(|i| b.zeros(Shape::new(&[7 + i / 2]), f32_).unwrap())
        .collect();
    let slots: Vec<ParamSlot> = (0..2)
        .map(|i| ParamSlot {
            param: &params[i],
            grad: &grads[i],
            m: &zeros[2 * i],
            v: &zeros[2 * i + 1],
            decay: i == 0,
        })
        .collect();
    d.expect(
        "adamw_step",
        &[
            "vd_optim_adamw_norm",
            "vd_optim_adamw_sumsq",
            "vd_optim_adamw_update",
        ],
        &[
            "vd_optim_adamw_norm",
            "vd_optim_adamw_sumsq",
            "vd_optim_adamw_update",
        ],
        || b.adamw_step(&slots, &AdamW::default(), 1e-3, 1).unwrap(),
    );
    d.mismatches
}

/// The emulator self-test kernels (kernels/selftest.cu) and the test file
/// that launches each, whose source must name its `Kernel` variant.
const SELFTESTS: &[(&str, &str, &str)] = &[
    (
        "vd_selftest_block_scan",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_block_reverse",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_early_exit",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_dynamic_smem",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_deadlock_barrier",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_deadlock_warp",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_shuffles",
        "emu_warp.rs",
        include_str!("emu_warp.rs"),
    ),
    (
        "vd_selftest_block_sum",
        "emu_warp.rs",
        include_str!("emu_warp.rs"),
    ),
    (
        "vd_selftest_atomics",
        "emu_warp.rs",
        include_str!("emu_warp.rs"),
    ),
    (
        "vd_selftest_mma",
        "emu_warp.rs",
        include_str!("emu_warp.rs"),
    ),
    (
        "vd_selftest_ldmatrix",
        "emu_warp.rs",
        include_str!("emu_warp.rs"),
    ),
    (
        "vd_selftest_mma_regs",
        "emu_cute_oracle.rs",
        include_str!("emu_cute_oracle.rs"),
    ),
    (
        "vd_selftest_ldmatrix_rows",
        "emu_cute_oracle.rs",
        include_str!("emu_cute_oracle.rs"),
    ),
    (
        "vd_selftest_cp_async",
        "emu_warp.rs",
        include_str!("emu_warp.rs"),
    ),
    (
        "vd_selftest_missing_barrier",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_misaligned",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
    (
        "vd_selftest_philox",
        "gpu_elementwise.rs",
        include_str!("gpu_elementwise.rs"),
    ),
    (
        "vd_selftest_barriers",
        "emu_cost.rs",
        include_str!("emu_cost.rs"),
    ),
    (
        "vd_selftest_stack_overflow",
        "emu_barriers.rs",
        include_str!("emu_barriers.rs"),
    ),
];

#[test]
fn each_op_launches_its_kernels_and_every_kernel_is_launched() {
    let mut mismatches = Vec::new();
    for act in [DType::F32, DType::BF16] {
        mismatches.extend(sweep(&GpuBackend::with_act_dtype(
            Arc::new(Emu::new()),
            act,
        )));
    }
    assert!(
        mismatches.is_empty(),
        "dispatch differs:\n{}",
        mismatches.join("\n")
    );
    let missing: Vec<&str> = Kernel::ALL
        .iter()
        .filter(|k| k.family() != Family::Selftest && launches(**k) == 0)
        .map(|k| k.name())
        .collect();
    assert!(missing.is_empty(), "kernels no op reached: {missing:?}");
    let selftests: BTreeSet<&str> = Kernel::ALL
        .iter()
        .filter(|k| k.family() == Family::Selftest)
        .map(|k| k.name())
        .collect();
    let named: BTreeSet<&str> = SELFTESTS.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(
        selftests, named,
        "the registry's self-test kernels and SELFTESTS differ"
    );
    for (name, file, source) in SELFTESTS {
        let k = Kernel::ALL.iter().find(|k| k.name() == *name).unwrap();
        let variant = format!("Kernel::{k:?}");
        assert!(
            source.contains(&variant),
            "{file} does not launch {name} ({variant})"
        );
    }
}
