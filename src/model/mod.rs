//! The exact networks, each a struct of layers with a `forward`.

pub mod bpr;
pub mod imgx_unet;
pub mod segdiff;

pub use imgx_unet::{ImgxUnet, TimeConditioning, UnetConfig};
pub use segdiff::{Conditioning, SegDiffNet, SegDiffNetConfig};
