//! The exact networks, each a struct of layers with a `forward`.

pub mod bpr;
pub mod imgx_unet;

pub use imgx_unet::{ImgxUnet, TimeConditioning, UnetConfig};
