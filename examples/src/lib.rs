//! The demo gateway, and code shared by the runnable examples.
//!
//! Each example runs with `cargo run --example NAME` from the workspace root; the demo
//! gateway (`cargo xtask demo`) is the reference integration of the `HealthAiStack`
//! preset.

pub mod analysis;
pub mod chaos;
pub mod cli;
pub mod dashboard;
pub mod gateway;
pub mod simulator;
pub mod telemetry;
pub mod upstream;
