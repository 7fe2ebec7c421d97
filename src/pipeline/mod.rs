//! Whole jobs: training loops for each system, inference, evaluation.

pub mod bench;
pub mod bench_pretrain;
pub mod bench_segdiff;
pub mod bpr_config;
pub mod bpr_data;
pub mod bpr_infer;
pub mod bpr_train;
pub mod config;
pub mod demo;
pub mod evaluate;
pub mod evaluate2d;
pub mod plan_step;
pub mod plot;
pub mod run;
pub mod seg_config;
pub mod seg_data;
pub mod seg_model;
pub mod seg_train;
pub mod segdiff_config;
pub mod segdiff_demo;
pub mod segdiff_fusion;
pub mod segdiff_model;
pub mod segdiff_segment;
pub mod segdiff_train;
pub mod segment;
pub mod train_loop;
