//! The pretraining backbone (model::fpn3d): vox2vec's parameter count, the
//! pyramid shapes of the paper's patch, the gradients of a one-scale
//! configuration against finite differences, and one forward of a small
//! configuration on every backend against the CPU.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::{cpu, Rng};
use every_backend::subjects;
use voxdiff::autograd::Graph;
use voxdiff::backend::prelude::*;
use voxdiff::model::{apply_running, Fpn3d, FpnConfig, NormKind, NormMode};
use voxdiff::nn::attention::{AttentionImpl, ChannelKind};
use voxdiff::nn::{ParamBuilder, ParamId, ParamStore};
use voxdiff::tensor::{DType, Shape};

fn build(b: &dyn Backend, cfg: FpnConfig, seed: u64) -> (Fpn3d, ParamStore) {
    let mut ps = ParamStore::new(seed);
    let net = Fpn3d::new(&mut ParamBuilder::new(&mut ps, b), cfg).unwrap();
    (net, ps)
}

/// The vox2vec count, term by term (in = 1, c_i = 16·2^i, i < 5 below the
/// bottom's 512): 3×3×3 convolutions of the 2×2 ResBlocks of each level
/// and the bottom's 2 (bias-free), their batch norms (γ, β), the 1×1×1
/// down, up and skip convolutions (with bias), and the first convolution.
fn vox2vec_count_by_hand() -> usize {
    let cs: Vec<usize> = (0..5).map(|i| 16 << i).collect();
    let bottom = 512;
    let res = |c: usize| 2 * 27 * c * c + 2 * 2 * c; // two convs, two norms
    let levels: usize = cs
        .iter()
        .map(|&c| 4 * res(c) + (c * 2 * c + 2 * c) + (2 * c * c + c) + (c * c + c))
        .sum();
    levels + 2 * res(bottom) + (27 * 16 + 16)
}

#[test]
fn vox2vec_parameter_count_is_47_62_million() {
    let b = cpu();
    let (_, ps) = build(&b, FpnConfig::vox2vec(1), 0);
    // Trainable parameters (batch norm's running statistics are state).
    let trainable: usize = ps.trainable().map(|(_, e)| e.t.numel()).sum();
    assert_eq!(trainable, 47_618_432);
    assert_eq!(trainable, vox2vec_count_by_hand());
    assert!((trainable as f64 / 1e6 - 47.62).abs() < 0.005);
    // Running mean and variance: 2 per channel of each of the 44 norms.
    let norm_channels: usize = (0..5).map(|i| 8 * (16usize << i)).sum::<usize>() + 4 * 512;
    assert_eq!(ps.count() - trainable, 2 * norm_channels);

    // k coordinate channels widen only the first convolution.
    let (_, ps3) = build(&b, FpnConfig::vox2vec(4), 0);
    assert_eq!(ps3.count() - ps.count(), 3 * 27 * 16);

    // The pretraining additions: time MLP, per-block scale and shift,
    // position attention on levels 0–4 (both sides), channel attention γ.
    let (_, pre) = build(&b, FpnConfig::pretrain(0), 0);
    let e = 64;
    let blocks_c: usize = (0..5).map(|i| 4 * (16usize << i)).sum::<usize>() + 2 * 512;
    let time = (16 * e + e) + (e * e + e) + blocks_c * 2 * (e + 1);
    let attn: usize = (0..5)
        .map(|i| {
            let c = 16usize << i;
            let ck = c / 8;
            2 * (2 * (c * ck + ck) + (c * c + c) + 1)
        })
        .sum::<usize>()
        + 1;
    assert_eq!(pre.count() - ps.count(), time + attn);
    let pre_trainable: usize = pre.trainable().map(|(_, e)| e.t.numel()).sum();
    assert_eq!(pre_trainable, 48_234_211);
}

#[test]
fn pyramid_of_the_paper_patch() {
    // The paper's patch 128×128×32 (x, y, z) is NDHWC D = 32 (z, the slice
    // axis), H = W = 128.
    let cfg = FpnConfig::vox2vec(1);
    let want: Vec<[usize; 4]> = vec![
        [32, 128, 128, 16],
        [16, 64, 64, 32],
        [8, 32, 32, 64],
        [4, 16, 16, 128],
        [2, 8, 8, 256],
        [1, 4, 4, 512],
    ];
    assert_eq!(cfg.pyramid_shapes([32, 128, 128]), want);

    // A real forward at the paper's patch and scales, at base 2 (the
    // channels scale with the base; the extents are the network's).
    let b = cpu();
    let narrow = FpnConfig {
        base_channels: 2,
        ..FpnConfig::vox2vec(1)
    };
    let (net, mut ps) = build(&b, narrow.clone(), 1);
    let x = b
        .randn(Shape::ndhwc(1, 32, 128, 128, 1), DType::F32, 2, 0)
        .unwrap();
    let mut g = Graph::inference(&b);
    let x = g.constant(x);
    let out = net.forward(&mut g, &ps, &x, None, NormMode::Train).unwrap();
    let got: Vec<[usize; 4]> = out
        .pyramid
        .iter()
        .map(|v| {
            let s = v.shape();
            assert_eq!(s.n(), 1);
            let [d, h, w] = s.spatial();
            [d, h, w, s.c()]
        })
        .collect();
    let want_narrow: Vec<[usize; 4]> = want.iter().map(|s| [s[0], s[1], s[2], s[3] / 8]).collect();
    assert_eq!(got, want_narrow);
    assert_eq!(got, narrow.pyramid_shapes([32, 128, 128]));
    // Every batch norm reported its statistics once; folding them in moves
    // the running means off zero.
    assert_eq!(out.running.len(), 44);
    let before = ps.get(out.running[0].running_mean).clone();
    apply_running(&b, &mut ps, &out.running).unwrap();
    let after = b.download(ps.get(out.running[0].running_mean)).unwrap();
    assert_ne!(b.download(&before).unwrap(), after);
}

#[test]
fn odd_extents_pool_with_ceil_mode() {
    let b = cpu();
    let cfg = FpnConfig {
        base_channels: 2,
        num_scales: 4,
        norm: NormKind::Instance,
        ..FpnConfig::vox2vec(2)
    };
    let (net, ps) = build(&b, cfg.clone(), 1);
    let x = b
        .randn(Shape::ndhwc(2, 3, 9, 5, 2), DType::F32, 3, 0)
        .unwrap();
    let mut g = Graph::inference(&b);
    let x = g.constant(x);
    let out = net.forward(&mut g, &ps, &x, None, NormMode::Eval).unwrap();
    let shapes = cfg.pyramid_shapes([3, 9, 5]);
    assert_eq!(shapes[3], [1, 2, 1, 16]);
    for (v, s) in out.pyramid.iter().zip(&shapes) {
        assert_eq!(v.shape(), Shape::ndhwc(2, s[0], s[1], s[2], s[3]));
    }
    assert!(out.running.is_empty());
}

/// Small configurations: base 16, 3 scales, time and both attentions.
fn tiny(norm: NormKind, pos: AttentionImpl, ch: ChannelKind) -> FpnConfig {
    FpnConfig {
        in_channels: 2,
        base_channels: 16,
        num_scales: 3,
        blocks: 2,
        norm,
        groups: 2,
        time: true,
        position_attention: Some(pos),
        channel_attention: Some(ch),
    }
}

/// Give the zero-initialised parameters (attention γ, time scale/shift)
/// random values, so every path carries signal.
fn wake(b: &dyn Backend, ps: &ParamStore, rng: &mut Rng) {
    for e in &ps.entries {
        if e.name.ends_with("gamma") || e.name.contains("time_s") {
            b.write(&e.t, &rng.vec(e.t.numel(), -0.5, 0.5)).unwrap();
        }
    }
}

/// Σ_levels mean((pyramid_i − target_i)²) in f64 on the host (the finite
/// differences need more than an f32 sum).
fn host_loss(
    b: &dyn Backend,
    net: &Fpn3d,
    ps: &ParamStore,
    x: &voxdiff::tensor::Tensor,
    targets: &[voxdiff::tensor::Tensor],
) -> f64 {
    let mut g = Graph::inference(b);
    let xv = g.constant(x.clone());
    let out = net
        .forward(&mut g, ps, &xv, Some(&[3.0, 250.0]), NormMode::Train)
        .unwrap();
    out.pyramid
        .iter()
        .zip(targets)
        .map(|(y, t)| {
            let (y, t) = (b.download(&y.t).unwrap(), b.download(t).unwrap());
            y.iter()
                .zip(&t)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>()
                / y.len() as f64
        })
        .sum()
}

/// Every trainable parameter's gradient (the same loss on the tape, f32)
/// against central differences of [`host_loss`] at 2 coordinates each.
fn check_gradients(cfg: FpnConfig) {
    let b = cpu();
    let (net, ps) = build(&b, cfg.clone(), 7);
    let mut rng = Rng::new(21);
    wake(&b, &ps, &mut rng);
    let dhw = [3, 6, 5];
    let x = b
        .upload(
            &rng.vec(2 * 3 * 6 * 5 * 2, -1.0, 1.0),
            Shape::ndhwc(2, dhw[0], dhw[1], dhw[2], 2),
            DType::F32,
        )
        .unwrap();
    let targets: Vec<_> = cfg
        .pyramid_shapes(dhw)
        .iter()
        .map(|s| {
            let sh = Shape::ndhwc(2, s[0], s[1], s[2], s[3]);
            b.upload(&rng.vec(sh.numel(), -1.0, 1.0), sh, DType::F32)
                .unwrap()
        })
        .collect();

    let mut g = Graph::train(&b);
    let xv = g.constant(x.clone());
    let out = net
        .forward(&mut g, &ps, &xv, Some(&[3.0, 250.0]), NormMode::Train)
        .unwrap();
    let mut total = None;
    for (y, t) in out.pyramid.iter().zip(&targets) {
        let t = g.constant(t.clone());
        let l = g.mse(y, &t).unwrap();
        total = Some(match total {
            Some(s) => g.add(&s, &l).unwrap(),
            None => l,
        });
    }
    let grads = g.backward(&total.unwrap(), ps.len()).unwrap();
    let mut checked = 0;
    for (i, e) in ps.entries.iter().enumerate() {
        if e.frozen {
            assert!(grads.by_param[i].is_none(), "{} is state", e.name);
            continue;
        }
        let Some(gt) = &grads.by_param[i] else {
            panic!("parameter {} received no gradient", e.name)
        };
        let analytic = b.download(gt).unwrap();
        let saved = b.download(&e.t).unwrap();
        common::fd_check(
            &e.name,
            &saved,
            &analytic,
            |v| {
                b.write(ps.get(ParamId(i)), v).unwrap();
                let r = host_loss(&b, &net, &ps, &x, &targets);
                b.write(ps.get(ParamId(i)), &saved).unwrap();
                r
            },
            2,
            1e-3,
            3e-2,
            1e-3,
        );
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} parameters checked");
}

// One scale: first convolution, time MLP, the bottom's two ResBlocks with
// their time scale-shift, and channel attention — everything but the
// pooling and the up/skip path. (Through max pools, switches of the
// arg-max inside the step make the whole-network differences unreliable;
// see docs/pretraining.md.)
#[test]
fn one_scale_gradients_with_batch_norm_and_channel_linear_attention() {
    check_gradients(FpnConfig {
        num_scales: 1,
        ..tiny(NormKind::Batch, AttentionImpl::Fused, ChannelKind::Linear)
    });
}

#[test]
fn one_scale_gradients_with_group_norm_and_cam() {
    check_gradients(FpnConfig {
        num_scales: 1,
        ..tiny(NormKind::Group, AttentionImpl::Composed, ChannelKind::Cam)
    });
}

#[test]
fn forward_on_every_backend_matches_the_cpu() {
    for (norm, ch) in [
        (NormKind::Batch, ChannelKind::Linear),
        (NormKind::Instance, ChannelKind::Cam),
    ] {
        let cfg = tiny(norm, AttentionImpl::Fused, ch);
        let shape = Shape::ndhwc(2, 3, 6, 5, 2);
        let data = Rng::new(4).vec(shape.numel(), -1.0, 1.0);
        let mut want: Option<Vec<Vec<f64>>> = None;
        for s in subjects() {
            let (net, ps) = build(s.dev(), cfg.clone(), 9);
            wake(s.dev(), &ps, &mut Rng::new(8));
            let (x, _) = s.act(&data, shape);
            let mut g = Graph::inference(s.dev());
            let x = g.constant(x);
            let out = net
                .forward(&mut g, &ps, &x, Some(&[3.0, 250.0]), NormMode::Train)
                .unwrap();
            match &want {
                None => {
                    want = Some(
                        out.pyramid
                            .iter()
                            .map(|y| {
                                let v = s.dev().download(&y.t).unwrap();
                                assert!(v.iter().all(|a| a.is_finite()));
                                v.iter().map(|&a| a as f64).collect()
                            })
                            .collect(),
                    )
                }
                Some(w) => {
                    for (i, (y, w)) in out.pyramid.iter().zip(w).enumerate() {
                        s.check(&format!("{norm:?} level {i}"), &y.t, w, 20.0);
                    }
                }
            }
        }
    }
}

/// The convolutions' multiply-adds of one forward at the paper's patch
/// (1×32×128×128, base 16, 6 scales, k = 1, position attention), counted by
/// hand per level: voxels V_i = 32·128·128 / 8^i (level 5: 1×4×4 = 16, the
/// extents 32, 128 halve exactly) and channels c_i = 16·2^i.
#[test]
fn conv_macs_match_a_hand_count_at_the_paper_patch() {
    let b = cpu();
    let (net, _) = build(&b, FpnConfig::pretrain(1), 0);
    let v = [524_288u64, 65_536, 8_192, 1_024, 128, 16];
    let c = [16u64, 32, 64, 128, 256, 512];
    // First conv 3×3×3, 2 → 16.
    let mut want = v[0] * 27 * 2 * 16;
    for i in 0..5 {
        let ck = c[i] / 8;
        // Two stacks (left, right) of 2 ResBlocks × 2 convs 3×3×3 c → c, each
        // followed by the attention's q, k (c → c/8) and v (c → c), 1×1×1.
        want += 2 * (4 * 27 * c[i] * c[i] + 2 * c[i] * ck + c[i] * c[i]) * v[i];
        // down (c → 2c) and up (2c → c) on level i + 1, skip (c → c) on level i.
        want += 2 * (2 * c[i] * c[i]) * v[i + 1] + c[i] * c[i] * v[i];
    }
    // The bottom: 2 ResBlocks × 2 convs at 512 channels (channel attention has no conv).
    want += 4 * 27 * 512 * 512 * v[5];
    assert_eq!(net.conv_macs([32, 128, 128]), want);
    assert_eq!(want, 58_116_276_224);
    // Without attention only the projections go.
    let (plain, _) = build(&b, FpnConfig::vox2vec(2), 0);
    let proj: u64 = (0..5)
        .map(|i| 2 * (2 * c[i] * (c[i] / 8) + c[i] * c[i]) * v[i])
        .sum();
    assert_eq!(plain.conv_macs([32, 128, 128]), want - proj);
}
