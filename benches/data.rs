//! Data pipeline throughput on the real CT (../shared/data, or $VOXDIFF_DATA;
//! the phantom stands in where it is absent):
//! - load: read + gunzip + decode example_ct.nii.gz;
//! - preprocess: reorient to RAS, resample 3 mm → 2×1×1 mm (D×H×W, the
//!   pretraining spacing), crop to the body, HU window;
//! - patch: class-balanced origin + cut (+ augmentation) of one patch;
//! - loader: patches through the prefetching loader with 2 workers.
//! Throughput is reported as elements (patches or volumes) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use voxdiff::data::augment::{cut_patch, Augment};
use voxdiff::data::crop::crop_to_body;
use voxdiff::data::intensity::Window;
use voxdiff::data::loader::{Loader, LoaderConfig, PreparedCase};
use voxdiff::data::orient::to_canonical;
use voxdiff::data::patch::PatchSampler;
use voxdiff::data::phantom::{generate, PhantomConfig};
use voxdiff::data::resample::{resample_to_spacing, Interp};
use voxdiff::data::rng::Rng;
use voxdiff::data::{read_nifti, ClassMap, Volume};

fn data_dir() -> Option<PathBuf> {
    let p = std::env::var_os("VOXDIFF_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if p.join("ct_abdomen").is_dir() {
        Some(p)
    } else {
        eprintln!(
            "skipping: ../shared/data not found (looked in {}); benchmarking the phantom",
            p.display()
        );
        None
    }
}

/// The CT (HU) and its 13-organ label map on the same grid.
fn source() -> (Option<PathBuf>, Volume, Volume) {
    match data_dir() {
        Some(d) => {
            let ct_path = d.join("ct_abdomen/example_ct.nii.gz");
            let ct = read_nifti(&ct_path).unwrap();
            let map = ClassMap::read(d.join("ct_abdomen/btcv13_to_totalseg_ids.json")).unwrap();
            let lab = map
                .remap(
                    &read_nifti(d.join("ct_abdomen/example_seg_fast_force_split.nii.gz")).unwrap(),
                )
                .unwrap();
            (Some(ct_path), ct, lab)
        }
        None => {
            let (ct, lab) = generate(
                &PhantomConfig {
                    dims: [112, 101, 122],
                    spacing: [3.0; 3],
                    noise_hu: 12.0,
                },
                0,
            );
            (None, ct, lab)
        }
    }
}

fn preprocess(ct: &Volume, lab: &Volume) -> (Volume, Volume) {
    let (ct, _) = to_canonical(ct);
    let (lab, _) = to_canonical(lab);
    let target = [2.0, 1.0, 1.0];
    let ct = resample_to_spacing(&ct, target, Interp::Linear).unwrap();
    let lab = resample_to_spacing(&lab, target, Interp::Nearest).unwrap();
    let (mut ct, labs) = crop_to_body(&ct, &[&lab], -500.0, 4).unwrap();
    Window::IMGX_CT.apply(&mut ct.data);
    (ct, labs.into_iter().next().unwrap())
}

fn bench(c: &mut Criterion) {
    let (path, ct, lab) = source();
    let mut g = c.benchmark_group("data");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    if let Some(p) = &path {
        g.throughput(Throughput::Elements(1));
        g.bench_function("load_ct_nii_gz", |b| b.iter(|| read_nifti(p).unwrap()));
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("preprocess_ct_to_2x1x1mm", |b| {
        b.iter(|| preprocess(&ct, &lab))
    });
    let (pct, plab) = preprocess(&ct, &lab);
    eprintln!(
        "preprocessed CT: {:?} voxels at {:?} mm",
        pct.dims, pct.spacing
    );
    let case = PreparedCase::new("ct", pct, Some(plab), 0.0).unwrap();
    for size in [[32, 128, 128], [64, 64, 64]] {
        let name = format!("{}x{}x{}", size[0], size[1], size[2]);
        let sampler = PatchSampler { size, fg_prob: 0.5 };
        for (aug_name, aug) in [
            ("crop_only", Augment::none()),
            ("ct_default", Augment::ct_default()),
            (
                "affine_always",
                Augment {
                    affine_prob: 1.0,
                    noise_prob: 1.0,
                    gamma_prob: 1.0,
                    intensity_prob: 1.0,
                    ..Augment::ct_default()
                },
            ),
        ] {
            let mut i = 0u64;
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("patch_{name}_{aug_name}"), |b| {
                b.iter(|| {
                    i += 1;
                    let mut rng = Rng::derive(1, &[i]);
                    let o = sampler.origin(case.image.dims, case.classes.as_ref(), &mut rng);
                    let m = aug.spatial_map(case.image.spacing, o, size, &mut rng);
                    let (mut img, l) = cut_patch(
                        &case.image.data,
                        case.label.as_ref().map(|v| v.data.as_slice()),
                        case.image.dims,
                        &m,
                        size,
                        0.0,
                    );
                    aug.intensity(&mut img, &mut rng);
                    (img, l)
                })
            });
        }
    }
    let cases = Arc::new(vec![case]);
    for size in [[32, 128, 128], [64, 64, 64]] {
        let cfg = LoaderConfig {
            sampler: PatchSampler { size, fg_prob: 0.5 },
            augment: Augment::ct_default(),
            seed: 3,
            workers: 2,
            prefetch: 4,
        };
        let mut loader = Loader::new(cases.clone(), cfg).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(
            format!(
                "loader_2workers_{}x{}x{}_ct_default",
                size[0], size[1], size[2]
            ),
            |b| b.iter(|| loader.next_sample().unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
