//! Diffusion pretraining (`voxdiff train pretrain`): the configuration and
//! its range checks, CT preparation with coordinates (grids, k, padding),
//! the step (the loss falls on a fixed batch; the restorative objective),
//! resume, the run format other commands read, and a short run on real CT.

mod common;

use common::{data_dir, tmp};
use std::path::{Path, PathBuf};
use std::process::Command;
use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::data::nifti_io::encode;
use voxdiff::data::phantom::{generate, PhantomConfig};
use voxdiff::data::{write_nifti, DataType, Volume, WriteOptions};
use voxdiff::nn::ParamStore;
use voxdiff::pipeline::config::RunConfig;
use voxdiff::pipeline::pretrain_config::{ObjectiveKind, PretrainConfig};
use voxdiff::pipeline::pretrain_data::{prepare_ct, Coords, PatchSource, PreparedVolumes, AIR_HU};
use voxdiff::pipeline::pretrain_run::{load_backbone, load_pretrained};
use voxdiff::pipeline::pretrain_train::{train_run, PretrainModel};
use voxdiff::pipeline::train_loop::{BatchSource, StepKey, Trainable};
use voxdiff::train::{checkpoint, Optimizer};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_voxdiff"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run voxdiff");
    assert!(
        out.status.success(),
        "voxdiff failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A synthetic CT (the built-in abdomen phantom, in HU) of `dims` `[D, H, W]`
/// at `spacing` `[sd, sh, sw]`, written as NIfTI.
fn phantom_ct(dir: &Path, name: &str, dims: [usize; 3], spacing: [f64; 3]) -> PathBuf {
    let cfg = PhantomConfig {
        dims,
        spacing,
        ..PhantomConfig::default()
    };
    let (img, _) = generate(&cfg, 1);
    let p = dir.join(name);
    write_nifti(&img, &p).unwrap();
    p
}

/// The model section of a tiny backbone with `k` coordinate channels.
fn tiny_model(k: usize) -> String {
    format!(
        "[model]\nin_channels = {}\nbase_channels = 8\nnum_scales = 3\nnorm = \"batch\"\n\
         time = true\nposition_attention = \"fused\"\nchannel_attention = \"linear\"\n",
        1 + k
    )
}

/// A tiny configuration: `images` (and `coords`) at 8 mm in-plane, 6 mm
/// slices, 16×16×8 patches.
fn tiny_toml(images: &[&Path], coords: &[&Path], k: usize, extra: &str) -> String {
    let list = |ps: &[&Path]| {
        ps.iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[data]\nimages = [{}]\ncoords = [{}]\nspacing_mm = [8.0, 8.0, 6.0]\n\
         patch = [16, 16, 8]\npatches_per_step = 2\n{extra}\n{}\n\
         [train]\nsteps = 6\nlog_every = 1\ncheckpoint_every = 3\n\
         lr = {{ init = 1e-3, peak = 1e-3, end = 1e-3, warmup_steps = 0, decay_steps = 10 }}\n",
        list(images),
        list(coords),
        tiny_model(k)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load(dir: &Path, text: &str, sets: &[&str]) -> anyhow::Result<PretrainConfig> {
    let p = write(dir, "pretrain.toml", text);
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    PretrainConfig::load(Some(&p), &sets)
}

#[test]
fn config_round_trips_and_range_checks_name_the_key() {
    let dir = tmp("pretrain_config");
    let ct = phantom_ct(&dir, "ct.nii.gz", [12, 16, 16], [6.0, 8.0, 8.0]);
    let cfg = load(&dir, &tiny_toml(&[&ct], &[], 0, ""), &[]).unwrap();
    assert_eq!(cfg.data.patch_dhw(), [8, 16, 16]);
    assert_eq!(cfg.data.spacing_dhw(), [6.0, 8.0, 8.0]);
    assert_eq!(cfg.coord_channels(), 0);
    // The resolved configuration reads back to itself.
    let again = load(&dir, &cfg.to_toml().unwrap(), &[]).unwrap();
    assert_eq!(again, cfg);

    let base = tiny_toml(&[&ct], &[], 0, "");
    let err = |sets: &[&str]| format!("{:#}", load(&dir, &base, sets).unwrap_err());
    let e = err(&["data.patch=[16, 10, 8]"]);
    assert!(
        e.contains("data.patch (y) must be a positive multiple of"),
        "{e}"
    );
    let e = err(&["model.in_channels=2"]);
    assert!(e.contains("model.in_channels must be 1 + k = 1"), "{e}");
    let e = err(&["data.bpr_run=\"bpr\"", "data.coords=[\"c.nii.gz\"]"]);
    assert!(e.contains("data.bpr_run and data.coords"), "{e}");
    let e = err(&["data.coords=[\"a.nii\", \"b.nii\"]", "model.in_channels=2"]);
    assert!(
        e.contains("data.coords: 2 coordinate files for 1 images"),
        "{e}"
    );
    let e = err(&["objective.restorative_t=1000"]);
    assert!(
        e.contains("objective.restorative_t must be in 0..objective.timesteps"),
        "{e}"
    );
    let e = err(&["data.window=[100.0, -100.0]"]);
    assert!(e.contains("data.window"), "{e}");
    let e = err(&["data.spacing_mm=[1.0, 0.0, 2.0]"]);
    assert!(e.contains("data.spacing_mm (y)"), "{e}");
    let e = err(&["objective.beta=[0.02, 0.0001]"]);
    assert!(e.contains("objective.beta"), "{e}");
    let e = err(&["data.unknown=1"]);
    assert!(e.contains("unknown"), "{e}");
}

/// A k-channel coordinate NIfTI on the grid of `like` (channel c holds
/// 100·c + the slice index), one 4D file (float32, uncompressed): the file
/// layout [c][d][h][w] is that of a `[k·D, H, W]` volume, so that is
/// encoded and the header's dims patched (as tests/data_nifti.rs does).
fn coords_like(like: &Volume, k: usize, path: &Path) {
    let [d, h, w] = like.dims;
    let mut data = Vec::new();
    for c in 0..k {
        for z in 0..d {
            data.extend(std::iter::repeat_n((c * 100 + z) as f32, h * w));
        }
    }
    let vol = Volume {
        data,
        dims: [k * d, h, w],
        spacing: like.spacing,
        affine: like.affine,
        source: None,
    };
    let mut bytes = encode(&vol, WriteOptions::plain(DataType::F32)).unwrap();
    for (field, val) in [(0usize, 4i16), (3, d as i16), (4, k as i16)] {
        bytes[40 + 2 * field..42 + 2 * field].copy_from_slice(&val.to_le_bytes());
    }
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn coordinates_on_another_grid_or_with_another_k_are_refused_naming_the_file() {
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_coords");
    let ct = phantom_ct(&dir, "ct.nii.gz", [12, 16, 16], [6.0, 8.0, 8.0]);
    let vol = voxdiff::data::read_nifti(&ct).unwrap();
    let cfg = load(&dir, &tiny_toml(&[&ct], &[], 0, ""), &[]).unwrap();

    // On the CT's grid, k = 2: prepared, each channel resampled alike.
    let good = dir.join("coords2.nii");
    coords_like(&vol, 2, &good);
    let v = prepare_ct(&dev, &cfg.data, &ct, Coords::File(&good), 2).unwrap();
    assert_eq!(v.k, 2);
    assert_eq!(v.coords.len(), v.image.numel() * 2);
    // Slice z of the (same-spacing) grid holds z and 100 + z.
    let per = v.image.dims[1] * v.image.dims[2];
    assert_eq!(&v.coords[3 * per * 2..3 * per * 2 + 2], &[3.0, 103.0]);

    // The model takes k = 1: the file is named with both k.
    let e = format!(
        "{:#}",
        prepare_ct(&dev, &cfg.data, &ct, Coords::File(&good), 1)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("coords2.nii") && e.contains("2 coordinate channel(s)"),
        "{e}"
    );
    assert!(e.contains("k = 1"), "{e}");

    // Another shape.
    let small = phantom_ct(&dir, "small.nii.gz", [12, 16, 14], [6.0, 8.0, 8.0]);
    let small = voxdiff::data::read_nifti(&small).unwrap();
    let bad_shape = dir.join("coords_shape.nii");
    coords_like(&small, 1, &bad_shape);
    let e = format!(
        "{:#}",
        prepare_ct(&dev, &cfg.data, &ct, Coords::File(&bad_shape), 1)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("coords_shape.nii: the coordinate map is not on the grid of its CT")
            && e.contains("shape"),
        "{e}"
    );

    // Same shape, shifted affine.
    let mut moved = vol.clone();
    moved.affine.0[0][3] += 5.0;
    let bad_affine = dir.join("coords_affine.nii");
    coords_like(&moved, 1, &bad_affine);
    let e = format!(
        "{:#}",
        prepare_ct(&dev, &cfg.data, &ct, Coords::File(&bad_affine), 1)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("coords_affine.nii: the coordinate map is not on the grid")
            && e.contains("affines differ"),
        "{e}"
    );

    // A missing coordinate file, a missing CT.
    let e = format!(
        "{:#}",
        prepare_ct(
            &dev,
            &cfg.data,
            &ct,
            Coords::File(&dir.join("nope.nii.gz")),
            1
        )
        .err()
        .unwrap()
    );
    assert!(e.contains("nope.nii.gz: no such coordinate file"), "{e}");
    let e = format!(
        "{:#}",
        prepare_ct(&dev, &cfg.data, &dir.join("noct.nii.gz"), Coords::None, 0)
            .err()
            .unwrap()
    );
    assert!(e.contains("noct.nii.gz: no such file"), "{e}");
    // No coordinates for a model that takes some.
    let e = format!(
        "{:#}",
        prepare_ct(&dev, &cfg.data, &ct, Coords::None, 1)
            .err()
            .unwrap()
    );
    assert!(e.contains("ct.nii.gz: no coordinates given"), "{e}");
}

#[test]
fn a_ct_smaller_than_a_patch_is_padded_with_air_and_trains() {
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_small");
    // 5 slices at 6 mm and 10×10 at 8 mm: a 16×16×8 patch does not fit.
    let ct = phantom_ct(&dir, "tiny_ct.nii.gz", [5, 10, 10], [6.0, 8.0, 8.0]);
    let vol = voxdiff::data::read_nifti(&ct).unwrap();
    let coords = dir.join("tiny_coords.nii");
    coords_like(&vol, 1, &coords);
    let cfg = load(&dir, &tiny_toml(&[&ct], &[&coords], 1, ""), &[]).unwrap();
    let v = prepare_ct(&dev, &cfg.data, &ct, Coords::File(&coords), 1).unwrap();
    assert_eq!(v.valid, [5, 10, 10]);
    assert_eq!(v.image.dims, [8, 16, 16]);
    let air = (AIR_HU - cfg.data.window[0]) / (cfg.data.window[1] - cfg.data.window[0]);
    let [_, h, w] = v.image.dims;
    // Beyond the last slice: air; the coordinates repeat the last slice (4).
    assert!((v.image.data[7 * h * w] - air).abs() < 1e-6);
    assert!(
        (v.image.data[15] - air).abs() < 1e-6,
        "padding at the end of a row"
    );
    assert_eq!(v.coords[7 * h * w], 4.0);
    // Mapped back to the input grid: the CT's own shape and geometry.
    let back = v
        .to_input_grid(&v.image, voxdiff::data::resample::Interp::Nearest)
        .unwrap();
    assert_eq!(back.dims, vol.dims);
    assert!(back.affine.max_abs_diff(&vol.affine) < 1e-9);

    let run = dir.join("run");
    let s = train_run(&dev, &cfg, &run, false, false).unwrap();
    assert_eq!(s.steps_done, 6);
    assert!(s.last_loss.unwrap().is_finite());
}

/// The first patch batch of `cfg`.
fn first_batch(
    dev: &CpuBackend,
    cfg: &PretrainConfig,
) -> voxdiff::pipeline::pretrain_data::PatchBatch {
    let dir = tmp(&format!("pretrain_prepared_{}", cfg.data.images.len()));
    let vols = PreparedVolumes::prepare(dev, &cfg.data, 0, &dir, false).unwrap();
    PatchSource::new(vols, &cfg.data, 0)
        .unwrap()
        .next_batch()
        .unwrap()
}

#[test]
fn the_loss_falls_on_a_fixed_batch() {
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_fixed");
    let ct = phantom_ct(&dir, "ct.nii.gz", [12, 20, 20], [6.0, 8.0, 8.0]);
    let cfg = load(&dir, &tiny_toml(&[&ct], &[], 0, ""), &[]).unwrap();
    let batch = first_batch(&dev, &cfg);
    let model = PretrainModel::new(&dev, &cfg).unwrap();
    let mut opt = Optimizer::new(&dev, model.params(), cfg.train.adamw).unwrap();
    // The same patches, noise and t at every step: ε is learnable.
    let key = StepKey { seed: 0, step: 0 };
    let mut losses = Vec::new();
    for _ in 0..30 {
        let mut g = Graph::train(&dev);
        let l = model.loss(&mut g, &batch, key).unwrap();
        losses.push(dev.download(&l.loss.t).unwrap()[0]);
        let grads = g.backward(&l.loss, model.params().len()).unwrap();
        opt.update(&dev, model.params(), &grads, 3e-3).unwrap();
    }
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    // The zero-initialised head starts at mean ε² ≈ 1.
    assert!((0.7..1.3).contains(&losses[0]), "{losses:?}");
    let last = losses[25..].iter().sum::<f32>() / 5.0;
    assert!(last < 0.8 * losses[0], "the loss did not fall: {losses:?}");
    // Batch norm's running statistics moved from their initial (0, 1).
    let ps = model.params();
    let id = ps.find("backbone.left.0.0.norm1.running_mean").unwrap();
    assert!(dev.download(ps.get(id)).unwrap().iter().any(|&v| v != 0.0));
}

/// The t values a run logged.
fn logged_t(run: &Path) -> Vec<Vec<u64>> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["t"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn restorative_objective_trains_at_its_one_t_and_diffusion_draws_t() {
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_restorative");
    let ct = phantom_ct(&dir, "ct.nii.gz", [12, 16, 16], [6.0, 8.0, 8.0]);
    let text = tiny_toml(
        &[&ct],
        &[],
        0,
        "[objective]\nkind = \"restorative\"\nrestorative_t = 250\n",
    );
    let cfg = load(&dir, &text, &[]).unwrap();
    assert_eq!(cfg.objective.kind, ObjectiveKind::Restorative);
    let run = dir.join("run");
    let s = train_run(&dev, &cfg, &run, false, false).unwrap();
    assert!(s.last_loss.unwrap().is_finite());
    let ts = logged_t(&run);
    assert_eq!(ts.len(), 6);
    assert!(ts.iter().flatten().all(|&t| t == 250), "{ts:?}");

    let cfg = load(&dir, &tiny_toml(&[&ct], &[], 0, ""), &[]).unwrap();
    let run = dir.join("run_diffusion");
    train_run(&dev, &cfg, &run, false, false).unwrap();
    let ts: Vec<u64> = logged_t(&run).into_iter().flatten().collect();
    assert_eq!(ts.len(), 12);
    assert!(ts.iter().all(|&t| t < 1000));
    assert!(ts.windows(2).any(|w| w[0] != w[1]), "{ts:?}");
}

/// Every parameter of the run in `run`, as bits.
fn params_bits(dev: &CpuBackend, run: &Path) -> Vec<Vec<u32>> {
    let r = load_pretrained(run).unwrap();
    let model = PretrainModel::new(dev, &r.cfg).unwrap();
    checkpoint::load(&r.checkpoint, dev, model.params(), None).unwrap();
    let ps: &ParamStore = model.params();
    ps.entries
        .iter()
        .map(|e| {
            dev.download(&e.t)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn cli_train_and_resume_match_an_uninterrupted_run_bit_for_bit() {
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_resume");
    let ct = phantom_ct(&dir, "ct.nii.gz", [12, 16, 16], [6.0, 8.0, 8.0]);
    let vol = voxdiff::data::read_nifti(&ct).unwrap();
    let coords = dir.join("coords.nii");
    coords_like(&vol, 1, &coords);
    let config = write(&dir, "pretrain.toml", &tiny_toml(&[&ct], &[&coords], 1, ""));
    let train = |run: &Path, extra: &[&str]| {
        run_ok(
            bin()
                .args([
                    "train", "pretrain", "--device", "cpu", "--quiet", "--config",
                ])
                .arg(&config)
                .arg("--run")
                .arg(run)
                .args(extra),
        )
    };
    let whole = dir.join("whole");
    let out = train(&whole, &[]);
    assert!(out.contains("trained 6 steps"), "{out}");
    let part = dir.join("part");
    train(&part, &["--steps", "3"]);
    let out = run_ok(
        bin()
            .args([
                "train", "pretrain", "--device", "cpu", "--quiet", "--resume",
            ])
            .args(["--steps", "6", "--run"])
            .arg(&part),
    );
    assert!(out.contains("trained 3 steps"), "{out}");
    assert_eq!(params_bits(&dev, &whole), params_bits(&dev, &part));
    assert!(part.join("progress.png").is_file());
    // The logs agree step for step (the resumed run appended steps 4–6).
    let strip = |run: &Path| -> Vec<(u64, f64, Vec<u64>)> {
        std::fs::read_to_string(run.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let t = v["t"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap());
                (
                    v["step"].as_u64().unwrap(),
                    v["loss"].as_f64().unwrap(),
                    t.collect(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&whole), strip(&part));
}

#[test]
fn load_pretrained_refuses_what_is_not_a_trained_pretraining_run() {
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_load");
    let e = format!("{:#}", load_pretrained(&dir.join("none")).err().unwrap());
    assert!(e.contains("none: not a run folder"), "{e}");
    // A run of another command (a BPR configuration).
    let other = dir.join("bpr_run");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("config.toml"),
        "[data]\nimages = [\"a.nii.gz\"]\nsize = 64\n[model]\nhead = 8\n",
    )
    .unwrap();
    let e = format!("{:#}", load_pretrained(&other).err().unwrap());
    assert!(e.contains("bpr_run: not a pretraining run"), "{e}");
    // A pretraining configuration without a checkpoint.
    let ct = phantom_ct(&dir, "ct.nii.gz", [12, 16, 16], [6.0, 8.0, 8.0]);
    let cfg = load(&dir, &tiny_toml(&[&ct], &[], 0, ""), &[]).unwrap();
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("config.toml"), cfg.to_toml().unwrap()).unwrap();
    let e = format!("{:#}", load_pretrained(&fresh).err().unwrap());
    assert!(
        e.contains("fresh: the run has no checkpoint.safetensors"),
        "{e}"
    );

    // A trained run: the backbone loads under "backbone." with its trained values.
    let run = dir.join("run");
    train_run(&dev, &cfg, &run, false, false).unwrap();
    let mut ps = ParamStore::new(99);
    let (r, fpn) = load_backbone(&dev, &run, &mut ps).unwrap();
    assert_eq!(fpn.cfg, r.cfg.model);
    assert!(ps.entries.iter().all(|e| e.name.starts_with("backbone.")));
    let trained = PretrainModel::new(&dev, &r.cfg).unwrap();
    checkpoint::load(&r.checkpoint, &dev, trained.params(), None).unwrap();
    let name = "backbone.first_conv.w";
    let want = dev
        .download(trained.params().get(trained.params().find(name).unwrap()))
        .unwrap();
    let got = dev.download(ps.get(ps.find(name).unwrap())).unwrap();
    assert_eq!(got, want);
    assert!(trained.params().find("head.w").is_some());
}

#[test]
fn a_few_steps_on_the_real_abdominal_ct() {
    let Some(data) = data_dir() else { return };
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_real");
    let ct = data.join("ct_abdomen/example_ct_sm.nii.gz");
    let text = tiny_toml(&[&ct], &[], 0, "");
    let cfg = load(&dir, &text, &["data.spacing_mm=[6.0, 6.0, 6.0]"]).unwrap();
    let v = prepare_ct(&dev, &cfg.data, &ct, Coords::None, 0).unwrap();
    // 122×101×30 voxels of 3 mm → 61×51×15 at 6 mm (x, y, z).
    assert_eq!(v.image.dims, [15, 51, 61]);
    let (lo, hi) = v.image.min_max();
    assert!(lo >= 0.0 && hi <= 1.0 && hi > 0.5, "{lo} … {hi}");
    let s = train_run(&dev, &cfg, &dir.join("run"), false, false).unwrap();
    assert!(s.last_loss.unwrap().is_finite());
}

#[test]
fn the_shipped_configuration_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/pretrain.toml");
    let cfg = PretrainConfig::load(Some(&p), &[]).unwrap();
    assert_eq!(cfg.coord_channels(), 1);
    assert_eq!(cfg.data.patch_dhw(), [32, 64, 64]);
    assert_eq!(cfg.data.images.len(), 2);
    assert!(cfg.data.bpr_run.as_ref().unwrap().ends_with("runs/bpr"));
}

/// A folder of CTs is one line of the configuration, and the prepared
/// volumes live on disk, read a patch at a time: the patch read equals the
/// one cut from the volume in memory, a second preparation on the same data
/// reuses the files, and a changed CT is prepared again.
#[test]
fn a_folder_of_cts_is_prepared_once_onto_disk_and_read_a_patch_at_a_time() {
    let dev = CpuBackend::new();
    let dir = tmp("pretrain_folder");
    let cts = dir.join("cts");
    let _ = std::fs::remove_dir_all(&cts);
    std::fs::create_dir_all(&cts).unwrap();
    for (name, d) in [("b.nii.gz", 12), ("a.nii.gz", 14), ("c.nii", 16)] {
        phantom_ct(&cts, name, [d, 16, 16], [6.0, 8.0, 8.0]);
    }
    std::fs::write(cts.join("notes.txt"), "not a scan").unwrap();
    let cfg = load(&dir, &tiny_toml(&[&cts], &[], 0, ""), &[]).unwrap();
    let names: Vec<String> = cfg
        .data
        .images
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["a.nii.gz", "b.nii.gz", "c.nii"],
        "the folder's scans, sorted"
    );

    let store = dir.join("prepared");
    let _ = std::fs::remove_dir_all(&store);
    let vols = PreparedVolumes::prepare(&dev, &cfg.data, 0, &store, false).unwrap();
    assert_eq!(vols.volumes.len(), 3);
    let patch = cfg.data.patch_dhw();
    for (i, path) in cfg.data.images.iter().enumerate() {
        let mem = prepare_ct(&dev, &cfg.data, path, Coords::None, 0).unwrap();
        assert_eq!(vols.volumes[i].dims, mem.image.dims);
        let origin = [
            mem.image.dims[0] - patch[0],
            0,
            mem.image.dims[2] - patch[2],
        ];
        let (mut from_disk, mut coords) = (Vec::new(), Vec::new());
        vols.read_patch(i, origin, patch, &mut from_disk, &mut coords)
            .unwrap();
        let mut in_memory = Vec::new();
        voxdiff::pipeline::pretrain_data::copy_patch(
            &mem.image.data,
            mem.image.dims,
            1,
            origin,
            patch,
            &mut in_memory,
        );
        assert_eq!(from_disk, in_memory, "volume {i}");
        assert!(coords.is_empty());
    }

    // The same data again: the files are reused, not written again.
    let first = store.join("000001.f32");
    let stamp = std::fs::metadata(&first).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    PreparedVolumes::prepare(&dev, &cfg.data, 0, &store, false).unwrap();
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        stamp
    );

    // A CT changes: everything is prepared from the data as it is now.
    phantom_ct(&cts, "a.nii.gz", [20, 16, 16], [6.0, 8.0, 8.0]);
    let again = PreparedVolumes::prepare(&dev, &cfg.data, 0, &store, false).unwrap();
    assert_eq!(again.volumes[0].dims[0], 20);

    // A truncated file is an error naming it, not a short patch.
    std::fs::write(store.join("000002.f32"), [0u8; 8]).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let e = format!(
        "{:#}",
        again
            .read_patch(2, [0, 0, 0], patch, &mut a, &mut b)
            .unwrap_err()
    );
    assert!(e.contains("000002.f32") && e.contains("truncated"), "{e}");
}
