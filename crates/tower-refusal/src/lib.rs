//! The refusal foundation of the tower-health-ai suite: what every crate of the suite
//! answers when it refuses a request, written once.
//!
//! - [`Refusal`]: a refusal's HTTP status, gRPC code, client message, `Retry-After`, and
//!   extra headers (`RateLimit-Policy`, `RateLimit`…). Each crate's error enum implements it.
//! - [`http_response`] and [`grpc_response`] (and the trait's `to_*_response` methods):
//!   the short JSON answer `{"error":"…","retryAfter":s}` over HTTP, the trailers-only
//!   answer (`grpc-status`, percent-encoded `grpc-message`) over gRPC.
//! - [`AnswerRefusalsLayer`]: turns a layer that refuses with an error into one that
//!   answers its refusals itself and keeps the inner service's error type, so that it
//!   attaches to an axum route as it is. The suite's layers offer it as
//!   `answer_refusals()`.
//! - [`is_grpc`], [`first_value`]: the header reading the crates share.
//!
//! It depends on `http` and `bytes`, and on tower's two trait crates for the layer.
//!
//! ```
//! use std::borrow::Cow;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use tower_refusal::Refusal;
//!
//! /// A refusal of our own: too many open uploads.
//! #[derive(Debug)]
//! struct TooManyUploads {
//!     retry_after: Duration,
//! }
//!
//! impl Refusal for TooManyUploads {
//!     fn status_code(&self) -> StatusCode {
//!         StatusCode::TOO_MANY_REQUESTS
//!     }
//!     fn grpc_code(&self) -> i32 {
//!         8 // RESOURCE_EXHAUSTED
//!     }
//!     fn message(&self) -> Cow<'_, str> {
//!         Cow::Borrowed("too many open uploads")
//!     }
//!     fn retry_after(&self) -> Option<Duration> {
//!         Some(self.retry_after)
//!     }
//!     fn extra_headers(&self, headers: &mut HeaderMap) {
//!         headers.insert("x-uploads-open", HeaderValue::from_static("4"));
//!     }
//! }
//!
//! let refusal = TooManyUploads { retry_after: Duration::from_millis(2500) };
//!
//! // A JSON client.
//! let response = refusal.to_response::<Bytes>(&HeaderMap::new());
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["retry-after"], "3");
//! assert_eq!(response.headers()["x-uploads-open"], "4");
//! assert_eq!(response.body(), r#"{"error":"too many open uploads","retryAfter":3}"#);
//!
//! // A gRPC client.
//! let mut grpc = HeaderMap::new();
//! grpc.insert("content-type", HeaderValue::from_static("application/grpc"));
//! let response = refusal.to_response::<Bytes>(&grpc);
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["grpc-status"], "8");
//! assert_eq!(response.headers()["grpc-message"], "too many open uploads");
//! assert_eq!(response.headers()["retry-after"], "3");
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod answer;
mod headers;
mod refusal;
mod response;

pub use crate::answer::{
    AnswerFuture, AnswerRefusals, AnswerRefusalsLayer, BoxError, CarryErrors, CarryFuture,
    InnerError,
};
pub use crate::headers::{SCAN_LIMIT, first_value, first_value_static, is_grpc};
pub use crate::refusal::{Refusal, SimpleRefusal};
pub use crate::response::{grpc_response, http_response, response, whole_seconds};
