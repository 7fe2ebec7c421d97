//! SegDiff end to end: sampling is a function of the seed; a tiny run
//! trains and segments the dermoscopy photos of the shared data (a photo
//! and a folder, with overlay and uncertainty maps at each photo's own
//! size; a bad file in a folder is skipped and reported); a 2D photo given
//! to a 3D run and a 3D scan given to a SegDiff run are refused, as is
//! --fusion for a 3D run; STAPLE fusion through `segment`; the
//! configuration refuses unknown keys and a dropout of 1.

mod common;

use std::path::{Path, PathBuf};
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::Backend;
use voxdiff::data::image2d::{read_mask, read_photo};
use voxdiff::diffusion::Sampler;
use voxdiff::pipeline::segdiff_config::{SegDiffConfig, SegDiffInfer};
use voxdiff::pipeline::segdiff_fusion::Fusion;
use voxdiff::pipeline::segdiff_model::SegDiffModel;
use voxdiff::pipeline::segdiff_segment;
use voxdiff::pipeline::segdiff_train::train_run;
use voxdiff::pipeline::segment::{self, SegmentArgs};

/// The tiny network of these tests.
fn tiny(extra: &[&str]) -> Vec<String> {
    let mut o: Vec<String> = [
        "model.channels=8",
        "model.norm_groups=4",
        "model.channel_mult=[1,2]",
        "model.heads=2",
        "model.attention_ds=[2]",
        "model.rrdb_features=8",
        "model.rrdb_growth=4",
        "data.size=16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn sampling_is_a_function_of_the_seed() {
    let cpu = CpuBackend::new();
    let dev: &dyn Backend = &cpu;
    let cfg = SegDiffConfig::load(None, &tiny(&[])).unwrap();
    let model = SegDiffModel::new(dev, &cfg).unwrap();
    // The output convolution starts at zero; give it weights so ε̂ depends
    // on the input.
    let out = model.ps.get(model.ps.find("out.w").unwrap());
    let w: Vec<f32> = (0..out.numel())
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.02)
        .collect();
    dev.write(out, &w).unwrap();
    let image: Vec<f32> = (0..16 * 16 * 3)
        .map(|i| ((i % 7) as f32 - 3.0) / 3.0)
        .collect();
    for sampler in [Sampler::Ddpm, Sampler::Ddim] {
        let infer = |seed| SegDiffInfer {
            samples: 3,
            sampler,
            steps: if sampler == Sampler::Ddim {
                Some(10)
            } else {
                None
            },
            seed,
            clip_denoised: true,
            ..SegDiffInfer::default()
        };
        let a = model.sample_ensemble(dev, &image, 16, &infer(4)).unwrap();
        let b = model.sample_ensemble(dev, &image, 16, &infer(4)).unwrap();
        let c = model.sample_ensemble(dev, &image, 16, &infer(5)).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a, b, "{sampler:?}: same seed, same samples");
        assert_ne!(a, c, "{sampler:?}: another seed, other samples");
        // The members of one ensemble differ (each its own noise).
        assert_ne!(a[0], a[1], "{sampler:?}");
        assert!(a.iter().flatten().all(|&p| (0.0..=1.0).contains(&p)));
    }
}

fn args(run: &Path, input: &Path, output: &Path) -> SegmentArgs {
    SegmentArgs {
        run: run.to_path_buf(),
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        steps: Some(4),
        sampler: Some(segment::SamplerArg::Ddim),
        samples: Some(3),
        patch: None,
        save_steps: None,
        seed: None,
        replace_nonfinite: None,
        coords: None,
        weights: None,
        fusion: None,
        device: "cpu".into(),
    }
}

#[test]
fn a_tiny_run_trains_and_segments_the_dermoscopy_photos() {
    let Some(data) = common::data_dir() else {
        return;
    };
    let skin = data.join("skin_2d");
    let dir = tmp("segdiff_e2e");
    let run = dir.join("run");
    let images = skin.join("images").display().to_string();
    let masks = skin.join("masks").display().to_string();
    let cfg = SegDiffConfig::load(
        None,
        &tiny(&[
            &format!("data.images={images:?}"),
            &format!("data.masks={masks:?}"),
            "data.validation=1",
            "batch=2",
            "train.steps=3",
            "train.checkpoint_every=3",
        ]),
    )
    .unwrap();
    let cpu = CpuBackend::new();
    let s = train_run(&cpu, &cfg, &run, false, false).unwrap();
    assert_eq!(s.steps_done, 3);
    assert!(run.join("split.json").is_file());

    // One photo: the mask, its overlay and uncertainty map at the photo's size.
    let photo = skin.join("images/ISIC_0024311.jpg");
    let (w, h) = {
        let p = read_photo(&photo).unwrap();
        (p.width, p.height)
    };
    let out = dir.join("one/mask.png");
    segment::run(&args(&run, &photo, &out)).unwrap();
    let m = read_mask(&out).unwrap();
    assert_eq!((m.width, m.height), (w, h));
    for p in [
        dir.join("one/mask_overlay.png"),
        dir.join("one/mask_uncertainty.png"),
    ] {
        let p = read_photo(&p).unwrap();
        assert_eq!((p.width, p.height), (w, h));
    }
    // The same photo fused by STAPLE.
    let staple = dir.join("staple/mask.png");
    segment::run(&SegmentArgs {
        fusion: Some(Fusion::Staple),
        ..args(&run, &photo, &staple)
    })
    .unwrap();
    assert_eq!(read_mask(&staple).unwrap().width, w);

    // A folder with one truncated JPEG: it is skipped, the others segmented.
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for id in ["ISIC_0027001", "ISIC_0027287"] {
        std::fs::copy(
            skin.join(format!("images/{id}.jpg")),
            input.join(format!("{id}.jpg")),
        )
        .unwrap();
    }
    let bytes = std::fs::read(skin.join("images/ISIC_0027533.jpg")).unwrap();
    std::fs::write(input.join("cut.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    let folder = dir.join("masks");
    segment::run(&args(&run, &input, &folder)).unwrap();
    for id in ["ISIC_0027001", "ISIC_0027287"] {
        for sub in ["", "overlay", "uncertainty"] {
            assert!(
                folder.join(sub).join(format!("{id}.png")).is_file(),
                "{sub}/{id}"
            );
        }
    }
    assert!(!folder.join("cut.png").exists());

    // A 3D scan given to the SegDiff run.
    let ct = data.join("ct_abdomen/example_ct_sm.nii.gz");
    let e = segment::run(&args(&run, &ct, &dir.join("x.png"))).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("example_ct_sm.nii.gz") && msg.contains("SegDiff 2D run"),
        "{msg}"
    );
}

#[test]
fn a_photo_given_to_a_3d_run_is_refused() {
    let Some(data) = common::data_dir() else {
        return;
    };
    let dir = tmp("segdiff_3d_run");
    // A 3D run's configuration (no `system = "segdiff"`).
    std::fs::write(dir.join("config.toml"), "[train]\nsteps = 1\n").unwrap();
    let photo = data.join("skin_2d/images/ISIC_0024311.jpg");
    let e = segment::run(&args(&dir, &photo, &dir.join("m.nii.gz"))).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("ISIC_0024311.jpg") && msg.contains("3D segmentation run"),
        "{msg}"
    );
    assert!(!segdiff_segment::is_2d_input(
        &data.join("ct_abdomen/example_ct.nii.gz")
    ));
    // --fusion is SegDiff's.
    let ct = data.join("ct_abdomen/example_ct_sm.nii.gz");
    let e = segment::run(&SegmentArgs {
        fusion: Some(Fusion::Staple),
        ..args(&dir, &ct, &dir.join("m.nii.gz"))
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("--fusion"), "{e:#}");
}

#[test]
fn the_configuration_refuses_unknown_keys_and_dropout_of_1() {
    let e = SegDiffConfig::load(None, &["model.dropuot=0.1".to_string()]).unwrap_err();
    assert!(format!("{e:#}").contains("dropuot"), "{e:#}");
    let e = SegDiffConfig::load(None, &["model.dropout=1.0".to_string()]).unwrap_err();
    assert!(format!("{e:#}").contains("model.dropout"), "{e:#}");
    SegDiffConfig::load(None, &["model.dropout=0.1".to_string()]).unwrap();
    let e = SegDiffConfig::load(None, &["system=\"seg\"".to_string()]).unwrap_err();
    assert!(format!("{e:#}").contains("system"), "{e:#}");
    // The training settings are range checked as for every system.
    for (set, key) in [
        ("train.lr.peak=-0.001", "train.lr.peak"),
        ("train.adamw.beta1=3", "train.adamw.beta1"),
        ("train.ema=1.0", "train.ema"),
    ] {
        let e = SegDiffConfig::load(None, &[set.to_string()]).unwrap_err();
        assert!(format!("{e:#}").contains(key), "{set}: {e:#}");
    }
    // The shipped configurations parse.
    for f in ["segdiff_skin.toml", "segdiff_polyp.toml"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(f);
        SegDiffConfig::load(Some(&p), &[]).unwrap();
    }
}
