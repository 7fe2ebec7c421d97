//! The SegDiff network: its output shape at odd sizes for both conditionings,
//! its parameter count for SegDiff's published MoNuSeg setting against the
//! count of the reference architecture (improved-diffusion's UNetModel with
//! SegDiff's RRDBNet, counted layer by layer below as PyTorch counts them),
//! finite-difference gradients through the RRDB blocks on the CPU, and the
//! multiply-add count (the bench's FLOP figure) against a hand count.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::grad_check;
use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::Backend;
use voxdiff::model::segdiff::rrdb::{DenseBlock, Rrdb};
use voxdiff::model::{Conditioning, SegDiffNet, SegDiffNetConfig};
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::tensor::{DType, Shape};

fn tiny(conditioning: Conditioning) -> SegDiffNetConfig {
    SegDiffNetConfig {
        conditioning,
        image_channels: 3,
        channels: 8,
        channel_mult: vec![1, 2, 2],
        num_res_blocks: 1,
        heads: 2,
        attention_ds: vec![2, 4],
        rrdb_blocks: 1,
        rrdb_features: 8,
        rrdb_growth: 4,
        norm_groups: 4,
        scale_shift_norm: conditioning == Conditioning::Concat,
        dropout: 0.0,
    }
}

#[test]
fn the_output_is_one_channel_at_the_input_size_for_odd_sizes() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let mut rng = Rng::new(3);
    for cond in [Conditioning::Rrdb, Conditioning::Concat] {
        let mut ps = ParamStore::new(7);
        let net = SegDiffNet::new(&mut ParamBuilder::new(&mut ps, dev), tiny(cond)).unwrap();
        for (h, w) in [(13, 11), (9, 16), (5, 7)] {
            let mut g = Graph::inference(dev);
            let img = Shape::ndhwc(2, 1, h, w, 3);
            let x = Shape::ndhwc(2, 1, h, w, 1);
            let img = g.constant(
                dev.upload(&rng.vec(img.numel(), -1.0, 1.0), img, DType::F32)
                    .unwrap(),
            );
            let x_t = g.constant(
                dev.upload(&rng.vec(x.numel(), -1.0, 1.0), x, DType::F32)
                    .unwrap(),
            );
            let c = net.condition(&mut g, &ps, &img).unwrap();
            let eps = net.forward(&mut g, &ps, &x_t, &c, &[3.0, 70.0]).unwrap();
            assert_eq!(eps.shape(), x, "{cond:?} at {h}×{w}");
            // The output convolution starts at zero.
            assert!(dev.download(&eps.t).unwrap().iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn the_zero_initialised_output_conv_has_a_gradient_at_the_first_step() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let mut ps = ParamStore::new(1);
    let net = SegDiffNet::new(
        &mut ParamBuilder::new(&mut ps, dev),
        tiny(Conditioning::Rrdb),
    )
    .unwrap();
    let mut rng = Rng::new(5);
    let mut g = Graph::train(dev);
    let img = Shape::ndhwc(1, 1, 8, 8, 3);
    let x = Shape::ndhwc(1, 1, 8, 8, 1);
    let img = g.constant(
        dev.upload(&rng.vec(img.numel(), -1.0, 1.0), img, DType::F32)
            .unwrap(),
    );
    let x_t = g.constant(
        dev.upload(&rng.vec(x.numel(), -1.0, 1.0), x, DType::F32)
            .unwrap(),
    );
    let target = g.constant(
        dev.upload(&rng.vec(x.numel(), -1.0, 1.0), x, DType::F32)
            .unwrap(),
    );
    let c = net.condition(&mut g, &ps, &img).unwrap();
    let eps = net.forward(&mut g, &ps, &x_t, &c, &[10.0]).unwrap();
    let l = g.mse(&eps, &target).unwrap();
    let grads = g.backward(&l, ps.len()).unwrap();
    // With the zero-initialised output convolution only it (and nothing
    // behind it) has a gradient at the first step: the out conv's weight.
    let out_w = ps.find("out.w").unwrap();
    let gw = dev
        .download(grads.by_param[out_w.0].as_ref().unwrap())
        .unwrap();
    assert!(gw.iter().any(|&v| v != 0.0));
}

/// Parameters of PyTorch layers.
fn conv(k: usize, cin: usize, cout: usize) -> usize {
    k * k * cin * cout + cout
}
fn gn(c: usize) -> usize {
    2 * c
}
fn lin(i: usize, o: usize) -> usize {
    i * o + o
}

/// improved-diffusion's ResBlock (no scale-shift norm, 1×1 skip).
fn res_block(cin: usize, cout: usize, emb: usize) -> usize {
    gn(cin)
        + conv(3, cin, cout)
        + lin(emb, cout)
        + gn(cout)
        + conv(3, cout, cout)
        + if cin == cout { 0 } else { conv(1, cin, cout) }
}
/// AttentionBlock: norm, qkv (conv1d C → 3C), proj_out (conv1d C → C).
fn attention(c: usize) -> usize {
    gn(c) + conv(1, c, 3 * c) + conv(1, c, c)
}
/// RRDBNet(in_nc, out_nc, nf, nb, gc).
fn rrdb_net(in_nc: usize, out_nc: usize, nf: usize, nb: usize, gc: usize) -> usize {
    let rdb: usize = (0..5)
        .map(|i| conv(3, nf + i * gc, if i < 4 { gc } else { nf }))
        .sum();
    conv(3, in_nc, nf) + nb * 3 * rdb + 2 * conv(3, nf, nf) + conv(3, nf, out_nc)
}
/// UNetModel(in_channels = 1, model_channels, out_channels = 1, …) as
/// SegDiff builds it, walking the reference's constructor.
fn reference_count(c: usize, mult: &[usize], nres: usize, attn_ds: &[usize], rrdb: usize) -> usize {
    let emb = 4 * c;
    let mut n = lin(c, emb) + lin(emb, emb) + rrdb_net(3, c, 64, rrdb, 32) + conv(3, 1, c);
    let mut chans = vec![c];
    let (mut ch, mut ds) = (c, 1);
    for (level, &m) in mult.iter().enumerate() {
        for _ in 0..nres {
            n += res_block(ch, m * c, emb);
            ch = m * c;
            if attn_ds.contains(&ds) {
                n += attention(ch);
            }
            chans.push(ch);
        }
        if level + 1 != mult.len() {
            n += conv(3, ch, ch);
            chans.push(ch);
            ds *= 2;
        }
    }
    n += 2 * res_block(ch, ch, emb) + attention(ch);
    for (level, &m) in mult.iter().enumerate().rev() {
        for i in 0..=nres {
            n += res_block(ch + chans.pop().unwrap(), m * c, emb);
            ch = m * c;
            if attn_ds.contains(&ds) {
                n += attention(ch);
            }
            if level > 0 && i == nres {
                n += conv(3, ch, ch);
                ds /= 2;
            }
        }
    }
    n + gn(ch) + conv(3, c, 1)
}

#[test]
fn the_published_monuseg_network_has_the_reference_parameter_count() {
    let cfg = SegDiffNetConfig::monuseg();
    let want = reference_count(128, &[1, 1, 1, 2, 2, 4, 4], 3, &[16, 32], 12);
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let mut ps = ParamStore::new(0);
    SegDiffNet::new(&mut ParamBuilder::new(&mut ps, dev), cfg).unwrap();
    assert_eq!(ps.count(), want);
    println!("SegDiff MoNuSeg network: {} parameters", ps.count());
}

/// x → block(x) with the block's parameters fixed (frozen, seed 9), so the
/// finite differences probe the input gradient through the dense
/// concatenations, the LeakyReLUs and the scaled residuals.
#[test]
fn the_rrdb_blocks_input_gradients_match_finite_differences() {
    let (nf, gc) = (4, 3);
    let x = Shape::ndhwc(1, 1, 5, 4, nf);
    let inputs = vec![(x, Rng::new(11).vec(x.numel(), -1.0, 1.0))];
    grad_check(
        "dense block",
        &inputs,
        |g, v| {
            let dev: &dyn Backend = g.dev;
            let mut ps = ParamStore::new(9);
            let b = DenseBlock::new(&mut ParamBuilder::new(&mut ps, dev), nf, gc)?;
            ps.freeze("");
            b.forward(g, &ps, &v[0])
        },
        30,
        1e-2,
        2e-3,
        2e-4,
    );
    grad_check(
        "RRDB",
        &inputs,
        |g, v| {
            let dev: &dyn Backend = g.dev;
            let mut ps = ParamStore::new(9);
            let b = Rrdb::new(&mut ParamBuilder::new(&mut ps, dev), nf, gc)?;
            ps.freeze("");
            b.forward(g, &ps, &v[0])
        },
        30,
        1e-2,
        2e-3,
        2e-4,
    );
}

/// The multiply-adds `SegDiffNet::macs` walks from the built layers, against
/// a count by hand of a two-level network at 8×8 (4×4 at level 1): C = 8,
/// channel_mult [1, 2], one residual block, attention at factor 2, an RRDB
/// block with nf = 8, gc = 4. A 3×3 convolution cin → cout at n pixels is
/// 9·cin·cout·n, a 1×1 one cin·cout·n, a linear map in·out.
#[test]
fn the_multiply_add_count_matches_a_hand_count() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let cfg = SegDiffNetConfig {
        channel_mult: vec![1, 2],
        attention_ds: vec![2],
        ..tiny(Conditioning::Rrdb)
    };
    let mut ps = ParamStore::new(7);
    let net = SegDiffNet::new(&mut ParamBuilder::new(&mut ps, dev), cfg).unwrap();
    let m = net.macs(8, 8);
    let (p0, p1) = (64u64, 16u64); // pixels at level 0 and 1
    let res = |cin: u64, cout: u64, n: u64| {
        9 * cin * cout * n
            + 32 * cout
            + 9 * cout * cout * n
            + if cin != cout { cin * cout * n } else { 0 }
    };
    // qkv 16→48 and projection 16→16 per pixel; scores and values T²·C.
    let attn16 = 16 * 48 * p1 + 16 * 16 * p1 + 2 * p1 * p1 * 16;
    let time = 8 * 32 + 32 * 32;
    let input = 9 * 1 * 8 * p0;
    let encoder = res(8, 8, p0) + 9 * 8 * 8 * p1 + res(8, 16, p1) + attn16;
    let middle = res(16, 16, p1) + attn16 + res(16, 16, p1);
    let decoder = res(16 + 16, 16, p1) + attn16 // skip: the level-1 block
        + res(16 + 8, 16, p1) + attn16 // skip: the downsampled map
        + 9 * 16 * 16 * p0 // nearest ×2, then a convolution at 8×8
        + res(16 + 8, 8, p0) // skip: the level-0 block
        + res(8 + 8, 8, p0); // skip: F's output
    let output = 9 * 8 * 1 * p0;
    assert_eq!(
        m.denoise,
        time + input + encoder + middle + decoder + output
    );
    // G: conv_first 3→8; per dense block five convolutions on 8, 12, 16, 20,
    // 24 channels to 4, 4, 4, 4, 8; three dense blocks; trunk, hr and last 8→8.
    let dense = 9 * p0 * (8 * 4 + 12 * 4 + 16 * 4 + 20 * 4 + 24 * 8);
    assert_eq!(m.condition, 9 * 3 * 8 * p0 + 3 * dense + 3 * 9 * 8 * 8 * p0);
    assert_eq!(m.no_data_grad, 8 * 32 + input + 9 * 3 * 8 * p0);
    // The concatenation variant has no G; F reads the mask and the image.
    let mut ps = ParamStore::new(7);
    let cat = SegDiffNetConfig {
        channel_mult: vec![1, 2],
        attention_ds: vec![2],
        scale_shift_norm: false,
        ..tiny(Conditioning::Concat)
    };
    let net = SegDiffNet::new(&mut ParamBuilder::new(&mut ps, dev), cat).unwrap();
    let c = net.macs(8, 8);
    assert_eq!(c.condition, 0);
    assert_eq!(c.denoise, m.denoise + 9 * 3 * 8 * p0);
}
