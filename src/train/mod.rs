//! train (under construction)
