//! The exact networks, each a struct of layers with a `forward`.

pub mod bpr;
pub mod fpn3d;
pub mod fpn3d_block;
pub mod imgx_unet;
pub mod probe_head;
pub mod segdiff;

pub use fpn3d::{Fpn3d, FpnConfig, FpnOutput};
pub use fpn3d_block::{apply_running, NormKind, NormMode};
pub use imgx_unet::{ImgxUnet, TimeConditioning, UnetConfig};
pub use probe_head::{HeadKind, HeadShape, ProbeHead};
pub use segdiff::{Conditioning, SegDiffNet, SegDiffNetConfig};
