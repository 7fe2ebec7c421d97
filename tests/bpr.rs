//! Body-part regression: its losses against an f64 reference on every
//! backend and their gradients by finite differences, the network's shapes
//! and the VGG16 parameter count, the smoothing against scipy, and the two
//! commands as a user runs them — on a synthetic CT always, on the real
//! abdominal CT where ../shared/data is present — with the errors a user can
//! cause.

mod common;
mod every_backend;
mod gpu_support;
mod gpu_vs_cpu;

use common::{data_dir, tmp, Rng};
use every_backend::{grad_check, subjects};
use std::path::{Path, PathBuf};
use std::process::Command;
use voxdiff::autograd::Graph;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::data::phantom::{generate, PhantomConfig};
use voxdiff::data::{read_nifti, write_nifti, Volume};
use voxdiff::model::bpr::{bpr_loss, BprLossConfig, BprNet, BprNetConfig};
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::pipeline::bpr_infer::gaussian_smooth;
use voxdiff::pipeline::config::RunConfig;
use voxdiff::tensor::{DType, Shape};

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
fn smooth_l1(x: f64, b: f64) -> f64 {
    if x.abs() < b {
        0.5 * x * x / b
    } else {
        x.abs() - 0.5 * b
    }
}

/// The f64 reference of every term of [`bpr_loss`]: (order, distance,
/// heuristic, region), from the scores `s` (volume-major, m per volume).
fn loss_ref(s: &[f64], m: usize, gaps: &[f32], regions: &[i64], c: &BprLossConfig) -> [f64; 4] {
    let v = gaps.len();
    let (mut order, mut dist, mut heur) = (0.0, 0.0, 0.0);
    for i in 0..v {
        let row = &s[i * m..(i + 1) * m];
        let g = gaps[i] as f64;
        let delta: Vec<f64> = (0..m - 1).map(|j| row[j + 1] - row[j]).collect();
        for &d in &delta {
            order += softplus(-d);
            let p_obs = sigmoid(c.heuristic_beta as f64 * g);
            heur += (sigmoid(c.heuristic_alpha as f64 * d) - p_obs).powi(2);
        }
        let unit = g / c.gap_unit_mm as f64;
        for j in 0..m - 2 {
            dist += smooth_l1((delta[j + 1] - delta[j]) / unit, c.smooth_l1_beta as f64);
        }
    }
    let n1 = (v * (m - 1)) as f64;
    let n2 = (v * (m - 2)) as f64;
    let mut region = 0.0;
    let mut pairs = 0;
    for a in 0..v {
        for b in 0..v {
            if regions[a] < regions[b] {
                let top = s[a * m + m - 1];
                region += (0..m).map(|j| softplus(top - s[b * m + j])).sum::<f64>() / m as f64;
                pairs += 1;
            }
        }
    }
    [
        order / n1,
        dist / n2,
        heur / n1,
        region / pairs.max(1) as f64,
    ]
}

fn all_terms() -> BprLossConfig {
    BprLossConfig {
        order_weight: 1.0,
        distance_weight: 0.7,
        smooth_l1_beta: 0.5,
        gap_unit_mm: 10.0,
        heuristic_weight: 0.3,
        heuristic_alpha: 0.5,
        heuristic_beta: 0.025,
        region_weight: 0.9,
    }
}

#[test]
fn loss_terms_match_the_f64_reference_on_every_backend() {
    let (v, m) = (3, 5);
    let gaps = [12.0f32, 30.0, 7.5];
    let regions = [0i64, 2, 1];
    let cfg = all_terms();
    let mut rng = Rng::new(11);
    // Scores of either sign and differences in both SmoothL1 regimes.
    let s = rng.vec(v * m, -3.0, 3.0);
    for sub in subjects() {
        let dev = sub.dev();
        let (t, stored) = sub.act(&s, Shape::new(&[v * m, 1]));
        let sref: Vec<f64> = stored.iter().map(|&x| x as f64).collect();
        let want = loss_ref(&sref, m, &gaps, &regions, &cfg);
        let mut g = Graph::inference(dev);
        let x = g.constant(t);
        let l = bpr_loss(&mut g, &x, m, &gaps, &regions, &cfg).unwrap();
        let parts = [&l.order, &l.distance, &l.heuristic, &l.region];
        for (name, (p, w)) in ["order", "distance", "heuristic", "region"]
            .iter()
            .zip(parts.iter().zip(want))
        {
            sub.check(name, &p.as_ref().unwrap().t, &[w], 4.0);
        }
        let total = cfg.order_weight as f64 * want[0]
            + cfg.distance_weight as f64 * want[1]
            + cfg.heuristic_weight as f64 * want[2]
            + cfg.region_weight as f64 * want[3];
        sub.check("total", &l.total.t, &[total], 4.0);
    }
}

#[test]
fn order_loss_is_minus_mean_log_sigmoid() {
    // −mean log σ(Δ) for scores 0, 1, 3 (Δ = 1, 2) and 0, −1 (Δ = −1).
    let dev = CpuBackend::new();
    let mut g = Graph::inference(&dev);
    let s = dev
        .upload(
            &[0.0, 1.0, 3.0, 0.0, -1.0, 5.0],
            Shape::new(&[6, 1]),
            DType::F32,
        )
        .unwrap();
    let x = g.constant(s);
    let cfg = BprLossConfig {
        distance_weight: 0.0,
        ..BprLossConfig::default()
    };
    let l = bpr_loss(&mut g, &x, 3, &[5.0, 5.0], &[], &cfg).unwrap();
    let want = -[1.0f64, 2.0, -1.0, 6.0]
        .iter()
        .map(|&d| sigmoid(d).ln())
        .sum::<f64>()
        / 4.0;
    let got = dev.download(&l.total.t).unwrap()[0] as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    assert!(l.distance.is_none() && l.heuristic.is_none() && l.region.is_none());
}

#[test]
fn loss_gradients_match_finite_differences() {
    let (v, m) = (2, 4);
    let gaps = [15.0f32, 40.0];
    let mut rng = Rng::new(5);
    let s = rng.vec(v * m, -2.0, 2.0);
    for (what, cfg, regions) in [
        (
            "order",
            BprLossConfig {
                distance_weight: 0.0,
                ..BprLossConfig::default()
            },
            vec![],
        ),
        (
            "distance",
            BprLossConfig {
                order_weight: 0.0,
                smooth_l1_beta: 0.3,
                ..BprLossConfig::default()
            },
            vec![],
        ),
        (
            "heuristic",
            BprLossConfig {
                order_weight: 0.0,
                distance_weight: 0.0,
                heuristic_weight: 1.0,
                ..BprLossConfig::default()
            },
            vec![],
        ),
        (
            "region",
            BprLossConfig {
                order_weight: 0.0,
                distance_weight: 0.0,
                ..BprLossConfig::default()
            },
            vec![1, 0],
        ),
        ("all", all_terms(), vec![0, 1]),
    ] {
        grad_check(
            &format!("BPR {what} loss"),
            &[(Shape::new(&[v * m, 1]), s.clone())],
            |g, xs| Ok(bpr_loss(g, &xs[0], m, &gaps, &regions, &cfg)?.total),
            64,
            1e-3,
            4e-2,
            1e-4,
        );
    }
}

#[test]
fn network_gives_one_score_per_slice_and_its_gradient_checks() {
    let dev = CpuBackend::new();
    let cfg = BprNetConfig {
        blocks: vec![vec![3], vec![4, 2]],
        head: 5,
    };
    let mut ps = ParamStore::new(3);
    let net = BprNet::new(&mut ParamBuilder::new(&mut ps, &dev), cfg).unwrap();
    // Parameters as constants: the check's input is the graph's parameter 0.
    ps.freeze("");
    // 3 slices of 9×7 (odd extents: ceil-mode pools); the input's gradient
    // through every layer by finite differences.
    let mut rng = Rng::new(2);
    let x = rng.vec(3 * 9 * 7, -1.0, 1.0);
    let mut g = Graph::inference(&dev);
    let xv = g.constant(
        dev.upload(&x, Shape::ndhwc(3, 1, 9, 7, 1), DType::F32)
            .unwrap(),
    );
    let s = net.forward(&mut g, &ps, &xv).unwrap();
    assert_eq!(s.shape(), Shape::new(&[3, 1]));
    grad_check(
        "BPR network input",
        &[(Shape::ndhwc(3, 1, 9, 7, 1), x)],
        |g, xs| net.forward(g, &ps, &xs[0]),
        24,
        1e-2,
        3e-2,
        1e-4,
    );
    // A 3D input is refused.
    let bad = g.constant(
        dev.upload(
            &vec![0.0; 2 * 9 * 7],
            Shape::ndhwc(1, 2, 9, 7, 1),
            DType::F32,
        )
        .unwrap(),
    );
    let e = net.forward(&mut g, &ps, &bad).unwrap_err().to_string();
    assert!(e.contains("[N, 1, H, W, 1]"), "{e}");
}

#[test]
fn vgg16_preset_has_the_papers_parameter_count() {
    // torchvision's VGG16 features: 14,714,688 parameters with 3 input
    // channels; bpreg's first conv takes 1 channel without bias (576 instead
    // of 1,792); conv6 512→512 1×1 (262,656) and fc7 512→1 (513).
    let dev = CpuBackend::new();
    let mut ps = ParamStore::new(0);
    BprNet::new(&mut ParamBuilder::new(&mut ps, &dev), BprNetConfig::vgg16()).unwrap();
    assert_eq!(ps.count(), 14_714_688 - 1_792 + 576 + 262_656 + 513);
}

#[test]
fn smoothing_matches_scipy_gaussian_filter1d() {
    // scipy.ndimage.gaussian_filter1d(x, sigma) for x = [0, 1, 4, 2, 8, 3, 5]
    // (mode "reflect", truncate 4.0).
    let x = [0.0, 1.0, 4.0, 2.0, 8.0, 3.0, 5.0];
    for (sigma, want) in SCIPY_SMOOTHED {
        let got = gaussian_smooth(&x, sigma);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "σ {sigma}: {got:?} vs {want:?}");
        }
    }
    assert_eq!(gaussian_smooth(&x, 0.0), x.to_vec());
}

/// scipy 1.17.1 `gaussian_filter1d([0, 1, 4, 2, 8, 3, 5], sigma)`; σ = 3.3
/// has a radius of 13 > 7 samples, so the mirroring repeats.
const SCIPY_SMOOTHED: [(f64, [f64; 7]); 2] = [
    (
        0.8,
        [
            0.3405067475168837,
            1.4597066364854576,
            2.8562427008730116,
            3.8269264750346568,
            5.330802486088004,
            4.620526072747556,
            4.5652888812544345,
        ],
    ),
    (
        3.3,
        [
            2.5123588582081746,
            2.6727653582945634,
            2.9563406207393483,
            3.3002594335291375,
            3.6330562194561935,
            3.8922636918500593,
            4.0329558179225184,
        ],
    ),
];

// ---- The commands --------------------------------------------------------

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

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run voxdiff");
    assert!(!out.status.success(), "voxdiff should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tiny, fast BPR configuration for `images`.
fn tiny(images: &[&Path], extra: &[&str]) -> Vec<String> {
    let list: Vec<String> = images
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let mut sets = vec![
        format!("data.images=[{}]", list.join(",")),
        "data.spacing_mm=12.0".into(),
        "data.size=24".into(),
        "data.slices_per_volume=4".into(),
        "model.blocks=[[4],[8]]".into(),
        "model.head=8".into(),
        "train.log_every=1".into(),
        "train.checkpoint_every=5".into(),
        "train.lr={init=1e-3,peak=3e-3,end=1e-3,warmup_steps=2,decay_steps=40}".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    sets.into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
}

/// A synthetic CT (the built-in abdomen phantom, in HU) written as NIfTI.
fn phantom_ct(dir: &Path) -> PathBuf {
    let cfg = PhantomConfig {
        dims: [20, 24, 24],
        spacing: [6.0, 8.0, 8.0],
        ..PhantomConfig::default()
    };
    let (img, _) = generate(&cfg, 1);
    let p = dir.join("phantom_ct.nii.gz");
    write_nifti(&img, &p).unwrap();
    p
}

/// The losses of a run's log.
fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Score `ct` with `run`: the coordinate volume lies on the CT's grid, each
/// slice holds one value, and the JSON has one score per slice.
fn check_scoring(run: &Path, ct: &Path, dir: &Path) -> serde_json::Value {
    let out = dir.join("coords.nii.gz");
    let json = dir.join("scores.json");
    let stdout = run_ok(
        bin()
            .args(["bpr", "--device", "cpu", "--run"])
            .arg(run)
            .arg("--input")
            .arg(ct)
            .arg("--output")
            .arg(&out)
            .arg("--json")
            .arg(&json)
            .args(["--range", "2", "9"]),
    );
    assert!(stdout.contains("Spearman"), "{stdout}");
    let scan = read_nifti(ct).unwrap();
    let coords = read_nifti(&out).unwrap();
    coords.check_same_grid(&scan, 0.0).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let smoothed: Vec<f64> = v["smoothed slice scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let raw = v["unprocessed slice scores"].as_array().unwrap();
    assert_eq!(raw.len(), smoothed.len());
    assert_eq!(v["z"].as_array().unwrap().len(), smoothed.len());
    assert!(v["spearman in range"]["raw"].is_number(), "{v}");
    // The test scans are RAS: slice k of the file is slice k of the scores.
    assert_eq!(smoothed.len(), scan.dims[0]);
    let per = scan.dims[1] * scan.dims[2];
    for (k, s) in smoothed.iter().enumerate() {
        let slice = &coords.data[k * per..(k + 1) * per];
        assert!(
            slice
                .iter()
                .all(|&c| (c as f64 - s).abs() <= 1e-5 * s.abs().max(1.0)),
            "slice {k} of the coordinate volume is not its smoothed score {s}"
        );
    }
    v
}

#[test]
fn train_then_score_a_synthetic_ct_and_resume() {
    let dir = tmp("synthetic");
    let ct = phantom_ct(&dir);
    let run = dir.join("run");
    run_ok(
        bin()
            .args([
                "train", "bpr", "--device", "cpu", "--quiet", "--steps", "5", "--run",
            ])
            .arg(&run)
            .args(tiny(&[&ct], &[])),
    );
    // Resuming continues the same run to 10 steps.
    run_ok(
        bin()
            .args([
                "train", "bpr", "--device", "cpu", "--quiet", "--resume", "--steps", "10", "--run",
            ])
            .arg(&run),
    );
    assert_eq!(losses(&run).len(), 10);
    assert!(run.join("progress.png").is_file());
    check_scoring(&run, &ct, &dir);
}

#[test]
fn training_on_the_abdominal_ct_lowers_the_loss_and_scores_it() {
    let Some(data) = data_dir() else { return };
    let ct = data.join("ct_abdomen/example_ct.nii.gz");
    let dir = tmp("abdomen");
    let run = dir.join("run");
    // A little wider than `tiny`: 200 steps of 4 slices of 32×32 at 10 mm.
    run_ok(
        bin()
            .args([
                "train", "bpr", "--device", "cpu", "--quiet", "--steps", "200", "--run",
            ])
            .arg(&run)
            .args(tiny(
                &[&ct],
                &[
                    "data.held_out=[{image=0,slices=[40,70]}]",
                    "data.spacing_mm=10.0",
                    "data.size=32",
                    "model.blocks=[[8],[16],[16]]",
                    "model.head=16",
                ],
            )),
    );
    let l = losses(&run);
    let first: f64 = l[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = l[l.len() - 20..].iter().sum::<f64>() / 20.0;
    assert!(
        last < 0.8 * first,
        "the loss did not fall: {first:.4} → {last:.4}"
    );
    let v = check_scoring(&run, &ct, &dir);
    assert_eq!(v["z-spacing"].as_f64(), Some(3.0));
    assert_eq!(v["reverse z-ordering"].as_u64(), Some(0));
}

// ---- Errors a user can cause ----------------------------------------------

/// A run trained 2 steps on the synthetic CT, shared by the error tests.
fn trained_run(dir: &Path) -> (PathBuf, PathBuf) {
    let ct = phantom_ct(dir);
    let run = dir.join("run");
    run_ok(
        bin()
            .args([
                "train", "bpr", "--device", "cpu", "--quiet", "--steps", "2", "--run",
            ])
            .arg(&run)
            .args(tiny(&[&ct], &[])),
    );
    (run, ct)
}

fn score(run: &Path, input: &Path, out: &Path) -> String {
    run_err(
        bin()
            .args(["bpr", "--device", "cpu", "--run"])
            .arg(run)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(out),
    )
}

#[test]
fn bad_inputs_are_refused_naming_the_file() {
    let dir = tmp("bad_inputs");
    let (run, ct) = trained_run(&dir);
    let out = dir.join("coords.nii.gz");

    let missing = dir.join("nope.nii.gz");
    let e = score(&run, &missing, &out);
    assert!(
        e.contains("nope.nii.gz") && e.contains("no such file"),
        "{e}"
    );

    // A label map is not a CT.
    let labels = Volume::new(vec![2.0; 6 * 8 * 8], [6, 8, 8], [3.0, 2.0, 2.0]).unwrap();
    let lp = dir.join("labels.nii.gz");
    write_nifti(&labels, &lp).unwrap();
    let e = score(&run, &lp, &out);
    assert!(
        e.contains("labels.nii.gz") && e.contains("does not look like a CT"),
        "{e}"
    );

    // One axial slice is not a stack.
    let mut one = vec![-1000.0; 8 * 8];
    one[10] = 40.0;
    let sp = dir.join("one_slice.nii.gz");
    write_nifti(&Volume::new(one, [1, 8, 8], [3.0, 2.0, 2.0]).unwrap(), &sp).unwrap();
    let e = score(&run, &sp, &out);
    assert!(
        e.contains("one_slice.nii.gz") && e.contains("at least 2"),
        "{e}"
    );

    // The output would overwrite the input.
    let e = score(&run, &ct, &ct);
    assert!(e.contains("overwrite the input"), "{e}");
    assert!(!out.exists(), "nothing is written on an error");

    // A folder that is not a run, and a segmentation run's folder.
    let e = score(&dir, &ct, &out);
    assert!(e.contains("not a run folder"), "{e}");
    let seg = dir.join("seg_run");
    std::fs::create_dir_all(&seg).unwrap();
    std::fs::write(
        seg.join("config.toml"),
        voxdiff::pipeline::seg_config::SegConfig::default()
            .to_toml()
            .unwrap(),
    )
    .unwrap();
    let e = score(&seg, &ct, &out);
    assert!(e.contains("not a body-part-regression run"), "{e}");
}

#[test]
fn bad_configurations_are_refused_naming_the_key() {
    let dir = tmp("bad_config");
    let ct = phantom_ct(&dir);
    let run = dir.join("run");
    let train = |extra: &[&str]| {
        run_err(
            bin()
                .args([
                    "train", "bpr", "--device", "cpu", "--quiet", "--steps", "1", "--run",
                ])
                .arg(&run)
                .args(tiny(&[&ct], extra)),
        )
    };
    let e = train(&["data.bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    let e = train(&["data.held_out=[{image=3,slices=[0,4]}]"]);
    assert!(e.contains("data.held_out[0].image"), "{e}");
    let e = train(&["data.slices_per_volume=2"]);
    assert!(e.contains("data.slices_per_volume"), "{e}");
    // Holding out every slice leaves nothing to train on.
    let e = train(&["data.held_out=[{image=0,slices=[0,20]}]"]);
    assert!(
        e.contains("phantom_ct.nii.gz") && e.contains("cannot hold"),
        "{e}"
    );
    assert!(!run.join("checkpoint.safetensors").exists());
}

// ---- The documented configuration ------------------------------------------

/// The TOML block of docs/pretraining.md's configuration reference.
fn doc_toml() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/pretraining.md"))
        .unwrap();
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_string()
}

#[test]
fn the_documented_configuration_parses_and_states_the_defaults() {
    use voxdiff::pipeline::bpr_config::BprConfig;
    let dir = tmp("config_docs");
    let path = dir.join("doc.toml");
    std::fs::write(&path, doc_toml()).unwrap();
    let cfg = BprConfig::load(Some(&path), &[]).unwrap();
    assert_eq!(
        cfg.data.images,
        vec![dir.join("abdomen.nii.gz"), dir.join("head.nii.gz")]
    );
    let d = BprConfig::default();
    // The model, loss and infer sections and the data settings other than
    // the example's files state the code's defaults.
    assert_eq!(cfg.model, d.model);
    assert_eq!(cfg.loss, d.loss);
    assert_eq!(cfg.infer, d.infer);
    assert_eq!(cfg.train.steps, d.train.steps);
    assert_eq!(cfg.train.lr, d.train.lr);
    assert_eq!(cfg.train.checkpoint_every, d.train.checkpoint_every);
    let mut data = cfg.data.clone();
    data.images = d.data.images.clone();
    data.held_out = d.data.held_out.clone();
    data.regions = d.data.regions.clone();
    assert_eq!(data, d.data);
    // The shipped configuration loads too.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bpr.toml");
    let c = BprConfig::load(Some(&shipped), &[]).unwrap();
    assert_eq!(c.data.images.len(), 2);
    assert_eq!((c.data.spacing_mm, c.data.size), (3.5, 128));
}
