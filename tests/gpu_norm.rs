//! The fused group-norm kernels (kernels/norm.cu) on the device under test
//! against the CPU backend: every epilogue combination (affine γβ, FiLM,
//! residual, each activation), groups = 1, a divisor and C, odd extents,
//! channel counts on and off the 8-channel vector path, N = 1 and 2, f32 and
//! bf16 activations, volumes that split into many chunks, and a shuffled fiber
//! order that must give bit-identical results. Outputs and workspaces are
//! poisoned (NaN) by the emulator before the kernels run, and every element is
//! compared, so anything left unwritten fails.

mod common;
mod gpu_support;
mod gpu_vs_cpu;

use common::{assert_close, Rng};
use gpu_vs_cpu::{compare, Pair};
use std::sync::Arc;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::reduce::RowTiles;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{Act, NormArgs};
use voxdiff::tensor::{DType, Shape, Tensor};

const ACTS: [Act; 4] = [Act::Identity, Act::Relu, Act::Silu, Act::Gelu];
/// f32 results computed from identical inputs (statistics, parameter gradients).
const F32_RTOL: f64 = 1e-5;

/// Which optional parts of the epilogue a case uses.
#[derive(Clone, Copy, Debug)]
struct Epilogue {
    affine: bool,
    film: bool,
    residual: bool,
    act: Act,
}

impl Epilogue {
    /// All 32 combinations.
    fn all() -> Vec<Epilogue> {
        let mut v = Vec::new();
        for bits in 0..8u32 {
            for act in ACTS {
                v.push(Epilogue {
                    affine: bits & 1 != 0,
                    film: bits & 2 != 0,
                    residual: bits & 4 != 0,
                    act,
                });
            }
        }
        v
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    spatial: [usize; 3],
    c: usize,
    groups: usize,
    epi: Epilogue,
    /// Channel means are drawn from ±`offset` (|μ|/σ up to about offset).
    offset: f32,
}

/// The inputs of one case on both backends: (gpu, cpu) per tensor.
struct Inputs {
    x: (Tensor, Tensor),
    dy: (Tensor, Tensor),
    gamma: Option<(Tensor, Tensor)>,
    beta: Option<(Tensor, Tensor)>,
    film: Option<((Tensor, Tensor), (Tensor, Tensor))>,
    residual: Option<(Tensor, Tensor)>,
}

fn inputs(p: &Pair, rng: &mut Rng, cs: &Case) -> Inputs {
    let shape = Shape::ndhwc(cs.n, cs.spatial[0], cs.spatial[1], cs.spatial[2], cs.c);
    // Distinct statistics per channel: x = mean_c + spread_c · U(-1, 1).
    let mean = rng.vec(cs.c, -cs.offset, cs.offset);
    let spread = rng.vec(cs.c, 0.3, 2.0);
    let x: Vec<f32> = (0..shape.numel())
        .map(|i| mean[i % cs.c] + spread[i % cs.c] * rng.uniform(-1.0, 1.0))
        .collect();
    let nc = Shape::new(&[cs.n, cs.c]);
    let cvec = Shape::new(&[cs.c]);
    Inputs {
        x: p.act_from(&x, shape),
        dy: p.act(rng, shape, -1.0, 1.0),
        gamma: cs.epi.affine.then(|| p.f32(rng, cvec, 0.5, 1.5)),
        beta: cs.epi.affine.then(|| p.f32(rng, cvec, -0.5, 0.5)),
        film: cs
            .epi
            .film
            .then(|| (p.f32(rng, nc, -0.5, 0.5), p.f32(rng, nc, -0.5, 0.5))),
        residual: cs.epi.residual.then(|| p.act(rng, shape, -1.0, 1.0)),
    }
}

/// The NormArgs of one side (`gpu` true: the gpu tensors).
fn norm_args<'a>(inp: &'a Inputs, cs: &Case, gpu: bool) -> NormArgs<'a> {
    let pick = |t: &'a (Tensor, Tensor)| if gpu { &t.0 } else { &t.1 };
    NormArgs {
        groups: cs.groups,
        eps: 1e-5,
        gamma: inp.gamma.as_ref().map(pick),
        beta: inp.beta.as_ref().map(pick),
        film: inp.film.as_ref().map(|(s, h)| (pick(s), pick(h))),
        residual: inp.residual.as_ref().map(pick),
        act: cs.epi.act,
    }
}

/// Compares a reduction over `terms` terms of magnitude ≲ 1 (the parameter
/// gradients): the floor is rtol·√terms, the size of such a sum with random signs.
fn compare_sum(p: &Pair, what: &str, gpu: &Tensor, cpu: &Tensor, terms: usize, rtol: f64) {
    let g = p.gpu.download(gpu).unwrap();
    let c = p.cpu.download(cpu).unwrap();
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
    let w: Vec<f64> = c.iter().map(|&v| v as f64).collect();
    assert_close(what, &g, &w, rtol, rtol * (terms as f64).sqrt());
}

/// Runs forward and backward of one case on both backends and compares everything.
fn check_case(p: &Pair, rng: &mut Rng, cs: &Case) {
    let what = format!("{} {cs:?}", p.dtype.name());
    let inp = inputs(p, rng, cs);
    let (ag, ac) = (norm_args(&inp, cs, true), norm_args(&inp, cs, false));
    let og = p.gpu.norm_fwd(&inp.x.0, &ag).unwrap();
    let oc = p.cpu.norm_fwd(&inp.x.1, &ac).unwrap();

    // Statistics: μ within rtol of |μ| + σ, r within rtol of r.
    let sg = p.gpu.download(&og.stats).unwrap();
    let sc = p.cpu.download(&oc.stats).unwrap();
    assert_eq!(
        og.stats.shape().dims(),
        [cs.n, cs.groups, 2],
        "{what}: stats shape"
    );
    for i in 0..cs.n * cs.groups {
        let (mu, r) = (sc[2 * i] as f64, sc[2 * i + 1] as f64);
        assert_close(
            &format!("{what}: mean {i}"),
            &sg[2 * i..2 * i + 1],
            &[mu],
            F32_RTOL,
            F32_RTOL * (mu.abs() + 1.0 / r),
        );
        assert_close(
            &format!("{what}: rstd {i}"),
            &sg[2 * i + 1..2 * i + 2],
            &[r],
            F32_RTOL,
            0.0,
        );
    }
    // Statistics are f32 by contract: rounding μ to f32 moves x − μ by up to
    // ulp(μ)/2, i.e. x̂ by 2⁻²⁴·|μ|·r — above 1e-5 only when |μ|/σ ≳ 100 (the
    // CPU forward normalises with μ in f64). Outputs allow for it.
    let mu_r = (0..cs.n * cs.groups)
        .map(|i| (sc[2 * i] * sc[2 * i + 1]).abs() as f64)
        .fold(0.0, f64::max);
    let rtol = p.rtol() + mu_r * 2f64.powi(-23);
    let rtol32 = F32_RTOL + mu_r * 2f64.powi(-23);
    p.check(&format!("{what}: y"), &og.y, &oc.y, rtol);

    let gg = p.gpu.norm_bwd(&inp.dy.0, &inp.x.0, &og.stats, &ag).unwrap();
    let gc = p.cpu.norm_bwd(&inp.dy.1, &inp.x.1, &oc.stats, &ac).unwrap();
    p.check(&format!("{what}: dx"), &gg.dx, &gc.dx, rtol);
    let vox = cs.spatial.iter().product::<usize>();
    assert_eq!(
        gg.dgamma.is_some(),
        cs.epi.affine,
        "{what}: dgamma given iff gamma"
    );
    assert_eq!(
        gg.dbeta.is_some(),
        cs.epi.affine,
        "{what}: dbeta given iff beta"
    );
    assert_eq!(
        gg.dfilm.is_some(),
        cs.epi.film,
        "{what}: dfilm given iff film"
    );
    assert_eq!(
        gg.dresidual.is_some(),
        cs.epi.residual,
        "{what}: dresidual given iff residual"
    );
    if let (Some(g), Some(c)) = (&gg.dgamma, &gc.dgamma) {
        compare_sum(p, &format!("{what}: dgamma"), g, c, cs.n * vox, rtol32);
    }
    if let (Some(g), Some(c)) = (&gg.dbeta, &gc.dbeta) {
        compare_sum(p, &format!("{what}: dbeta"), g, c, cs.n * vox, rtol32);
    }
    if let (Some((gs, gh)), Some((cs_, ch))) = (&gg.dfilm, &gc.dfilm) {
        compare_sum(p, &format!("{what}: dscale"), gs, cs_, vox, rtol32);
        compare_sum(p, &format!("{what}: dshift"), gh, ch, vox, rtol32);
    }
    if let (Some(g), Some(c)) = (&gg.dresidual, &gc.dresidual) {
        p.check(&format!("{what}: dresidual"), g, c, rtol);
    }
}

/// 3 divisors of c: 1, one in between (when c has one), c.
fn group_choices(c: usize) -> Vec<usize> {
    let mut g = vec![1];
    if let Some(d) = (2..c).find(|d| c.is_multiple_of(*d) && d * d >= c) {
        g.push(d);
    }
    if c > 1 {
        g.push(c);
    }
    g
}

fn every_epilogue(dtype: DType) {
    let p = Pair::new(dtype);
    let mut rng = Rng::new(31);
    // One shape on the 8-channel vector path, one on the scalar path.
    for (n, spatial, c, groups) in [(2, [3, 5, 7], 24, 6), (1, [1, 9, 11], 5, 5)] {
        for epi in Epilogue::all() {
            let cs = Case {
                n,
                spatial,
                c,
                groups,
                epi,
                offset: 2.0,
            };
            check_case(&p, &mut rng, &cs);
        }
    }
}

#[test]
fn every_epilogue_matches_cpu_f32() {
    every_epilogue(DType::F32);
}

#[test]
fn every_epilogue_matches_cpu_bf16() {
    every_epilogue(DType::BF16);
}

/// Channel counts off (1, 3, 5, 17, 33) and on (8, 24, 32) the vector path,
/// each with its group choices, two odd extents and N = 1, 2; the epilogue
/// cycles through all 32 combinations.
fn shapes_and_groups(dtype: DType) {
    let p = Pair::new(dtype);
    let mut rng = Rng::new(7);
    let epis = Epilogue::all();
    let mut k = 0;
    for c in [1, 3, 5, 17, 33, 8, 24, 32] {
        for groups in group_choices(c) {
            for spatial in [[3, 5, 7], [1, 9, 11]] {
                for n in [1, 2] {
                    let cs = Case {
                        n,
                        spatial,
                        c,
                        groups,
                        epi: epis[k % epis.len()],
                        offset: 2.0,
                    };
                    k += 7;
                    check_case(&p, &mut rng, &cs);
                }
            }
        }
    }
}

#[test]
fn shapes_and_groups_match_cpu_f32() {
    shapes_and_groups(DType::F32);
}

#[test]
fn shapes_and_groups_match_cpu_bf16() {
    shapes_and_groups(DType::BF16);
}

/// Volumes that split into many chunks (the two-stage reductions merge many
/// partials), more than 32 column vectors (several column tiles), a group of
/// more than 256 channels (the backward merge loops over channel tiles), and
/// a mean far from zero (|μ|/σ ≈ 100: Welford and Chan keep the variance).
#[test]
fn large_volumes_wide_groups_and_offset_means_match_cpu() {
    let full = Epilogue {
        affine: true,
        film: true,
        residual: true,
        act: Act::Silu,
    };
    for dtype in [DType::F32, DType::BF16] {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(99);
        for (n, spatial, c, groups, offset) in [
            (1, [8, 16, 33], 3, 1, 2.0),
            (2, [5, 16, 17], 8, 2, 2.0),
            (1, [1, 9, 11], 264, 1, 2.0),
            (1, [1, 9, 11], 264, 264, 2.0),
            (1, [4, 8, 9], 16, 16, 100.0),
        ] {
            let cs = Case {
                n,
                spatial,
                c,
                groups,
                epi: full,
                offset,
            };
            check_case(&p, &mut rng, &cs);
        }
    }
}

/// The cases above reach the parts of the launch they are meant for.
#[test]
fn large_cases_split_into_chunks_and_column_tiles() {
    let t = RowTiles::new(Shape::ndhwc(1, 8, 16, 33, 3)).unwrap();
    assert!(t.vec == 1 && t.chunks > 8, "{t:?}");
    let t = RowTiles::new(Shape::ndhwc(2, 5, 16, 17, 8)).unwrap();
    assert!(t.vec == 8 && t.chunks > 1, "{t:?}");
    let t = RowTiles::new(Shape::ndhwc(1, 1, 9, 11, 264)).unwrap();
    assert!(t.vec == 8 && t.col_tiles == 2, "{t:?}");
    let t = RowTiles::new(Shape::ndhwc(1, 3, 5, 7, 33)).unwrap();
    assert!(t.vec == 1 && t.col_tiles == 2 && t.chunks > 1, "{t:?}");
}

/// The kernels reduce in a fixed order, so a shuffled fiber order (which
/// changes what a missing barrier lets a thread read) must give bit-identical
/// results to the thread order.
#[test]
fn shuffled_fiber_order_gives_identical_results() {
    let run = |shuffle: Option<u64>| -> Vec<Vec<f32>> {
        let gpu = GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(shuffle)), DType::F32);
        let mut rng = Rng::new(5);
        let mut out = Vec::new();
        for (shape, groups) in [
            (Shape::ndhwc(2, 5, 16, 17, 8), 2),
            (Shape::ndhwc(1, 3, 5, 7, 17), 17),
            (Shape::ndhwc(1, 1, 9, 11, 264), 1),
        ] {
            let c = shape.c();
            let up = |v: Vec<f32>, s: Shape| gpu.upload(&v, s, DType::F32).unwrap();
            let x = up(rng.vec(shape.numel(), -1.0, 3.0), shape);
            let dy = up(rng.vec(shape.numel(), -1.0, 1.0), shape);
            let res = up(rng.vec(shape.numel(), -1.0, 1.0), shape);
            let gamma = up(rng.vec(c, 0.5, 1.5), Shape::new(&[c]));
            let beta = up(rng.vec(c, -0.5, 0.5), Shape::new(&[c]));
            let nc = Shape::new(&[shape.n(), c]);
            let (s, h) = (
                up(rng.vec(nc.numel(), -0.5, 0.5), nc),
                up(rng.vec(nc.numel(), -0.5, 0.5), nc),
            );
            let args = NormArgs {
                groups,
                eps: 1e-5,
                gamma: Some(&gamma),
                beta: Some(&beta),
                film: Some((&s, &h)),
                residual: Some(&res),
                act: Act::Gelu,
            };
            let o = gpu.norm_fwd(&x, &args).unwrap();
            let g = gpu.norm_bwd(&dy, &x, &o.stats, &args).unwrap();
            let (ds, dh) = g.dfilm.unwrap();
            for t in [
                &o.y,
                &o.stats,
                &g.dx,
                &g.dgamma.unwrap(),
                &g.dbeta.unwrap(),
                &ds,
                &dh,
                &g.dresidual.unwrap(),
            ] {
                out.push(gpu.download(t).unwrap());
            }
        }
        out
    };
    let plain = run(None);
    for seed in [1u64, 0xC0FFEE] {
        let shuffled = run(Some(seed));
        for (i, (a, b)) in plain.iter().zip(&shuffled).enumerate() {
            assert!(
                a.iter().all(|v| v.is_finite()),
                "output {i} has non-finite values"
            );
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "output {i} differs under shuffled fiber order (seed {seed})"
            );
        }
    }
}

#[test]
fn rejects_bad_arguments() {
    let p = Pair::new(DType::BF16);
    let b = &p.gpu;
    let shape = Shape::ndhwc(1, 2, 3, 4, 6);
    let x = b
        .upload(&vec![0.5; shape.numel()], shape, DType::BF16)
        .unwrap();
    let ok = NormArgs {
        groups: 3,
        eps: 1e-5,
        gamma: None,
        beta: None,
        film: None,
        residual: None,
        act: Act::Identity,
    };
    let err = |args: &NormArgs| format!("{:#}", b.norm_fwd(&x, args).err().expect("an error"));
    assert!(err(&NormArgs { groups: 4, ..ok }).contains("groups = 4"));
    let bad_gamma = b.zeros(Shape::new(&[5]), DType::F32).unwrap();
    assert!(err(&NormArgs {
        gamma: Some(&bad_gamma),
        ..ok
    })
    .contains("gamma"));
    let bad_film = b.zeros(Shape::new(&[2, 6]), DType::F32).unwrap();
    assert!(err(&NormArgs {
        film: Some((&bad_film, &bad_film)),
        ..ok
    })
    .contains("film scale"));
    let bad_res = b.zeros(shape, DType::F32).unwrap();
    assert!(err(&NormArgs {
        residual: Some(&bad_res),
        ..ok
    })
    .contains("residual"));
    let o = b.norm_fwd(&x, &ok).unwrap();
    let bad_stats = b.zeros(Shape::new(&[1, 2, 2]), DType::F32).unwrap();
    let e = b.norm_bwd(&x, &x, &bad_stats, &ok).err().expect("an error");
    assert!(format!("{e:#}").contains("stats"), "{e:#}");
    let small = b.zeros(Shape::ndhwc(1, 2, 3, 3, 6), DType::BF16).unwrap();
    let e = b
        .norm_bwd(&small, &x, &o.stats, &ok)
        .err()
        .expect("an error");
    assert!(format!("{e:#}").contains("dy"), "{e:#}");
    // Compare is used by the other tests; check it rejects poison here.
    let poison = [f32::NAN];
    let r = std::panic::catch_unwind(|| compare("poison", &poison, &[1.0], 1e-2));
    assert!(r.is_err(), "a NaN output must fail the comparison");
}
