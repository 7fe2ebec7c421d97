//! Malformed inputs and the error each gets: a table, run as one test. Every
//! error must name the file (or argument) and the field or problem.

mod common;
use common::tmp;

use std::io::Write;
use std::path::Path;
use voxdiff::data::nifti_io::{encode, WriteOptions};
use voxdiff::data::{read_nifti, ClassMap, DataType, Volume};

/// A valid little-endian .nii of 4×5×6 int16 voxels.
fn valid_bytes() -> Vec<u8> {
    let v = Volume::new(
        (0..120).map(|i| i as f32).collect(),
        [4, 5, 6],
        [2.0, 1.0, 1.0],
    )
    .unwrap();
    encode(&v, WriteOptions::plain(DataType::I16)).unwrap()
}

fn put_i16(b: &mut [u8], at: usize, v: i16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_f32(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

// Header byte offsets (nifti1.h).
const DIM: usize = 40;
const DATATYPE: usize = 70;
const BITPIX: usize = 72;
const PIXDIM: usize = 76;
const VOX_OFFSET: usize = 108;
const SCL_SLOPE: usize = 112;
const QFORM_CODE: usize = 252;
const SFORM_CODE: usize = 254;
const QUATERN_B: usize = 256;
const SROW_X: usize = 280;
const MAGIC: usize = 344;

struct Case {
    kind: &'static str,
    file: &'static str,
    bytes: Vec<u8>,
    expect: &'static str,
}

fn nifti_cases() -> Vec<Case> {
    let ok = valid_bytes();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let full_gz = gz(&ok);
    vec![
        Case {
            kind: "truncated gzip",
            file: "truncated.nii.gz",
            bytes: full_gz[..full_gz.len() / 2].to_vec(),
            expect: "gzip stream is truncated or corrupt",
        },
        Case {
            kind: "corrupt gzip body",
            file: "corrupt.nii.gz",
            bytes: {
                let mut g = full_gz.clone();
                for b in g[12..40].iter_mut() {
                    *b ^= 0x5A;
                }
                g
            },
            expect: "gzip stream is truncated or corrupt",
        },
        Case {
            kind: "dims larger than the data (slices missing)",
            file: "short_data.nii",
            bytes: with(&|b| put_i16(b, DIM + 6, 112)),
            expect: "header dim[3]=112 but file holds 4 slices",
        },
        Case {
            kind: "data cut short",
            file: "cut.nii",
            bytes: ok[..ok.len() - 50].to_vec(),
            expect: "but file holds 3 slices",
        },
        Case {
            kind: "file shorter than a header",
            file: "tiny.nii",
            bytes: ok[..100].to_vec(),
            expect: "less than the 348-byte NIfTI-1 header",
        },
        Case {
            kind: "zero spacing",
            file: "zero_spacing.nii",
            bytes: with(&|b| put_f32(b, PIXDIM + 4, 0.0)),
            expect: "pixdim[1] = 0",
        },
        Case {
            kind: "negative spacing",
            file: "neg_spacing.nii",
            bytes: with(&|b| put_f32(b, PIXDIM + 8, -1.5)),
            expect: "pixdim[2] = -1.5",
        },
        Case {
            kind: "NaN spacing",
            file: "nan_spacing.nii",
            bytes: with(&|b| put_f32(b, PIXDIM + 12, f32::NAN)),
            expect: "pixdim[3] = NaN",
        },
        Case {
            kind: "NaN in the sform",
            file: "nan_sform.nii",
            bytes: with(&|b| put_f32(b, SROW_X + 4, f32::NAN)),
            expect: "srow_x",
        },
        Case {
            kind: "NaN in the qform (no sform)",
            file: "nan_qform.nii",
            bytes: with(&|b| {
                put_i16(b, SFORM_CODE, 0);
                put_i16(b, QFORM_CODE, 1);
                put_f32(b, QUATERN_B, f32::NAN);
            }),
            expect: "quatern_b = NaN",
        },
        Case {
            kind: "singular affine",
            file: "singular.nii",
            bytes: with(&|b| {
                for k in 0..3 {
                    put_f32(b, SROW_X + 4 * k, 0.0);
                }
            }),
            expect: "singular",
        },
        Case {
            kind: "unknown datatype",
            file: "datatype.nii",
            bytes: with(&|b| put_i16(b, DATATYPE, 1234)),
            expect: "datatype = 1234 is not a supported voxel type",
        },
        Case {
            kind: "complex datatype",
            file: "complex.nii",
            bytes: with(&|b| {
                put_i16(b, DATATYPE, 32);
                put_i16(b, BITPIX, 64);
            }),
            expect: "datatype = 32",
        },
        Case {
            kind: "bitpix disagrees with datatype",
            file: "bitpix.nii",
            bytes: with(&|b| put_i16(b, BITPIX, 8)),
            expect: "bitpix = 8 does not match datatype int16",
        },
        Case {
            kind: "bad magic",
            file: "magic.nii",
            bytes: with(&|b| b[MAGIC..MAGIC + 4].copy_from_slice(b"abcd")),
            expect: "not a NIfTI-1 file",
        },
        Case {
            kind: "NIfTI-2 header",
            file: "nifti2.nii",
            bytes: with(&|b| put_i32(b, 0, 540)),
            expect: "NIfTI-2",
        },
        Case {
            kind: "header/image pair magic",
            file: "pair.nii",
            bytes: with(&|b| b[MAGIC..MAGIC + 4].copy_from_slice(b"ni1\0")),
            expect: ".hdr/.img pair",
        },
        Case {
            kind: "dim[0] out of range",
            file: "dim0.nii",
            bytes: with(&|b| put_i16(b, DIM, 0)),
            expect: "dim[0] = 0",
        },
        Case {
            kind: "negative extent",
            file: "negdim.nii",
            bytes: with(&|b| put_i16(b, DIM + 4, -5)),
            expect: "dim[2] = -5 must be positive",
        },
        Case {
            kind: "4D with several volumes",
            file: "four_d.nii",
            bytes: with(&|b| {
                put_i16(b, DIM, 4);
                put_i16(b, DIM + 8, 3);
            }),
            expect: "dim[4] = 3: only single 3D volumes",
        },
        Case {
            kind: "NaN scl_slope",
            file: "slope.nii",
            bytes: with(&|b| put_f32(b, SCL_SLOPE, f32::NAN)),
            expect: "scl_slope = NaN",
        },
        Case {
            kind: "vox_offset inside the header",
            file: "offset.nii",
            bytes: with(&|b| put_f32(b, VOX_OFFSET, 100.0)),
            expect: "vox_offset = 100",
        },
        Case {
            kind: "more data than the header says",
            file: "long.nii",
            bytes: [ok.clone(), vec![0u8; 100]].concat(),
            expect: "but the file holds 100 bytes more",
        },
        Case {
            kind: "more data than the header says, compressed",
            file: "long.nii.gz",
            bytes: gz(&[ok.clone(), vec![0u8; 1 << 20]].concat()),
            expect: "but the file holds at least 1 byte more",
        },
        Case {
            // A few kilobytes that claim 8 Gi voxels (a decompression bomb's
            // header): refused from the header, before reading the rest — the
            // second gzip member here is garbage that is never reached.
            kind: "volume beyond the size limit",
            file: "bomb.nii.gz",
            bytes: {
                let mut h = ok[..352].to_vec();
                for k in 1..=3 {
                    put_i16(&mut h, DIM + 2 * k, 2048);
                }
                [gz(&h), vec![0x1f, 0x8b, 8, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]].concat()
            },
            expect: "describes 8589934592 voxels (16.0 GiB as int16, 32.0 GiB as float32), more than the 1073741824 voxels voxdiff reads",
        },
    ]
}

#[test]
fn malformed_inputs_get_errors_naming_file_and_field() {
    let dir = tmp("cases");
    // The untouched bytes read fine (so each failure below is the mutation's).
    let good = dir.join("good.nii");
    std::fs::write(&good, valid_bytes()).unwrap();
    assert_eq!(read_nifti(&good).unwrap().dims, [4, 5, 6]);

    let mut table = Vec::new();
    for c in nifti_cases() {
        let p = dir.join(c.file);
        std::fs::write(&p, &c.bytes).unwrap();
        let err = match read_nifti(&p) {
            Ok(_) => panic!("{}: {} was accepted", c.kind, c.file),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(c.file),
            "{}: error does not name the file: {err}",
            c.kind
        );
        assert!(
            err.contains(c.expect),
            "{}: expected {:?} in: {err}",
            c.kind,
            c.expect
        );
        table.push((c.kind, err));
    }

    // Inputs past the header: files that do not exist, class maps, label maps, grids.
    let missing = dir.join("missing.nii.gz");
    let e = format!("{:#}", read_nifti(&missing).unwrap_err());
    assert!(
        e.contains("missing.nii.gz") && e.contains("cannot read"),
        "{e}"
    );
    table.push(("file does not exist", e));

    let bad_json = dir.join("bad_map.json");
    std::fs::write(&bad_json, "{\"classes\": [").unwrap();
    let e = format!("{:#}", ClassMap::read(&bad_json).unwrap_err());
    assert!(
        e.contains("bad_map.json") && e.contains("not valid JSON"),
        "{e}"
    );
    table.push(("class map is not JSON", e));

    let dup = dir.join("dup_map.json");
    std::fs::write(
        &dup,
        r#"{"classes": [{"name": "a", "ids": [3]}, {"name": "b", "ids": [3]}]}"#,
    )
    .unwrap();
    let e = format!("{:#}", ClassMap::read(&dup).unwrap_err());
    assert!(
        e.contains("dup_map.json") && e.contains("source id 3 is listed for both"),
        "{e}"
    );
    table.push(("class map lists an id twice", e));

    let strict = dir.join("strict_map.json");
    std::fs::write(
        &strict,
        r#"{"classes": [{"name": "liver", "ids": [5]}], "unmapped": "error"}"#,
    )
    .unwrap();
    let map = ClassMap::read(&strict).unwrap();
    let mut lab = Volume::new(vec![0.0; 120], [4, 5, 6], [1.0; 3]).unwrap();
    lab.data[7] = 5.0;
    lab.data[33] = 77.0;
    let lab_path = dir.join("labels.nii.gz");
    voxdiff::data::write_nifti_with(&lab, &lab_path, WriteOptions::plain(DataType::U8)).unwrap();
    let lab = read_nifti(&lab_path).unwrap();
    let e = format!("{:#}", map.remap(&lab).unwrap_err());
    assert!(
        e.contains("labels.nii.gz") && e.contains("label id 77") && e.contains("strict_map.json"),
        "{e}"
    );
    table.push(("label id not in the class map", e));

    let mut frac = lab.clone();
    frac.data[3] = 1.5;
    let e = format!("{:#}", map.remap(&frac).unwrap_err());
    assert!(
        e.contains("labels.nii.gz") && e.contains("label value 1.5"),
        "{e}"
    );
    table.push(("non-integer label value", e));

    let mut other = lab.clone();
    other.affine.0[0][3] += 2.0;
    other.source.as_mut().unwrap().path = Path::new("pred.nii.gz").to_path_buf();
    let e = format!("{:#}", lab.check_same_grid(&other, 1e-3).unwrap_err());
    assert!(
        e.contains("labels.nii.gz")
            && e.contains("pred.nii.gz")
            && e.contains("not on the same grid"),
        "{e}"
    );
    table.push(("prediction and reference on different grids", e));

    println!("{:<46} | error", "malformed input");
    println!("{:-<46}-|-{:-<60}", "", "");
    for (k, e) in &table {
        println!("{k:<46} | {}", e.replace(dir.to_str().unwrap(), "…"));
    }
    assert!(table.len() >= 10);
    let _ = std::fs::remove_dir_all(&dir);
}
