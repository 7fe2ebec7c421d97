//! metrics (under construction)
