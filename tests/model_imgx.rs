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
