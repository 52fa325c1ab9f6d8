//! The preset inside an application that has its own RED layer and its own `/metrics`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_health_ai::red_metrics::{PrometheusConfig, RedMetricsLayer};
use tower_health_ai::{Clock, HealthAiHandle, HealthAiStack, UpstreamRequest};

/// The application: a route of its own, its own `/metrics`, the preset on `/analyze`,
/// and `red` on the whole router.
fn app(
    stack: &HealthAiStack,
    red: RedMetricsLayer<
        tower_health_ai::red_metrics::HttpLabels,
        tower_health_ai::red_metrics::HttpClassify,
    >,
) -> Router {
    let upstream = service_fn(|_request: UpstreamRequest| async {
        Ok::<_, BoxError>(Response::new(Body::from("analysis")))
    });
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/metrics", get(|| async { "the application's metrics" }))
        .route_service("/analyze", stack.layer(upstream))
        .layer(red)
}

async fn drive(app: &Router, path: &str, user: usize) -> StatusCode {
    let request = Request::post(path)
        .header("x-user-id", format!("user-{user}"))
        .body(Body::from(format!("prompt {user}")))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

/// The `/analyze` count in the outer layer's Prometheus text.
fn analyze_total(text: &str) -> u64 {
    text.lines()
        .filter(|line| line.starts_with("http_requests_total{") && line.contains("/analyze"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(start_paused = true)]
async fn router_wide_red_and_the_preset_count_seven_requests_as_seven() {
    for outer_figures in [false, true] {
        let (recorder, prometheus) = PrometheusConfig::new().build().unwrap();
        let red = RedMetricsLayer::builder().recorder(recorder).build();
        let outer = red.handle();
        // tokio's clock: the test pauses it, and the global pace waits on it.
        let mut builder = HealthAiStack::builder().clock(Clock::Tokio);
        if outer_figures {
            builder = builder.outer_red_metrics(outer.clone());
        }
        let stack = builder.build();
        let app = app(&stack, red);

        for user in 0..7 {
            assert_eq!(drive(&app, "/analyze", user).await, StatusCode::OK);
        }
        assert_eq!(outer.snapshot().requests.total, 7);
        assert_eq!(analyze_total(&prometheus.render()), 7);
        // The preset's own layer passed the requests through.
        let reported = stack.handle().metrics().requests.total;
        assert_eq!(reported, if outer_figures { 7 } else { 0 });
        assert_eq!(stack.handle().upstream_calls(), 7);
    }
}

#[tokio::test(start_paused = true)]
async fn the_preset_counts_alone_unless_turned_off() {
    for record in [true, false] {
        let stack = HealthAiStack::builder()
            .clock(Clock::Tokio)
            .red_metrics(record)
            .build();
        let upstream = service_fn(|_request: UpstreamRequest| async {
            Ok::<_, BoxError>(Response::new(Body::from("analysis")))
        });
        let app = Router::new().route_service("/analyze", stack.layer(upstream));
        for user in 0..3 {
            assert_eq!(drive(&app, "/analyze", user).await, StatusCode::OK);
        }
        let expected = if record { 3 } else { 0 };
        assert_eq!(stack.handle().metrics().requests.total, expected);
    }
}

fn stack_with_prometheus() -> (HealthAiStack, HealthAiHandle) {
    let (_recorder, prometheus) = PrometheusConfig::new().build().unwrap();
    let stack = HealthAiStack::builder().prometheus(prometheus).build();
    let handle = stack.handle();
    (stack, handle)
}

async fn get_text(app: &Router, path: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn an_app_with_its_own_metrics_mounts_the_operator_routes_under_a_prefix() {
    let (stack, handle) = stack_with_prometheus();
    let app = app(&stack, RedMetricsLayer::builder().build());

    // The fixed paths overlap the application's `/metrics`: axum refuses the merge.
    let fixed = catch_unwind(AssertUnwindSafe(|| app.clone().merge(handle.router())));
    assert!(fixed.is_err());

    let app = app.merge(handle.router_at("/ops/"));
    let (status, text) = get_text(&app, "/metrics").await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::OK, "the application's metrics")
    );
    let (status, text) = get_text(&app, "/ops/api/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""status":"healthy""#), "{text}");
    let (status, text) = get_text(&app, "/ops/api/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""requests""#), "{text}");
    let (status, _) = get_text(&app, "/ops/metrics").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_operator_routes_can_be_picked_one_by_one() {
    let (stack, handle) = stack_with_prometheus();
    let app = app(&stack, RedMetricsLayer::builder().build())
        .route("/healthz", handle.health_route())
        .route("/stats", handle.metrics_route())
        .route("/stack-metrics", handle.prometheus_route().unwrap());
    let (status, text) = get_text(&app, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""circuitBreaker""#), "{text}");
    let (status, text) = get_text(&app, "/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""cache""#), "{text}");
    assert_eq!(get_text(&app, "/stack-metrics").await.0, StatusCode::OK);
    assert_eq!(
        get_text(&app, "/metrics").await.1,
        "the application's metrics"
    );
    assert!(
        HealthAiStack::new()
            .handle()
            .prometheus_route::<()>()
            .is_none()
    );
}
