//! Preprocessing (windows, z-norm, resampling, body crop, pad/crop), class
//! maps, datasets and k-fold splits.

mod common;
use common::{data_dir, tmp};

use voxdiff::data::crop::{centre_pad_crop, crop_to_body, extract, largest_component};
use voxdiff::data::dataset::{kfold, pair_folder, read_msd};
use voxdiff::data::intensity::{mean_std, z_normalize, Window};
use voxdiff::data::resample::{resample_to_spacing, Interp};
use voxdiff::data::{read_nifti, Affine, ClassMap, Volume};

#[test]
fn windows_and_z_normalisation() {
    let w = Window::IMGX_CT;
    assert_eq!(w.map(-991.0), 0.0);
    assert_eq!(w.map(362.0), 1.0);
    assert_eq!(w.map(-2000.0), 0.0);
    assert_eq!(w.map(3000.0), 1.0);
    assert!((w.map(-314.5) - 0.5).abs() < 1e-6);
    assert!((w.unmap(0.5) + 314.5).abs() < 1e-3);
    let v = Window::VOX2VEC_CT;
    assert!((v.map(-175.0) - 0.5).abs() < 1e-6);
    let mut x: Vec<f32> = (0..1000).map(|i| (i as f32).sin() * 30.0 + 7.0).collect();
    z_normalize(&mut x, None);
    let (m, s) = mean_std(&x, None);
    assert!(m.abs() < 1e-5 && (s - 1.0).abs() < 1e-5);
    // With a mask, statistics come from the masked voxels only.
    let mut y = vec![100.0f32, 102.0, -5000.0];
    let mask = [true, true, false];
    let (mm, ss) = z_normalize(&mut y, Some(&mask));
    assert_eq!((mm, ss), (101.0, 1.0));
    assert_eq!(&y[..2], &[-1.0, 1.0]);
}

#[test]
fn resampling_preserves_world_positions_and_linear_ramps() {
    // A ramp linear in world coordinates is reproduced exactly by trilinear.
    let dims = [12, 10, 14];
    let sp = [3.0, 2.0, 1.5];
    let mut v = Volume::new(vec![0.0; 12 * 10 * 14], dims, sp).unwrap();
    v.affine = Affine::diagonal([1.5, 2.0, 3.0], [10.0, -4.0, 7.0]);
    let f = |p: [f64; 3]| (0.5 * p[0] - 0.25 * p[1] + 0.125 * p[2]) as f32;
    for k in 0..12 {
        for j in 0..10 {
            for i in 0..14 {
                let idx = v.idx(k, j, i);
                v.data[idx] = f(v.affine.apply([i as f64, j as f64, k as f64]));
            }
        }
    }
    let r = resample_to_spacing(&v, [2.0, 1.0, 2.5], Interp::Linear).unwrap();
    assert_eq!(r.dims, [18, 20, 8]);
    assert_eq!(r.affine.apply([0.0; 3]), v.affine.apply([0.0; 3]));
    let [_, h, w] = r.dims;
    for k in 0..r.dims[0] {
        for j in 0..h {
            for i in 0..w {
                let world = r.affine.apply([i as f64, j as f64, k as f64]);
                // Inside the source extent (clamping applies beyond it).
                let src = v.affine.inverse().unwrap().apply(world);
                if src
                    .iter()
                    .zip([14.0, 10.0, 12.0])
                    .all(|(&s, n)| s <= n - 1.0)
                {
                    assert!((r.at(k, j, i) - f(world)).abs() < 1e-3, "({k},{j},{i})");
                }
            }
        }
    }
    // Nearest keeps label ids.
    let lab = v.with_data(v.data.iter().map(|x| (x.abs() as u32 % 4) as f32).collect());
    let rl = resample_to_spacing(&lab, [1.0, 1.0, 1.0], Interp::Nearest).unwrap();
    assert!(rl
        .data
        .iter()
        .all(|&x| x.fract() == 0.0 && (0.0..4.0).contains(&x)));
}

#[test]
fn pad_crop_round_trips_and_keeps_world_positions() {
    let v = Volume::new(
        (0..6 * 7 * 8).map(|i| i as f32).collect(),
        [6, 7, 8],
        [2.0, 1.0, 1.0],
    )
    .unwrap();
    let (p, pc) = centre_pad_crop(&v, [10, 5, 8], -7.0);
    assert_eq!(p.dims, [10, 5, 8]);
    assert_eq!(pc.origin, [-2, 1, 0]);
    assert_eq!(p.at(0, 0, 0), -7.0, "padding");
    assert_eq!(p.at(2, 0, 0), v.at(0, 1, 0));
    // The same world point holds the same value.
    let world = v.affine.apply([3.0, 4.0, 2.0]);
    let q = p
        .affine
        .inverse()
        .unwrap()
        .apply(world)
        .map(|x| x.round() as usize);
    assert_eq!(p.at(q[2], q[1], q[0]), v.at(2, 4, 3));
    let back = pc.undo(&p, -7.0);
    assert_eq!(back.dims, v.dims);
    assert_eq!(back.affine, v.affine);
    for k in 0..6 {
        for j in 0..7 {
            let want = if (1..6).contains(&j) {
                v.at(k, j, 5)
            } else {
                -7.0
            };
            assert_eq!(back.at(k, j, 5), want);
        }
    }
    let e = extract(&v, [-1, -1, -1], [8, 9, 10], 0.0);
    assert_eq!(e.at(1, 1, 1), v.at(0, 0, 0));
}

#[test]
fn largest_component_keeps_the_biggest_blob() {
    let dims = [1, 5, 7];
    #[rustfmt::skip]
    let m: Vec<bool> = [
        1, 1, 0, 0, 0, 0, 1,
        1, 0, 0, 1, 1, 0, 0,
        0, 0, 0, 1, 1, 1, 0,
        0, 0, 0, 0, 1, 0, 0,
        1, 0, 0, 0, 0, 0, 0,
    ].iter().map(|&v| v == 1).collect();
    let l = largest_component(&m, dims);
    assert_eq!(l.iter().filter(|&&b| b).count(), 6);
    assert!(l[10] && l[25] && !l[24] && !l[0] && !l[6]);
}

#[test]
fn body_crop_of_real_ct_keeps_every_organ() {
    let Some(data) = data_dir() else { return };
    let ct = read_nifti(data.join("ct_abdomen/example_ct.nii.gz")).unwrap();
    let seg = read_nifti(data.join("ct_abdomen/example_seg_fast_force_split.nii.gz")).unwrap();
    let (body, labs) = crop_to_body(&ct, &[&seg], -500.0, 2).unwrap();
    let lab = &labs[0];
    assert!(
        body.numel() < ct.numel(),
        "crop removed air: {:?} of {:?}",
        body.dims,
        ct.dims
    );
    let count = |v: &Volume| v.data.iter().filter(|&&x| x > 0.0).count();
    assert_eq!(count(lab), count(&seg), "no labelled voxel lost");
    // Same world point, same value.
    let world = body.affine.apply([10.0, 20.0, 30.0]);
    let q = ct
        .affine
        .inverse()
        .unwrap()
        .apply(world)
        .map(|x| x.round() as usize);
    assert_eq!(body.at(30, 20, 10), ct.at(q[2], q[1], q[0]));
    let (lo, _) = body.min_max();
    assert!(
        lo < -900.0,
        "air inside the body box is kept (lungs, bowel gas)"
    );
}

#[test]
fn class_maps_in_three_layouts() {
    let dir = tmp("maps");
    let native = dir.join("native.json");
    std::fs::write(
        &native,
        r#"{"classes": [{"name": "liver", "ids": [5]}, {"name": "kidneys", "ids": [2, 3]}]}"#,
    )
    .unwrap();
    let m = ClassMap::read(&native).unwrap();
    assert_eq!(m.names, vec!["liver", "kidneys"]);
    let v = Volume::new(vec![0.0, 5.0, 2.0, 3.0, 9.0], [1, 1, 5], [1.0; 3]).unwrap();
    assert_eq!(m.remap(&v).unwrap().data, vec![0.0, 1.0, 2.0, 2.0, 0.0]);
    let msd = dir.join("msd.json");
    std::fs::write(
        &msd,
        r#"{"0": "background", "2": "tumour", "1": "pancreas"}"#,
    )
    .unwrap();
    let m = ClassMap::read(&msd).unwrap();
    assert_eq!(m.names, vec!["pancreas", "tumour"]);
    if let Some(data) = data_dir() {
        let ct = data.join("ct_abdomen");
        let m = ClassMap::read(ct.join("btcv13_to_totalseg_ids.json")).unwrap();
        assert_eq!(m.num_classes(), 13);
        assert_eq!(m.names[7], "aorta");
        assert_eq!(m.source_ids[7], vec![52]);
        let seg = m
            .remap(&read_nifti(ct.join("example_seg.nii.gz")).unwrap())
            .unwrap();
        assert_eq!(
            seg.data.iter().filter(|&&x| x == 1.0).count(),
            9452,
            "spleen voxels as the reference counts"
        );
        assert!(seg.data.iter().all(|&x| (0.0..=13.0).contains(&x)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn datasets_pair_by_name_and_read_msd_json() {
    let dir = tmp("ds");
    let (im, lb) = (dir.join("imagesTr"), dir.join("labelsTr"));
    std::fs::create_dir_all(&im).unwrap();
    std::fs::create_dir_all(&lb).unwrap();
    for c in ["case_b", "case_a"] {
        std::fs::write(im.join(format!("{c}_0000.nii.gz")), b"x").unwrap();
        std::fs::write(lb.join(format!("{c}.nii.gz")), b"x").unwrap();
    }
    let cases = pair_folder(&im, Some(&lb)).unwrap();
    assert_eq!(
        cases.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec!["case_a", "case_b"]
    );
    assert_eq!(cases[0].label.as_ref().unwrap(), &lb.join("case_a.nii.gz"));
    std::fs::write(im.join("case_c_0000.nii.gz"), b"x").unwrap();
    let e = format!("{:#}", pair_folder(&im, Some(&lb)).unwrap_err());
    assert!(
        e.contains("no label for image") && e.contains("case_c"),
        "{e}"
    );
    std::fs::write(
        dir.join("dataset.json"),
        r#"{"name": "Toy", "labels": {"0": "background", "1": "organ"},
            "training": [{"image": "./imagesTr/case_a_0000.nii.gz", "label": "./labelsTr/case_a.nii.gz"}],
            "test": ["./imagesTr/case_c_0000.nii.gz"]}"#,
    )
    .unwrap();
    let ds = read_msd(&dir.join("dataset.json")).unwrap();
    assert_eq!(ds.name, "Toy");
    assert_eq!(ds.training.len(), 1);
    assert_eq!(ds.training[0].id, "case_a");
    assert_eq!(ds.test[0].id, "case_c");
    assert_eq!(ds.labels[&1], "organ");
    std::fs::write(
        dir.join("bad.json"),
        r#"{"training": [{"image": "./nope.nii.gz"}]}"#,
    )
    .unwrap();
    let e = format!("{:#}", read_msd(&dir.join("bad.json")).unwrap_err());
    assert!(
        e.contains("bad.json") && e.contains("nope.nii.gz") && e.contains("does not exist"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kfold_splits_are_disjoint_covering_balanced_and_seeded() {
    let n = 23;
    let k = 5;
    let mut all_val = Vec::new();
    let test0 = kfold(n, k, 0, 7, 0.2).unwrap().test;
    assert_eq!(test0.len(), 5);
    for f in 0..k {
        let s = kfold(n, k, f, 7, 0.2).unwrap();
        assert_eq!(s.test, test0, "the test set does not depend on the fold");
        assert_eq!(s.train.len() + s.val.len() + s.test.len(), n);
        for i in &s.val {
            assert!(!s.train.contains(i) && !s.test.contains(i));
        }
        assert!(s.val.len() == 3 || s.val.len() == 4, "18 cases in 5 folds");
        all_val.extend(s.val);
    }
    all_val.sort();
    let mut rest: Vec<usize> = (0..n).filter(|i| !test0.contains(i)).collect();
    rest.sort();
    assert_eq!(
        all_val, rest,
        "validation folds partition the non-test cases"
    );
    assert_eq!(
        kfold(n, k, 2, 7, 0.2).unwrap(),
        kfold(n, k, 2, 7, 0.2).unwrap()
    );
    assert_ne!(
        kfold(n, k, 2, 7, 0.2).unwrap(),
        kfold(n, k, 2, 8, 0.2).unwrap()
    );
    assert!(kfold(3, 5, 0, 1, 0.0).is_err());
}
