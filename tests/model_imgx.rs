//! The ImgX UNet: parameter counts of the paper's network.

use voxdiff::backend::cpu::CpuBackend;
use voxdiff::model::{ImgxUnet, TimeConditioning, UnetConfig};
use voxdiff::nn::{ParamBuilder, ParamStore};

fn count(tc: TimeConditioning, classes: usize) -> usize {
    let b = CpuBackend::new();
    let mut ps = ParamStore::new(0);
    ImgxUnet::new(
        &mut ParamBuilder::new(&mut ps, &b),
        UnetConfig::imgx(classes, tc),
    )
    .unwrap();
    ps.count()
}

#[test]
fn parameter_count_matches_the_paper() {
    // The reference network (time added before the norm) for K = 16: 6.80 M.
    let faithful = count(TimeConditioning::Faithful, 16);
    assert_eq!(faithful, 6_795_120);
    assert!((faithful as f64 / 1e6 - 6.80).abs() <= 0.01);
    // FiLM doubles each block's time projection: Σ_blocks (128·C + C) more.
    let film = count(TimeConditioning::Film, 16);
    let blocks_c: usize = [32, 32, 32, 32, 64, 64, 128, 128, 256].iter().sum();
    assert_eq!(film - faithful, blocks_c * (128 + 1));
    // The supervised baseline has no time input and one input channel.
    let base = count(TimeConditioning::None, 16);
    assert_eq!(faithful - base, blocks_c * (128 + 1) + 16 * 27 * 32);
}

#[test]
fn convolution_count_of_the_paper_step_matches_a_hand_count() {
    // The paper's network for 14 classes (15 input channels) on 32×128×128,
    // layer by layer: V voxels at full resolution, V/8ᵏ at level k.
    let b = CpuBackend::new();
    let mut ps = ParamStore::new(0);
    let net = ImgxUnet::new(
        &mut ParamBuilder::new(&mut ps, &b),
        UnetConfig::imgx(14, TimeConditioning::Film),
    )
    .unwrap();
    let v: u64 = 32 * 128 * 128;
    let k3 = |vox: u64, c: u64| vox * c * c * 27;
    let stem = v * 15 * 32 * 27 + 2 * k3(v, 32);
    // Encoder: a 2×2×2 stride-2 conv (8 taps at the output) and a block.
    let down = [(32, 32), (32, 64), (64, 128), (128, 256)]
        .iter()
        .enumerate()
        .map(|(k, &(cin, c))| {
            let out = v >> (3 * (k + 1));
            out * cin * c * 8 + 2 * k3(out, c)
        })
        .sum::<u64>();
    // Decoder: a transposed 2×2×2 conv (8 taps per input voxel) and a block.
    let up = [(256, 128), (128, 64), (64, 32), (32, 32)]
        .iter()
        .enumerate()
        .map(|(k, &(cin, c))| {
            let input = v >> (3 * (4 - k));
            input * cin * c * 8 + 2 * k3(input * 8, c)
        })
        .sum::<u64>();
    let head = v * 32 * 14;
    assert_eq!(net.conv_macs([32, 128, 128]), stem + down + up + head);
    assert_eq!(stem + down + up + head, 79_691_776_000);
}
