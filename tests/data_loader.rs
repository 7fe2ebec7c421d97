//! Patch sampling, augmentation and the prefetching loader: seeded,
//! reproducible for any worker count, class-balanced when asked.

use std::sync::Arc;
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::prelude::*;
use voxdiff::data::augment::{cut_patch, Augment};
use voxdiff::data::crop::extract_raw;
use voxdiff::data::intensity::Window;
use voxdiff::data::loader::{make_sample, Loader, LoaderConfig, PreparedCase};
use voxdiff::data::patch::{ClassIndex, PatchSampler};
use voxdiff::data::phantom::{generate, PhantomConfig};
use voxdiff::data::rng::Rng;
use voxdiff::data::Volume;
use voxdiff::tensor::DType;

fn cases(n: u64) -> Arc<Vec<PreparedCase>> {
    let cfg = PhantomConfig::default();
    Arc::new(
        (0..n)
            .map(|s| {
                let (mut img, lab) = generate(&cfg, s);
                Window::IMGX_CT.apply(&mut img.data);
                PreparedCase::new(format!("phantom{s}"), img, Some(lab), 0.0).unwrap()
            })
            .collect(),
    )
}

fn config(workers: usize, fg_prob: f64, augment: Augment) -> LoaderConfig {
    LoaderConfig {
        sampler: PatchSampler {
            size: [16, 24, 24],
            fg_prob,
        },
        augment,
        seed: 42,
        workers,
        prefetch: 3,
    }
}

#[test]
fn loader_stream_is_identical_for_any_worker_count() {
    let cs = cases(3);
    let take = |workers| {
        let mut l = Loader::new(cs.clone(), config(workers, 0.5, Augment::ct_default())).unwrap();
        (0..10)
            .map(|_| l.next_sample().unwrap())
            .collect::<Vec<_>>()
    };
    let one = take(1);
    let two = take(2);
    assert_eq!(one, two);
    for (i, s) in one.iter().enumerate() {
        assert_eq!(s.index, i as u64);
        assert_eq!(
            *s,
            make_sample(&cs, &config(1, 0.5, Augment::ct_default()), i as u64)
        );
    }
    // Each epoch of 3 samples visits every case once.
    for e in 0..3 {
        let mut seen: Vec<usize> = one[e * 3..e * 3 + 3].iter().map(|s| s.case).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
    }
    // A different seed gives a different stream.
    let mut other = config(1, 0.5, Augment::ct_default());
    other.seed = 43;
    assert_ne!(make_sample(&cs, &other, 0), one[0]);
}

#[test]
fn class_balanced_sampling_reaches_small_organs() {
    let cs = cases(2);
    let frac_with = |fg_prob: f64, class: f32| {
        let cfg = config(1, fg_prob, Augment::none());
        let n = 400;
        let hits = (0..n)
            .filter(|&i| make_sample(&cs, &cfg, i).label.unwrap().contains(&class))
            .count();
        hits as f64 / n as f64
    };
    // The right adrenal gland: 13 present classes, so ≥ 1/13 of balanced patches.
    let balanced = frac_with(1.0, 12.0);
    let uniform = frac_with(0.0, 12.0);
    assert!(
        balanced >= 0.06,
        "balanced sampling hits the adrenal in {balanced}"
    );
    assert!(
        balanced > uniform,
        "balanced {balanced} vs uniform {uniform}"
    );
    // With fg_prob = 1 every patch holds foreground.
    let cfg = config(1, 1.0, Augment::none());
    for i in 0..50 {
        assert!(make_sample(&cs, &cfg, i)
            .label
            .unwrap()
            .iter()
            .any(|&v| v > 0.0));
    }
}

#[test]
fn patch_origin_stays_inside_and_pads_short_axes() {
    let lab = Volume::new(vec![0.0; 10 * 20 * 30], [10, 20, 30], [1.0; 3]).unwrap();
    let ci = ClassIndex::new(&lab);
    let s = PatchSampler {
        size: [16, 8, 8],
        fg_prob: 0.5,
    };
    let mut rng = Rng::new(1);
    for _ in 0..200 {
        let o = s.origin(lab.dims, Some(&ci), &mut rng);
        assert_eq!(o[0], -3, "D shorter than the patch: centred with padding");
        assert!(
            (0..=12).contains(&o[1]) && (0..=22).contains(&o[2]),
            "{o:?}"
        );
    }
}

#[test]
fn spatial_augmentation_geometry() {
    let dims = [20, 22, 24];
    let img: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|i| i as f32)
        .collect();
    let lab: Vec<f32> = img.iter().map(|&v| (v as usize % 5) as f32).collect();
    let size = [8, 10, 12];
    let origin = [3, 4, 5];
    let mut rng = Rng::new(9);
    // No augmentation: a plain crop.
    let m = Augment::none().spatial_map([1.0; 3], origin, size, &mut rng);
    let (pi, pl) = cut_patch(&img, Some(&lab), dims, &m, size, -1.0);
    assert_eq!(pi, extract_raw(&img, dims, origin, size, -1.0));
    assert_eq!(pl.unwrap(), extract_raw(&lab, dims, origin, size, 0.0));
    // A flip of W only: the crop reversed along W.
    let flip = Augment {
        flip_prob: [0.0, 0.0, 1.0],
        ..Augment::none()
    };
    let m = flip.spatial_map([1.0; 3], origin, size, &mut rng);
    let (pi, _) = cut_patch(&img, None, dims, &m, size, -1.0);
    let crop = extract_raw(&img, dims, origin, size, -1.0);
    for row in 0..size[0] * size[1] {
        let a = &pi[row * 12..row * 12 + 12];
        let mut b = crop[row * 12..row * 12 + 12].to_vec();
        b.reverse();
        assert_eq!(a, &b[..]);
    }
    // Scale 2 about the patch centre, anisotropic spacing: index map is
    // src = c + 2 (p − c_p) on every axis (rotation 0, no shift).
    let zoom = Augment {
        affine_prob: 1.0,
        scale: [2.0, 2.0],
        ..Augment::none()
    };
    let m = zoom.spatial_map([3.0, 1.0, 0.5], origin, size, &mut rng);
    for p in [[0.0, 0.0, 0.0], [7.0, 9.0, 11.0], [2.0, 5.0, 1.0]] {
        let s = m.apply(p);
        for a in 0..3 {
            let cp = (size[a] as f64 - 1.0) / 2.0;
            let want = origin[a] as f64 + cp + 2.0 * (p[a] - cp);
            assert!((s[a] - want).abs() < 1e-12, "axis {a}: {} vs {want}", s[a]);
        }
    }
    // Rotations keep labels integer and within the original set (nearest).
    let rot = Augment {
        affine_prob: 1.0,
        rotate_deg: [30.0, 30.0, 30.0],
        ..Augment::none()
    };
    for k in 0..10 {
        let mut r = Rng::new(100 + k);
        let m = rot.spatial_map([2.0, 1.0, 1.0], origin, size, &mut r);
        let (_, l) = cut_patch(&img, Some(&lab), dims, &m, size, 0.0);
        assert!(l
            .unwrap()
            .iter()
            .all(|&v| v.fract() == 0.0 && (0.0..5.0).contains(&v)));
    }
}

#[test]
fn intensity_augmentation_is_seeded() {
    let aug = Augment {
        gamma_prob: 1.0,
        gamma: [0.5, 2.0],
        noise_prob: 1.0,
        noise_std: 0.1,
        ..Augment::none()
    };
    let base: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 99.0).collect();
    let run = |seed| {
        let mut x = base.clone();
        aug.intensity(&mut x, &mut Rng::new(seed));
        x
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    // Noise only: its standard deviation is the one asked for.
    let noise = Augment {
        noise_prob: 1.0,
        noise_std: 0.1,
        ..Augment::none()
    };
    let mut x = vec![0.0f32; 100_000];
    noise.intensity(&mut x, &mut Rng::new(1));
    let sd = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    assert!((sd - 0.1).abs() < 0.002, "noise sd {sd}");
    // Gamma only keeps the patch range.
    let g = Augment {
        gamma_prob: 1.0,
        gamma: [2.0, 2.0],
        ..Augment::none()
    };
    let mut y = base.clone();
    g.intensity(&mut y, &mut Rng::new(1));
    assert_eq!(y.iter().cloned().fold(f32::INFINITY, f32::min), 0.0);
    assert!((y.iter().cloned().fold(0.0, f32::max) - 1.0).abs() < 1e-6);
    assert!((y[50] - base[50] * base[50]).abs() < 1e-6);
}

#[test]
fn simulated_field_of_view_is_a_box_of_the_patch_padded_at_its_end_as_inference_pads() {
    let size = [8, 10, 12];
    let n: usize = size.iter().product();
    let [_, h, w] = size;
    let at = |i: usize| [i / (h * w), (i / w) % h, i % w];
    let index = |p: [usize; 3]| (p[0] * h + p[1]) * w + p[2];
    let aug = Augment {
        fov_prob: 1.0,
        fov_keep: 0.5,
        ..Augment::none()
    };
    let (mut moved, mut whole_axis, mut all_cut) = ([false; 3], [false; 3], false);
    for seed in 0..60 {
        // Voxel values are their own index + 1, so each kept value says
        // where in the patch it came from.
        let mut img: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
        let mut lab: Vec<f32> = (0..n).map(|i| (i % 5) as f32 + 1.0).collect();
        aug.fov_cut(&mut img, Some(&mut lab), size, -7.0, &mut Rng::new(seed));
        // The kept part is one box at the low corner; after it, fill and
        // background, as the sliding window pads a short scan at its end.
        let kept: Vec<usize> = (0..n).filter(|&i| img[i] != -7.0).collect();
        assert!(!kept.is_empty(), "seed {seed}: nothing kept");
        let mut hi = [0; 3];
        for &i in &kept {
            for a in 0..3 {
                hi[a] = hi[a].max(at(i)[a] + 1);
            }
        }
        // The box's source: where its first voxel came from.
        let src0 = at(img[0] as usize - 1);
        for i in 0..n {
            let p = at(i);
            let inside = (0..3).all(|a| p[a] < hi[a]);
            assert_eq!(
                inside,
                img[i] != -7.0,
                "seed {seed}: not one box at the low corner"
            );
            if inside {
                // A rigid shift of the patch's own voxels, the label with the image.
                let src = index([p[0] + src0[0], p[1] + src0[1], p[2] + src0[2]]);
                assert_eq!(img[i], 1.0 + src as f32, "seed {seed}: voxel {p:?}");
                assert_eq!(lab[i], (src % 5) as f32 + 1.0, "seed {seed}: label {p:?}");
            } else {
                assert_eq!(lab[i], 0.0, "seed {seed}: outside is background");
            }
        }
        for a in 0..3 {
            assert!(hi[a] >= size[a] / 2, "seed {seed}: kept less than half");
            assert!(
                src0[a] + hi[a] <= size[a],
                "seed {seed}: box leaves the patch"
            );
            moved[a] |= src0[a] > 0;
            whole_axis[a] |= hi[a] == size[a];
        }
        all_cut |= (0..3).all(|a| hi[a] < size[a] && src0[a] > 0);
    }
    assert_eq!(moved, [true; 3], "the box starts anywhere, on every axis");
    assert_eq!(whole_axis, [true; 3], "an axis may be left whole");
    assert!(
        all_cut,
        "boxes cut inside the patch on all three axes, as a crop around an organ"
    );
    // Off: nothing is drawn, nothing changes.
    let mut r = Rng::new(1);
    let mut img = vec![1.0f32; n];
    Augment::none().fov_cut(&mut img, None, size, 0.0, &mut r);
    assert!(img.iter().all(|&v| v == 1.0));
    assert_eq!(r.next_u64(), Rng::new(1).next_u64());
}

#[test]
fn samples_and_volumes_upload_as_ndhwc_tensors() {
    let b = CpuBackend::new();
    let cs = cases(1);
    let s = make_sample(&cs, &config(1, 0.5, Augment::none()), 0);
    let (img, lab) = s.to_tensors(&b, DType::F32).unwrap();
    assert_eq!(img.shape().dims(), &[1, 16, 24, 24, 1]);
    assert_eq!(b.download(&img).unwrap(), s.image);
    assert_eq!(b.download(&lab.unwrap()).unwrap(), s.label.unwrap());
    let vol = &cs[0].image;
    let t = vol.to_tensor(&b, DType::F32).unwrap();
    assert_eq!(t.shape().dims(), &[1, 48, 64, 64, 1]);
    let back = Volume::from_tensor(&b, &t, 0, vol).unwrap();
    assert_eq!(back.data, vol.data);
    assert_eq!(back.affine, vol.affine);
    // Channel c of a 2-channel tensor.
    let two: Vec<f32> = vol.data.iter().flat_map(|&v| [v, -v]).collect();
    let t2 = b
        .upload(
            &two,
            voxdiff::tensor::Shape::ndhwc(1, 48, 64, 64, 2),
            DType::F32,
        )
        .unwrap();
    let c1 = Volume::from_tensor(&b, &t2, 1, vol).unwrap();
    assert_eq!(c1.data[100], -vol.data[100]);
    assert!(Volume::from_tensor(&b, &t2, 2, vol).is_err());
}

#[test]
fn loader_prepares_samples_while_the_consumer_is_busy() {
    let cs = cases(2);
    let mut cfg = config(2, 0.5, Augment::ct_default());
    cfg.prefetch = 3;
    let mut loader = Loader::new(cs, cfg).unwrap();
    // A "training step" that takes a while: meanwhile both workers fill
    // their queues (2 workers × 3 samples).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let t = std::time::Instant::now();
    for i in 0..6 {
        assert_eq!(loader.next_sample().unwrap().index, i);
    }
    let waited = t.elapsed();
    assert!(
        waited < std::time::Duration::from_millis(200),
        "ready samples took {waited:?} to hand over"
    );
}
