//! Whole jobs: training loops for each system, inference, evaluation.

pub mod bench;
pub mod evaluate;
pub mod seg_model;
pub mod train_loop;
