//! nn (under construction)
