//! The compositions SegDiff adds, on every backend (the CPU, the gpu backend
//! with f32 and with bf16 activations): the clamp of a sampler's x̂₀
//! against its f64 reference, and the x̂₀ of an untrained network at
//! t = T − 1, which leaves the mask range by orders of magnitude unless
//! clamped (the defect of the first measured run, docs/segdiff.md).

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::Rng;
use every_backend::subjects;
use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::Backend;
use voxdiff::diffusion::gaussian::clamp;
use voxdiff::pipeline::segdiff_config::SegDiffConfig;
use voxdiff::pipeline::segdiff_model::SegDiffModel;
use voxdiff::tensor::{DType, Shape};

#[test]
fn clamp_matches_f64_on_every_backend() {
    for s in subjects() {
        let mut rng = Rng::new(11);
        let shape = Shape::ndhwc(2, 1, 5, 7, 3);
        let (x, xv) = s.rand_act(&mut rng, shape, -4.0, 4.0);
        for (lo, hi) in [(-1.0f32, 1.0f32), (0.0, 1.0), (-0.25, 2.5)] {
            let mut g = Graph::inference(s.dev());
            let xv_var = g.constant(x.clone());
            let y = clamp(&mut g, &xv_var, lo, hi).unwrap();
            let want: Vec<f64> = xv
                .iter()
                .map(|&v| (v as f64).clamp(lo as f64, hi as f64))
                .collect();
            s.check(&format!("clamp to [{lo}, {hi}]"), &y.t, &want, 1.0);
        }
    }
}

#[test]
fn an_untrained_networks_x0_at_the_last_step_leaves_the_mask_range_unless_clamped() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let o: Vec<String> = [
        "model.channels=8",
        "model.norm_groups=4",
        "model.channel_mult=[1,2]",
        "model.heads=2",
        "model.attention_ds=[2]",
        "model.rrdb_features=8",
        "model.rrdb_growth=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = SegDiffConfig::load(None, &o).unwrap();
    let model = SegDiffModel::new(dev, &cfg).unwrap();
    let mut rng = Rng::new(3);
    let shape = Shape::ndhwc(2, 1, 12, 12, 1);
    let mut g = Graph::inference(dev);
    let img = g.constant(
        dev.upload(
            &rng.vec(2 * 144 * 3, -1.0, 1.0),
            Shape::ndhwc(2, 1, 12, 12, 3),
            DType::F32,
        )
        .unwrap(),
    );
    let cond = model.net.condition(&mut g, &model.ps, &img).unwrap();
    let x = g.constant(dev.randn(shape, DType::F32, 5, 0).unwrap());
    let t = (cfg.diffusion.timesteps - 1) as f32;
    let raw = model.predict_x0(&mut g, &x, &cond, t, false).unwrap();
    let raw = dev.download(&raw.t).unwrap();
    let largest = raw.iter().fold(0f32, |m, v| m.max(v.abs()));
    // ε̂ = 0 (zero-initialised output): x̂₀ = x_T/√ᾱ_T, ≈ 150·x_T at T = 100.
    assert!(largest > 100.0, "unclamped |x̂₀| reaches {largest}");
    let clipped = model.predict_x0(&mut g, &x, &cond, t, true).unwrap();
    let clipped = dev.download(&clipped.t).unwrap();
    assert!(clipped.iter().all(|v| (-1.0..=1.0).contains(v)));
    for (c, r) in clipped.iter().zip(&raw) {
        assert!((c - r.clamp(-1.0, 1.0)).abs() <= 1e-6, "{c} vs {r}");
    }
}
