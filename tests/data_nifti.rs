//! NIfTI round trips (every datatype, scaling, real CT), cross-checked with
//! the `nifti` crate's own reader, and reorientation to RAS and back.

mod common;
use common::{data_dir, tmp};

use voxdiff::data::affine::{Affine, Quatern};
use voxdiff::data::nifti_io::{read_header, write_nifti_with};
use voxdiff::data::orient::to_canonical;
use voxdiff::data::{read_nifti, write_nifti, DataType, Volume, WriteOptions};

/// An oblique, left-handed (qfac −1) affine with anisotropic spacing.
fn oblique_affine(spacing_ijk: [f64; 3]) -> Affine {
    let (a, b) = (0.3f64, -0.2f64);
    // R = Rz(a) · Rx(b), then flip k (a left-handed grid).
    let rz = [
        [a.cos(), -a.sin(), 0.0],
        [a.sin(), a.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, b.cos(), -b.sin()],
        [0.0, b.sin(), b.cos()],
    ];
    let mut m = Affine::IDENTITY.0;
    for r in 0..3 {
        for c in 0..3 {
            let v: f64 = (0..3).map(|k| rz[r][k] * rx[k][c]).sum();
            m[r][c] = v * spacing_ijk[c] * if c == 2 { -1.0 } else { 1.0 };
        }
    }
    m[0][3] = -120.5;
    m[1][3] = 33.25;
    m[2][3] = 80.0;
    Affine(m)
}

/// Values every datatype can hold exactly, including its extremes where f32 can.
fn values_for(dt: DataType, n: usize) -> Vec<f32> {
    let (lo, hi) = dt.range();
    let lo = lo.max(-(1 << 24) as f64) as f32;
    let hi = hi.min((1 << 24) as f64) as f32;
    (0..n)
        .map(|i| match i % 7 {
            0 => lo,
            1 => hi,
            2 => 0.0,
            _ if dt.is_float() => (i as f32 * 0.37 - 11.0) * 1.5,
            _ => ((i * 7919) % (hi - lo).min(65_000.0) as usize) as f32 + lo,
        })
        .collect()
}

#[test]
fn round_trip_keeps_data_affine_and_datatype_for_every_datatype() {
    let dir = tmp("dtypes");
    let dims = [5, 6, 7];
    let spacing = [2.5, 0.75, 0.8];
    for dt in DataType::ALL {
        let data = values_for(dt, dims.iter().product());
        let mut v = Volume::new(data.clone(), dims, spacing).unwrap();
        v.affine = oblique_affine([spacing[2], spacing[1], spacing[0]]);
        for ext in ["nii", "nii.gz"] {
            let p = dir.join(format!("{}.{ext}", dt.name()));
            write_nifti_with(&v, &p, WriteOptions::plain(dt)).unwrap();
            let r = read_nifti(&p).unwrap();
            assert_eq!(
                r.source.as_ref().unwrap().datatype,
                dt,
                "{}: datatype",
                dt.name()
            );
            assert_eq!(r.dims, dims);
            assert_eq!(r.data, data, "{} .{ext}: data", dt.name());
            for a in 0..3 {
                assert!(
                    (r.spacing[a] - spacing[a]).abs() < 1e-6,
                    "{}: spacing",
                    dt.name()
                );
            }
            // The file stores the affine as f32: equal to f32 precision.
            let diff = r.affine.max_abs_diff(&v.affine);
            assert!(diff < 2e-5, "{}: affine differs by {diff}", dt.name());
            // Second round: bit-identical header geometry and data.
            let p2 = dir.join(format!("again_{}.{ext}", dt.name()));
            write_nifti(&r, &p2).unwrap();
            let r2 = read_nifti(&p2).unwrap();
            assert_eq!(
                r2.affine,
                r.affine,
                "{}: affine after a second round",
                dt.name()
            );
            assert_eq!(r2.data, r.data);
            assert_eq!(r2.source.unwrap().datatype, dt);

            // The nifti crate reads what voxdiff wrote to the same values.
            let obj = nifti::ReaderOptions::new().read_file(&p).unwrap();
            use nifti::{IntoNdArray, NiftiObject};
            let arr = obj.into_volume().into_ndarray::<f64>().unwrap();
            let [d, h, w] = dims;
            assert_eq!(arr.shape(), &[w, h, d]);
            for (k, j, i) in [(0, 0, 0), (1, 2, 3), (d - 1, h - 1, w - 1), (3, 5, 6)] {
                let want = data[(k * h + j) * w + i] as f64;
                assert_eq!(
                    arr[[i, j, k]],
                    want,
                    "{}: crate reader at ({i},{j},{k})",
                    dt.name()
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scaled_int16_round_trip_keeps_values_and_scaling() {
    let dir = tmp("scaled");
    let dims = [3, 4, 5];
    let data: Vec<f32> = (0..60).map(|i| (i as f32 - 30.0) * 0.5 - 1024.0).collect();
    let v = Volume::new(data.clone(), dims, [1.0, 1.0, 1.0]).unwrap();
    let opt = WriteOptions {
        datatype: DataType::I16,
        scl_slope: 0.5,
        scl_inter: -1024.0,
    };
    let p = dir.join("scaled.nii.gz");
    write_nifti_with(&v, &p, opt).unwrap();
    let h = read_header(&p).unwrap();
    assert_eq!((h.scl_slope, h.scl_inter, h.datatype), (0.5, -1024.0, 4));
    let r = read_nifti(&p).unwrap();
    assert_eq!(r.data, data);
    // Writing back uses the source's representation.
    let p2 = dir.join("scaled2.nii");
    write_nifti(&r, &p2).unwrap();
    let h2 = read_header(&p2).unwrap();
    assert_eq!((h2.scl_slope, h2.scl_inter, h2.datatype), (0.5, -1024.0, 4));
    assert_eq!(read_nifti(&p2).unwrap().data, data);
    // A value the scaling cannot represent in int16 is an error, not a clamp.
    let bad = v.with_data(vec![1e6; 60]);
    let err = write_nifti_with(&bad, dir.join("bad.nii"), opt).unwrap_err();
    assert!(
        format!("{err:#}").contains("outside the int16 range"),
        "{err:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_ct_round_trip_is_exact() {
    let Some(data) = data_dir() else { return };
    let dir = tmp("ct");
    for name in [
        "example_ct.nii.gz",
        "example_seg.nii.gz",
        "example_ct_sm.nii.gz",
    ] {
        let src = data.join("ct_abdomen").join(name);
        let v = read_nifti(&src).unwrap();
        let out = dir.join(name);
        write_nifti(&v, &out).unwrap();
        let r = read_nifti(&out).unwrap();
        assert_eq!(r.data, v.data, "{name}: data");
        assert_eq!(r.affine, v.affine, "{name}: affine");
        assert_eq!(r.dims, v.dims);
        let (a, b) = (v.source.unwrap(), r.source.unwrap());
        assert_eq!(a.datatype, b.datatype, "{name}: datatype");
        assert_eq!(
            (a.header.qform_code, a.header.sform_code),
            (b.header.qform_code, b.header.sform_code)
        );
        assert_eq!(a.header.srow_x, b.header.srow_x);
    }
    let ct = read_nifti(data.join("ct_abdomen/example_ct.nii.gz")).unwrap();
    assert_eq!(ct.dims, [112, 101, 122]);
    assert_eq!(ct.spacing, [3.0, 3.0, 3.0]);
    assert_eq!(ct.source.as_ref().unwrap().datatype, DataType::I32);
    assert_eq!(ct.affine.orientation_code(), "RAS");
    let (lo, hi) = ct.min_max();
    assert_eq!((lo, hi), (-1207.0, 3382.0), "HU range from the data README");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_mr_oblique_header_reads_with_its_qform_sform() {
    let Some(data) = data_dir() else { return };
    let v = read_nifti(data.join("mr_prostate/ProstateX-0000_t2_tse_tra.nii.gz")).unwrap();
    assert_eq!(v.dims, [19, 384, 384]);
    assert!((v.spacing[0] - 3.0).abs() < 1e-5 && (v.spacing[2] - 0.5).abs() < 1e-5);
    // Column norms of the sform are the voxel sizes.
    for (c, want) in [(0, 0.5), (1, 0.5), (2, 3.0)] {
        assert!((v.affine.column_norm(c) - want).abs() < 1e-3, "column {c}");
    }
    assert_eq!(v.affine.orientation_code(), "LPS");
    let (canon, r) = to_canonical(&v);
    assert_eq!(canon.affine.orientation_code(), "RAS");
    let back = r.undo(&canon, &v.affine).unwrap();
    assert_eq!(back.data, v.data);
}

#[test]
fn reorientation_keeps_world_positions_and_undoes_exactly() {
    let dims = [4, 5, 6];
    let data: Vec<f32> = (0..120).map(|i| i as f32).collect();
    let mut v = Volume::new(data, dims, [3.0, 2.0, 1.0]).unwrap();
    // i → −y (P), j → +z (S), k → −x (L): a "PSL" grid.
    v.affine = Affine([
        [0.0, 0.0, -3.0, 10.0],
        [-1.0, 0.0, 0.0, 20.0],
        [0.0, 2.0, 0.0, -5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    assert_eq!(v.affine.orientation_code(), "PSL");
    let (c, r) = to_canonical(&v);
    assert_eq!(c.affine.orientation_code(), "RAS");
    assert_eq!(c.dims, [5, 6, 4]); // k' = old j, j' = old i, i' = old k
    assert_eq!(c.spacing, [2.0, 1.0, 3.0]);
    // Every voxel keeps its value at its world position.
    let inv = c.affine.inverse().unwrap();
    for k in 0..4 {
        for j in 0..5 {
            for i in 0..6 {
                let world = v.affine.apply([i as f64, j as f64, k as f64]);
                let n = inv.apply(world).map(|x| x.round() as usize);
                assert_eq!(c.at(n[2], n[1], n[0]), v.at(k, j, i), "voxel ({i},{j},{k})");
            }
        }
    }
    let back = r.undo(&c, &v.affine).unwrap();
    assert_eq!(back.data, v.data);
    assert_eq!(back.dims, v.dims);
    assert_eq!(back.spacing, v.spacing);
}

#[test]
fn quaternion_round_trip_for_rotations_with_both_handedness() {
    for sp in [[1.0, 1.0, 1.0], [0.5, 0.7, 3.0]] {
        let a = oblique_affine(sp);
        let q = Quatern::from_affine(&a);
        assert_eq!(q.qfac, -1.0);
        assert!(q.to_affine().max_abs_diff(&a) < 1e-9, "left-handed");
        let mut right = a;
        for r in 0..3 {
            right.0[r][2] = -right.0[r][2];
        }
        let q = Quatern::from_affine(&right);
        assert_eq!(q.qfac, 1.0);
        assert!(q.to_affine().max_abs_diff(&right) < 1e-9, "right-handed");
    }
    // A 180° rotation (the branch where the trace is negative).
    let flip = Affine([
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    assert!(Quatern::from_affine(&flip).to_affine().max_abs_diff(&flip) < 1e-12);
}

#[test]
fn four_d_files_read_as_channels() {
    use voxdiff::data::nifti_io::{encode, interleave_channels, read_nifti_channels};
    let dir = tmp("4d");
    // Three 2×3×4 volumes stored as NIfTI dim = [4, 4, 3, 2, 3]: the file
    // layout [t][k][j][i] equals a 6×3×4 volume's, so encode that and patch
    // the header's dims.
    let (d, h, w, k) = (2usize, 3usize, 4usize, 3usize);
    let data: Vec<f32> = (0..d * h * w * k).map(|i| i as f32 * 0.5).collect();
    let v = Volume::new(data.clone(), [k * d, h, w], [2.0, 1.0, 1.0]).unwrap();
    let mut bytes = encode(&v, WriteOptions::plain(DataType::F32)).unwrap();
    for (field, val) in [(0usize, 4i16), (3, d as i16), (4, k as i16)] {
        bytes[40 + 2 * field..42 + 2 * field].copy_from_slice(&val.to_le_bytes());
    }
    let p = dir.join("coords.nii");
    std::fs::write(&p, &bytes).unwrap();
    let chans = read_nifti_channels(&p).unwrap();
    assert_eq!(chans.len(), k);
    for (c, vol) in chans.iter().enumerate() {
        assert_eq!(vol.dims, [d, h, w]);
        assert_eq!(vol.data, data[c * d * h * w..(c + 1) * d * h * w]);
    }
    let inter = interleave_channels(&chans).unwrap();
    assert_eq!(inter[5 * k + 2], chans[2].data[5]);
    // The single-volume reader refuses it and says what to use.
    let e = format!("{:#}", read_nifti(&p).unwrap_err());
    assert!(
        e.contains("coords.nii") && e.contains("dim[4] = 3") && e.contains("read_nifti_channels"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
