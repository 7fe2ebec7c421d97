//! Emulator self-tests of the warp level and the common.cuh wrappers: every
//! shuffle and vote variant, warp/block reductions, atomics across blocks,
//! the mma.sync m16n8k16 and ldmatrix (incl. .trans) fragment layouts, and
//! cp.async. Expectations follow the CUDA programming guide and the PTX ISA,
//! written here independently of kernels/emu/warp.cpp.

mod gpu_support;

use gpu_support::*;
use voxdiff::backend::gpu::device::{KernelArgs, LaunchConfig};
use voxdiff::backend::gpu::registry::Kernel;

const SHFL_OUTPUTS: usize = 17;

/// The source lane of a shuffle per the CUDA programming guide, or `lane`
/// itself when the source is out of the lane's segment (own value returned).
fn shfl_src(kind: &str, lane: usize, arg: i64, width: usize) -> usize {
    let base = lane & !(width - 1);
    match kind {
        "idx" => base + (arg as usize & (width - 1)),
        "up" => {
            if (lane - base) as i64 >= arg {
                lane - arg as usize
            } else {
                lane
            }
        }
        "down" => {
            if (lane - base) as i64 + arg < width as i64 {
                lane + arg as usize
            } else {
                lane
            }
        }
        "xor" => {
            let src = lane ^ arg as usize;
            if src >= base + width {
                lane
            } else {
                src
            }
        }
        _ => unreachable!(),
    }
}

#[test]
fn every_shuffle_and_vote_variant() {
    let dev = device();
    let mut x: Vec<i32> = (0..64).map(|t| (t * 13 % 29) as i32).collect();
    x[32 + 5] = 5000; // warp 1: one lane > 1000
    x[32 + 9] = -3; // warp 1: one negative lane
    let xb = upload(&dev, &x);
    let ob = poisoned::<i32>(&dev, 64 * SHFL_OUTPUTS);
    run(
        &dev,
        Kernel::SelftestShuffles,
        LaunchConfig::linear(1, 64),
        KernelArgs::new().buffer(&xb).buffer(&ob),
    );
    let out: Vec<i32> = download(&dev, &ob, 64 * SHFL_OUTPUTS);
    for t in 0..64usize {
        let (w, l) = (t / 32, t % 32);
        let xw = |lane: usize| x[w * 32 + lane];
        let warp = &x[w * 32..w * 32 + 32];
        let o = &out[t * SHFL_OUTPUTS..(t + 1) * SHFL_OUTPUTS];
        let want = [
            xw(shfl_src("idx", l, (l * 7 + 3) as i64, 32)),
            xw(shfl_src("idx", l, (l * 5 + 1) as i64, 8)),
            xw(shfl_src("up", l, 3, 32)),
            xw(shfl_src("up", l, 2, 8)),
            xw(shfl_src("down", l, 5, 32)),
            xw(shfl_src("down", l, 3, 16)),
            xw(shfl_src("xor", l, 6, 32)),
            xw(shfl_src("xor", l, 8, 8)),
            warp.iter()
                .enumerate()
                .fold(0u32, |b, (i, &v)| b | (((v & 1) as u32) << i)) as i32,
            warp.iter().any(|&v| v > 1000) as i32,
            warp.iter().all(|&v| v >= 0) as i32,
            warp.iter().fold(0u32, |s, &v| s.wrapping_add(v as u32)) as i32,
            if l < 16 { xw(15 - l) } else { xw(47 - l) },
            ((xw(shfl_src("down", l, 1, 32)) as f32) * 0.5).to_bits() as i32,
            (l ^ 1) as i32,
            xw(l ^ 1) * 2,
        ];
        for (k, &wv) in want.iter().enumerate() {
            assert_eq!(o[k], wv, "thread {t}: output {k}");
        }
        if is_emu(&dev) {
            let poison_or_own = if l < 16 { -1 } else { x[t] };
            assert_eq!(
                o[16], poison_or_own,
                "thread {t}: a lane outside the mask reads as poison"
            );
        }
    }
}

#[test]
fn warp_and_block_reductions() {
    let dev = device();
    let (blocks, threads) = (4usize, 96usize);
    let x: Vec<f32> = (0..blocks * threads)
        .map(|i| ((i * 31) % 19) as f32 - 9.0)
        .collect();
    let xb = upload(&dev, &x);
    let yb = poisoned::<f32>(&dev, 2 * blocks);
    run(
        &dev,
        Kernel::SelftestBlockSum,
        LaunchConfig::linear(blocks as u32, threads as u32),
        KernelArgs::new().buffer(&xb).buffer(&yb),
    );
    let y: Vec<f32> = download(&dev, &yb, 2 * blocks);
    for b in 0..blocks {
        let seg = &x[b * threads..(b + 1) * threads];
        let sum: f32 = seg.iter().sum();
        let max_sum: f32 = seg
            .chunks(32)
            .map(|w| w.iter().cloned().fold(f32::MIN, f32::max))
            .sum();
        assert_eq!(y[2 * b], sum, "block {b}: block sum");
        assert_eq!(y[2 * b + 1], max_sum, "block {b}: sum of warp maxima");
    }
}

#[test]
fn atomics_across_blocks() {
    let dev = device();
    let n = 1000usize;
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let xb = upload(&dev, &x);
    let fb = upload(&dev, &[0f32]);
    let cells0: [i32; 8] = [0, 0, 0, i32::MIN, i32::MAX, 0, -1, 0];
    let cb = upload(&dev, &cells0);
    run(
        &dev,
        Kernel::SelftestAtomics,
        LaunchConfig::linear(n.div_ceil(128) as u32, 128),
        KernelArgs::new()
            .buffer(&xb)
            .buffer(&fb)
            .buffer(&cb)
            .i32(n as i32),
    );
    let f: Vec<f32> = download(&dev, &fb, 1);
    let c: Vec<i32> = download(&dev, &cb, 8);
    let h = |i: usize| ((i * 7919) % 1000) as i32 - 500;
    assert_eq!(
        f[0],
        x.iter().sum::<f32>(),
        "float atomicAdd (exact: small integers)"
    );
    assert_eq!(c[1] as i64, (0..n as i64).sum::<i64>(), "int atomicAdd");
    assert_eq!(c[2], n as i32, "unsigned atomicAdd");
    assert_eq!(c[3], (0..n).map(h).max().unwrap(), "atomicMax");
    assert_eq!(c[4], (0..n).map(h).min().unwrap(), "atomicMin");
    assert_eq!(c[5], n as i32, "atomicCAS loop");
    assert!((0..n as i32).contains(&c[6]), "atomicExch left {}", c[6]);
    assert_eq!(c[7], -1, "atomicOr of every bit");
}

/// Values k/8 for small integers k: exact in bf16, products and sums exact in
/// f32, so D must equal A·B + C bit for bit.
fn eighths(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) * 2654435761usize >> 7) % 33) as f32 / 8.0 - 2.0)
        .collect()
}

fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect()
}

#[test]
fn mma_fragments_give_the_matrix_product() {
    let dev = device();
    let a = eighths(16 * 16, 1);
    let b = eighths(16 * 8, 2); // K×N row-major
    let c = eighths(16 * 8, 3);
    let mut want = vec![0f32; 16 * 8];
    for i in 0..16 {
        for j in 0..8 {
            let mut acc = c[i * 8 + j] as f64;
            for k in 0..16 {
                acc += a[i * 16 + k] as f64 * b[k * 8 + j] as f64;
            }
            want[i * 8 + j] = acc as f32;
        }
    }
    let mut bt = vec![0f32; 8 * 16]; // N×K row-major
    for k in 0..16 {
        for n in 0..8 {
            bt[n * 16 + k] = b[k * 8 + n];
        }
    }
    for (mode, b_store) in [(0, &b), (1, &b), (2, &bt)] {
        let ab = upload(&dev, &bf16_bits(&a));
        let bb = upload(&dev, &bf16_bits(b_store));
        let cb = upload(&dev, &c);
        let db = poisoned::<f32>(&dev, 16 * 8);
        run(
            &dev,
            Kernel::SelftestMma,
            LaunchConfig::linear(1, 32),
            KernelArgs::new()
                .buffer(&ab)
                .buffer(&bb)
                .buffer(&cb)
                .buffer(&db)
                .i32(mode),
        );
        let d: Vec<f32> = download(&dev, &db, 16 * 8);
        for (e, (&got, &w)) in d.iter().zip(&want).enumerate() {
            assert_eq!(got, w, "mode {mode}: D[{}][{}]", e / 8, e % 8);
        }
    }
}

#[test]
fn ldmatrix_layouts_follow_the_ptx_isa() {
    let dev = device();
    let m: Vec<u16> = (0..256u16).collect(); // matrix q, row r, col c = 64q + 8r + c
    let at = |q: usize, r: usize, c: usize| m[q * 64 + r * 8 + c] as u32;
    for trans in [0, 1] {
        let mb = upload(&dev, &m);
        let ob = poisoned::<u32>(&dev, 3 * 32 * 4);
        run(
            &dev,
            Kernel::SelftestLdmatrix,
            LaunchConfig::linear(1, 32),
            KernelArgs::new().buffer(&mb).buffer(&ob).i32(trans),
        );
        let out: Vec<u32> = download(&dev, &ob, 3 * 32 * 4);
        for (v, num) in [(0usize, 1usize), (1, 2), (2, 4)] {
            for l in 0..32 {
                for q in 0..4 {
                    let (row, col) = (l / 4, 2 * (l % 4));
                    let want = if q >= num {
                        0
                    } else if trans == 0 {
                        at(q, row, col) | at(q, row, col + 1) << 16
                    } else {
                        at(q, col, row) | at(q, col + 1, row) << 16
                    };
                    let got = out[(v * 32 + l) * 4 + q];
                    assert_eq!(got, want, "x{num} trans={trans} lane {l} register {q}");
                }
            }
        }
    }
}

#[test]
fn cp_async_copies_and_zero_fills() {
    let dev = device();
    let n = 203usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
    let xb = upload(&dev, &x);
    let yb = poisoned::<f32>(&dev, 260);
    run(
        &dev,
        Kernel::SelftestCpAsync,
        LaunchConfig::linear(1, 64),
        KernelArgs::new().buffer(&xb).buffer(&yb).i32(n as i32),
    );
    let y: Vec<f32> = download(&dev, &yb, 260);
    for e in 0..256 {
        let want = if e < 200 { x[e] } else { 0.0 };
        assert_eq!(y[e], want, "16-byte chunk element {e}");
    }
    assert_eq!(
        &y[256..260],
        &[x[200], x[201], x[202], 0.0],
        "4-byte tail copies"
    );
}
