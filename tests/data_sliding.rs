//! Sliding-window inference: the window grid, the three aggregations, and a
//! prediction over the real CT written back on the input's grid.

mod common;
use common::data_dir;

use std::path::PathBuf;
use voxdiff::data::resample::{resample_to_grid, resample_to_spacing, Interp, Outside};
use voxdiff::data::sliding::{argmax_channels, positions, Aggregation, SlidingWindow};
use voxdiff::data::{read_nifti, write_nifti_with, DataType, WriteOptions};

#[test]
fn window_starts_cover_the_axis_and_clamp_the_last() {
    assert_eq!(positions(10, 4, 0.5), vec![0, 2, 4, 6]);
    assert_eq!(positions(11, 4, 0.5), vec![0, 2, 4, 6, 7]);
    assert_eq!(positions(4, 4, 0.5), vec![0]);
    assert_eq!(positions(3, 4, 0.5), vec![0]);
    assert_eq!(positions(9, 4, 0.0), vec![0, 4, 5]);
    assert_eq!(
        positions(100, 3, 0.9),
        (0..=97).collect::<Vec<_>>(),
        "stride never drops below 1"
    );
    for n in 1..40 {
        for p in 1..12 {
            for ov in [0.0, 0.25, 0.5, 0.75] {
                let pos = positions(n, p, ov);
                let end = n.max(p);
                assert_eq!(
                    *pos.last().unwrap() + p,
                    end,
                    "n={n} p={p}: last window ends at the edge"
                );
                let mut covered = vec![false; end];
                for &s in &pos {
                    covered[s..s + p].iter_mut().for_each(|c| *c = true);
                }
                assert!(covered.iter().all(|&c| c), "n={n} p={p} ov={ov}: gap");
            }
        }
    }
}

#[test]
fn aggregation_weights_on_a_line() {
    // Two windows on 6 voxels: [0,4) outputs 1, [2,6) outputs 3.
    let img = vec![0.0f32; 6];
    let run = |agg| {
        let sw = SlidingWindow {
            patch: [1, 1, 4],
            overlap: 0.5,
            aggregation: agg,
        };
        sw.run(&img, [1, 1, 6], 1, 0.0, |_, win| {
            Ok(vec![if win.origin[2] == 0 { 1.0 } else { 3.0 }; 4])
        })
        .unwrap()
    };
    assert_eq!(run(Aggregation::Mean), vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    assert_eq!(
        run(Aggregation::CentreStitch),
        vec![1.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    );
    let g = run(Aggregation::Gaussian { sigma_scale: 0.125 });
    // σ = 0.125·4 = 0.5 voxels about the patch centre 1.5.
    let w = |x: f64| (-(x - 1.5f64).powi(2) / (2.0 * 0.25)).exp();
    let expect2 = (w(2.0) * 1.0 + w(0.0) * 3.0) / (w(2.0) + w(0.0));
    assert!(
        (g[2] as f64 - expect2).abs() < 1e-6,
        "{} vs {expect2}",
        g[2]
    );
    assert!((g[3] as f64 - (w(3.0) + 3.0 * w(1.0)) / (w(3.0) + w(1.0))).abs() < 1e-6);
    assert_eq!((g[0], g[5]), (1.0, 3.0));
}

#[test]
fn centre_stitching_writes_each_voxel_once_from_the_nearest_centre() {
    let dims = [9, 13, 17];
    let sw = SlidingWindow {
        patch: [4, 5, 6],
        overlap: 0.5,
        aggregation: Aggregation::CentreStitch,
    };
    let wins = sw.windows(dims);
    let img = vec![0.0f32; dims.iter().product()];
    let out = sw
        .run(&img, dims, 1, 0.0, |_, win| {
            let id = wins.iter().position(|w| w == win).unwrap() as f32;
            Ok(vec![id; 120])
        })
        .unwrap();
    for z in 0..9 {
        for y in 0..13 {
            for x in 0..17 {
                let p = [z, y, x];
                // Brute force: the covering window whose centre is nearest per axis.
                let best = (0..3)
                    .map(|a| {
                        let pos = positions(dims[a], sw.patch[a], 0.5);
                        let c = |s: usize| {
                            (s as f64 + (sw.patch[a] as f64 - 1.0) / 2.0 - p[a] as f64).abs()
                        };
                        let mut b = pos
                            .iter()
                            .position(|&s| p[a] >= s && p[a] < s + sw.patch[a])
                            .unwrap();
                        for (i, &s) in pos.iter().enumerate() {
                            if p[a] >= s && p[a] < s + sw.patch[a] && c(s) < c(pos[b]) {
                                b = i;
                            }
                        }
                        b
                    })
                    .collect::<Vec<_>>();
                let want = wins
                    .iter()
                    .position(|w| w.index == [best[0], best[1], best[2]])
                    .unwrap() as f32;
                assert_eq!(out[(z * 13 + y) * 17 + x], want, "voxel {p:?}");
            }
        }
    }
}

/// A deterministic per-voxel predictor: one-hot of air (< −500 HU), soft
/// tissue, bone (> 200 HU).
fn threshold_onehot(patch: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; patch.len() * 3];
    for (i, &v) in patch.iter().enumerate() {
        let c = if v < -500.0 {
            0
        } else if v > 200.0 {
            2
        } else {
            1
        };
        y[i * 3 + c] = 1.0;
    }
    y
}

#[test]
fn prediction_over_real_ct_lands_on_the_input_grid() {
    let Some(data) = data_dir() else { return };
    let ct_path = data.join("ct_abdomen/example_ct.nii.gz");
    let ct = read_nifti(&ct_path).unwrap();
    let whole = argmax_channels(&threshold_onehot(&ct.data), 3);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sliding");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, agg) in [
        ("mean", Aggregation::Mean),
        ("gaussian", Aggregation::Gaussian { sigma_scale: 0.125 }),
        ("centre", Aggregation::CentreStitch),
    ] {
        let sw = SlidingWindow {
            patch: [32, 48, 48],
            overlap: 0.5,
            aggregation: agg,
        };
        let mut calls = 0;
        let probs = sw
            .run(&ct.data, ct.dims, 3, -1024.0, |p, _| {
                calls += 1;
                Ok(threshold_onehot(p))
            })
            .unwrap();
        assert_eq!(calls, sw.windows(ct.dims).len());
        let pred = ct.with_data(argmax_channels(&probs, 3));
        let out = dir.join(format!("pred_{name}.nii.gz"));
        write_nifti_with(&pred, &out, WriteOptions::plain(DataType::U8)).unwrap();
        let back = read_nifti(&out).unwrap();
        assert_eq!(back.dims, ct.dims, "{name}: shape");
        assert_eq!(back.affine, ct.affine, "{name}: affine");
        back.check_same_grid(&ct, 0.0).unwrap();
        assert_eq!(back.source.as_ref().unwrap().datatype, DataType::U8);
        assert_eq!(
            back.data, whole,
            "{name}: sliding window equals the whole-volume prediction"
        );
    }
    // A patch larger than the volume along D: padded, then cropped back.
    let sw = SlidingWindow {
        patch: [128, 64, 64],
        overlap: 0.25,
        aggregation: Aggregation::Mean,
    };
    let probs = sw
        .run(&ct.data, ct.dims, 3, -1024.0, |p, _| {
            Ok(threshold_onehot(p))
        })
        .unwrap();
    assert_eq!(argmax_channels(&probs, 3), whole);
}

#[test]
fn prediction_at_another_spacing_resamples_back_onto_the_input_grid() {
    let Some(data) = data_dir() else { return };
    let ct = read_nifti(data.join("ct_abdomen/example_ct.nii.gz")).unwrap();
    let coarse = resample_to_spacing(&ct, [4.5, 4.5, 4.5], Interp::Linear).unwrap();
    assert_eq!(coarse.dims, [75, 67, 81]);
    // World position of voxel (0,0,0) is unchanged.
    assert_eq!(coarse.affine.apply([0.0; 3]), ct.affine.apply([0.0; 3]));
    let sw = SlidingWindow {
        patch: [32, 32, 32],
        overlap: 0.25,
        aggregation: Aggregation::Gaussian { sigma_scale: 0.125 },
    };
    let probs = sw
        .run(&coarse.data, coarse.dims, 3, -1024.0, |p, _| {
            Ok(threshold_onehot(p))
        })
        .unwrap();
    let pred = coarse.with_data(argmax_channels(&probs, 3));
    let back = resample_to_grid(
        &pred,
        ct.dims,
        &ct.affine,
        ct.spacing,
        Interp::Nearest,
        Outside::Clamp,
    )
    .unwrap();
    back.check_same_grid(&ct, 1e-9).unwrap();
    let whole = argmax_channels(&threshold_onehot(&ct.data), 3);
    let agree =
        back.data.iter().zip(&whole).filter(|(a, b)| a == b).count() as f64 / whole.len() as f64;
    assert!(
        agree > 0.95,
        "agreement with the full-resolution prediction {agree}"
    );
}

#[test]
fn multi_channel_input_windows_carry_every_channel() {
    // Two input channels (value, −value); the predictor returns channel 0 −
    // channel 1 = 2·value: the aggregate must be 2·value everywhere, padding
    // included (an axis shorter than the patch).
    let dims = [3, 10, 11];
    let vals: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|i| i as f32)
        .collect();
    let two: Vec<f32> = vals.iter().flat_map(|&v| [v, -v]).collect();
    for agg in [
        Aggregation::Mean,
        Aggregation::CentreStitch,
        Aggregation::Gaussian { sigma_scale: 0.125 },
    ] {
        let sw = SlidingWindow {
            patch: [4, 6, 6],
            overlap: 0.5,
            aggregation: agg,
        };
        let out = sw
            .run_channels(&two, dims, 2, 1, 0.0, |p, _| {
                Ok(p.chunks(2).map(|c| c[0] - c[1]).collect())
            })
            .unwrap();
        for (i, (&o, &v)) in out.iter().zip(&vals).enumerate() {
            assert!(
                (o - 2.0 * v).abs() <= 1e-4 * v.max(1.0),
                "{agg:?} voxel {i}: {o} vs {}",
                2.0 * v
            );
        }
    }
}

#[test]
fn oblique_lps_mr_prediction_goes_through_ras_and_back_onto_its_grid() {
    let Some(data) = data_dir() else { return };
    let path = data.join("mr_prostate/ProstateX-0000_t2_tse_tra.nii.gz");
    let mr = read_nifti(&path).unwrap();
    assert_eq!(mr.affine.orientation_code(), "LPS");
    let (canon, reo) = voxdiff::data::orient::to_canonical(&mr);
    assert_eq!(canon.affine.orientation_code(), "RAS");
    // A per-voxel predictor in the canonical frame: bright (> 300) vs dark.
    let onehot = |p: &[f32]| -> Vec<f32> {
        p.iter()
            .flat_map(|&v| if v > 300.0 { [0.0, 1.0] } else { [1.0, 0.0] })
            .collect()
    };
    let sw = SlidingWindow {
        patch: [16, 96, 96],
        overlap: 0.25,
        aggregation: Aggregation::Gaussian { sigma_scale: 0.125 },
    };
    let probs = sw
        .run(&canon.data, canon.dims, 2, 0.0, |p, _| Ok(onehot(p)))
        .unwrap();
    let pred_canon = canon.with_data(argmax_channels(&probs, 2));
    let pred = reo.undo(&pred_canon, &mr.affine).unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mr_pred.nii.gz");
    write_nifti_with(&pred, &out, WriteOptions::plain(DataType::U8)).unwrap();
    let back = read_nifti(&out).unwrap();
    back.check_same_grid(&mr, 0.0).unwrap();
    let want: Vec<f32> = mr
        .data
        .iter()
        .map(|&v| if v > 300.0 { 1.0 } else { 0.0 })
        .collect();
    assert_eq!(back.data, want);
    let h = voxdiff::data::nifti_io::read_header(&out).unwrap();
    let src = &mr.source.as_ref().unwrap().header;
    assert_eq!(
        (h.qform_code, h.sform_code, h.srow_x, h.quatern_b),
        (src.qform_code, src.sform_code, src.srow_x, src.quatern_b)
    );
}
