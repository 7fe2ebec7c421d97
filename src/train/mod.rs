//! Optimisation: AdamW state, the EMA of the weights, learning-rate schedules, checkpoints
//! (safetensors) and run logs (JSON lines).

pub mod checkpoint;
pub mod ema;
pub mod lr;
pub mod optim;
pub mod runlog;

pub use checkpoint::{Checkpoint, Weights};
pub use ema::Ema;
pub use lr::LrSchedule;
pub use optim::Optimizer;
pub use runlog::RunLog;
