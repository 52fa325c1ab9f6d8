//! Shared code of the runnable examples.
//!
//! Each example runs with `cargo run --example NAME` from the workspace root; the demo
//! gateway is the reference integration of the `HealthAiStack` preset.
