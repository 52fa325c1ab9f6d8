//! The HTTP and gRPC answers of the refusals.
#![cfg(feature = "http")]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tower_breaker::BreakerError;

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
