//! Every duration setting at its extremes, `Duration::ZERO` and `Duration::MAX`: sane
//! behaviour and never a panic on the request path (paused tokio time).
#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response};
use support::{HANG, Upstream, request};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_breaker::{BreakerError, CircuitBreakerLayer, Refusal, State, TimeoutLayer};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

async fn send<S>(service: &S) -> Result<Response<Bytes>, BoxError>
where
    S: Service<http::Request<Bytes>, Response = Response<Bytes>, Error = BoxError> + Clone,
{
    service.clone().oneshot(request()).await
}

fn refusal(error: &BoxError) -> BreakerError {
    *error
        .downcast_ref::<BreakerError>()
        .unwrap_or_else(|| panic!("not a breaker refusal: {error}"))
}

#[tokio::test(start_paused = true)]
async fn open_duration_zero_goes_half_open_at_once() {
    let upstream = Upstream::answering(500);
    let layer = CircuitBreakerLayer::builder()
        .open_duration(Duration::ZERO)
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    for _ in 0..3 {
        send(&service).await.expect("a 500");
    }
    assert_eq!(handle.state(), State::HalfOpen);
    upstream.set(200);
    send(&service).await.expect("the probe");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(upstream.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn open_duration_max_stays_open_and_answers_with_a_long_retry_after() {
    let upstream = Upstream::answering(500);
    let layer = CircuitBreakerLayer::builder()
        .open_duration(Duration::MAX)
        .open_duration_backoff(2.0, Duration::MAX)
        .max_half_open_duration(Duration::MAX)
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    for _ in 0..3 {
        send(&service).await.expect("a 500");
    }
    let error = refusal(&send(&service).await.expect_err("open"));
    let wait = error.retry_after().expect("a known wait");
    assert!(wait > 10 * YEAR, "{wait:?}");
    let response: Response<Bytes> = error.to_response(&HeaderMap::new());
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key(http::header::RETRY_AFTER));
    tokio::time::advance(YEAR).await;
    assert_eq!(handle.state(), State::Open);
    assert!(handle.time_until_half_open() > Some(YEAR));
    assert!(handle.snapshot().time_until_half_open_ms > Some(0));
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn open_duration_backoff_with_a_zero_or_max_cap() {
    for cap in [Duration::ZERO, Duration::MAX] {
        let upstream = Upstream::answering(500);
        let layer = CircuitBreakerLayer::builder()
            .open_duration(Duration::from_secs(1))
            .open_duration_backoff(1_000.0, cap)
            .build();
        let handle = layer.handle();
        let service = layer.layer(upstream.clone());
        for _ in 0..3 {
            send(&service).await.expect("a 500");
        }
        for _ in 0..5 {
            let wait = handle.time_until_half_open().unwrap_or(Duration::ZERO);
            tokio::time::advance(wait.min(YEAR)).await;
            if handle.state() == State::HalfOpen {
                send(&service).await.expect("a failed probe");
            }
        }
        // A cap below the base means no growth; a cap of MAX lets it grow, saturating.
        assert_eq!(handle.state(), State::Open, "{cap:?}");
        let left = handle.time_until_half_open().expect("open");
        if cap.is_zero() {
            assert_eq!(left, Duration::from_secs(1));
        } else {
            assert!(left > YEAR, "{left:?}");
        }
    }
}

#[test]
#[should_panic(expected = "max_half_open_duration must be longer than zero")]
fn max_half_open_duration_zero_is_refused_at_build_time() {
    let _ = CircuitBreakerLayer::builder().max_half_open_duration(Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn slow_call_thresholds_of_zero_and_max() {
    for (threshold, trips) in [(Duration::ZERO, true), (Duration::MAX, false)] {
        let upstream = Upstream::answering(200);
        upstream
            .latency_ms
            .store(5, std::sync::atomic::Ordering::SeqCst);
        let layer = CircuitBreakerLayer::builder()
            .failure_rate(0.5, 4, 4)
            .slow_call_rate(1.0, threshold)
            .build();
        let handle = layer.handle();
        let service = layer.layer(upstream.clone());
        for _ in 0..4 {
            send(&service).await.expect("a 200");
        }
        assert_eq!(handle.state() == State::Open, trips, "{threshold:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn call_timeout_zero_times_out_pending_calls_only() {
    let upstream = Upstream::answering(200);
    let service = TimeoutLayer::new(Duration::ZERO).layer(upstream.clone());
    // An answer ready at the first poll is not late.
    assert_eq!(send(&service).await.expect("ready").status(), 200);
    upstream.set(HANG);
    let error = send(&service).await.expect_err("times out");
    assert!(refusal(&error).is_timeout());
}

#[tokio::test(start_paused = true)]
async fn call_timeout_max_never_fires() {
    let upstream = Upstream::answering(200);
    upstream
        .latency_ms
        .store(u64::from(u32::MAX), std::sync::atomic::Ordering::SeqCst);
    let service = TimeoutLayer::new(Duration::MAX).layer(upstream.clone());
    let started = tokio::time::Instant::now();
    assert_eq!(send(&service).await.expect("answers").status(), 200);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(u64::from(u32::MAX))
    );
    let error = BreakerError::Timeout {
        after: Duration::MAX,
    };
    let response: Response<Bytes> = error.to_http_response();
    assert_eq!(response.status(), 504);
    assert!(error.to_string().contains("timed out"));
}

#[test]
fn retry_after_max_is_rendered_without_overflow() {
    let error = BreakerError::CircuitOpen {
        retry_after: Some(Duration::MAX),
    };
    let response: Response<Bytes> = error.to_http_response();
    assert_eq!(
        response.headers()[http::header::RETRY_AFTER],
        u64::MAX.to_string()
    );
    assert!(
        std::str::from_utf8(response.body())
            .expect("utf-8")
            .contains(&format!(r#""retryAfter":{}"#, u64::MAX))
    );
    let grpc: Response<Bytes> = error.to_grpc_response();
    assert_eq!(
        grpc.headers()[http::header::RETRY_AFTER],
        u64::MAX.to_string()
    );
    let zero = BreakerError::CircuitOpen {
        retry_after: Some(Duration::ZERO),
    };
    let response: Response<Bytes> = zero.to_http_response();
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
}
