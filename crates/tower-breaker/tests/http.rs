//! The HTTP and gRPC answers of the refusals.
#![cfg(feature = "http")]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tower_breaker::{BreakerError, Refusal};

const OPEN: BreakerError = BreakerError::CircuitOpen {
    retry_after: Some(Duration::from_millis(44_100)),
};
const TIMEOUT: BreakerError = BreakerError::Timeout {
    after: Duration::from_secs(120),
};

#[test]
fn open_circuit_is_503_with_retry_after_rounded_up() {
    assert_eq!(OPEN.status_code(), 503);
    assert_eq!(OPEN.grpc_code(), 14);
    let response: Response<Bytes> = OPEN.to_http_response();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["retry-after"], "45");
    assert_eq!(
        response.body(),
        r#"{"error":"circuit breaker is open","retryAfter":45}"#
    );
}

#[test]
fn timeout_is_504_without_retry_after() {
    let response: Response<Bytes> = TIMEOUT.to_http_response();
    assert_eq!(response.status(), 504);
    assert!(!response.headers().contains_key("retry-after"));
    assert_eq!(response.body(), r#"{"error":"upstream call timed out"}"#);
    let unknown = BreakerError::CircuitOpen { retry_after: None };
    let response: Response<Bytes> = unknown.to_http_response();
    assert_eq!(response.body(), r#"{"error":"circuit breaker is open"}"#);
}

#[test]
fn grpc_answers_are_trailers_only() {
    let response: Response<Bytes> = OPEN.to_grpc_response();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(
        response.headers()["grpc-message"],
        "circuit breaker is open"
    );
    assert_eq!(response.headers()["retry-after"], "45");
    assert!(response.body().is_empty());
    let response: Response<Bytes> = TIMEOUT.to_grpc_response();
    assert_eq!(response.headers()["grpc-status"], "4");
}

#[test]
fn to_response_picks_grpc_by_content_type() {
    let mut headers = HeaderMap::new();
    let response: Response<Bytes> = OPEN.to_response(&headers);
    assert_eq!(response.status(), 503);
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/grpc+proto"),
    );
    let response: Response<Bytes> = OPEN.to_response(&headers);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "14");
}

/// The answering forms keep the inner service's error type: an inner error comes out
/// unchanged, typed, and the breaker counts it as a failure.
#[tokio::test(start_paused = true)]
async fn answering_forms_keep_inner_errors_and_answer_refusals() {
    use tower::{Layer, ServiceExt, service_fn};
    use tower_breaker::{CircuitBreakerLayer, State};

    #[derive(Debug, PartialEq)]
    struct Upstream;
    impl std::fmt::Display for Upstream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("upstream")
        }
    }

    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build();
    let handle = breaker.handle();
    let service = breaker
        .answer_refusals()
        .layer(service_fn(|_: http::Request<()>| async {
            Err::<http::Response<bytes::Bytes>, _>(Upstream)
        }));
    let failed = service.clone().oneshot(http::Request::new(())).await;
    assert_eq!(failed.err(), Some(Upstream));
    assert_eq!(handle.state(), State::Open);

    let mut grpc = http::Request::new(());
    grpc.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    let refused = service.oneshot(grpc).await.expect("answered");
    assert_eq!(refused.status(), http::StatusCode::OK);
    assert_eq!(refused.headers()["grpc-status"], "14");
    assert_eq!(refused.headers()["grpc-message"], "circuit breaker is open");
    assert_eq!(refused.headers()["retry-after"], "60");
}
