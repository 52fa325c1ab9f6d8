//! The gateway's JSON logs: one object a line, with the request's span and its fields.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway;
use health_ai_examples::simulator::{LatencyRange, Simulator, SimulatorConfig};
use health_ai_examples::telemetry::{self, LogFormat};
use http::Request;
use serde_json::Value;
use tower::ServiceExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;

/// Log lines written to memory.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_log_format_is_a_flag() {
    let args = GatewayArgs::parse_from(["gateway"]);
    assert_eq!(args.telemetry.log_format, LogFormat::Text);
    let args = GatewayArgs::parse_from(["gateway", "--log-format", "json"]);
    assert_eq!(args.telemetry.log_format, LogFormat::Json);
    assert!(GatewayArgs::try_parse_from(["gateway", "--log-format", "xml"]).is_err());
}

#[tokio::test(start_paused = true)]
async fn json_lines_carry_the_request_span_and_its_fields() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(telemetry::log_layer(LogFormat::Json, move || {
            writer.clone()
        }));
    let _guard = tracing::subscriber::set_default(subscriber);

    // Every provider call fails and is not retried: the local analysis answers, and says
    // so in a log line inside the request's span.
    let args = GatewayArgs::parse_from(["gateway", "--retry-attempts", "1"]);
    let simulator = Simulator::new(SimulatorConfig::new(
        LatencyRange::fixed(Duration::from_secs(1)),
        1.0,
        1,
    ));
    let router = gateway::build(&args, gateway::in_process(&simulator), None, None).router;
    let request = Request::post("/api/health-records/rec-1/analyze")
        .header("x-user-id", "ada-lovelace")
        .header("x-priority", "high")
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-degraded"));

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let fallback = lines
        .iter()
        .find(|line| line["fields"]["message"] == "answering from the local analysis")
        .unwrap_or_else(|| panic!("no fallback line in:\n{text}"));
    assert_eq!(fallback["level"], "INFO");
    assert_eq!(fallback["target"], "health_ai_examples::gateway");
    assert_eq!(fallback["fields"]["record"], "rec-1");
    assert!(fallback["timestamp"].is_string());
    let span = &fallback["span"];
    assert_eq!(span["name"], "health_ai.request", "{fallback}");
    assert_eq!(span["route"], "/api/health-records/{id}/analyze");
    assert_eq!(span["priority"], "high");
    let user = span["user"].as_str().expect("the user's hash");
    assert_eq!(user.len(), 16, "a 64-bit hash in hex: {user}");
    assert!(user.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(fallback["spans"][0]["name"], "health_ai.request");
    // The raw user id is in no line.
    assert!(!text.contains("ada-lovelace"), "{text}");
}
