//! Degraded answers reach `/metrics` as `degraded_total{reason}` (a binary of its own:
//! the Prometheus recorder is process-wide).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_health_ai::Clock;
use tower_health_ai::{HealthAiStack, UpstreamRequest, install_prometheus};

#[tokio::test(start_paused = true)]
async fn degraded_answers_are_counted_by_reason_in_the_prometheus_text() {
    let prometheus = install_prometheus().unwrap();
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(2))
        .prometheus(prometheus.clone())
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let upstream = service_fn(|_request: UpstreamRequest| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(Response::new(Body::empty()))
    });
    let svc = stack.layer(upstream);
    let request = Request::post("/analyze")
        .header("x-user-id", "ada")
        .body(Body::empty())
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-degraded"], "true");
    let text = prometheus.render();
    assert!(
        text.contains(r#"degraded_total{reason="deadline"} 1"#),
        "{text}"
    );
    assert!(text.contains("# HELP degraded_total"), "{text}");
}
