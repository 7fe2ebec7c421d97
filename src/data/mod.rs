//! Everything between a scan on disk and a tensor: NIfTI and DICOM input with geometry,
//! preprocessing, datasets and splits, patch sampling, augmentation, a
//! prefetching loader, sliding-window inference geometry, a synthetic
//! abdomen phantom, PNG overlays, and 2D photos with masks (`image2d`). See `docs/data.md`.

pub mod affine;
pub mod augment;
pub mod crop;
pub mod dataset;
pub mod dicom;
pub mod image2d;
pub mod intensity;
pub mod labels;
pub mod loader;
pub mod nifti_io;
pub mod nifti_write;
pub mod orient;
pub mod overlay;
pub mod patch;
pub mod phantom;
pub mod resample;
pub mod rng;
pub mod sliding;
pub mod volume;

pub use affine::Affine;
pub use dicom::{read_dicom_series, read_scan};
pub use labels::ClassMap;
pub use nifti_io::{read_nifti, write_nifti, write_nifti_with, WriteOptions};
pub use volume::{DataType, Volume};
