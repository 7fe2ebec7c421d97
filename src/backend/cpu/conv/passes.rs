//! How each convolution maps onto passes of the row engine (`rows.rs`).
//!
//! Weights are `w[kd, kh, kw, ci, co]` (`[KD, KH, KW, Cin, Cout]` row-major).
//!
//! - Forward, regular: one pass, input stride `s`, input offset `−pad_lo`.
//! - Forward, transposed (`kernel == stride`): `y[i·s + k] = Σ_ci x[i, ci] ·
//!   w[k, ci]`. Along W the `KW` outputs of one input voxel are adjacent, so
//!   the output row is viewed as `[W_in][KW·Cout]` and each `(kd, kh)` is a
//!   1×1×1 pass to `KW·Cout` channels writing every `s_d`-th plane and
//!   `s_h`-th row at offset `(kd, kh)`.
//! - Data gradient, regular: `dx[i] = Σ_{o·s + k − p = i} wᵀ[k] · dy[o]`. Split
//!   each axis by the phase `c = (i + p) mod s`: the taps of phase `c` are
//!   `k = c + m·s` (`m < M_c`), reading `o = a − m` where `i = a·s + c − p`.
//!   Each phase combination is a stride-1 pass over dy with the phase's taps
//!   reversed and Cin/Cout swapped, writing every `s`-th voxel of dx. For
//!   stride 1 this is the familiar "convolve with the flipped kernel".
//! - Data gradient, transposed: `dx[i] = Σ_k wᵀ[k] · dy[i·s + k]`, a regular
//!   pass over dy with kernel = stride = `s` and no padding.
use super::pack::{use_dot, Packed};
use super::rows::{Axis, Pass};
use crate::ops::ConvSpec;

/// Index of `w[kd, kh, kw, ci, co]`.
fn w_index(
    kernel: [usize; 3],
    cin: usize,
    cout: usize,
    k: [usize; 3],
    ci: usize,
    co: usize,
) -> usize {
    (((k[0] * kernel[1] + k[1]) * kernel[2] + k[2]) * cin + ci) * cout + co
}

/// The output extents, output channels and passes of the forward pass.
pub(super) fn forward(
    spec: ConvSpec,
    x_dims: [usize; 3],
    w: &[f32],
    cin: usize,
    cout: usize,
    bias: Option<&[f32]>,
) -> ([usize; 3], usize, Vec<Pass>) {
    let kernel = spec.kernel;
    let out = spec.out_spatial(x_dims);
    if !spec.transposed {
        let pad = spec.pad_lo(x_dims);
        let axes = std::array::from_fn(|i| Axis {
            extent: out[i],
            kernel: kernel[i],
            stride: spec.stride[i],
            in_off: -(pad[i] as isize),
            y_stride: 1,
            y_off: 0,
        });
        let bias_fn = bias.map(|b| move |co: usize| b[co]);
        let packed = Packed::new(
            kernel,
            cin,
            cout,
            w,
            |kd, kh, kw, ci, co| w_index(kernel, cin, cout, [kd, kh, kw], ci, co),
            bias_fn.as_ref().map(|f| f as &dyn Fn(usize) -> f32),
            use_dot(kernel[2] * cin, cout),
        );
        return (out, cout, vec![Pass { axes, packed }]);
    }
    // Transposed: the output viewed as [N, Do, Ho, W_in, KW·Cout].
    let kw_n = kernel[2];
    let wide = kw_n * cout;
    let unit = |extent: usize, y_stride: usize, y_off: usize| Axis {
        extent,
        kernel: 1,
        stride: 1,
        in_off: 0,
        y_stride,
        y_off,
    };
    let bias_fn = bias.map(|b| move |n: usize| b[n % cout]);
    let mut passes = Vec::with_capacity(kernel[0] * kernel[1]);
    for kd in 0..kernel[0] {
        for kh in 0..kernel[1] {
            let axes = [
                unit(x_dims[0], spec.stride[0], kd),
                unit(x_dims[1], spec.stride[1], kh),
                unit(x_dims[2], 1, 0),
            ];
            let packed = Packed::new(
                [1, 1, 1],
                cin,
                wide,
                w,
                |_, _, _, ci, n| w_index(kernel, cin, cout, [kd, kh, n / cout], ci, n % cout),
                bias_fn.as_ref().map(|f| f as &dyn Fn(usize) -> f32),
                use_dot(cin, wide),
            );
            passes.push(Pass { axes, packed });
        }
    }
    ([out[0], out[1], x_dims[2]], wide, passes)
}

/// One phase of one axis of a strided data gradient (see the module docs).
#[derive(Clone, Copy, Debug)]
struct Phase {
    /// The phase `c`: its taps are `c + m·s`.
    first_tap: usize,
    /// Number of taps `M_c`.
    taps: usize,
    /// Axis geometry of the pass (kernel = `M_c`, stride 1).
    axis: Axis,
}

/// The phases of one axis with input extent `input`, kernel `kernel`, stride
/// `stride` and padding before `pad`. Phases without taps or without outputs
/// are left out (their dx stays zero).
fn phases(input: usize, kernel: usize, stride: usize, pad: usize) -> Vec<Phase> {
    let mut out = Vec::new();
    for c in 0..stride {
        if c >= kernel {
            continue;
        }
        let taps = (kernel - c).div_ceil(stride);
        // First a with i = a·s + c − p ≥ 0.
        let a0 = if pad > c {
            (pad - c).div_ceil(stride)
        } else {
            0
        };
        let y_off = a0 * stride + c - pad;
        if y_off >= input {
            continue;
        }
        out.push(Phase {
            first_tap: c,
            taps,
            axis: Axis {
                extent: (input - y_off).div_ceil(stride),
                kernel: taps,
                stride: 1,
                in_off: a0 as isize + 1 - taps as isize,
                y_stride: stride,
                y_off,
            },
        });
    }
    out
}

/// The passes of the data gradient: input dy (`cout` channels, extents
/// `spec.out_spatial(x_dims)`), output dx (`cin` channels, extents `x_dims`).
pub(super) fn dgrad(
    spec: ConvSpec,
    x_dims: [usize; 3],
    w: &[f32],
    cin: usize,
    cout: usize,
) -> Vec<Pass> {
    let kernel = spec.kernel;
    if spec.transposed {
        let axes = std::array::from_fn(|i| Axis {
            extent: x_dims[i],
            kernel: kernel[i],
            stride: spec.stride[i],
            in_off: 0,
            y_stride: 1,
            y_off: 0,
        });
        let packed = Packed::new(
            kernel,
            cout,
            cin,
            w,
            |kd, kh, kw, co, ci| w_index(kernel, cin, cout, [kd, kh, kw], ci, co),
            None,
            use_dot(kernel[2] * cout, cin),
        );
        return vec![Pass { axes, packed }];
    }
    let pad = spec.pad_lo(x_dims);
    let per_axis: [Vec<Phase>; 3] =
        std::array::from_fn(|i| phases(x_dims[i], kernel[i], spec.stride[i], pad[i]));
    // One layout for all phases, from the narrowest phase along W.
    let min_taps_w = per_axis[2].iter().map(|ph| ph.taps).min().unwrap_or(1);
    let dot = use_dot(min_taps_w * cout, cin);
    let mut passes = Vec::new();
    for pd in &per_axis[0] {
        for ph in &per_axis[1] {
            for pw in &per_axis[2] {
                let ph3 = [pd, ph, pw];
                // Sub-kernel tap m of phase c is the original tap c + (M − 1 − m)·s.
                let tap =
                    |i: usize, m: usize| ph3[i].first_tap + (ph3[i].taps - 1 - m) * spec.stride[i];
                let packed = Packed::new(
                    [pd.taps, ph.taps, pw.taps],
                    cout,
                    cin,
                    w,
                    |md, mh, mw, co, ci| {
                        w_index(
                            kernel,
                            cin,
                            cout,
                            [tap(0, md), tap(1, mh), tap(2, mw)],
                            ci,
                            co,
                        )
                    },
                    None,
                    dot,
                );
                passes.push(Pass {
                    axes: [pd.axis, ph.axis, pw.axis],
                    packed,
                });
            }
        }
    }
    passes
}
