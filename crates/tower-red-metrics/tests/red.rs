//! Behaviour of the RED metrics layer: counts, classes, routes, gRPC, cancellation,
//! durations and the snapshot's JSON.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use common::{Frames, Gauges, Taken, recorder};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_red_metrics::{
    Clock, HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_IN_FLIGHT, HTTP_REQUESTS_TOTAL,
    MethodLabel, RedMetricsLayer, RequestLabels, Status, classify_fn,
};

fn respond(status: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

fn grpc_response(body: Frames, status_header: Option<&'static str>) -> Response<Frames> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "application/grpc+proto".parse().unwrap());
    if let Some(status) = status_header {
        response
            .headers_mut()
            .insert("grpc-status", status.parse().unwrap());
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classes_are_exact_under_concurrent_load() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|req: Request<Empty<Bytes>>| async move {
        let status: u16 = req.uri().path()[1..].parse().unwrap();
        Ok::<_, Infallible>(respond(status))
    }));

    let statuses = [200u16, 301, 404, 429, 503];
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let service = service.clone();
            tokio::spawn(async move {
                for i in 0..500usize {
                    let status = statuses[(i + task) % statuses.len()];
                    let request = Request::get(format!("/{status}"))
                        .body(Empty::new())
                        .unwrap();
                    let response = service.clone().oneshot(request).await.unwrap();
                    response.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let requests = handle.snapshot().requests;
    assert_eq!(requests.total, 4_000);
    assert_eq!(requests.success, 1_600);
    assert_eq!(requests.client_errors, 800);
    assert_eq!(requests.rate_limited, 800);
    assert_eq!(requests.errors, 800);
    assert!((requests.error_rate_percent - 20.0).abs() < 1e-9);

    let metrics = Taken::take(&snapshotter);
    for status in statuses {
        let labels = [
            ("method", "GET"),
            ("route", "unmatched"),
            ("status", &*status.to_string()),
        ];
        assert_eq!(
            metrics.counter(HTTP_REQUESTS_TOTAL, &labels),
            800,
            "status {status}"
        );
    }
    assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), 4_000);
    assert!(metrics.gauge_sum(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
    let durations = metrics.series(HTTP_REQUEST_DURATION_SECONDS);
    assert_eq!(durations.len(), 1);
    match durations[0].1 {
        metrics_util::debugging::DebugValue::Histogram(values) => assert_eq!(values.len(), 4_000),
        other => panic!("not a histogram: {other:?}"),
    }
}

fn routed_app(
    layer: &RedMetricsLayer<tower_red_metrics::HttpLabels, tower_red_metrics::HttpClassify>,
) -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|| async { "user" }).post(|| async { "created" }),
        )
        .route(
            "/items/{id}",
            get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        )
        .layer(layer.clone())
}

async fn send(app: &Router, method: Method, path: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_routes_use_the_matched_template() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let app = routed_app(&layer);

    assert_eq!(send(&app, Method::GET, "/users/1").await, StatusCode::OK);
    assert_eq!(send(&app, Method::GET, "/users/2").await, StatusCode::OK);
    assert_eq!(send(&app, Method::POST, "/users/3").await, StatusCode::OK);
    assert_eq!(
        send(&app, Method::GET, "/items/9").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        send(&app, Method::GET, "/nowhere/at/all").await,
        StatusCode::NOT_FOUND
    );

    let metrics = Taken::take(&snapshotter);
    let count = |method, route, status| {
        metrics.counter(
            HTTP_REQUESTS_TOTAL,
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(count("GET", "/users/{id}", "200"), 2);
    assert_eq!(count("POST", "/users/{id}", "200"), 1);
    assert_eq!(count("GET", "/items/{id}", "503"), 1);
    assert_eq!(count("GET", "unmatched", "404"), 1);
    assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), 5);
    let requests = layer.handle().snapshot().requests;
    assert_eq!(
        (
            requests.total,
            requests.success,
            requests.errors,
            requests.client_errors
        ),
        (5, 3, 1, 1)
    );
}

#[tokio::test]
async fn labels_stay_bounded_over_100k_paths_and_odd_methods() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let app = routed_app(&layer);
    let methods: Vec<Method> = ["GET", "POST", "BREW", "PURGE", "DELETE"]
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
        .collect();

    for i in 0..100_000usize {
        let method = if i % 7 == 0 {
            Method::from_bytes(format!("X-{i}").as_bytes()).unwrap()
        } else {
            methods[i % methods.len()].clone()
        };
        let path = match i % 3 {
            0 => format!("/users/{i}"),
            1 => format!("/items/{i}"),
            _ => format!("/raw/{i}/path?q={i}"),
        };
        send(&app, method, &path).await;
    }

    let metrics = Taken::take(&snapshotter);
    let series = metrics.series(HTTP_REQUESTS_TOTAL);
    assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), 100_000);
    // 3 routes (two templates and `unmatched`) x 6 methods x a few statuses, at most.
    assert!(series.len() <= 3 * 6 * 3, "{} series", series.len());
    for (labels, _) in &series {
        let label = |name: &str| labels.iter().find(|(k, _)| k == name).unwrap().1.clone();
        assert!(["/users/{id}", "/items/{id}", "unmatched"].contains(&label("route").as_str()));
        assert!(["GET", "POST", "DELETE", "OTHER"].contains(&label("method").as_str()));
    }
    assert!(metrics.series(HTTP_REQUEST_DURATION_SECONDS).len() <= 3 * 6);
}

#[tokio::test]
async fn in_flight_counts_requests_that_wait_and_not_those_answered_at_once() {
    let gauges = Gauges::default();
    let layer = RedMetricsLayer::builder().recorder(gauges.clone()).build();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(Mutex::new(Some(released)));
    let service = layer.layer(service_fn(move |req: Request<Empty<Bytes>>| {
        let wait = (req.uri().path() == "/wait")
            .then(|| released.lock().unwrap().take())
            .flatten();
        async move {
            if let Some(released) = wait {
                released.await.unwrap();
            }
            Ok::<_, Infallible>(respond(200))
        }
    }));
    let get = |path: &str| Request::get(path).body(Empty::new()).unwrap();

    service.clone().oneshot(get("/now")).await.unwrap();
    assert_eq!(gauges.moves(HTTP_REQUESTS_IN_FLIGHT), 0, "never waited");

    let mut waiting = pin!(service.clone().oneshot(get("/wait")));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    assert!((gauges.value(HTTP_REQUESTS_IN_FLIGHT) - 1.0).abs() < f64::EPSILON);
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    assert_eq!(gauges.moves(HTTP_REQUESTS_IN_FLIGHT), 1, "counted once");

    release.send(()).unwrap();
    waiting.await.unwrap();
    assert!(gauges.value(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
    assert_eq!(gauges.moves(HTTP_REQUESTS_IN_FLIGHT), 2);
}

#[tokio::test]
async fn a_streamed_grpc_response_counts_in_flight_until_it_ends_or_is_dropped() {
    let gauges = Gauges::default();
    let layer = RedMetricsLayer::builder().recorder(gauges.clone()).build();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(grpc_response(Frames::grpc("message", Some("0")), None))
    }));
    let call = || {
        service
            .clone()
            .oneshot(Request::post("/pkg.Svc/Call").body(Empty::new()).unwrap())
    };

    // The head is out, the status is in the trailers still to come.
    let response = call().await.unwrap();
    assert!((gauges.value(HTTP_REQUESTS_IN_FLIGHT) - 1.0).abs() < f64::EPSILON);
    response.into_body().collect().await.unwrap();
    assert!(gauges.value(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);

    let response = call().await.unwrap();
    assert!((gauges.value(HTTP_REQUESTS_IN_FLIGHT) - 1.0).abs() < f64::EPSILON);
    drop(response);
    assert!(gauges.value(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
    assert_eq!(gauges.moves(HTTP_REQUESTS_IN_FLIGHT), 4);
}

#[tokio::test]
async fn grpc_status_in_trailers_is_recorded_when_the_body_ends() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(grpc_response(Frames::grpc("message", Some("14")), None))
    }));

    let response = service
        .oneshot(Request::post("/pkg.Svc/Call").body(Empty::new()).unwrap())
        .await
        .unwrap();
    // The head alone does not tell the outcome: nothing is recorded yet.
    assert_eq!(handle.snapshot().requests.total, 0);
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");

    let requests = handle.snapshot().requests;
    assert_eq!((requests.total, requests.errors), (1, 1));
    let metrics = Taken::take(&snapshotter);
    let labels = [
        ("method", "POST"),
        ("route", "unmatched"),
        ("status", "UNAVAILABLE"),
    ];
    assert_eq!(metrics.counter(HTTP_REQUESTS_TOTAL, &labels), 1);
    assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), 1);
    assert!(metrics.gauge_sum(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
}

#[tokio::test]
async fn grpc_outcomes_from_headers_and_missing_statuses() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|req: Request<Empty<Bytes>>| async move {
        Ok::<_, Infallible>(match req.uri().path() {
            // Trailers-only responses carry their status in the headers.
            "/ok" => grpc_response(Frames::default(), Some("0")),
            "/limited" => grpc_response(Frames::default(), Some("8")),
            "/garbage" => grpc_response(Frames::default(), Some("not-a-number")),
            // A proxy's answer to a gRPC call: recorded by its HTTP status.
            "/proxy" => {
                let mut response = grpc_response(Frames::grpc("m", None), None);
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
            }
            // gRPC-Web keeps its trailers in the body: recorded at once, by HTTP status.
            "/web" => {
                let mut response = grpc_response(Frames::grpc("m", None), None);
                response.headers_mut().insert(
                    "content-type",
                    "application/grpc-web+proto".parse().unwrap(),
                );
                response
            }
            // A stream that ends without any status is an error (UNKNOWN).
            _ => grpc_response(Frames::grpc("m", None), None),
        })
    }));

    for path in [
        "/ok",
        "/limited",
        "/garbage",
        "/proxy",
        "/web",
        "/no-status",
    ] {
        let request = Request::post(path).body(Empty::new()).unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        if path == "/web" {
            assert_eq!(
                handle.snapshot().requests.success,
                2,
                "recorded at the head"
            );
        }
        response.into_body().collect().await.unwrap();
    }

    let requests = handle.snapshot().requests;
    assert_eq!(
        (
            requests.total,
            requests.success,
            requests.rate_limited,
            requests.errors
        ),
        (6, 2, 1, 3)
    );
    let metrics = Taken::take(&snapshotter);
    let count = |status| {
        metrics.counter(
            HTTP_REQUESTS_TOTAL,
            &[
                ("method", "POST"),
                ("route", "unmatched"),
                ("status", status),
            ],
        )
    };
    assert_eq!(count("OK"), 1);
    assert_eq!(count("RESOURCE_EXHAUSTED"), 1);
    assert_eq!(count("UNKNOWN"), 2);
    assert_eq!(count("503"), 1);
    assert_eq!(count("200"), 1);
}

#[tokio::test]
async fn a_body_dropped_early_is_recorded_once_as_cancelled() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(grpc_response(Frames::grpc("first", Some("0")), None))
    }));

    let response = service
        .oneshot(Request::post("/s/m").body(Empty::new()).unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert!(frame.is_data());
    assert_eq!(handle.snapshot().requests.total, 0);
    drop(body);

    let requests = handle.snapshot().requests;
    assert_eq!((requests.total, requests.client_errors), (1, 1));
    let metrics = Taken::take(&snapshotter);
    let labels = [
        ("method", "POST"),
        ("route", "unmatched"),
        ("status", "cancelled"),
    ];
    assert_eq!(metrics.counter(HTTP_REQUESTS_TOTAL, &labels), 1);
    assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), 1);
    assert!(metrics.gauge_sum(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_future_is_recorded_once_as_cancelled() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        Ok::<_, Infallible>(respond(200))
    }));

    let call = service.oneshot(Request::get("/slow").body(Empty::new()).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err()
    );

    let requests = handle.snapshot().requests;
    assert_eq!((requests.total, requests.client_errors), (1, 1));
    let metrics = Taken::take(&snapshotter);
    let labels = [
        ("method", "GET"),
        ("route", "unmatched"),
        ("status", "cancelled"),
    ];
    assert_eq!(metrics.counter(HTTP_REQUESTS_TOTAL, &labels), 1);
    assert!(metrics.gauge_sum(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
}

#[derive(Debug, PartialEq)]
struct UpstreamDown;

impl std::fmt::Display for UpstreamDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream down")
    }
}

impl std::error::Error for UpstreamDown {}

#[tokio::test]
async fn inner_errors_pass_through_unchanged_and_count_as_errors() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        Err::<Response<Full<Bytes>>, _>(UpstreamDown)
    }));

    let error = service
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap_err();
    // The inner error passes through as it is.
    assert_eq!(error, UpstreamDown);

    let requests = handle.snapshot().requests;
    assert_eq!((requests.total, requests.errors), (1, 1));
    assert!((requests.error_rate_percent - 100.0).abs() < f64::EPSILON);
    let metrics = Taken::take(&snapshotter);
    let labels = [
        ("method", "GET"),
        ("route", "unmatched"),
        ("status", "error"),
    ];
    assert_eq!(metrics.counter(HTTP_REQUESTS_TOTAL, &labels), 1);
}

#[tokio::test(start_paused = true)]
async fn duration_quantiles_match_a_known_distribution() {
    let (recorder, _snapshotter) = recorder();
    let layer = RedMetricsLayer::builder()
        .recorder(recorder)
        .clock(Clock::Tokio)
        .build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|req: Request<Empty<Bytes>>| async move {
        let millis: u64 = req.uri().path()[1..].parse().unwrap();
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok::<_, Infallible>(respond(200))
    }));

    // Durations 1, 2, ..., 1000 ms, shuffled by a fixed stride.
    for i in 0..1_000u64 {
        let millis = (i * 7_919) % 1_000 + 1;
        let request = Request::get(format!("/{millis}"))
            .body(Empty::new())
            .unwrap();
        service.clone().oneshot(request).await.unwrap();
    }

    let duration = handle.snapshot().duration;
    for (got, expected) in [
        (duration.p50, 500.0),
        (duration.p95, 950.0),
        (duration.p99, 990.0),
        (duration.avg, 500.5),
    ] {
        let error = (got - expected).abs() / expected;
        assert!(error < 0.01, "{got} ms vs {expected} ms");
        assert!(
            error <= tower_red_metrics::DURATION_RELATIVE_ERROR,
            "{got} vs {expected}: {error}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn durations_leave_the_window_and_totals_stay() {
    let (recorder, _snapshotter) = recorder();
    let layer = RedMetricsLayer::builder()
        .recorder(recorder)
        .clock(Clock::Tokio)
        .build();
    let handle = layer.handle();
    assert_eq!(handle.window(), Duration::from_secs(300));
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        Ok::<_, Infallible>(respond(200))
    }));
    service
        .clone()
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    let p50 = handle.snapshot().duration.p50;
    assert!((p50 - 40.0).abs() < 0.4, "{p50}");

    tokio::time::advance(Duration::from_secs(301)).await;
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.requests.total, 1);
    assert!(snapshot.duration.p50.abs() < f64::EPSILON);
    assert!(snapshot.duration.avg.abs() < f64::EPSILON);
}

#[tokio::test]
async fn snapshot_json_uses_the_seed_names() {
    let (recorder, _snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let json = serde_json::to_value(layer.handle().snapshot()).unwrap();
    let keys = |value: &serde_json::Value| {
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&json), ["duration", "requests"]);
    assert_eq!(
        keys(&json["requests"]),
        [
            "clientErrors",
            "errorRate",
            "errors",
            "rateLimited",
            "success",
            "total"
        ]
    );
    assert_eq!(keys(&json["duration"]), ["avg", "p50", "p95", "p99"]);
    assert_eq!(json["requests"]["total"], 0);
    assert_eq!(json["requests"]["errorRate"], 0.0);
}

#[tokio::test]
async fn clones_and_layer_calls_share_state() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let ok = || service_fn(|_: Request<Empty<Bytes>>| async { Ok::<_, Infallible>(respond(200)) });
    let first = layer.layer(ok());
    let second = layer.clone().layer(ok());
    first
        .clone()
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    second
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    first
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();

    assert_eq!(layer.clone().handle().snapshot().requests.total, 3);
    let metrics = Taken::take(&snapshotter);
    assert_eq!(
        metrics.counter(
            HTTP_REQUESTS_TOTAL,
            &[("method", "GET"), ("route", "unmatched"), ("status", "200")]
        ),
        3
    );
}

/// A service that is never ready.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<Empty<Bytes>>> for NeverReady {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, _req: Request<Empty<Bytes>>) -> Self::Future {
        unreachable!("never ready")
    }
}

#[test]
fn poll_ready_is_the_inner_services() {
    let layer = RedMetricsLayer::builder().recorder(recorder().0).build();
    let mut service = layer.layer(NeverReady);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_pending());
    let mut ready = pin!(service.ready());
    assert!(ready.as_mut().poll(&mut cx).is_pending());
}

#[test]
fn wrapped_bodies_keep_their_size_hint() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = RedMetricsLayer::builder().recorder(recorder().0).build();
        let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
            Ok::<_, Infallible>(respond(200))
        }));
        let response = service
            .oneshot(Request::get("/").body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.body().size_hint().exact(), Some(4));
        assert!(!response.body().is_end_stream());
    });
}

/// A request and response of a non-HTTP service (an AI SDK call, say).
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Http(u16),
    Grpc(u32),
    Fail,
    Cancel,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn totals_always_add_up(outcomes in proptest::collection::vec(
        prop_oneof![
            (0u16..1_100).prop_map(Outcome::Http),
            (0u32..20).prop_map(Outcome::Grpc),
            Just(Outcome::Fail),
            Just(Outcome::Cancel),
        ],
        0..60,
    )) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (recorder, snapshotter) = recorder();
        let layer = tower_red_metrics::RedMetricsLayerBuilder::new(
            |_: &Outcome| RequestLabels { method: MethodLabel::Post, route: Some("analyze".into()) },
            classify_fn(|outcome: &Outcome| match *outcome {
                Outcome::Http(code) => Status::Http(code),
                Outcome::Grpc(code) => Status::Grpc(code),
                Outcome::Fail | Outcome::Cancel => unreachable!(),
            }),
        )
        .recorder(recorder)
        .build();
        let handle = layer.handle();
        let service = layer.layer(service_fn(|outcome: Outcome| async move {
            match outcome {
                Outcome::Fail => Err(UpstreamDown),
                Outcome::Cancel => std::future::pending().await,
                other => Ok(other),
            }
        }));
        let mut expected = [0u64; 4]; // success, client errors, rate limited, errors
        runtime.block_on(async {
            for &outcome in &outcomes {
                let call = service.clone().oneshot(outcome);
                match outcome {
                    Outcome::Cancel => {
                        let mut call = pin!(call);
                        let mut cx = Context::from_waker(Waker::noop());
                        assert!(call.as_mut().poll(&mut cx).is_pending());
                    }
                    _ => { let _ = call.await; }
                }
                let class = match outcome {
                    Outcome::Http(code) => Status::Http(code).class(),
                    Outcome::Grpc(code) => Status::Grpc(code).class(),
                    Outcome::Fail => Status::Error.class(),
                    Outcome::Cancel => Status::Cancelled.class(),
                };
                expected[match class {
                    tower_red_metrics::Class::Success => 0,
                    tower_red_metrics::Class::ClientError => 1,
                    tower_red_metrics::Class::RateLimited => 2,
                    tower_red_metrics::Class::Error => 3,
                }] += 1;
            }
        });
        let r = handle.snapshot().requests;
        prop_assert_eq!(r.total, outcomes.len() as u64);
        prop_assert_eq!(r.total, r.success + r.client_errors + r.rate_limited + r.errors);
        prop_assert_eq!([r.success, r.client_errors, r.rate_limited, r.errors], expected);
        let metrics = Taken::take(&snapshotter);
        prop_assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), outcomes.len() as u64);
        prop_assert!(metrics.gauge_sum(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
    }
}

#[tokio::test]
async fn one_service_can_see_many_routes() {
    let (recorder, snapshotter) = recorder();
    let labels = |req: &Request<Empty<Bytes>>| RequestLabels {
        method: MethodLabel::from(req.method()),
        route: Some(req.uri().path().to_owned().into()),
    };
    let layer =
        tower_red_metrics::RedMetricsLayerBuilder::new(labels, tower_red_metrics::HttpClassify)
            .recorder(recorder)
            .max_routes(2)
            .build();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(respond(200))
    }));
    for path in ["/a", "/b", "/a", "/c", "/b", "/a", "/d"] {
        let request = Request::get(path).body(Empty::new()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    let metrics = Taken::take(&snapshotter);
    let count = |route| {
        metrics.counter(
            HTTP_REQUESTS_TOTAL,
            &[("method", "GET"), ("route", route), ("status", "200")],
        )
    };
    assert_eq!(count("/a"), 3);
    assert_eq!(count("/b"), 2);
    assert_eq!(count("overflow"), 2, "routes past the cap of 2");
    assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), 7);
    assert!(metrics.gauge_sum(HTTP_REQUESTS_IN_FLIGHT).abs() < f64::EPSILON);
}

#[tokio::test]
async fn a_grpc_status_header_on_a_plain_http_response_is_ignored() {
    let (recorder, snapshotter) = recorder();
    let layer = RedMetricsLayer::builder().recorder(recorder).build();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        let mut response = respond(200);
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
            .headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
        Ok::<_, Infallible>(response)
    }));
    service
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    let metrics = Taken::take(&snapshotter);
    let labels = [("method", "GET"), ("route", "unmatched"), ("status", "200")];
    assert_eq!(metrics.counter(HTTP_REQUESTS_TOTAL, &labels), 1);
    assert_eq!(metrics.counter_sum(HTTP_REQUESTS_TOTAL), 1);
}

#[tokio::test]
async fn nested_layers_count_a_request_once() {
    let (outer_recorder, _) = recorder();
    let (inner_recorder, _) = recorder();
    let outer = RedMetricsLayer::builder().recorder(outer_recorder).build();
    let inner = RedMetricsLayer::builder().recorder(inner_recorder).build();
    let (outer_handle, inner_handle) = (outer.handle(), inner.handle());
    // The inner layer alone, as on a route the outer layer does not cover.
    let lone = inner.layer(service_fn(|_req: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(respond(200))
    }));
    let nested = outer.layer(lone.clone());

    for _ in 0..7 {
        let response = nested
            .clone()
            .oneshot(Request::get("/").body(Empty::new()).unwrap())
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(outer_handle.snapshot().requests.total, 7);
    assert_eq!(inner_handle.snapshot().requests.total, 0);

    lone.oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(inner_handle.snapshot().requests.total, 1);
    assert_eq!(outer_handle.snapshot().requests.total, 7);
}
