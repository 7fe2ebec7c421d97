//! bmm and permute on the CPU backend at the sizes of attention over a coarse
//! level: 8 matrices (batch 2 × 4 heads) of T = 1024 tokens, head width 32.
//!
//! Counted: the scores `q·kᵀ` ([8, 1024, 32] · [8, 1024, 32]ᵀ) and the weighted
//! values `p·v` ([8, 1024, 1024] · [8, 1024, 32]) are 2·8·1024·1024·32 =
//! 537 MFLOP each; one square 1024³ product is 2.15 GFLOP. Criterion's
//! throughput is set to the FLOPs (its "elements/s" are FLOP/s). The permutes
//! move 2 × 1 MiB ([2, 1024, 4, 32] f32, heads to the front: runs of 32
//! copied) and 2 × 4 MiB ([1, 1024, 1024] → its transpose); throughput in
//! bytes.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape};

fn bench_matmul(cr: &mut Criterion) {
    let b = CpuBackend::new();
    let t = |dims: &[usize]| {
        let s = Shape::new(dims);
        let v: Vec<f32> = (0..s.numel())
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        b.upload(&v, s, DType::F32).unwrap()
    };
    let (q, k, p) = (t(&[8, 1024, 32]), t(&[8, 1024, 32]), t(&[8, 1024, 1024]));
    let sq = t(&[1024, 1024]);

    let mut g = cr.benchmark_group("bmm");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2 * 8 * 1024 * 1024 * 32));
    g.bench_function("scores q·kT 8x1024x1024 K=32", |bn| {
        bn.iter(|| black_box(b.bmm(&q, &k, false, true).unwrap()))
    });
    g.bench_function("p·v 8x1024x32 K=1024", |bn| {
        bn.iter(|| black_box(b.bmm(&p, &k, false, false).unwrap()))
    });
    g.throughput(Throughput::Elements(2 * 1024 * 1024 * 1024));
    g.bench_function("square 1024^3", |bn| {
        bn.iter(|| black_box(b.bmm(&sq, &sq, false, false).unwrap()))
    });
    g.bench_function("square 1024^3 both transposed", |bn| {
        bn.iter(|| black_box(b.bmm(&sq, &sq, true, true).unwrap()))
    });
    g.finish();

    let heads = t(&[2, 1024, 4, 32]);
    let mut g = cr.benchmark_group("permute");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(2 * 4 * heads.numel() as u64));
    g.bench_function("[2,1024,4,32] heads to the front", |bn| {
        bn.iter(|| black_box(b.permute(&heads, &[0, 2, 1, 3]).unwrap()))
    });
    g.throughput(Throughput::Bytes(2 * 4 * sq.numel() as u64));
    g.bench_function("[1024,1024] transpose", |bn| {
        bn.iter(|| black_box(b.permute(&sq, &[1, 0]).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
