//! The Prometheus exposition: described, well-formed, accepted by an independent parser
//! and by `promtool check metrics`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use prometheus_parse::{Scrape, Value};
use tower::{Layer, ServiceExt, service_fn};
use tower_red_metrics::{InstallError, PrometheusConfig, RedMetricsLayer};

/// Renders the text after a mix of HTTP and gRPC traffic through a local recorder.
async fn render_after_traffic() -> String {
    let (recorder, prometheus) = PrometheusConfig::new()
        .describe_counter("ratelimit_decisions_total", "Rate limiter decisions.")
        .build()
        .unwrap();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let service = layer.layer(service_fn(|req: Request<Empty<Bytes>>| async move {
        let response = match req.uri().path() {
            "/grpc" => {
                let mut response = Response::new(Full::new(Bytes::new()));
                response
                    .headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                response
                    .headers_mut()
                    .insert("grpc-status", "14".parse().unwrap());
                response
            }
            path => {
                let mut response = Response::new(Full::new(Bytes::from_static(b"x")));
                *response.status_mut() = StatusCode::from_u16(path[1..].parse().unwrap()).unwrap();
                response
            }
        };
        Ok::<_, Infallible>(response)
    }));
    for path in ["/200", "/200", "/404", "/429", "/503", "/grpc", "/599"] {
        let response = service
            .clone()
            .oneshot(Request::get(path).body(Empty::new()).unwrap())
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    prometheus.render()
}

#[tokio::test]
async fn rendered_text_is_described_and_parses() {
    let text = render_after_traffic().await;
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();

    for name in [
        "http_requests_total",
        "http_request_duration_seconds",
        "http_requests_in_flight",
    ] {
        assert!(
            scrape.docs.contains_key(name),
            "no HELP for {name}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}:\n{text}"
        );
    }
    assert!(text.contains("# TYPE http_requests_total counter"));
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE http_requests_in_flight gauge"));

    let counter = |status: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "http_requests_total" && s.labels.get("status") == Some(status))
            .map(|s| match s.value {
                Value::Counter(v) => v,
                ref other => panic!("not a counter: {other:?}"),
            })
    };
    assert_eq!(counter("200"), Some(2.0));
    assert_eq!(counter("404"), Some(1.0));
    assert_eq!(counter("UNAVAILABLE"), Some(1.0));
    assert_eq!(counter("599"), Some(1.0));

    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "http_request_duration_seconds")
        .expect("a duration histogram");
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}")
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    assert!(bounds.contains(&0.001), "{bounds:?}");
    assert!(bounds.contains(&600.0), "{bounds:?}");
    assert_eq!(
        buckets.last().unwrap().count,
        7.0,
        "every request lands in the +Inf bucket"
    );
    assert_eq!(histogram.labels.get("route"), Some("unmatched"));
}

#[tokio::test]
async fn promtool_accepts_the_rendered_text() {
    let text = render_after_traffic().await;
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
            println!(
                "note: promtool not found ({error}); install Debian package `prometheus` to run this check"
            );
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
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool failed:\n{complaints}\n{text}"
    );
    assert!(
        complaints.trim().is_empty(),
        "promtool complained:\n{complaints}\n{text}"
    );
}

#[test]
fn invalid_buckets_are_refused() {
    for buckets in [
        &[][..],
        &[1.0, 0.5][..],
        &[0.1, f64::NAN][..],
        &[1.0, 1.0][..],
    ] {
        let error = PrometheusConfig::new()
            .buckets(buckets)
            .build()
            .unwrap_err();
        assert_eq!(error, InstallError::InvalidBuckets, "{buckets:?}");
    }
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn the_axum_route_serves_the_text() {
    let (recorder, prometheus): (_, tower_red_metrics::PrometheusMetrics) =
        PrometheusConfig::new().build().unwrap();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let app = axum::Router::new()
        .route(
            "/metrics",
            tower_red_metrics::metrics_route(prometheus.clone()),
        )
        .route(
            "/state",
            axum::routing::get(tower_red_metrics::metrics_handler),
        )
        .with_state(prometheus)
        .layer(layer);

    for path in ["/metrics", "/metrics", "/state"] {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            tower_red_metrics::PROMETHEUS_CONTENT_TYPE
        );
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(
            Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).is_ok(),
            "{text}"
        );
    }
    let text = {
        let response = app
            .oneshot(
                Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/metrics",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/state",status="200"} 1"#),
        "{text}"
    );
    // A route's series exist from its first recorded request: the gauge is there, at 0,
    // although no request answered at once ever moved it.
    for name in [
        "http_requests_total",
        "http_request_duration_seconds",
        "http_requests_in_flight",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
    }
    assert!(
        text.contains(r#"http_requests_in_flight{method="GET",route="/metrics"} 0"#),
        "{text}"
    );
}
