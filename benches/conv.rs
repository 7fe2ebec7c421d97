//! CPU 3D convolution: 32 → 32 channels, 3×3×3, on a 1×32×128×128×32 (NDHWC)
//! volume — the first level of the 3D UNets at a 128×128×32 patch.
//!
//! One pass (forward, data gradient or weight gradient) is
//! `2 · 27 · 32 · 32 · 524288 ≈ 29.0 GFLOP`; forward + backward is three.
//! Criterion reports time and throughput in flop/s ("elem/s"); a best-of-N
//! summary with GFLOP/s is printed first, then a survey of other layer shapes
//! (skipped with `VOXDIFF_BENCH_SURVEY=0`).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::ops::ConvSpec;
use voxdiff::tensor::{DType, Shape, Tensor};

/// Layers of the 3D UNets (channels 32/64/128/256 at a 128×128×32 patch) and
/// of the 2D models, timed once each before criterion runs.
const SURVEY: &[(&str, ConvSpec, [usize; 4], usize)] = &[
    ("k3 2→32 first", ConvSpec::K3, [32, 128, 128, 2], 32),
    ("k3 64→64", ConvSpec::K3, [16, 64, 64, 64], 64),
    ("k3 128→128", ConvSpec::K3, [8, 32, 32, 128], 128),
    ("k3 256→256", ConvSpec::K3, [4, 16, 16, 256], 256),
    ("down2 32→64", ConvSpec::DOWN2, [32, 128, 128, 32], 64),
    ("up2 64→32", ConvSpec::UP2, [16, 64, 64, 64], 32),
    ("k1 32→3 head", ConvSpec::K1, [32, 128, 128, 32], 3),
    ("k3 32→1 head", ConvSpec::K3, [32, 128, 128, 32], 1),
    ("k133 64→64 2D", ConvSpec::K133, [1, 256, 256, 64], 64),
    (
        "down 1×2×2 64→128",
        ConvSpec {
            kernel: [1, 2, 2],
            stride: [1, 2, 2],
            transposed: false,
        },
        [1, 256, 256, 64],
        128,
    ),
    (
        "up 1×2×2 128→64",
        ConvSpec {
            kernel: [1, 2, 2],
            stride: [1, 2, 2],
            transposed: true,
        },
        [1, 128, 128, 128],
        64,
    ),
];

struct Setup {
    b: CpuBackend,
    x: Tensor,
    w: Tensor,
    bias: Tensor,
    dy: Tensor,
    spec: ConvSpec,
    flops: u64,
}

fn setup(spec: ConvSpec, x_shape: Shape, cout: usize) -> Setup {
    let b = CpuBackend::new();
    let cin = x_shape.c();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    };
    let x = b
        .upload(&rand(x_shape.numel()), x_shape, DType::F32)
        .unwrap();
    let w_shape = spec.weight_shape(cin, cout);
    let w = b
        .upload(&rand(w_shape.numel()), w_shape, DType::F32)
        .unwrap();
    let bias = b
        .upload(&rand(cout), Shape::new(&[cout]), DType::F32)
        .unwrap();
    let y_shape = x_shape
        .with_spatial(spec.out_spatial(x_shape.spatial()))
        .with_c(cout);
    let dy = b
        .upload(&rand(y_shape.numel()), y_shape, DType::F32)
        .unwrap();
    let flops = 2 * spec.macs(x_shape, cout);
    Setup {
        b,
        x,
        w,
        bias,
        dy,
        spec,
        flops,
    }
}

impl Setup {
    fn fwd(&self) -> Tensor {
        self.b
            .conv3d(&self.x, &self.w, Some(&self.bias), self.spec)
            .unwrap()
    }
    fn dgrad(&self) -> Tensor {
        self.b
            .conv3d_dgrad(&self.dy, &self.w, self.x.shape(), self.spec)
            .unwrap()
    }
    fn wgrad(&self) -> (Tensor, Option<Tensor>) {
        self.b
            .conv3d_wgrad(&self.x, &self.dy, self.spec, true)
            .unwrap()
    }
    fn fwd_bwd(&self) {
        std::hint::black_box(self.fwd());
        std::hint::black_box(self.dgrad());
        std::hint::black_box(self.wgrad());
    }
}

/// CPU time (user + system) of the whole process so far.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Best of `reps` runs: (wall-clock time, process CPU time of that run).
fn best_of(reps: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    (0..reps)
        .map(|_| {
            let (t, c) = (Instant::now(), process_cpu_time());
            f();
            (t.elapsed(), process_cpu_time() - c)
        })
        .min()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let s = setup(ConvSpec::K3, Shape::ndhwc(1, 32, 128, 128, 32), 32);
    println!(
        "conv3d 3×3×3 32→32 on 1×32×128×128×32, {} ({:.1} GFLOP per pass)",
        s.b.name(),
        s.flops as f64 / 1e9
    );
    // CPU time shows the work done even when other processes share the cores.
    let report = |what: &str, passes: u64, (wall, cpu): (Duration, Duration)| {
        let flops = (passes * s.flops) as f64;
        println!(
            "  {what:<8} best of 5: {:7.1} ms {:6.1} GFLOP/s | cpu time {:7.1} ms {:6.1} GFLOP per cpu-s",
            wall.as_secs_f64() * 1e3,
            flops / wall.as_secs_f64() / 1e9,
            cpu.as_secs_f64() * 1e3,
            flops / cpu.as_secs_f64() / 1e9
        );
    };
    report("fwd", 1, best_of(5, || drop(std::hint::black_box(s.fwd()))));
    report(
        "dgrad",
        1,
        best_of(5, || drop(std::hint::black_box(s.dgrad()))),
    );
    report(
        "wgrad",
        1,
        best_of(5, || drop(std::hint::black_box(s.wgrad()))),
    );
    report("fwd+bwd", 3, best_of(5, || s.fwd_bwd()));

    let survey = std::env::var("VOXDIFF_BENCH_SURVEY").map_or(true, |v| v != "0");
    if survey {
        println!("layer survey (best of 3; wall ms, GFLOP/s, and GFLOP per cpu-second):");
    }
    for &(name, spec, [d, h, w, cin], cout) in SURVEY.iter().filter(|_| survey) {
        let l = setup(spec, Shape::ndhwc(1, d, h, w, cin), cout);
        let f = l.flops as f64;
        let cell = |(wall, cpu): (Duration, Duration)| {
            format!(
                "{:7.2} ms {:4.0} {:4.0}",
                wall.as_secs_f64() * 1e3,
                f / wall.as_secs_f64() / 1e9,
                f / cpu.as_secs_f64() / 1e9
            )
        };
        println!(
            "  {name:<18} {:5.2} GFLOP  fwd {}  dgrad {}  wgrad {}",
            f / 1e9,
            cell(best_of(3, || drop(std::hint::black_box(l.fwd())))),
            cell(best_of(3, || drop(std::hint::black_box(l.dgrad())))),
            cell(best_of(3, || drop(std::hint::black_box(l.wgrad())))),
        );
    }

    let mut g = c.benchmark_group("conv3d_k3_32to32_1x32x128x128");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(s.flops));
    g.bench_function("fwd", |bch| bch.iter(|| s.fwd()));
    g.bench_function("dgrad", |bch| bch.iter(|| s.dgrad()));
    g.bench_function("wgrad", |bch| bch.iter(|| s.wgrad()));
    g.throughput(Throughput::Elements(3 * s.flops));
    g.bench_function("fwd+bwd", |bch| bch.iter(|| s.fwd_bwd()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
