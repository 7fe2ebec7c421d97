//! Whole jobs: training loops, sliding-window inference, evaluation.

pub mod evaluate;
