//! The demo gateway: the seed's API behind the `HealthAiStack` preset.
//!
//! ```sh
//! cargo xtask demo                 # release build, seed defaults, simulated provider
//! cargo xtask demo -- --help       # every flag
//! ```
//!
//! It prints `listening on http://ADDR`, then logs to stderr with `tracing` (`RUST_LOG`
//! sets the level, `--log-format json` writes JSON lines; with the `otel` feature,
//! `--otlp-endpoint URL` exports traces). Ctrl-C or SIGTERM stops it after in-flight
//! requests are answered.

use std::process::ExitCode;

use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::{gateway, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let args = GatewayArgs::parse();
    let telemetry = match telemetry::init(&args.telemetry) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = gateway::run(args).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error}");
            ExitCode::FAILURE
        }
    }
}
