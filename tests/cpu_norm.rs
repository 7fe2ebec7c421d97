//! The fused group norm of the CPU backend: forward vs a plain f64 reference
//! written from the math of `NormArgs`, backward vs finite differences for
//! every input that has a gradient, statistics robustness, NaN propagation and
//! argument errors.
mod common;

use common::*;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{Act, NormArgs};
use voxdiff::tensor::{DType, Shape, Tensor};

const ACTS: [Act; 4] = [Act::Identity, Act::Relu, Act::Silu, Act::Gelu];

/// Host copies of the optional inputs of a norm call.
#[derive(Clone, Default)]
struct Opt {
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    film: Option<(Vec<f32>, Vec<f32>)>,
    residual: Option<Vec<f32>>,
}

/// The reference: y and stats `[N, G, 2]` (mean, rstd) in f64.
fn norm_ref(
    x: &[f32],
    sh: Shape,
    groups: usize,
    eps: f32,
    o: &Opt,
    act: Act,
) -> (Vec<f64>, Vec<f64>) {
    let (n, v, c) = (sh.n(), sh.voxels(), sh.c());
    let cpg = c / groups;
    let mut y = vec![0f64; x.len()];
    let mut stats = vec![0f64; n * groups * 2];
    for ni in 0..n {
        for g in 0..groups {
            let idx = |vi: usize, ci: usize| (ni * v + vi) * c + g * cpg + ci;
            let m = (v * cpg) as f64;
            let mut mean = 0f64;
            for vi in 0..v {
                for ci in 0..cpg {
                    mean += x[idx(vi, ci)] as f64;
                }
            }
            mean /= m;
            let mut var = 0f64;
            for vi in 0..v {
                for ci in 0..cpg {
                    let d = x[idx(vi, ci)] as f64 - mean;
                    var += d * d;
                }
            }
            var /= m;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            stats[(ni * groups + g) * 2] = mean;
            stats[(ni * groups + g) * 2 + 1] = rstd;
            for vi in 0..v {
                for ci in 0..cpg {
                    let ch = g * cpg + ci;
                    let i = idx(vi, ci);
                    let xhat = (x[i] as f64 - mean) * rstd;
                    let mut z = xhat * o.gamma.as_ref().map_or(1.0, |v| v[ch] as f64)
                        + o.beta.as_ref().map_or(0.0, |v| v[ch] as f64);
                    if let Some((s, h)) = &o.film {
                        z = z * (1.0 + s[ni * c + ch] as f64) + h[ni * c + ch] as f64;
                    }
                    if let Some(r) = &o.residual {
                        z += r[i] as f64;
                    }
                    y[i] = act_f64(act, z);
                }
            }
        }
    }
    (y, stats)
}

/// Upload the options and call `f` with the `NormArgs` built from them.
fn with_args<R>(
    b: &dyn Backend,
    sh: Shape,
    groups: usize,
    eps: f32,
    o: &Opt,
    act: Act,
    f: impl FnOnce(&NormArgs) -> R,
) -> R {
    let (n, c) = (sh.n(), sh.c());
    let up = |v: &Vec<f32>, s: Shape| b.upload(v, s, DType::F32).unwrap();
    let gamma = o.gamma.as_ref().map(|v| up(v, Shape::new(&[c])));
    let beta = o.beta.as_ref().map(|v| up(v, Shape::new(&[c])));
    let film = o
        .film
        .as_ref()
        .map(|(s, h)| (up(s, Shape::new(&[n, c])), up(h, Shape::new(&[n, c]))));
    let residual = o.residual.as_ref().map(|v| up(v, sh));
    let args = NormArgs {
        groups,
        eps,
        gamma: gamma.as_ref(),
        beta: beta.as_ref(),
        film: film.as_ref().map(|(s, h)| (s, h)),
        residual: residual.as_ref(),
        act,
    };
    f(&args)
}

fn random_opt(rng: &mut Rng, sh: Shape, gamma: bool, beta: bool, film: bool, res: bool) -> Opt {
    let (n, c) = (sh.n(), sh.c());
    Opt {
        gamma: gamma.then(|| rng.vec(c, 0.5, 1.5)),
        beta: beta.then(|| rng.vec(c, -0.5, 0.5)),
        film: film.then(|| (rng.vec(n * c, -0.5, 0.5), rng.vec(n * c, -0.5, 0.5))),
        residual: res.then(|| rng.vec(sh.numel(), -1.0, 1.0)),
    }
}

/// Forward vs reference for one configuration.
fn check_forward(sh: Shape, groups: usize, o: &Opt, act: Act, seed: u64, x_range: (f32, f32)) {
    let b = cpu();
    let mut rng = Rng::new(seed);
    let x = rng.vec(sh.numel(), x_range.0, x_range.1);
    let xt = b.upload(&x, sh, DType::F32).unwrap();
    let eps = 1e-5;
    let out = with_args(&b, sh, groups, eps, o, act, |a| b.norm_fwd(&xt, a).unwrap());
    let (y_ref, stats_ref) = norm_ref(&x, sh, groups, eps, o, act);
    let what = format!("{sh} groups {groups} act {act:?}");
    assert_eq!(out.stats.shape().dims(), [sh.n(), groups, 2]);
    let stats = b.download(&out.stats).unwrap();
    assert_close(&format!("stats {what}"), &stats, &stats_ref, 2e-6, 1e-6);
    assert_eq!(out.y.shape(), sh);
    assert_close(
        &format!("y {what}"),
        &b.download(&out.y).unwrap(),
        &y_ref,
        2e-5,
        2e-5,
    );
}

#[test]
fn forward_matches_reference_over_shapes_and_groups() {
    let mut seed = 1;
    for &(n, d, h, w) in &[(1, 3, 5, 7), (2, 1, 4, 3), (2, 3, 5, 7)] {
        for &(c, ref groups) in &[
            (1usize, vec![1usize]),
            (3, vec![1, 3]),
            (5, vec![1, 5]),
            (17, vec![1, 17]),
            (33, vec![1, 3, 11, 33]),
            // channel tiles of 8, 16 and 32 lanes, one or several per row
            (8, vec![1, 8]),
            (48, vec![1, 6, 48]),
            (96, vec![4, 96]),
        ] {
            let sh = Shape::ndhwc(n, d, h, w, c);
            for &g in groups {
                let mut rng = Rng::new(seed);
                let o = random_opt(&mut rng, sh, true, true, false, false);
                check_forward(sh, g, &o, Act::Identity, seed, (-2.0, 3.0));
                seed += 1;
            }
        }
    }
}

#[test]
fn forward_matches_reference_for_every_epilogue_combination() {
    let sh = Shape::ndhwc(2, 3, 5, 7, 6);
    let mut seed = 100;
    for act in ACTS {
        for affine in 0..4 {
            for film in [false, true] {
                for res in [false, true] {
                    let mut rng = Rng::new(seed);
                    let o = random_opt(&mut rng, sh, affine & 1 != 0, affine & 2 != 0, film, res);
                    for groups in [1, 3, 6] {
                        check_forward(sh, groups, &o, act, seed, (-2.0, 3.0));
                    }
                    seed += 1;
                }
            }
        }
    }
}

/// Large shapes span several parallel blocks and statistics sub-chunks (for
/// C = 3 a block is 21845 voxels, for C = 32 it is 2048).
#[test]
fn forward_matches_reference_across_many_blocks() {
    let mut rng = Rng::new(7);
    for (sh, groups) in [
        (Shape::ndhwc(2, 8, 64, 45, 3), 3),
        (Shape::ndhwc(1, 5, 30, 31, 32), 8),
        (Shape::ndhwc(2, 3, 17, 19, 64), 64),
        (Shape::ndhwc(1, 2, 9, 11, 256), 32),
    ] {
        let o = random_opt(&mut rng, sh, true, true, true, true);
        check_forward(sh, groups, &o, Act::Silu, 9, (-2.0, 3.0));
    }
}

/// Data with a large offset and a tiny spread: a sum-of-squares variance
/// would lose every digit here; the two-level centred statistics must not.
#[test]
fn statistics_survive_a_large_mean() {
    let sh = Shape::ndhwc(1, 6, 40, 33, 4);
    for (offset, spread) in [(1.0e4f32, 1.0e-1f32), (-3.0e3, 1.0e-2), (1.0e6, 10.0)] {
        let b = cpu();
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..sh.numel())
            .map(|_| offset + rng.uniform(-spread, spread))
            .collect();
        let xt = b.upload(&x, sh, DType::F32).unwrap();
        let o = Opt::default();
        let out = with_args(&b, sh, 2, 0.0, &o, Act::Identity, |a| {
            b.norm_fwd(&xt, a).unwrap()
        });
        let (y_ref, stats_ref) = norm_ref(&x, sh, 2, 0.0, &o, Act::Identity);
        let what = format!("offset {offset} spread {spread}");
        assert_close(
            &format!("stats {what}"),
            &b.download(&out.stats).unwrap(),
            &stats_ref,
            1e-5,
            0.0,
        );
        assert_close(
            &format!("y {what}"),
            &b.download(&out.y).unwrap(),
            &y_ref,
            1e-4,
            1e-4,
        );
    }
}

/// Which input a finite-difference probe perturbs.
#[derive(Clone, Copy, Debug)]
enum Wrt {
    X,
    Gamma,
    Beta,
    Scale,
    Shift,
    Residual,
}

/// `Σ g ⊙ norm_fwd(x; o).y` in f64 from the op's f32 output.
fn loss(b: &dyn Backend, x: &[f32], sh: Shape, groups: usize, o: &Opt, act: Act, g: &[f32]) -> f64 {
    let xt = b.upload(x, sh, DType::F32).unwrap();
    let y = with_args(b, sh, groups, 1e-5, o, act, |a| {
        b.norm_fwd(&xt, a).unwrap().y
    });
    dot(g, &b.download(&y).unwrap())
}

/// Nudge x until every pre-activation u is at least 0.05 away from ReLU's
/// kink at 0, so no finite-difference probe (step 5e-3, moving any u by less
/// than 0.05 here) crosses it.
fn move_off_the_kink(x: &mut [f32], sh: Shape, groups: usize, o: &Opt) {
    for _ in 0..50 {
        let (u, _) = norm_ref(x, sh, groups, 1e-5, o, Act::Identity);
        let mut moved = false;
        for (xi, &ui) in x.iter_mut().zip(&u) {
            if ui.abs() < 0.05 {
                *xi += if ui < 0.0 { -0.2 } else { 0.2 };
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
    panic!("could not move the pre-activations off the ReLU kink");
}

/// Backward vs finite differences for every input that has a gradient.
fn check_backward(sh: Shape, groups: usize, o: &Opt, act: Act, seed: u64) {
    let b = cpu();
    let mut rng = Rng::new(seed);
    let mut x = rng.vec(sh.numel(), -2.0, 3.0);
    let g = rng.vec(sh.numel(), -1.0, 1.0);
    if act == Act::Relu {
        move_off_the_kink(&mut x, sh, groups, o);
    }
    let xt = b.upload(&x, sh, DType::F32).unwrap();
    let gt = b.upload(&g, sh, DType::F32).unwrap();
    let grads = with_args(&b, sh, groups, 1e-5, o, act, |a| {
        let out = b.norm_fwd(&xt, a).unwrap();
        b.norm_bwd(&gt, &xt, &out.stats, a).unwrap()
    });
    // Exactly the gradients whose inputs were given.
    assert_eq!(grads.dgamma.is_some(), o.gamma.is_some());
    assert_eq!(grads.dbeta.is_some(), o.beta.is_some());
    assert_eq!(grads.dfilm.is_some(), o.film.is_some());
    assert_eq!(grads.dresidual.is_some(), o.residual.is_some());
    let what = |w: Wrt| format!("{sh} groups {groups} act {act:?} d{w:?}");
    let (h, rtol, atol, probes) = (5e-3, 1e-2, 3e-3, 12);

    assert_eq!(grads.dx.shape(), sh);
    let dx = b.download(&grads.dx).unwrap();
    fd_check(
        &what(Wrt::X),
        &x,
        &dx,
        |xp| loss(&b, xp, sh, groups, o, act, &g),
        probes,
        h,
        rtol,
        atol,
    );

    let mut wrt: Vec<(Wrt, Vec<f32>, &Tensor)> = Vec::new();
    if let (Some(v), Some(d)) = (&o.gamma, &grads.dgamma) {
        wrt.push((Wrt::Gamma, v.clone(), d));
    }
    if let (Some(v), Some(d)) = (&o.beta, &grads.dbeta) {
        wrt.push((Wrt::Beta, v.clone(), d));
    }
    if let (Some((s, hh)), Some((ds, dh))) = (&o.film, &grads.dfilm) {
        wrt.push((Wrt::Scale, s.clone(), ds));
        wrt.push((Wrt::Shift, hh.clone(), dh));
    }
    if let (Some(r), Some(d)) = (&o.residual, &grads.dresidual) {
        wrt.push((Wrt::Residual, r.clone(), d));
    }
    for (w, v, d) in wrt {
        let analytic = b.download(d).unwrap();
        assert_eq!(analytic.len(), v.len(), "{}: gradient length", what(w));
        let perturbed = |vp: &[f32]| {
            let mut op = o.clone();
            let vp = vp.to_vec();
            match w {
                Wrt::Gamma => op.gamma = Some(vp),
                Wrt::Beta => op.beta = Some(vp),
                Wrt::Scale => op.film.as_mut().unwrap().0 = vp,
                Wrt::Shift => op.film.as_mut().unwrap().1 = vp,
                Wrt::Residual => op.residual = Some(vp),
                Wrt::X => unreachable!(),
            }
            loss(&b, &x, sh, groups, &op, act, &g)
        };
        fd_check(&what(w), &v, &analytic, perturbed, probes, h, rtol, atol);
    }
}

#[test]
fn backward_matches_finite_differences_for_every_epilogue_combination() {
    let sh = Shape::ndhwc(2, 1, 5, 7, 6);
    let mut seed = 500;
    for act in ACTS {
        for affine in 0..4 {
            for film in [false, true] {
                for res in [false, true] {
                    let mut rng = Rng::new(seed);
                    let o = random_opt(&mut rng, sh, affine & 1 != 0, affine & 2 != 0, film, res);
                    for groups in [1, 3, 6] {
                        check_backward(sh, groups, &o, act, seed);
                    }
                    seed += 1;
                }
            }
        }
    }
}

#[test]
fn backward_matches_finite_differences_over_shapes() {
    let cases = [
        (Shape::ndhwc(1, 3, 5, 7, 1), 1),
        (Shape::ndhwc(2, 3, 5, 7, 5), 5),
        (Shape::ndhwc(1, 1, 3, 5, 17), 17),
        (Shape::ndhwc(2, 1, 3, 4, 33), 11),
        (Shape::ndhwc(1, 2, 40, 30, 32), 8), // several blocks
        (Shape::ndhwc(2, 1, 3, 5, 16), 16),
        (Shape::ndhwc(1, 1, 2, 5, 96), 12),
    ];
    for (i, (sh, groups)) in cases.into_iter().enumerate() {
        let seed = 900 + i as u64;
        let mut rng = Rng::new(seed);
        let o = random_opt(&mut rng, sh, true, true, true, true);
        check_backward(sh, groups, &o, Act::Gelu, seed);
    }
}

/// The backward in f64 from the math of the module docs (for tensors too
/// large for finite differences everywhere): returns dx.
fn norm_bwd_ref(
    x: &[f32],
    dy: &[f32],
    sh: Shape,
    groups: usize,
    eps: f32,
    o: &Opt,
    act: Act,
) -> Vec<f64> {
    let (n, v, c) = (sh.n(), sh.voxels(), sh.c());
    let cpg = c / groups;
    let (u, stats) = norm_ref(x, sh, groups, eps, o, Act::Identity);
    let mut dx = vec![0f64; x.len()];
    for ni in 0..n {
        for g in 0..groups {
            let (mean, rstd) = (
                stats[(ni * groups + g) * 2],
                stats[(ni * groups + g) * 2 + 1],
            );
            let idx = |vi: usize, ci: usize| (ni * v + vi) * c + g * cpg + ci;
            let k = |ch: usize| {
                o.gamma.as_ref().map_or(1.0, |v| v[ch] as f64)
                    * o.film
                        .as_ref()
                        .map_or(1.0, |(s, _)| 1.0 + s[ni * c + ch] as f64)
            };
            // dx̂ = dy·act'(u)·k; dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))
            let (mut m1, mut m2) = (0f64, 0f64);
            let mut dxhat = vec![0f64; v * cpg];
            for vi in 0..v {
                for ci in 0..cpg {
                    let i = idx(vi, ci);
                    let d_act = dact_f64(act, u[i]);
                    let dh = dy[i] as f64 * d_act * k(g * cpg + ci);
                    let xhat = (x[i] as f64 - mean) * rstd;
                    dxhat[vi * cpg + ci] = dh;
                    m1 += dh;
                    m2 += dh * xhat;
                }
            }
            let m = (v * cpg) as f64;
            for vi in 0..v {
                for ci in 0..cpg {
                    let i = idx(vi, ci);
                    let xhat = (x[i] as f64 - mean) * rstd;
                    dx[i] = rstd * (dxhat[vi * cpg + ci] - m1 / m - xhat * m2 / m);
                }
            }
        }
    }
    dx
}

/// A 16 MiB tensor: outputs this large take the streaming-store path.
#[test]
fn large_tensors_match_reference_forward_and_backward() {
    let sh = Shape::ndhwc(1, 16, 64, 64, 64);
    for (act, res) in [(Act::Gelu, false), (Act::Relu, false), (Act::Silu, true)] {
        let b = cpu();
        let mut rng = Rng::new(21);
        let x = rng.vec(sh.numel(), -2.0, 3.0);
        let dy = rng.vec(sh.numel(), -1.0, 1.0);
        let o = random_opt(&mut rng, sh, true, true, true, res);
        let (xt, dyt) = (
            b.upload(&x, sh, DType::F32).unwrap(),
            b.upload(&dy, sh, DType::F32).unwrap(),
        );
        let (y, dx, dres) = with_args(&b, sh, 16, 1e-5, &o, act, |a| {
            let out = b.norm_fwd(&xt, a).unwrap();
            let gr = b.norm_bwd(&dyt, &xt, &out.stats, a).unwrap();
            let dres = gr.dresidual.map(|t| b.download(&t).unwrap());
            (
                b.download(&out.y).unwrap(),
                b.download(&gr.dx).unwrap(),
                dres,
            )
        });
        let (y_ref, _) = norm_ref(&x, sh, 16, 1e-5, &o, act);
        assert_close(&format!("large y {act:?}"), &y, &y_ref, 2e-5, 2e-5);
        let dx_ref = norm_bwd_ref(&x, &dy, sh, 16, 1e-5, &o, act);
        assert_close(&format!("large dx {act:?}"), &dx, &dx_ref, 1e-4, 1e-5);
        if let Some(dres) = dres {
            let (u, _) = norm_ref(&x, sh, 16, 1e-5, &o, Act::Identity);
            let want: Vec<f64> = u
                .iter()
                .zip(&dy)
                .map(|(&u, &g)| g as f64 * dact_f64(act, u))
                .collect();
            assert_close(
                &format!("large dresidual {act:?}"),
                &dres,
                &want,
                1e-4,
                1e-5,
            );
        }
    }
}

#[test]
fn nan_in_x_propagates_to_its_group_only() {
    let b = cpu();
    let sh = Shape::ndhwc(1, 2, 3, 4, 4);
    let mut rng = Rng::new(11);
    let mut x = rng.vec(sh.numel(), -1.0, 1.0);
    x[5] = f32::NAN; // voxel 1, channel 1 → group 0 of 2
    let xt = b.upload(&x, sh, DType::F32).unwrap();
    let g = b
        .upload(&rng.vec(sh.numel(), -1.0, 1.0), sh, DType::F32)
        .unwrap();
    for act in ACTS {
        let o = random_opt(&mut rng, sh, true, true, false, false);
        with_args(&b, sh, 2, 1e-5, &o, act, |a| {
            let out = b.norm_fwd(&xt, a).unwrap();
            let y = b.download(&out.y).unwrap();
            let dx = b
                .download(&b.norm_bwd(&g, &xt, &out.stats, a).unwrap().dx)
                .unwrap();
            for (i, (yv, dv)) in y.iter().zip(&dx).enumerate() {
                let in_group0 = i % 4 < 2;
                assert_eq!(yv.is_nan(), in_group0, "{act:?}: y[{i}] = {yv}");
                assert_eq!(dv.is_nan(), in_group0, "{act:?}: dx[{i}] = {dv}");
            }
        });
    }
}

#[test]
fn bad_arguments_are_errors() {
    let b = cpu();
    let mut rng = Rng::new(5);
    let sh = Shape::ndhwc(2, 1, 3, 4, 6);
    let x = rand_tensor(&b, &mut rng, sh, -1.0, 1.0);
    let up = |s: Shape, rng: &mut Rng| rand_tensor(&b, rng, s, -1.0, 1.0);
    let base = NormArgs {
        groups: 3,
        eps: 1e-5,
        gamma: None,
        beta: None,
        film: None,
        residual: None,
        act: Act::Silu,
    };
    let expect_err = |args: &NormArgs, x: &Tensor, what: &str| {
        let e = b
            .norm_fwd(x, args)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.to_string().contains("norm_fwd"), "{what}: message {e}");
    };
    expect_err(&NormArgs { groups: 4, ..base }, &x, "groups not dividing C");
    expect_err(&NormArgs { groups: 0, ..base }, &x, "zero groups");
    expect_err(&NormArgs { eps: -1.0, ..base }, &x, "negative eps");
    let gamma5 = up(Shape::new(&[5]), &mut rng);
    expect_err(
        &NormArgs {
            gamma: Some(&gamma5),
            ..base
        },
        &x,
        "gamma of 5 for C = 6",
    );
    let beta7 = up(Shape::new(&[7]), &mut rng);
    expect_err(
        &NormArgs {
            beta: Some(&beta7),
            ..base
        },
        &x,
        "beta of 7 for C = 6",
    );
    let s_bad = up(Shape::new(&[1, 6]), &mut rng);
    let h_ok = up(Shape::new(&[2, 6]), &mut rng);
    expect_err(
        &NormArgs {
            film: Some((&s_bad, &h_ok)),
            ..base
        },
        &x,
        "film scale for N = 1",
    );
    expect_err(
        &NormArgs {
            film: Some((&h_ok, &s_bad)),
            ..base
        },
        &x,
        "film shift for N = 1",
    );
    let r_bad = up(Shape::ndhwc(2, 1, 3, 5, 6), &mut rng);
    expect_err(
        &NormArgs {
            residual: Some(&r_bad),
            ..base
        },
        &x,
        "residual of another shape",
    );
    let not5 = up(Shape::new(&[12, 6]), &mut rng);
    expect_err(&base, &not5, "x not NDHWC");

    let out = b.norm_fwd(&x, &base).unwrap();
    let dy_bad = up(Shape::ndhwc(2, 1, 3, 4, 3), &mut rng);
    assert!(
        b.norm_bwd(&dy_bad, &x, &out.stats, &base).is_err(),
        "dy of another shape"
    );
    let stats_bad = up(Shape::new(&[2, 2, 2]), &mut rng);
    assert!(
        b.norm_bwd(&x, &x, &stats_bad, &base).is_err(),
        "stats for 2 groups"
    );
    let e = b.norm_bwd(&x, &x, &out.stats, &NormArgs { groups: 5, ..base });
    assert!(e.is_err(), "backward with bad groups");
}
