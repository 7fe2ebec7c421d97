//! 2D photos and masks (PNG, JPEG) for the 2D segmentation path: reading
//! with clear refusals, resizing, augmentation, a split data set of
//! image/mask folder pairs, and the pictures written for people (mask PNGs,
//! outline overlays, uncertainty maps). 2D runs as depth-1 3D, so a sample is
//! NDHWC `[1, 1, H, W, C]` host data. See the 2D section of `docs/data.md`.

pub mod augment;
pub mod dataset;
pub mod folder;
pub mod picture;
pub mod read;
pub mod resize;

pub use augment::Augment2d;
pub use dataset::{Data2dConfig, Dataset2d, Normalisation, Sample2d};
pub use folder::{pair_folders, Pair, Skipped};
pub use picture::{write_mask_png, write_overlay_png, write_uncertainty_png};
pub use read::{read_mask, read_photo, Mask};
