//! Layers: parameter storage and initialisation, convolutions, dense layers,
//! normalisation, the sinusoidal time embedding, attention, dropout. Each layer is a
//! struct of parameter ids with a `forward` that calls the autograd [`Graph`](crate::autograd::Graph).

pub mod attention;
pub mod batch_norm;
pub mod channel_attention;
pub mod dropout;
pub mod flash_attention;
pub mod layers;
pub mod linear_attention;
pub mod params;
pub mod self_attention;
pub mod time;

pub use layers::{Conv, Linear, Norm, NormEpilogue};
pub use params::{Init, ParamBuilder, ParamId, ParamStore};
pub use self_attention::SelfAttention;
