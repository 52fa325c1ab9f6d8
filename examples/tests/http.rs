//! The demo gateway over real HTTP, on loopback: a real client, the real upstream HTTP
//! client, the simulated provider behind it, and the Prometheus exposition checked with
//! `promtool` when it is installed.
//!
//! This binary owns the process's global metrics recorder: keep it to one test.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn call(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test]
async fn the_gateway_serves_the_seed_api_over_http() {
    let args = GatewayArgs::parse_from([
        "gateway",
        "--sim-latency-ms",
        "5",
        "--sim-failure-rate",
        "0",
        "--global-rps",
        "1000",
    ]);
    let prometheus = tower_health_ai::install_prometheus().unwrap();
    let gateway = gateway::from_args(&args, Some(prometheus)).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway::serve(listener, gateway.router, async {
        let _ = stopped.await;
    }));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let analyze = |record: &str, user: Option<&str>| {
        let mut request = Request::post(format!("{base}/api/health-records/{record}/analyze"))
            .header("content-type", "application/json");
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        request
            .body(Full::new(Bytes::from_static(br#"{"spo2":91}"#)))
            .unwrap()
    };

    // A miss through the real upstream client, then a hit.
    let (status, headers, first) = call(&client, analyze("rec-1", Some("ada"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cache"], "MISS");
    let answer: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(answer["source"], "ai");
    let (_, headers, second) = call(&client, analyze("rec-1", Some("ada"))).await;
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(first, second);

    // Without x-user-id, the client IP is the user: a separate cache entry.
    let (status, headers, _) = call(&client, analyze("rec-1", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cache"], "MISS");

    // Past the per-user burst of 5, at once: 429 with Retry-After.
    let burst: Vec<_> = (0..7)
        .map(|i| {
            let client = client.clone();
            let request = analyze(&format!("r{i}"), Some("burst"));
            tokio::spawn(async move { call(&client, request).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in burst {
        let (status, headers, _) = call.await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(status);
    }
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 2, "{statuses:?}");
    let sent = 3 + statuses.len();

    let simulator: Value = {
        let (_, _, body) = call(
            &client,
            Request::get(format!("{base}/api/simulator"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        serde_json::from_slice(&body).unwrap()
    };
    let metrics: Value = {
        let (_, _, body) = call(
            &client,
            Request::get(format!("{base}/api/metrics"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        serde_json::from_slice(&body).unwrap()
    };
    assert_eq!(metrics["requests"]["total"], sent);
    assert_eq!(metrics["cost"]["upstreamCalls"], simulator["calls"]);

    // The Prometheus text counts the same requests, and is valid exposition.
    let (status, headers, text) = call(
        &client,
        Request::get(format!("{base}/metrics"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(text.to_vec()).unwrap();
    let counted: f64 = text
        .lines()
        .filter(|line| line.starts_with("http_requests_total{"))
        .filter(|line| line.contains("analyze"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    #[allow(clippy::cast_precision_loss)]
    let expected = sent as f64;
    assert!(
        (counted - expected).abs() < f64::EPSILON,
        "{counted} != {sent}\n{text}"
    );
    assert!(text.contains("# HELP circuit_state"));
    promtool_check(&text);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("graceful shutdown")
        .unwrap()
        .unwrap();
}

/// Runs `promtool check metrics` on the text when promtool is installed; CI sets
/// `HEALTH_AI_REQUIRE_PROMTOOL=1` so that a missing promtool fails instead.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            assert!(
                std::env::var_os("HEALTH_AI_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here but cannot run: {error}"
            );
            eprintln!("promtool not found ({error}); exposition not validated");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
