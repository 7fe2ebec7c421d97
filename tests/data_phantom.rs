//! The synthetic abdomen: deterministic, all 13 organs, plausible anatomy and
//! HU values; written as NIfTI (its overlays are in tests/figures.rs).

use voxdiff::data::phantom::{generate, PhantomConfig, CLASS_NAMES, NUM_CLASSES};
use voxdiff::data::{read_nifti, write_nifti_with, DataType, Volume, WriteOptions};

fn world_centroid(img: &Volume, lab: &Volume, class: u32) -> ([f64; 3], usize) {
    let [_, h, w] = lab.dims;
    let (mut s, mut n) = ([0.0; 3], 0usize);
    for (i, &v) in lab.data.iter().enumerate() {
        if v as u32 == class {
            let p = img
                .affine
                .apply([(i % w) as f64, ((i / w) % h) as f64, (i / (h * w)) as f64]);
            for a in 0..3 {
                s[a] += p[a];
            }
            n += 1;
        }
    }
    (s.map(|v| v / n.max(1) as f64), n)
}

fn mean_hu(img: &Volume, lab: &Volume, class: u32) -> f64 {
    let v: Vec<f64> = img
        .data
        .iter()
        .zip(&lab.data)
        .filter(|(_, &l)| l as u32 == class)
        .map(|(&x, _)| x as f64)
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn phantom_is_deterministic_and_seed_dependent() {
    let cfg = PhantomConfig::default();
    let (a_img, a_lab) = generate(&cfg, 7);
    let (b_img, b_lab) = generate(&cfg, 7);
    assert_eq!(a_img.data, b_img.data);
    assert_eq!(a_lab.data, b_lab.data);
    let (c_img, c_lab) = generate(&cfg, 8);
    assert_ne!(a_img.data, c_img.data);
    assert_ne!(a_lab.data, c_lab.data);
}

#[test]
fn phantom_has_every_organ_in_a_plausible_place() {
    assert_eq!(NUM_CLASSES, 14);
    for seed in 0..4 {
        let cfg = PhantomConfig::default();
        let (img, lab) = generate(&cfg, seed);
        assert_eq!(img.dims, [48, 64, 64]);
        assert_eq!(img.affine.orientation_code(), "RAS");
        for c in 1..NUM_CLASSES as u32 {
            let (_, n) = world_centroid(&img, &lab, c);
            assert!(
                n >= 3,
                "seed {seed}: {} has {n} voxels",
                CLASS_NAMES[c as usize]
            );
        }
        let x = |c| world_centroid(&img, &lab, c).0[0];
        let y = |c| world_centroid(&img, &lab, c).0[1];
        let z = |c| world_centroid(&img, &lab, c).0[2];
        // RAS: +x is the patient's right.
        assert!(x(6) > 0.0 && x(1) < 0.0, "liver right, spleen left");
        assert!(x(2) > 0.0 && x(3) < 0.0, "kidneys on their sides");
        assert!(x(12) > 0.0 && x(13) < 0.0, "adrenals on their sides");
        assert!(y(2) < y(6) && y(8) < y(7), "kidneys and aorta posterior");
        assert!(z(12) > z(2) && z(13) > z(3), "adrenals above the kidneys");
        assert!(z(5) > z(6) - 10.0, "esophagus at the top");
        let liver = mean_hu(&img, &lab, 6);
        assert!((liver - 60.0).abs() < 5.0, "liver {liver} HU");
        assert!(mean_hu(&img, &lab, 8) > 150.0, "contrast aorta");
        let (lo, hi) = img.min_max();
        assert!(
            lo < -950.0 && hi > 600.0,
            "air and bone present: [{lo}, {hi}]"
        );
        assert!(img.data[0] < -900.0, "corner is air");
        let liver_frac = lab.data.iter().filter(|&&v| v == 6.0).count() as f64 / lab.numel() as f64;
        assert!(
            (0.02..0.2).contains(&liver_frac),
            "liver fraction {liver_frac}"
        );
    }
}

#[test]
fn phantom_sizes_are_configurable_and_write_as_nifti() {
    let cfg = PhantomConfig {
        dims: [20, 33, 41],
        spacing: [7.0, 6.0, 5.0],
        noise_hu: 0.0,
    };
    let (img, lab) = generate(&cfg, 1);
    assert_eq!(img.dims, [20, 33, 41]);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("phantom");
    std::fs::create_dir_all(&dir).unwrap();
    write_nifti_with(
        &img,
        dir.join("ct.nii.gz"),
        WriteOptions::plain(DataType::I16),
    )
    .unwrap();
    write_nifti_with(
        &lab,
        dir.join("seg.nii.gz"),
        WriteOptions::plain(DataType::U8),
    )
    .unwrap();
    let r = read_nifti(dir.join("ct.nii.gz")).unwrap();
    assert_eq!(r.data, img.data);
    assert!(r.affine.max_abs_diff(&img.affine) < 1e-4);
    assert_eq!(r.spacing, [7.0, 6.0, 5.0]);
    assert_eq!(read_nifti(dir.join("seg.nii.gz")).unwrap().data, lab.data);
}
