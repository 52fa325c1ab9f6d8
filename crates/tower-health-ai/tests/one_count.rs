//! With the global Prometheus recorder, as an application has it: a RED layer on the
//! whole router and the preset on one route count each request once in
//! `http_requests_total`.

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_health_ai::red_metrics::RedMetricsLayer;
use tower_health_ai::{Clock, HealthAiStack, UpstreamRequest, install_prometheus};

#[tokio::test(start_paused = true)]
async fn seven_requests_read_seven_in_http_requests_total() {
    let prometheus = install_prometheus().unwrap();
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .prometheus(prometheus.clone())
        .build();
    let upstream = service_fn(|_request: UpstreamRequest| async {
        Ok::<_, BoxError>(Response::new(Body::from("analysis")))
    });
    let app: Router = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route_service("/analyze", stack.layer(upstream))
        .layer(RedMetricsLayer::new());

    for user in 0..7 {
        let request = Request::post("/analyze")
            .header("x-user-id", format!("user-{user}"))
            .body(Body::from(format!("prompt {user}")))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }

    let text = prometheus.render();
    let total: u64 = text
        .lines()
        .filter(|line| line.starts_with("http_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 7, "{text}");
    assert!(
        text.contains(r#"http_requests_total{method="POST",route="/analyze",status="200"} 7"#),
        "{text}"
    );
}
