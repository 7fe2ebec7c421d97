//! What a person looks at: the progress figure of a training run and the
//! overlays of label maps on a scan. Each PNG is decoded and checked for its
//! size and for the colours of what it must show.

mod common;
use common::tmp;

use std::path::Path;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::data::intensity::Window;
use voxdiff::data::overlay::{colour, pick_slices, render, write_overlay, Overlay, MIN_PANEL_PX};
use voxdiff::data::phantom::{generate, PhantomConfig, CLASS_NAMES};
use voxdiff::pipeline::plot::{
    progress_figure, smooth, smoothing_half_width, Progress, HEIGHT, LR, RAW_LOSS, SMOOTH_LOSS,
    STEP_TIME, VALIDATION, WIDTH,
};
use voxdiff::pipeline::run::PROGRESS;
use voxdiff::pipeline::seg_config::SegConfig;
use voxdiff::pipeline::seg_train::train_run;

/// (width, height, RGB bytes) of a PNG file.
fn decode(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

/// Pixels of exactly colour `c` in rows `y0..y1`.
fn count_colour(px: &[u8], width: usize, (y0, y1): (usize, usize), c: [u8; 3]) -> usize {
    px[y0 * width * 3..y1 * width * 3]
        .chunks(3)
        .filter(|p| p == &c)
        .count()
}

fn rgb(c: plotters::style::RGBColor) -> [u8; 3] {
    [c.0, c.1, c.2]
}

/// No temporary sibling is left next to a file written atomically.
fn no_leftovers(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "{name} left in {}", dir.display());
    }
}

#[test]
fn a_short_training_run_writes_its_progress_figure() {
    let run = tmp("figure_run");
    let cfg = SegConfig::load(
        None,
        &[
            "data.source=\"phantom\"".into(),
            "data.phantom_cases=2".into(),
            "data.phantom.dims=[12,20,20]".into(),
            "data.phantom.spacing=[16.0,14.0,14.0]".into(),
            "model.channels=[4,8]".into(),
            "train.steps=10".into(),
            "train.log_every=1".into(),
            "train.checkpoint_every=10".into(),
        ],
    )
    .unwrap();
    train_run(&CpuBackend::new(), &cfg, &run, false, false).unwrap();
    let fig = run.join(PROGRESS);
    let (w, h, px) = decode(&fig);
    assert_eq!((w, h), (WIDTH, HEIGHT));
    // The three panels stack top to bottom under a 36-pixel title.
    let third = (HEIGHT - 36) / 3;
    let panel = |i: usize| (36 + i * third, 36 + (i + 1) * third);
    let raw = count_colour(&px, w, panel(0), rgb(RAW_LOSS));
    let smoothed = count_colour(&px, w, panel(0), rgb(SMOOTH_LOSS));
    let lr = count_colour(&px, w, panel(1), rgb(LR));
    let step_time = count_colour(&px, w, panel(2), rgb(STEP_TIME));
    // Ten logged steps: the raw loss, its moving mean (≥ 8 values), the
    // learning rate and the step times each draw a line hundreds of pixels long.
    for (what, n) in [
        ("raw loss", raw),
        ("smoothed loss", smoothed),
        ("learning rate", lr),
        ("seconds per step", step_time),
    ] {
        assert!(n > 300, "{what}: {n} pixels of its colour in its panel");
    }
    // Each colour stays in its own panel.
    assert_eq!(count_colour(&px, w, panel(1), rgb(STEP_TIME)), 0);
    assert_eq!(count_colour(&px, w, panel(2), rgb(LR)), 0);
    // Text was drawn: dark pixels in the title strip.
    let dark = px[..36 * w * 3]
        .chunks(3)
        .filter(|p| p.iter().all(|&v| v < 80))
        .count();
    assert!(dark > 100, "title: {dark} dark pixels");
    no_leftovers(&run);

    // The figure is drawn from log.jsonl alone: redrawn, it is the same image.
    let again = tmp("figure_again").join("p.png");
    progress_figure(&run.join("log.jsonl"), &again).unwrap();
    let (w2, h2, px2) = decode(&again);
    assert_eq!((w2, h2), (w, h));
    // Only the title (which names the log's folder) may differ.
    assert_eq!(&px2[36 * w * 3..], &px[36 * w * 3..]);
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn a_run_with_a_held_out_case_logs_and_draws_validation_dice_per_class() {
    let run = tmp("figure_validation");
    let cfg = SegConfig::load(
        None,
        &[
            "data.source=\"phantom\"".into(),
            "data.phantom_cases=2".into(),
            "data.validation_phantom_cases=1".into(),
            "data.phantom.dims=[12,20,20]".into(),
            "data.phantom.spacing=[16.0,14.0,14.0]".into(),
            "model.channels=[4,8]".into(),
            "train.steps=10".into(),
            "train.log_every=1".into(),
            "train.checkpoint_every=10".into(),
            "train.validate_every=4".into(),
        ],
    )
    .unwrap();
    train_run(&CpuBackend::new(), &cfg, &run, false, false).unwrap();
    let recs = voxdiff::train::RunLog::read(&run.join("log.jsonl")).unwrap();
    let validated: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r.get("validation").is_some())
        .collect();
    // Every 4 steps and after the last: steps 4, 8 and 10.
    let steps: Vec<u64> = validated
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![4, 8, 10]);
    for r in &validated {
        let v = r["validation"].as_array().unwrap();
        assert!(!v.is_empty(), "no class scored at step {}", r["step"]);
        for pair in v {
            let (name, d) = (pair[0].as_str().unwrap(), &pair[1]);
            assert!(name.starts_with("Dice "), "{name}");
            // A class named in the log is one of the phantom's foreground classes.
            assert!(CLASS_NAMES[1..].contains(&&name[5..]), "{name}");
            let d = d.as_f64().unwrap();
            assert!((0.0..=1.0).contains(&d), "{name} = {d}");
        }
    }
    // The step records carry the time spent validating so far, growing.
    let val_time: Vec<f64> = recs
        .iter()
        .filter_map(|r| r.get("seconds_validating")?.as_f64())
        .collect();
    assert_eq!(val_time.len(), 10 + 3);
    assert!(val_time.windows(2).all(|w| w[1] >= w[0]));
    assert!(val_time.last().unwrap() > &0.0);

    let p = Progress::from_records(&recs);
    assert_eq!(p.loss.len(), 10);
    assert_eq!(
        p.validation.len(),
        validated[0]["validation"].as_array().unwrap().len()
    );
    // Four panels: the validation series are drawn in the bottom one only.
    let (w, _, px) = decode(&run.join(PROGRESS));
    let quarter = (HEIGHT - 36) / 4;
    let panel = |i: usize| (36 + i * quarter, 36 + (i + 1) * quarter);
    let first = rgb(VALIDATION[0]);
    assert!(
        count_colour(&px, w, panel(3), first) > 100,
        "validation series missing"
    );
    assert_eq!(count_colour(&px, w, panel(1), first), 0);
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn seconds_per_step_leave_out_the_time_spent_validating() {
    let recs = vec![
        serde_json::json!({"step": 10, "loss": 1.0, "seconds": 10.0, "seconds_validating": 0.0}),
        serde_json::json!({"step": 10, "validation": [["Dice b", 0.25], ["Dice a", 0.5]],
                           "seconds": 16.0, "seconds_validating": 6.0}),
        serde_json::json!({"step": 20, "loss": 0.5, "seconds": 26.0, "seconds_validating": 6.0}),
        serde_json::json!({"step": 30, "validation": [["Dice b", 0.75], ["Dice a", "not a number"]]}),
    ];
    let p = Progress::from_records(&recs);
    // (26 − 6 − 10) / 10: the 6 s of validation are not training time.
    assert_eq!(p.step_time, vec![(20.0, 1.0)]);
    assert_eq!(p.loss.len(), 2);
    // In the order the classes first appear.
    assert_eq!(
        p.validation[0],
        ("Dice b".to_string(), vec![(10.0, 0.25), (30.0, 0.75)])
    );
    assert_eq!(p.validation[1], ("Dice a".to_string(), vec![(10.0, 0.5)]));
}

#[test]
fn progress_series_skip_the_clock_restart_of_a_resumed_run() {
    let recs: Vec<serde_json::Value> = [
        (1, 3.0, 1e-3, 2.0),
        (5, 2.0, 2e-3, 6.0),
        (10, 1.5, 2e-3, 11.0),
        // Resumed at step 10: the clock starts again.
        (11, 1.4, 1e-3, 1.5),
        (15, 1.2, 5e-4, 5.5),
    ]
    .iter()
    .map(|&(s, l, lr, t)| serde_json::json!({"step": s, "loss": l, "lr": lr, "seconds": t}))
    .chain([serde_json::json!({"note": "not a step record"})])
    .collect();
    let p = Progress::from_records(&recs);
    assert_eq!(p.loss.len(), 5);
    assert_eq!(p.lr[4], (15.0, 5e-4));
    // (6 − 2) / 4, (11 − 6) / 5, then nothing across the restart, then (5.5 − 1.5) / 4.
    assert_eq!(p.step_time, vec![(5.0, 1.0), (10.0, 1.0), (15.0, 1.0)]);
}

#[test]
fn the_moving_mean_averages_its_window_and_keeps_the_steps() {
    assert_eq!(smoothing_half_width(7), 0);
    assert_eq!(smoothing_half_width(8), 1);
    assert_eq!(smoothing_half_width(400), 10);
    let pts: Vec<(f64, f64)> = (0..5).map(|i| (i as f64 * 10.0, i as f64)).collect();
    let s = smooth(&pts, 1);
    assert_eq!(
        s,
        vec![
            (0.0, 0.5),
            (10.0, 1.0),
            (20.0, 2.0),
            (30.0, 3.0),
            (40.0, 3.5)
        ]
    );
}

#[test]
fn a_log_without_losses_is_refused_with_its_name() {
    let dir = tmp("figure_empty");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log.jsonl");
    std::fs::write(&log, "{\"note\": 1}\n").unwrap();
    let e = format!(
        "{:#}",
        progress_figure(&log, &dir.join("p.png")).unwrap_err()
    );
    assert!(
        e.contains("log.jsonl") && e.contains("no loss values"),
        "{e}"
    );
    assert!(!dir.join("p.png").exists());
}

#[test]
fn slices_with_the_most_foreground_are_picked() {
    let fg = [0, 0, 3, 9, 4, 0, 7, 8, 2, 0];
    assert_eq!(pick_slices(&fg, 1), vec![3]);
    // The labelled extent 2..=8 in two runs: 2..5 and 5..9.
    assert_eq!(pick_slices(&fg, 2), vec![3, 7]);
    // More slices than labelled ones: each labelled slice once.
    assert_eq!(pick_slices(&fg, 20), vec![2, 3, 4, 5, 6, 7, 8]);
    // Nothing labelled: the middle of the whole extent is as good as any.
    assert_eq!(pick_slices(&[0, 0, 0], 1).len(), 1);
}

#[test]
fn overlays_show_truth_and_prediction_side_by_side_with_a_named_legend() {
    let (img, truth) = generate(&PhantomConfig::default(), 3);
    // A "prediction": the truth with the liver (6) missing and the spleen (1) kept.
    let pred = truth.with_data(
        truth
            .data
            .iter()
            .map(|&v| if v == 6.0 { 0.0 } else { v })
            .collect(),
    );
    let names: Vec<String> = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let ov = Overlay {
        image: &img,
        labels: vec![("truth", &truth), ("prediction", &pred)],
        names: &names,
        window: Window::new(-160.0, 240.0),
        slices: 1,
    };
    let out = render(&ov).unwrap();
    // 64×64 slices at 5 mm: enlarged to MIN_PANEL_PX (square pixels), two panels + legend.
    let panel = MIN_PANEL_PX;
    assert!(out.width > 2 * panel + 200, "width {}", out.width);
    assert!(out.height >= panel + 30, "height {}", out.height);
    // The liver is in the truth panel (left) only; the legend names it.
    let left = 8..8 + panel;
    let right = 8 + panel + 8..8 + 2 * panel + 8;
    let count_in = |cols: std::ops::Range<usize>, c: [u8; 3]| {
        let mut n = 0;
        for y in 0..out.height {
            for x in cols.clone() {
                if out.get(x, y) == c {
                    n += 1;
                }
            }
        }
        n
    };
    let liver = colour(6);
    assert!(
        count_in(left.clone(), liver) > 200,
        "liver outline in the truth panel"
    );
    assert_eq!(
        count_in(right.clone(), liver),
        0,
        "no liver in the prediction"
    );
    let legend = 8 + 2 * (panel + 8)..out.width;
    // A 16×16 swatch per class shown, the liver's among them.
    assert!(count_in(legend.clone(), liver) >= 16 * 16);
    // And text next to the swatches.
    let dark = (0..out.height)
        .flat_map(|y| legend.clone().map(move |x| (x, y)))
        .filter(|&(x, y)| out.get(x, y).iter().all(|&v| v < 60))
        .count();
    assert!(dark > 200, "legend text: {dark} dark pixels");

    let dir = tmp("overlay_png");
    let path = dir.join("overlay.png");
    write_overlay(&ov, &path).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), (out.width, out.height));
    assert_eq!(px, out.px);
    no_leftovers(&dir);
}

#[test]
fn overlays_keep_millimetres_square_on_anisotropic_slices() {
    let cfg = PhantomConfig {
        dims: [8, 20, 40],
        spacing: [5.0, 8.0, 2.0],
        ..PhantomConfig::default()
    };
    let (img, lab) = generate(&cfg, 1);
    let out = render(&Overlay {
        image: &img,
        labels: vec![("labels", &lab)],
        names: &[],
        window: Window::new(-160.0, 240.0),
        slices: 2,
    })
    .unwrap();
    // 40 × 2 mm wide, 20 × 8 mm high: 80 mm × 160 mm, the shorter side MIN_PANEL_PX.
    let panel_h = 2 * MIN_PANEL_PX;
    assert_eq!(out.height, 8 + 2 * (30 + panel_h + 8));
}
