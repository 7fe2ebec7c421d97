//! Optimisation: AdamW state, learning-rate schedules, checkpoints
//! (safetensors) and run logs (JSON lines).

pub mod checkpoint;
pub mod lr;
pub mod optim;
pub mod runlog;

pub use checkpoint::Checkpoint;
pub use lr::LrSchedule;
pub use optim::Optimizer;
pub use runlog::RunLog;
