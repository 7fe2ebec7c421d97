//! CPU 3D convolution (forward, data gradient, weight and bias gradient)
//! against a naive f64 reference written from the `ConvSpec` definition, its
//! exact adjoint, and finite differences — on the AVX-512 path (where the CPU
//! has it) and on the portable kernels (re-running this binary with
//! `VOXDIFF_CPU_ISA=portable`).
mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::{cpu, dot, fd_check, rand_tensor, Rng};
use voxdiff::backend::prelude::*;
use voxdiff::ops::ConvSpec;
use voxdiff::tensor::{DType, Shape, Tensor};

// ------------------------------------------------------------- the reference

/// Every connection of the convolution: calls `f(n, out_voxel, in_voxel, tap)`
/// (voxel indices within a sample, tap index `(kd·KH + kh)·KW + kw`) for each
/// product `x[n, in_voxel, ci] · w[tap, ci, co]` that `y[n, out_voxel, co]` sums,
/// straight from the `ConvSpec` doc.
fn for_each_connection(spec: ConvSpec, x: Shape, mut f: impl FnMut(usize, usize, usize, usize)) {
    let xin = x.spatial();
    let out = spec.out_spatial(xin);
    let k = spec.kernel;
    let s = spec.stride;
    for n in 0..x.n() {
        if spec.transposed {
            // y[n, i·s + k] += x[n, i] · w[k]
            for i in 0..xin[0] * xin[1] * xin[2] {
                let (id, ih, iw) = (i / (xin[1] * xin[2]), (i / xin[2]) % xin[1], i % xin[2]);
                for kd in 0..k[0] {
                    for kh in 0..k[1] {
                        for kw in 0..k[2] {
                            let (od, oh, ow) = (id * s[0] + kd, ih * s[1] + kh, iw * s[2] + kw);
                            let o = (od * out[1] + oh) * out[2] + ow;
                            f(n, o, i, (kd * k[1] + kh) * k[2] + kw);
                        }
                    }
                }
            }
        } else {
            // pad_lo = max((out − 1)·s + k − in, 0) / 2
            let pad: Vec<isize> = (0..3)
                .map(|a| (((out[a] - 1) * s[a] + k[a]).saturating_sub(xin[a]) / 2) as isize)
                .collect();
            for od in 0..out[0] {
                for oh in 0..out[1] {
                    for ow in 0..out[2] {
                        let o = (od * out[1] + oh) * out[2] + ow;
                        for kd in 0..k[0] {
                            for kh in 0..k[1] {
                                for kw in 0..k[2] {
                                    let id = (od * s[0] + kd) as isize - pad[0];
                                    let ih = (oh * s[1] + kh) as isize - pad[1];
                                    let iw = (ow * s[2] + kw) as isize - pad[2];
                                    let inside = (0..xin[0] as isize).contains(&id)
                                        && (0..xin[1] as isize).contains(&ih)
                                        && (0..xin[2] as isize).contains(&iw);
                                    if inside {
                                        let i = ((id as usize * xin[1]) + ih as usize) * xin[2]
                                            + iw as usize;
                                        f(n, o, i, (kd * k[1] + kh) * k[2] + kw);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A reference result: the value and `Σ |term|`, the magnitude its rounding
/// error scales with.
struct Reference {
    value: Vec<f64>,
    magnitude: Vec<f64>,
}

impl Reference {
    fn zeros(len: usize) -> Reference {
        Reference {
            value: vec![0.0; len],
            magnitude: vec![0.0; len],
        }
    }
    fn add(&mut self, i: usize, term: f64) {
        self.value[i] += term;
        self.magnitude[i] += term.abs();
    }
    /// `|got − want| ≤ rel · Σ|terms|` elementwise; NaN never passes.
    fn check(&self, what: &str, got: &[f32], rel: f64) {
        assert_eq!(got.len(), self.value.len(), "{what}: length");
        for (i, &g) in got.iter().enumerate() {
            assert!(g.is_finite(), "{what}: element {i} is {g}");
            let err = (g as f64 - self.value[i]).abs();
            let lim = rel * self.magnitude[i] + 1e-30;
            assert!(
                err <= lim,
                "{what}: element {i}: got {g}, want {} (|err| {err:.3e} > {lim:.3e})",
                self.value[i]
            );
        }
    }
}

struct Problem {
    spec: ConvSpec,
    x_shape: Shape,
    cout: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// Upstream gradient of the output.
    dy: Vec<f32>,
}

impl Problem {
    fn new(
        spec: ConvSpec,
        x_shape: [usize; 5],
        cout: usize,
        with_bias: bool,
        seed: u64,
    ) -> Problem {
        let x_shape = Shape::new(&x_shape);
        let mut rng = Rng::new(seed);
        let cin = x_shape.c();
        let y_shape = x_shape
            .with_spatial(spec.out_spatial(x_shape.spatial()))
            .with_c(cout);
        Problem {
            spec,
            x_shape,
            cout,
            x: rng.vec(x_shape.numel(), -1.0, 1.0),
            w: rng.vec(spec.taps() * cin * cout, -1.0, 1.0),
            bias: with_bias.then(|| rng.vec(cout, -1.0, 1.0)),
            dy: rng.vec(y_shape.numel(), -1.0, 1.0),
        }
    }
    fn cin(&self) -> usize {
        self.x_shape.c()
    }
    fn y_shape(&self) -> Shape {
        self.x_shape
            .with_spatial(self.spec.out_spatial(self.x_shape.spatial()))
            .with_c(self.cout)
    }
    fn name(&self) -> String {
        format!(
            "{}k{:?} s{:?} x {} → {}{}",
            if self.spec.transposed {
                "transposed "
            } else {
                ""
            },
            self.spec.kernel,
            self.spec.stride,
            self.x_shape,
            self.cout,
            if self.bias.is_some() { " +bias" } else { "" }
        )
    }

    fn ref_forward(&self) -> Reference {
        let (cin, cout) = (self.cin(), self.cout);
        let ys = self.y_shape();
        let (vin, vout) = (self.x_shape.voxels(), ys.voxels());
        let mut r = Reference::zeros(ys.numel());
        if let Some(b) = &self.bias {
            for (i, v) in r.value.iter_mut().enumerate() {
                *v = b[i % cout] as f64;
            }
            for (i, m) in r.magnitude.iter_mut().enumerate() {
                *m = b[i % cout].abs() as f64;
            }
        }
        for_each_connection(self.spec, self.x_shape, |n, o, i, tap| {
            for co in 0..cout {
                for ci in 0..cin {
                    let xv = self.x[(n * vin + i) * cin + ci] as f64;
                    let wv = self.w[(tap * cin + ci) * cout + co] as f64;
                    r.add((n * vout + o) * cout + co, xv * wv);
                }
            }
        });
        r
    }

    /// The exact adjoint of `ref_forward`: (dx, dw, db).
    fn ref_backward(&self) -> (Reference, Reference, Reference) {
        let (cin, cout) = (self.cin(), self.cout);
        let ys = self.y_shape();
        let (vin, vout) = (self.x_shape.voxels(), ys.voxels());
        let mut dx = Reference::zeros(self.x.len());
        let mut dw = Reference::zeros(self.w.len());
        let mut db = Reference::zeros(cout);
        for (i, &g) in self.dy.iter().enumerate() {
            db.add(i % cout, g as f64);
        }
        for_each_connection(self.spec, self.x_shape, |n, o, i, tap| {
            for co in 0..cout {
                let g = self.dy[(n * vout + o) * cout + co] as f64;
                for ci in 0..cin {
                    let xv = self.x[(n * vin + i) * cin + ci] as f64;
                    let wv = self.w[(tap * cin + ci) * cout + co] as f64;
                    dx.add((n * vin + i) * cin + ci, g * wv);
                    dw.add((tap * cin + ci) * cout + co, g * xv);
                }
            }
        });
        (dx, dw, db)
    }

    fn upload(&self, b: &dyn Backend) -> (Tensor, Tensor, Option<Tensor>, Tensor) {
        let x = b.upload(&self.x, self.x_shape, DType::F32).unwrap();
        let w = b
            .upload(
                &self.w,
                self.spec.weight_shape(self.cin(), self.cout),
                DType::F32,
            )
            .unwrap();
        let bias = self
            .bias
            .as_ref()
            .map(|v| b.upload(v, Shape::new(&[self.cout]), DType::F32).unwrap());
        let dy = b.upload(&self.dy, self.y_shape(), DType::F32).unwrap();
        (x, w, bias, dy)
    }
}

// ------------------------------------------------------------------- cases

fn spec(k: [usize; 3], s: [usize; 3]) -> ConvSpec {
    ConvSpec::new(k, s, false)
}
fn transposed(k: [usize; 3]) -> ConvSpec {
    ConvSpec::new(k, k, true)
}

/// Every spec the models use plus general ones, at odd extents, channel
/// counts that are not SIMD multiples, N = 1 and 2, with and without bias.
fn cases() -> Vec<Problem> {
    let specs_3d = [
        ConvSpec::K3,
        ConvSpec::K1,
        ConvSpec::DOWN2,
        ConvSpec::UP2,
        ConvSpec::K133,
        spec([3, 1, 3], [1, 2, 1]),
        spec([2, 3, 3], [2, 2, 2]),
        spec([3, 3, 3], [2, 2, 2]),
        spec([1, 1, 1], [2, 2, 3]),
        spec([4, 2, 5], [3, 1, 2]),
        transposed([3, 1, 2]),
    ];
    let specs_2d = [
        ConvSpec::K133,
        spec([1, 2, 2], [1, 2, 2]),
        transposed([1, 2, 2]),
        ConvSpec::K1,
    ];
    let extents_3d = [[5, 7, 9], [3, 4, 5], [2, 6, 31]];
    let channels = [
        (1, 5),
        (3, 16),
        (17, 31),
        (33, 5),
        (3, 40),
        (16, 33),
        (16, 1),
        (4, 17),
        (24, 7),
        (2, 32),
    ];
    let mut out = Vec::new();
    let mut seed = 1;
    for (si, &sp) in specs_3d.iter().enumerate() {
        for (ei, e) in extents_3d.iter().enumerate() {
            let (cin, cout) = channels[(si + ei) % channels.len()];
            let n = 1 + (si + ei) % 2;
            seed += 1;
            out.push(Problem::new(
                sp,
                [n, e[0], e[1], e[2], cin],
                cout,
                (si + ei) % 3 != 1,
                seed,
            ));
        }
    }
    for (si, &sp) in specs_2d.iter().enumerate() {
        for (ei, e) in [[1, 9, 11], [1, 5, 30]].iter().enumerate() {
            let (cin, cout) = channels[(2 * si + ei + 1) % channels.len()];
            seed += 1;
            out.push(Problem::new(
                sp,
                [2 - ei, e[0], e[1], e[2], cin],
                cout,
                ei == 0,
                seed,
            ));
        }
    }
    // Strided data gradients whose phases have different reduction lengths
    // (KW_phase · Cout = 20 and 10) around the dot-tile threshold, 5 Cin.
    for (i, &sp) in [spec([3, 3, 3], [2, 2, 2]), spec([1, 3, 3], [1, 2, 2])]
        .iter()
        .enumerate()
    {
        seed += 1;
        out.push(Problem::new(sp, [1, 3, 7, 9, 5], 10, i == 0, seed));
    }
    // Every channel pairing once on the main 3×3×3 spec.
    for &(cin, cout) in &channels {
        seed += 1;
        out.push(Problem::new(
            ConvSpec::K3,
            [1, 3, 5, 16, cin],
            cout,
            true,
            seed,
        ));
    }
    out
}

const REL: f64 = 1e-5;

// ------------------------------------------------------------------- tests

#[test]
fn forward_matches_reference() {
    let b = cpu();
    for p in cases() {
        let (x, w, bias, _) = p.upload(&b);
        let y = b.conv3d(&x, &w, bias.as_ref(), p.spec).unwrap();
        assert_eq!(y.shape(), p.y_shape(), "{}: output shape", p.name());
        p.ref_forward().check(
            &format!("forward {}", p.name()),
            &b.download(&y).unwrap(),
            REL,
        );
    }
}

#[test]
fn dgrad_matches_adjoint() {
    let b = cpu();
    for p in cases() {
        let (_, w, _, dy) = p.upload(&b);
        let dx = b.conv3d_dgrad(&dy, &w, p.x_shape, p.spec).unwrap();
        assert_eq!(dx.shape(), p.x_shape, "{}: dx shape", p.name());
        let (want, _, _) = p.ref_backward();
        want.check(
            &format!("dgrad {}", p.name()),
            &b.download(&dx).unwrap(),
            REL,
        );
    }
}

#[test]
fn wgrad_matches_adjoint() {
    let b = cpu();
    for p in cases() {
        let (x, _, _, dy) = p.upload(&b);
        let with_bias = p.bias.is_some();
        let (dw, db) = b.conv3d_wgrad(&x, &dy, p.spec, with_bias).unwrap();
        assert_eq!(dw.shape(), p.spec.weight_shape(p.cin(), p.cout));
        let (_, want_dw, want_db) = p.ref_backward();
        want_dw.check(
            &format!("wgrad {}", p.name()),
            &b.download(&dw).unwrap(),
            REL,
        );
        match db {
            Some(db) => {
                assert!(with_bias, "{}: bias gradient without a bias", p.name());
                assert_eq!(db.shape(), Shape::new(&[p.cout]));
                want_db.check(
                    &format!("bias grad {}", p.name()),
                    &b.download(&db).unwrap(),
                    REL,
                );
            }
            None => assert!(!with_bias, "{}: missing bias gradient", p.name()),
        }
    }
}

/// 400 random kernels (1..=4 per axis), strides (1..=3), extents (1..=7), channel
/// counts (1..=20) and batch sizes, regular and transposed: forward, data,
/// weight and bias gradients against the reference and its adjoint.
#[test]
fn random_specs_match_reference() {
    let b = cpu();
    let mut rng = Rng::new(0x5EED);
    for case in 0..400 {
        let transposed = rng.below(4) == 0;
        let kernel: [usize; 3] =
            std::array::from_fn(|_| 1 + rng.below(if transposed { 3 } else { 4 }));
        let stride: [usize; 3] = if transposed {
            kernel
        } else {
            std::array::from_fn(|_| 1 + rng.below(3))
        };
        let sp = ConvSpec::new(kernel, stride, transposed);
        let extents: [usize; 3] = std::array::from_fn(|_| 1 + rng.below(7));
        let (cin, cout) = (1 + rng.below(20), 1 + rng.below(20));
        let n = 1 + rng.below(2);
        let p = Problem::new(
            sp,
            [n, extents[0], extents[1], extents[2], cin],
            cout,
            rng.below(2) == 0,
            1000 + case,
        );
        let name = format!("case {case}: {}", p.name());
        let (x, w, bias, dy) = p.upload(&b);
        let y = b.conv3d(&x, &w, bias.as_ref(), sp).unwrap();
        p.ref_forward()
            .check(&format!("forward {name}"), &b.download(&y).unwrap(), REL);
        let (want_dx, want_dw, want_db) = p.ref_backward();
        let dx = b.conv3d_dgrad(&dy, &w, p.x_shape, sp).unwrap();
        want_dx.check(&format!("dgrad {name}"), &b.download(&dx).unwrap(), REL);
        let (dw, db) = b.conv3d_wgrad(&x, &dy, sp, true).unwrap();
        want_dw.check(&format!("wgrad {name}"), &b.download(&dw).unwrap(), REL);
        want_db.check(
            &format!("bias grad {name}"),
            &b.download(&db.unwrap()).unwrap(),
            REL,
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let b = cpu();
    let small = [
        Problem::new(ConvSpec::K3, [1, 3, 4, 5, 3], 5, true, 101),
        Problem::new(ConvSpec::DOWN2, [2, 3, 3, 5, 2], 3, true, 102),
        Problem::new(ConvSpec::UP2, [1, 2, 3, 2, 3], 4, true, 103),
        Problem::new(spec([2, 3, 3], [2, 2, 2]), [1, 3, 5, 4, 2], 3, true, 104),
    ];
    for p in &small {
        let (x, w, _, dy) = p.upload(&b);
        let name = p.name();
        let spec = p.spec;
        let w_shape = w.shape();
        let forward = |xv: &[f32], wv: &[f32], bv: Option<&[f32]>| -> f64 {
            let xt = b.upload(xv, p.x_shape, DType::F32).unwrap();
            let wt = b.upload(wv, w_shape, DType::F32).unwrap();
            let bt = bv.map(|v| b.upload(v, Shape::new(&[p.cout]), DType::F32).unwrap());
            let y = b.conv3d(&xt, &wt, bt.as_ref(), spec).unwrap();
            dot(&p.dy, &b.download(&y).unwrap())
        };
        let bias_v = p.bias.as_deref();
        let dx = b
            .download(&b.conv3d_dgrad(&dy, &w, p.x_shape, spec).unwrap())
            .unwrap();
        let (dw, db) = b.conv3d_wgrad(&x, &dy, spec, true).unwrap();
        let (dw, db) = (b.download(&dw).unwrap(), b.download(&db.unwrap()).unwrap());
        fd_check(
            &format!("dx {name}"),
            &p.x,
            &dx,
            |xv| forward(xv, &p.w, bias_v),
            40,
            1e-2,
            1e-3,
            1e-3,
        );
        fd_check(
            &format!("dw {name}"),
            &p.w,
            &dw,
            |wv| forward(&p.x, wv, bias_v),
            40,
            1e-2,
            1e-3,
            1e-3,
        );
        fd_check(
            &format!("db {name}"),
            p.bias.as_ref().unwrap(),
            &db,
            |bv| forward(&p.x, &p.w, Some(bv)),
            40,
            1e-2,
            1e-3,
            1e-3,
        );
    }
}

#[test]
fn graph_bias_gradient_without_a_weight_gradient() {
    // A constant weight: the backward sums dy for the bias alone (the path
    // that does not run the weight gradient).
    let mut rng = Rng::new(77);
    for (spec, x_shape, cout) in [
        (ConvSpec::K3, Shape::ndhwc(2, 3, 4, 5, 3), 4),
        (ConvSpec::UP2, Shape::ndhwc(1, 2, 3, 2, 2), 3),
    ] {
        let w = rng.vec(spec.taps() * x_shape.c() * cout, -0.5, 0.5);
        let inputs = [
            (x_shape, rng.vec(x_shape.numel(), -1.0, 1.0)),
            (Shape::new(&[cout]), rng.vec(cout, -1.0, 1.0)),
        ];
        every_backend::grad_check(
            &format!("conv3d {spec:?} with a constant weight"),
            &inputs,
            |g, v| {
                let wt = g
                    .dev
                    .upload(&w, spec.weight_shape(x_shape.c(), cout), DType::F32)?;
                let w = g.constant(wt);
                g.conv3d(&v[0], &w, Some(&v[1]), spec)
            },
            20,
            1e-2,
            1e-3,
            1e-4,
        );
    }
}

#[test]
fn bad_arguments_are_errors() {
    let b = cpu();
    let mut rng = Rng::new(7);
    let x = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 3, 4, 5, 3), -1.0, 1.0);
    let w = rand_tensor(&b, &mut rng, ConvSpec::K3.weight_shape(3, 4), -1.0, 1.0);
    let w_bad_cin = rand_tensor(&b, &mut rng, ConvSpec::K3.weight_shape(2, 4), -1.0, 1.0);
    let w_bad_kernel = rand_tensor(&b, &mut rng, ConvSpec::K1.weight_shape(3, 4), -1.0, 1.0);
    let bias_bad = rand_tensor(&b, &mut rng, Shape::new(&[5]), -1.0, 1.0);
    let x_rank4 = rand_tensor(&b, &mut rng, Shape::new(&[3, 4, 5, 3]), -1.0, 1.0);
    let dy = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 3, 4, 5, 4), -1.0, 1.0);
    let dy_bad = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 3, 4, 6, 4), -1.0, 1.0);
    let bad_transposed = ConvSpec::new([2, 2, 2], [1, 1, 1], true);
    let zero_stride = ConvSpec::new([3, 3, 3], [0, 1, 1], false);

    let expect_err = |what: &str, r: anyhow::Result<()>, needle: &str| {
        let e = r.expect_err(what);
        let msg = format!("{e:#}");
        assert!(
            msg.contains(needle),
            "{what}: error {msg:?} does not mention {needle:?}"
        );
    };
    expect_err(
        "cin mismatch",
        b.conv3d(&x, &w_bad_cin, None, ConvSpec::K3).map(drop),
        "input channels",
    );
    expect_err(
        "kernel mismatch",
        b.conv3d(&x, &w_bad_kernel, None, ConvSpec::K3).map(drop),
        "weight",
    );
    expect_err(
        "bias shape",
        b.conv3d(&x, &w, Some(&bias_bad), ConvSpec::K3).map(drop),
        "bias",
    );
    expect_err(
        "rank 4 input",
        b.conv3d(&x_rank4, &w, None, ConvSpec::K3).map(drop),
        "NDHWC",
    );
    expect_err(
        "transposed stride",
        b.conv3d(&x, &w, None, bad_transposed).map(drop),
        "kernel == stride",
    );
    expect_err(
        "zero stride",
        b.conv3d(&x, &w, None, zero_stride).map(drop),
        "at least 1",
    );
    expect_err(
        "dgrad dy shape",
        b.conv3d_dgrad(&dy_bad, &w, x.shape(), ConvSpec::K3)
            .map(drop),
        "output gradient",
    );
    expect_err(
        "dgrad x channels",
        b.conv3d_dgrad(&dy, &w, Shape::ndhwc(1, 3, 4, 5, 2), ConvSpec::K3)
            .map(drop),
        "input channels",
    );
    expect_err(
        "wgrad dy shape",
        b.conv3d_wgrad(&x, &dy_bad, ConvSpec::K3, true).map(drop),
        "output gradient",
    );
    // And the well-formed calls succeed.
    b.conv3d(&x, &w, None, ConvSpec::K3).unwrap();
    b.conv3d_dgrad(&dy, &w, x.shape(), ConvSpec::K3).unwrap();
    b.conv3d_wgrad(&x, &dy, ConvSpec::K3, false).unwrap();
}

/// Run the other tests of this binary in a child process with `isa` forced.
fn rerun_with_isa(isa: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(&exe)
        .args([
            "--skip",
            "kernels_pass_the_same_tests",
            "--test-threads",
            "1",
        ])
        .env("VOXDIFF_CPU_ISA", isa)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{isa} run failed:\n{stdout}\n{stderr}"
    );
    // Every test of this file except the two that rerun it.
    assert!(
        stdout.contains("test result: ok. 7 passed"),
        "{isa} run did not pass all 7 tests:\n{stdout}"
    );
}

/// The portable kernels (build target, no FMA) pass every test, and the
/// override is really read: an unknown value is refused.
#[test]
fn portable_kernels_pass_the_same_tests() {
    rerun_with_isa("portable");
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(&exe)
        .args(["--exact", "forward_matches_reference"])
        .env("VOXDIFF_CPU_ISA", "no-such-isa")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "an unknown VOXDIFF_CPU_ISA was accepted:\n{text}"
    );
    assert!(
        text.contains("is not one of auto, avx512, avx2, portable"),
        "the failure does not explain VOXDIFF_CPU_ISA:\n{text}"
    );
}

/// The portable kernels built with AVX2 + FMA pass every test (on CPUs that
/// have them; elsewhere the run must be refused).
#[test]
fn avx2_kernels_pass_the_same_tests() {
    #[cfg(target_arch = "x86_64")]
    let supported =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let supported = false;
    if supported {
        rerun_with_isa("avx2");
    } else {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "forward_matches_reference"])
            .env("VOXDIFF_CPU_ISA", "avx2")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "avx2 was accepted on a CPU without it"
        );
    }
}
