//! The step arena (src/backend/gpu/step_arena.rs) on the emulator: after the
//! recorded first step, steps make no device allocation; from the third on
//! the captured launch list is replayed (one submission per step); losses and
//! updated weights are bitwise those of the eager path; a shape change, a
//! buffer held across steps and a departure inside a step take the stated
//! fallbacks.

mod common;

use std::sync::Arc;
use voxdiff::autograd::Graph;
use voxdiff::backend::gpu::device::Device;
use voxdiff::backend::gpu::emu::Emu;
use voxdiff::backend::gpu::step_arena::{StepArena, StepMode};
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::diffusion::seg::DiffusionConfig;
use voxdiff::pipeline::seg_model::{ModelConfig, SegModel};
use voxdiff::pipeline::train_loop::StepKey;
use voxdiff::tensor::{DType, Shape, Tensor};
use voxdiff::train::Optimizer;

const CLASSES: usize = 3;

fn model(b: &dyn Backend) -> SegModel {
    let cfg = ModelConfig {
        channels: vec![8, 16],
        init_seed: 3,
        ..ModelConfig::default()
    };
    SegModel::new(b, &cfg, &DiffusionConfig::default(), CLASSES).unwrap()
}

/// One training step on a seeded random batch of `dims`, as the training
/// loop runs it (begin_step, loss, backward, AdamW); returns the loss bits
/// and the loss tensor.
fn step(
    b: &dyn Backend,
    m: &SegModel,
    opt: &mut Optimizer,
    dims: [usize; 3],
    n: u64,
) -> (u32, Tensor) {
    voxdiff::backend::gpu::begin_step(b).unwrap();
    let voxels: usize = dims.iter().product();
    let mut rng = common::Rng::new(100 + n);
    let image = rng.vec(voxels, 0.0, 1.0);
    let labels: Vec<f32> = (0..voxels)
        .map(|i| ((i as u64 * 7 + n) % CLASSES as u64) as f32)
        .collect();
    let sh = Shape::ndhwc(1, dims[0], dims[1], dims[2], 1);
    let image = b.upload(&image, sh, b.act_dtype()).unwrap();
    let labels = b.upload(&labels, sh, DType::F32).unwrap();
    let mask = b.one_hot(&labels, CLASSES, 1.0, 0.0).unwrap();
    let mut g = Graph::train(b);
    let key = StepKey { seed: 11, step: n };
    let loss = m
        .loss(&mut g, &image, &mask, m.draw_t(key), key.seed, key.step)
        .unwrap();
    let grads = g.backward(&loss, m.ps.len()).unwrap();
    opt.update(b, &m.ps, &grads, 1e-3).unwrap();
    (b.download(&loss.t).unwrap()[0].to_bits(), loss.t)
}

fn weights(b: &dyn Backend, m: &SegModel) -> Vec<Vec<u32>> {
    m.ps.entries
        .iter()
        .map(|e| {
            b.download(&e.t)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

/// Runs `shapes` (one step each) on plain Emu and on Emu behind a step arena.
fn both(act: DType, shapes: &[[usize; 3]]) -> (Arc<StepArena>, Vec<u32>, Vec<u32>) {
    let eager = GpuBackend::with_act_dtype(Arc::new(Emu::new()), act);
    let arena = Arc::new(StepArena::new(Arc::new(Emu::new())));
    let served = GpuBackend::with_act_dtype(arena.clone(), act);
    let (me, ms) = (model(&eager), model(&served));
    let mut oe = Optimizer::new(&eager, &me.ps, Default::default()).unwrap();
    let mut os = Optimizer::new(&served, &ms.ps, Default::default()).unwrap();
    let (mut le, mut ls) = (Vec::new(), Vec::new());
    for (n, &dims) in shapes.iter().enumerate() {
        le.push(step(&eager, &me, &mut oe, dims, n as u64).0);
        ls.push(step(&served, &ms, &mut os, dims, n as u64).0);
    }
    assert_eq!(
        weights(&eager, &me),
        weights(&served, &ms),
        "{act:?}: weights after {} steps differ between the eager and the arena path",
        shapes.len()
    );
    arena.begin_step().unwrap(); // closes the last step's statistics
    (arena, le, ls)
}

#[test]
fn steady_state_steps_allocate_nothing_and_match_the_eager_path_bitwise() {
    for act in [DType::BF16, DType::F32] {
        let (arena, eager, served) = both(act, &[[6, 8, 8]; 5]);
        assert_eq!(eager, served, "{act:?}: losses differ");
        let h = arena.history();
        assert_eq!(h.len(), 5, "{h:?}");
        assert_eq!(h[0].mode, StepMode::Recorded);
        assert!(h[0].device_allocations > 100, "{act:?}: {h:?}");
        let plan = arena.plan().unwrap();
        assert_eq!(plan.escaping, 0, "{plan:?}");
        assert_eq!(h[1].mode, StepMode::Arena, "{act:?}: {h:?}");
        for s in &h[1..] {
            assert_eq!(s.device_allocations, 0, "{act:?}: {h:?}");
            assert_eq!(s.arena_allocations, h[0].device_allocations, "{h:?}");
            assert_eq!(s.ops, h[0].ops, "{h:?}");
        }
        for s in &h[2..] {
            assert_eq!(s.mode, StepMode::Replayed, "{act:?}: {h:?}");
            // The loss download submits the whole list; nothing is left for later.
            assert_eq!(s.submissions, 1, "{act:?}: {h:?}");
            // The step's seeds and time step differ, and are patched in.
            assert!(s.patched > 0 && s.patched < s.ops / 4, "{act:?}: {h:?}");
        }
        eprintln!("{act:?}: {h:?}");
        assert!(arena.notices().is_empty(), "{:?}", arena.notices());
    }
}

#[test]
fn a_shape_change_plans_the_step_again() {
    let shapes = [[6, 8, 8], [6, 8, 8], [4, 8, 8], [4, 8, 8]];
    let (arena, eager, served) = both(DType::BF16, &shapes);
    assert_eq!(eager, served);
    let modes: Vec<StepMode> = arena.history().iter().map(|s| s.mode).collect();
    use StepMode::*;
    assert_eq!(modes, [Recorded, Arena, Recorded, Arena]);
    let notices = arena.notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("shapes changed"), "{notices:?}");
    assert_eq!(arena.history()[3].device_allocations, 0);
}

#[test]
fn a_buffer_held_across_steps_is_not_overwritten() {
    let arena = Arc::new(StepArena::new(Arc::new(Emu::new())));
    let b = GpuBackend::new(arena.clone());
    let m = model(&b);
    let mut opt = Optimizer::new(&b, &m.ps, Default::default()).unwrap();
    let dims = [4, 8, 8];
    step(&b, &m, &mut opt, dims, 0);
    step(&b, &m, &mut opt, dims, 1);
    // The caller keeps step 2's loss while step 3 runs.
    let (_, kept) = step(&b, &m, &mut opt, dims, 2);
    let value = b.download(&kept).unwrap();
    step(&b, &m, &mut opt, dims, 3);
    assert_eq!(
        b.download(&kept).unwrap(),
        value,
        "a held buffer was overwritten"
    );
    let notices = arena.notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("still held"), "{notices:?}");
    // The new plan has a block of its own: the old buffer does not block it.
    step(&b, &m, &mut opt, dims, 4);
    arena.begin_step().unwrap();
    assert_eq!(b.download(&kept).unwrap(), value);
    let modes: Vec<StepMode> = arena.history().iter().map(|s| s.mode).collect();
    use StepMode::*;
    assert_eq!(modes, [Recorded, Arena, Replayed, Recorded, Arena]);
}

#[test]
fn a_departure_inside_a_step_is_an_error_and_the_next_step_plans_again() {
    let arena = Arc::new(StepArena::new(Arc::new(Emu::new())));
    let b = GpuBackend::new(arena.clone());
    let m = model(&b);
    let mut opt = Optimizer::new(&b, &m.ps, Default::default()).unwrap();
    let dims = [4, 8, 8];
    step(&b, &m, &mut opt, dims, 0);
    step(&b, &m, &mut opt, dims, 1);
    arena.begin_step().unwrap();
    // The planned step starts with the image upload; then the labels' upload.
    let sh = Shape::ndhwc(1, dims[0], dims[1], dims[2], 1);
    let image = b.upload(&vec![0.5; sh.numel()], sh, b.act_dtype()).unwrap();
    let err = b.fill(&image, 0.0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("operation 1 of the step") && msg.contains("departs from the planned step"),
        "{msg}"
    );
    drop(image);
    step(&b, &m, &mut opt, dims, 2);
    step(&b, &m, &mut opt, dims, 3);
    arena.begin_step().unwrap();
    let modes: Vec<StepMode> = arena.history().iter().map(|s| s.mode).collect();
    use StepMode::*;
    assert_eq!(modes, [Recorded, Arena, Replayed, Recorded, Arena]);
}

/// A run that validates every other step: the validation pass, between
/// steps, goes past the arena to the device, so no step departs from its
/// plan and none is planned again.
#[test]
fn validation_between_steps_leaves_the_plan_alone() {
    use voxdiff::pipeline::seg_config::SegConfig;
    use voxdiff::pipeline::seg_train::train_run;
    let run = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("arena_validation");
    let _ = std::fs::remove_dir_all(&run);
    let cfg = SegConfig::load(
        None,
        &[
            "data.source=\"phantom\"".into(),
            "data.phantom_cases=1".into(),
            "data.validation_phantom_cases=1".into(),
            "data.phantom.dims=[8,12,12]".into(),
            "data.phantom.spacing=[24.0,24.0,24.0]".into(),
            "model.channels=[4,8]".into(),
            "train.steps=6".into(),
            "train.log_every=1".into(),
            "train.checkpoint_every=6".into(),
            "train.validate_every=2".into(),
        ],
    )
    .unwrap();
    let arena = Arc::new(StepArena::new(Arc::new(Emu::new())));
    let b = GpuBackend::with_act_dtype(arena.clone(), DType::F32);
    train_run(&b, &cfg, &run, false, false).unwrap();
    let log = voxdiff::train::RunLog::read(&run.join("log.jsonl")).unwrap();
    let validated: Vec<u64> = log
        .iter()
        .filter(|r| r.get("validation").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(validated, vec![2, 4, 6]);
    arena.begin_step().unwrap(); // closes nothing: validation closed step 6
    use StepMode::*;
    let modes: Vec<StepMode> = arena.history().iter().map(|s| s.mode).collect();
    assert_eq!(modes.len(), 6, "{modes:?}");
    assert_eq!(modes[0], Recorded, "{modes:?}");
    assert!(modes[1..].iter().all(|m| *m != Recorded), "{modes:?}");
    assert!(arena.notices().is_empty(), "{:?}", arena.notices());
    let _ = std::fs::remove_dir_all(&run);
}
