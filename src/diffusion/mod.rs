//! diffusion (under construction)
