//! Every duration setting at its extremes, `Duration::ZERO` and `Duration::MAX`: sane
//! behaviour and never a panic on the request path (paused tokio time).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::recorder;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_red_metrics::{Clock, PrometheusConfig, RedMetricsHandle, RedMetricsLayer};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// One request through a layer with this window, taking `took`.
async fn layer_with_window(window: Duration, took: Duration) -> RedMetricsHandle {
    let (recorder, _snapshotter) = recorder();
    let layer = RedMetricsLayer::builder()
        .recorder(recorder)
        .clock(Clock::Tokio)
        .window(window)
        .window_steps(60)
        .build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(move |_: Request<Empty<Bytes>>| async move {
        tokio::time::sleep(took).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    service
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    handle
}

#[tokio::test(start_paused = true)]
async fn window_zero_is_raised_to_one_second() {
    let handle = layer_with_window(Duration::ZERO, Duration::from_millis(40)).await;
    // One second, split into 60 whole steps of nanoseconds.
    let window = handle.window();
    assert!(
        window > Duration::from_millis(999) && window <= Duration::from_secs(1),
        "{window:?}"
    );
    assert!(handle.snapshot().duration.p50 > 0.0);
    tokio::time::advance(Duration::from_secs(2)).await;
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.requests.total, 1);
    assert!(snapshot.duration.p50.abs() < f64::EPSILON);
}

#[tokio::test(start_paused = true)]
async fn window_max_keeps_samples_and_long_requests_are_recorded() {
    let handle = layer_with_window(Duration::MAX, YEAR).await;
    assert!(handle.window() > 100 * YEAR, "{:?}", handle.window());
    tokio::time::advance(10 * YEAR).await;
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.requests.total, 1);
    // Durations saturate at the sketch's largest value, 2^42 ns (about 73 minutes).
    let top = 2f64.powi(42) / 1e6;
    assert!(
        (snapshot.duration.p50 - top).abs() / top < 0.01,
        "{}",
        snapshot.duration.p50
    );
}

#[test]
fn upkeep_interval_extremes_build_a_recorder() {
    for interval in [Duration::ZERO, Duration::MAX] {
        let (_recorder, prometheus) = PrometheusConfig::new()
            .upkeep_interval(interval)
            .build()
            .unwrap();
        prometheus.run_upkeep();
        let _ = prometheus.render();
    }
}
