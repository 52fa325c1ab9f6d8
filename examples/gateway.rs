//! The demo gateway: the seed's API behind the `HealthAiStack` preset.
//!
//! ```sh
//! cargo xtask demo                 # release build, seed defaults, simulated provider
//! cargo xtask demo -- --help       # every flag
//! ```
//!
//! It prints `listening on http://ADDR`, then logs with `tracing` (set `RUST_LOG` to
//! change the level). Ctrl-C or SIGTERM stops it after in-flight requests are answered.

use std::process::ExitCode;

use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = GatewayArgs::parse();
    match gateway::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error}");
            ExitCode::FAILURE
        }
    }
}
