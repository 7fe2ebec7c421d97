//! autograd (under construction)
