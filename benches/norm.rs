//! Group norm forward + backward on the CPU backend: instance norm
//! (groups = C = 32) with gamma/beta on a 1×32×128×128×32 f32 tensor (64 MiB),
//! activation identity and GELU.
//!
//! Bytes floor (each tensor 64 MiB): the forward must read x for the
//! statistics, then read x and write y (3 tensors); the backward must read x
//! and dy for the reductions, then read x and dy and write dx (5 tensors):
//! 8 × 64 MiB = 512 MiB per forward + backward. Criterion's throughput is set
//! to those bytes, so its GB/s is "floor bytes / measured time". As a yardstick
//! for the machine's memory speed in the same run, `stream/copy` measures a
//! plain read + write of one tensor into a fresh output (`lincomb` with one
//! term: 2 × 64 MiB, streaming stores like the norm's outputs). The SiLU/GELU
//! backward stores du once more than the floor (6 tensors, see `norm.rs`).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::{Act, NormArgs};
use voxdiff::tensor::{DType, Shape};

/// SplitMix64 uniform values in [lo, hi).
fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn bench_norm(cr: &mut Criterion) {
    let b = CpuBackend::new();
    let shape = Shape::ndhwc(1, 32, 128, 128, 32);
    let c = shape.c();
    let tensor_bytes = (shape.numel() * 4) as u64;
    let up = |v: Vec<f32>, s: Shape| b.upload(&v, s, DType::F32).unwrap();
    let x = up(uniform(shape.numel(), 1, -2.0, 3.0), shape);
    let dy = up(uniform(shape.numel(), 2, -1.0, 1.0), shape);
    let gamma = up(uniform(c, 3, 0.5, 1.5), Shape::new(&[c]));
    let beta = up(uniform(c, 4, -0.5, 0.5), Shape::new(&[c]));

    let mut g = cr.benchmark_group("norm_1x32x128x128x32_instance");
    g.sample_size(20);
    for act in [Act::Identity, Act::Gelu] {
        let args = NormArgs {
            groups: c,
            eps: 1e-5,
            gamma: Some(&gamma),
            beta: Some(&beta),
            film: None,
            residual: None,
            act,
        };
        let name = format!("{act:?}").to_lowercase();
        g.throughput(Throughput::Bytes(8 * tensor_bytes));
        g.bench_function(BenchmarkId::new("fwd+bwd", &name), |bn| {
            bn.iter(|| {
                let out = b.norm_fwd(black_box(&x), &args).unwrap();
                let grads = b.norm_bwd(&dy, &x, &out.stats, &args).unwrap();
                black_box((out.y, grads.dx))
            })
        });
        g.throughput(Throughput::Bytes(3 * tensor_bytes));
        g.bench_function(BenchmarkId::new("fwd", &name), |bn| {
            bn.iter(|| black_box(b.norm_fwd(black_box(&x), &args).unwrap().y))
        });
        let stats = b.norm_fwd(&x, &args).unwrap().stats;
        g.throughput(Throughput::Bytes(5 * tensor_bytes));
        g.bench_function(BenchmarkId::new("bwd", &name), |bn| {
            bn.iter(|| black_box(b.norm_bwd(&dy, black_box(&x), &stats, &args).unwrap().dx))
        });
    }
    g.throughput(Throughput::Bytes(2 * tensor_bytes));
    g.bench_function("stream/copy", |bn| {
        bn.iter(|| black_box(b.lincomb(&[(1.0, black_box(&x))]).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench_norm);
criterion_main!(benches);
