//! pipeline (under construction)
