//! bf16 conversion on the device (the cast kernels, i.e. common.cuh's
//! f32_to_bf16 / bf16_to_f32) against the `half` crate: round to nearest even
//! including ties, overflow to infinity, subnormals, signed zeros, infinities;
//! NaN stays NaN (the device returns the canonical 0x7FFF, as cvt.rn.bf16.f32).

mod gpu_support;

use gpu_support::*;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

fn to_bf16_on_device(bits: &[u32]) -> Vec<u32> {
    let b = backend();
    let x: Vec<f32> = bits.iter().map(|&u| f32::from_bits(u)).collect();
    let xt = b.upload(&x, Shape::new(&[x.len()]), DType::F32).unwrap();
    let yt = b.cast(&xt, DType::BF16).unwrap();
    b.download(&yt)
        .unwrap()
        .iter()
        .map(|f| f.to_bits())
        .collect()
}

fn check(bits: &[u32]) {
    let got = to_bf16_on_device(bits);
    for (&u, &g) in bits.iter().zip(&got) {
        let x = f32::from_bits(u);
        let want = half::bf16::from_f32(x).to_f32();
        if x.is_nan() {
            assert!(f32::from_bits(g).is_nan(), "NaN {u:#010x} became {g:#010x}");
            if is_emu(&device()) {
                assert_eq!(g, 0x7FFF_0000, "NaN {u:#010x}: canonical NaN expected");
            }
        } else {
            assert_eq!(g, want.to_bits(), "f32 {u:#010x} ({x:e}) → bf16");
            assert_eq!(g & 0xFFFF, 0, "a bf16 widened to f32 has a zero low half");
        }
    }
}

#[test]
fn rounding_to_nearest_even_with_ties_and_specials() {
    let mut bits = vec![
        0x3F80_8000, // tie, lower neighbour even → down
        0x3F81_8000, // tie, upper neighbour even → up
        0x3F80_8001, // just above a tie → up
        0x3F80_7FFF, // just below a tie → down
        0xBF81_8000, // negative tie → away from zero to the even neighbour
        0x7F7F_FFFF, // max finite f32 rounds to +inf in bf16
        0x7F7F_7FFF, // rounds down to the max finite bf16
        0xFF7F_FFFF, // → -inf
        0x7F80_0000, // +inf
        0xFF80_0000, // -inf
        0x7FC0_0000, // quiet NaN
        0x7F80_0001, // signalling NaN (payload only in the low half)
        0xFFFF_FFFF, // negative NaN
        0x0000_0000, // +0
        0x8000_0000, // -0
        0x0000_0001, // smallest subnormal → +0
        0x0000_8000, // subnormal tie → even (0)
        0x0001_8000, // subnormal tie → even (2)
        0x007F_FFFF, // largest subnormal → rounds to the smallest normal
        0x0080_0000, // smallest normal
    ];
    // A sweep of random bit patterns (all exponents, both signs).
    let mut s = 0x1234_5678_9ABC_DEF0u64;
    for _ in 0..200_003 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        bits.push((s >> 32) as u32);
    }
    check(&bits);
}

#[test]
fn every_bf16_widens_exactly() {
    let dev = device();
    let b = backend();
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let buf = upload(&dev, &all);
    let t = Tensor::from_buffer(Shape::new(&[all.len()]), DType::BF16, buf);
    let y = b.cast(&t, DType::F32).unwrap();
    let got = b.download(&y).unwrap();
    for (&h, &g) in all.iter().zip(&got) {
        let want = half::bf16::from_bits(h).to_f32();
        if want.is_nan() {
            assert!(g.is_nan(), "bf16 {h:#06x}");
        } else {
            assert_eq!(g.to_bits(), want.to_bits(), "bf16 {h:#06x}");
        }
    }
}
