//! The pointwise kernels (kernels/pointwise.cu: unary, unary_bwd, binary add of
//! an [N, C] vector) and the
//! sum to [N, C] (kernels/reduce.cu) on the device under test against the CPU backend, f32 and
//! bf16 activations, odd sizes (vector chunks and scalar tails), channel
//! counts on and off the 8-channel vector path, N = 1 and 2. Outputs are
//! poisoned by the emulator, and every element is compared.

mod common;
mod gpu_support;
mod gpu_vs_cpu;

use common::{assert_close, Rng};
use gpu_vs_cpu::Pair;
use std::sync::Arc;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::reduce::RowTiles;
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{Bcast, Binary, Unary};
use voxdiff::tensor::{DType, Shape};

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// Any-shape inputs: lengths with and without a partial last chunk of 8.
fn flat_shapes() -> Vec<Shape> {
    vec![
        Shape::new(&[1]),
        Shape::new(&[7]),
        Shape::new(&[9]),
        Shape::ndhwc(1, 3, 5, 7, 3),
        Shape::ndhwc(2, 1, 9, 11, 5),
        Shape::ndhwc(1, 8, 9, 10, 8),
    ]
}

/// NDHWC inputs: odd extents, C = 1, 3, 5, 17, 33 and 8, 24, N = 1, 2.
fn ndhwc_shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    for c in [1, 3, 5, 17, 33, 8, 24] {
        for (n, sp) in [(1, [3, 5, 7]), (2, [1, 9, 11])] {
            v.push(Shape::ndhwc(n, sp[0], sp[1], sp[2], c));
        }
    }
    v
}

#[test]
fn unary_and_unary_bwd_match_cpu() {
    for dtype in DTYPES {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(3);
        for shape in flat_shapes() {
            for op in Unary::ALL {
                let what = format!("{} {op:?} {shape}", dtype.name());
                // ±12 reaches the clamped and saturated parts of SiLU and GELU.
                let (lo, hi) = common::unary_range(op, -12.0, 12.0);
                let (xg, xc) = p.act(&mut rng, shape, lo, hi);
                let (dyg, dyc) = p.act(&mut rng, shape, -1.0, 1.0);
                let yg = p.gpu.unary(&xg, op).unwrap();
                assert_eq!(yg.dtype(), dtype, "{what}: output dtype");
                p.check(
                    &format!("{what}: unary"),
                    &yg,
                    &p.cpu.unary(&xc, op).unwrap(),
                    p.rtol(),
                );
                let dxg = p.gpu.unary_bwd(&dyg, &xg, op).unwrap();
                let dxc = p.cpu.unary_bwd(&dyc, &xc, op).unwrap();
                p.check(&format!("{what}: unary_bwd"), &dxg, &dxc, p.rtol());
            }
        }
    }
}

#[test]
fn binary_add_of_sample_channel_vector_matches_cpu() {
    for dtype in DTYPES {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(4);
        for shape in ndhwc_shapes() {
            let (xg, xc) = p.act(&mut rng, shape, -2.0, 2.0);
            let (vg, vc) = p.f32(&mut rng, Shape::new(&[shape.n(), shape.c()]), -3.0, 3.0);
            let yg = p.gpu.binary(Binary::Add, &xg, &vg).unwrap();
            let yc = p.cpu.binary(Binary::Add, &xc, &vc).unwrap();
            p.check(
                &format!("{} add [N, C] {shape}", dtype.name()),
                &yg,
                &yc,
                p.rtol(),
            );
        }
    }
}

#[test]
fn reduce_sum_to_sample_channel_matches_cpu() {
    let mut shapes = ndhwc_shapes();
    // Many chunks on both paths, several column tiles on the vector path.
    shapes.push(Shape::ndhwc(1, 8, 16, 33, 3));
    shapes.push(Shape::ndhwc(2, 5, 16, 17, 16));
    shapes.push(Shape::ndhwc(1, 1, 9, 11, 264));
    assert!(RowTiles::new(shapes[shapes.len() - 3]).unwrap().chunks > 8);
    assert!(RowTiles::new(shapes[shapes.len() - 1]).unwrap().col_tiles > 1);
    for dtype in DTYPES {
        let p = Pair::new(dtype);
        let mut rng = Rng::new(5);
        for shape in &shapes {
            let (xg, xc) = p.act(&mut rng, *shape, -1.0, 1.0);
            let sg = p.gpu.reduce_sum(&xg, Bcast::SampleChannel).unwrap();
            let sc = p.cpu.reduce_sum(&xc, Bcast::SampleChannel).unwrap();
            assert_eq!(sg.shape().dims(), [shape.n(), shape.c()]);
            assert_eq!(sg.dtype(), DType::F32);
            // f32 sums of identical inputs: relative 1e-5 with a floor of
            // 1e-5·√terms (the size of a sum of random-signed terms ≲ 1).
            let g = p.gpu.download(&sg).unwrap();
            let want: Vec<f64> = p
                .cpu
                .download(&sc)
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let terms = shape.voxels() as f64;
            assert_close(
                &format!("{} reduce_sum to [N, C] {shape}", dtype.name()),
                &g,
                &want,
                1e-5,
                1e-5 * terms.sqrt(),
            );
        }
    }
}

/// The sum reduces in a fixed order: a shuffled fiber order gives the same bits.
#[test]
fn reduce_sum_is_bit_identical_under_shuffled_fiber_order() {
    let run = |shuffle: Option<u64>| -> Vec<Vec<f32>> {
        let gpu = GpuBackend::with_act_dtype(Arc::new(Emu::with_shuffle(shuffle)), DType::BF16);
        let mut rng = Rng::new(6);
        [
            Shape::ndhwc(1, 8, 16, 33, 3),
            Shape::ndhwc(2, 5, 16, 17, 16),
            Shape::ndhwc(1, 1, 9, 11, 264),
        ]
        .iter()
        .map(|&s| {
            let x = gpu
                .upload(&rng.vec(s.numel(), -1.0, 1.0), s, DType::BF16)
                .unwrap();
            gpu.download(&gpu.reduce_sum(&x, Bcast::SampleChannel).unwrap())
                .unwrap()
        })
        .collect()
    };
    let plain = run(None);
    let shuffled = run(Some(17));
    for (a, b) in plain.iter().zip(&shuffled) {
        assert!(a.iter().all(|v| v.is_finite()));
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "differs when shuffled"
        );
    }
}

#[test]
fn rejects_bad_arguments() {
    let p = Pair::new(DType::BF16);
    let b = &p.gpu;
    let x = b.zeros(Shape::ndhwc(2, 1, 2, 3, 4), DType::BF16).unwrap();
    let v = b.zeros(Shape::new(&[2, 5]), DType::F32).unwrap();
    let e = b.binary(Binary::Add, &x, &v).expect_err("wrong [N, C]");
    assert!(format!("{e:#}").contains("binary: y"), "{e:#}");
    let y = b.zeros(Shape::ndhwc(2, 1, 2, 3, 5), DType::BF16).unwrap();
    let e = b
        .unary_bwd(&y, &x, Unary::Relu)
        .expect_err("mismatched shapes");
    assert!(format!("{e:#}").contains("unary_bwd"), "{e:#}");
    let flat = b.zeros(Shape::new(&[24]), DType::BF16).unwrap();
    let e = b
        .reduce_sum(&flat, Bcast::SampleChannel)
        .expect_err("rank 1 has no [N, C]");
    assert!(format!("{e:#}").contains("rank ≥ 3"), "{e:#}");
}
