//! The elementwise and noise kernels (fill, cast, lincomb, randn) on the device
//! under test (Emu, or a GPU with VOXDIFF_TEST_DEVICE=cuda) against plain f64
//! computations and the CPU backend. Outputs are poisoned (NaN) by the device
//! before the kernels run, so an element left unwritten fails the comparison;
//! sizes are odd so the vector path and the scalar tail both run.

mod common;
mod gpu_support;

use common::{assert_close, Rng};
use gpu_support::*;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::gpu::device::{KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::registry::Kernel;
use voxdiff::backend::philox;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape};

const SIZES: [usize; 6] = [1, 7, 9, 1003, 2051, 70_001];

#[test]
fn fill_writes_every_element() {
    let b = backend();
    for &n in &SIZES {
        for dtype in [DType::F32, DType::BF16] {
            let t = b.alloc(Shape::new(&[n]), dtype).unwrap();
            b.fill(&t, 0.3).unwrap();
            let want = match dtype {
                DType::F32 => 0.3f32,
                DType::BF16 => half::bf16::from_f32(0.3).to_f32(),
            };
            let got = b.download(&t).unwrap();
            assert!(
                got.iter().all(|&v| v == want),
                "fill {} n={n}",
                dtype.name()
            );
        }
    }
}

#[test]
fn cast_round_trips() {
    let b = backend();
    let mut rng = Rng::new(11);
    for &n in &SIZES {
        let x = rng.vec(n, -3.0, 3.0);
        let xt = b.upload(&x, Shape::new(&[n]), DType::F32).unwrap();
        let h = b.cast(&xt, DType::BF16).unwrap();
        let back = b.download(&b.cast(&h, DType::F32).unwrap()).unwrap();
        let want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        assert_close(&format!("f32→bf16→f32 n={n}"), &back, &want, 1e-2, 0.0);
        let same = b.download(&b.cast(&xt, DType::F32).unwrap()).unwrap();
        assert_eq!(same, x, "f32→f32 copy n={n}");
    }
}

#[test]
fn lincomb_matches_f64_for_every_dtype_mix() {
    let b = backend();
    let mut rng = Rng::new(5);
    let coefs = [0.7f32, -1.3, 2.25, -0.4];
    for &n in &SIZES {
        for terms in 1..=4usize {
            // dtype of term i from the bits of `mix`
            for mix in 0..(1usize << terms) {
                let dtypes: Vec<DType> = (0..terms)
                    .map(|i| {
                        if mix >> i & 1 == 1 {
                            DType::BF16
                        } else {
                            DType::F32
                        }
                    })
                    .collect();
                let xs: Vec<_> = dtypes
                    .iter()
                    .map(|&d| {
                        b.upload(&rng.vec(n, -2.0, 2.0), Shape::new(&[n]), d)
                            .unwrap()
                    })
                    .collect();
                // The reference uses the values as stored (bf16-rounded inputs).
                let stored: Vec<Vec<f32>> = xs.iter().map(|t| b.download(t).unwrap()).collect();
                let want: Vec<f64> = (0..n)
                    .map(|i| {
                        (0..terms)
                            .map(|t| coefs[t] as f64 * stored[t][i] as f64)
                            .sum()
                    })
                    .collect();
                let scale: Vec<f64> = (0..n)
                    .map(|i| {
                        (0..terms)
                            .map(|t| (coefs[t] * stored[t][i]).abs() as f64)
                            .sum()
                    })
                    .collect();
                let args: Vec<(f32, &_)> = (0..terms).map(|t| (coefs[t], &xs[t])).collect();
                let y = b.lincomb(&args).unwrap();
                assert_eq!(y.dtype(), dtypes[0], "output dtype is the first term's");
                let got = b.download(&y).unwrap();
                let what = format!("lincomb n={n} dtypes={dtypes:?}");
                // Relative to the magnitude of the terms: a sum that cancels
                // keeps the absolute rounding error of its terms.
                let rtol = if dtypes[0] == DType::F32 { 1e-5 } else { 1e-2 };
                for i in 0..n {
                    assert!(got[i].is_finite(), "{what}: element {i} is {}", got[i]);
                    let err = (got[i] as f64 - want[i]).abs();
                    assert!(
                        err <= rtol * scale[i].max(1e-30),
                        "{what}: element {i}: got {}, want {} (|err| {err:.3e}, terms {:.3e})",
                        got[i],
                        want[i],
                        scale[i]
                    );
                }
            }
        }
    }
}

#[test]
fn lincomb_rejects_bad_arguments() {
    let b = backend();
    let x = b.zeros(Shape::new(&[5]), DType::F32).unwrap();
    let y = b.zeros(Shape::new(&[6]), DType::F32).unwrap();
    assert!(b.lincomb(&[]).is_err(), "no terms");
    assert!(b.lincomb(&[(1.0, &x); 5]).is_err(), "five terms");
    let err = b.lincomb(&[(1.0, &x), (1.0, &y)]).unwrap_err();
    assert!(format!("{err:#}").contains("term 1"), "{err:#}");
}

#[test]
fn philox_uniforms_are_bit_identical_to_the_cpu() {
    let dev = device();
    let (seed, first, count) = (0xDEAD_BEEF_1234_5678u64, (1u64 << 32) - 5, 1001usize);
    let wb = poisoned::<u32>(&dev, 4 * count);
    let ub = poisoned::<f32>(&dev, 4 * count);
    run(
        &dev,
        Kernel::SelftestPhilox,
        LaunchConfig::linear(count.div_ceil(128) as u32, 128),
        KernelArgs::new()
            .buffer(&wb)
            .buffer(&ub)
            .u64(seed)
            .u64(first)
            .i32(count as i32),
    );
    let words: Vec<u32> = download(&dev, &wb, 4 * count);
    let uniforms: Vec<f32> = download(&dev, &ub, 4 * count);
    for b in 0..count {
        let block = first + b as u64;
        let r = philox::philox4x32_10(
            [block as u32, (block >> 32) as u32, 0, 0],
            [seed as u32, (seed >> 32) as u32],
        );
        for j in 0..4 {
            assert_eq!(words[4 * b + j], r[j], "block {block} word {j}");
            assert_eq!(
                uniforms[4 * b + j].to_bits(),
                philox::uniform(r[j]).to_bits(),
                "block {block} uniform {j}"
            );
        }
    }
}

#[test]
fn randn_matches_the_cpu_backend() {
    let b = backend();
    let cpu = CpuBackend::new();
    for (&n, (seed, offset)) in
        SIZES
            .iter()
            .zip([(1u64, 0u64), (2, 3), (3, 5), (7, 1), (42, 4), (9, 1 << 33)])
    {
        let shape = Shape::new(&[n]);
        let want: Vec<f64> = cpu
            .download(&cpu.randn(shape, DType::F32, seed, offset).unwrap())
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let got = b
            .download(&b.randn(shape, DType::F32, seed, offset).unwrap())
            .unwrap();
        assert_close(
            &format!("randn f32 n={n} offset={offset}"),
            &got,
            &want,
            1e-5,
            1e-6,
        );
        let got = b
            .download(&b.randn(shape, DType::BF16, seed, offset).unwrap())
            .unwrap();
        assert_close(
            &format!("randn bf16 n={n} offset={offset}"),
            &got,
            &want,
            1e-2,
            1e-6,
        );
    }
}
