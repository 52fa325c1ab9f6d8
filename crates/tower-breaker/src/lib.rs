//! A circuit breaker, a call timeout and a fallback for [tower] services.
//!
//! - [`CircuitBreakerLayer`]: closed, open, half-open. Trips on consecutive failures (3
//!   by default) or on a failure rate and/or slow-call rate over a sliding window of the
//!   last N calls; stays open 60 s (optionally growing on each re-trip), failing fast
//!   with [`BreakerError::CircuitOpen`] without touching the inner service; then lets
//!   exactly K probes through, whose verdict closes or reopens it. The closed path takes
//!   no lock. A dropped call returns its probe slot.
//! - [`TimeoutLayer`]: fails a call that runs past its timeout (120 s by default) with
//!   [`BreakerError::Timeout`], which the breaker's [`DefaultClassifier`] counts as a
//!   failure.
//! - [`FallbackLayer`]: answers failed calls (an open circuit, a timeout, an upstream
//!   error) from a fallback service, marked [`Degraded`] so caches never store them.
//!
//! Each service's error is a [`BoxError`]: inner errors pass through unchanged, and this
//! crate's refusals are a boxed [`BreakerError`], which (feature `http`, on by default)
//! knows its HTTP and gRPC answers (503 / `UNAVAILABLE` with `Retry-After` for an open
//! circuit, 504 / `DEADLINE_EXCEEDED` for a timeout).
//!
//! A [`CircuitBreakerHandle`] reads the state as it is at the moment read (once the open
//! duration has passed it reports `HALF_OPEN` without waiting for traffic), gives a
//! serializable [`CircuitBreakerSnapshot`], and can force or reset the circuit. State
//! changes are `tracing` events, an optional callback, and the [`metrics`] listed there.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_breaker::fallback::FallbackRequest;
//! use tower_breaker::{
//!     BoxError, CircuitBreakerLayer, Degraded, FallbackLayer, Refusal, State, TimeoutLayer,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // An upstream that is down.
//! let upstream = service_fn(|_: Request<Bytes>| async {
//!     let mut response = Response::new(Bytes::new());
//!     *response.status_mut() = StatusCode::BAD_GATEWAY;
//!     Ok::<_, Infallible>(response)
//! });
//!
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("upstream")
//!     .consecutive_failures(3)
//!     .open_duration(Duration::from_secs(60))
//!     .build();
//! let handle = breaker.handle();
//!
//! let service = ServiceBuilder::new()
//!     .layer(breaker)
//!     .layer(TimeoutLayer::new(Duration::from_secs(120)))
//!     .service(upstream);
//!
//! // Three 5xx answers open the circuit.
//! for _ in 0..3 {
//!     let response = service.clone().oneshot(Request::new(Bytes::new())).await?;
//!     assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Now calls fail fast; the refusal knows its HTTP answer.
//! let error = service.clone().oneshot(Request::new(Bytes::new())).await.unwrap_err();
//! let refusal = error.downcast_ref::<tower_breaker::BreakerError>().unwrap();
//! let answer: Response<Bytes> = refusal.to_http_response();
//! assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(answer.headers()["retry-after"], "60");
//!
//! // A fallback above the breaker answers instead, marked degraded.
//! let fallback = service_fn(|request: FallbackRequest<String, Response<Bytes>>| async move {
//!     let body = format!("local answer for {}", request.context);
//!     Ok::<_, Infallible>(Response::new(Bytes::from(body)))
//! });
//! let capture = |request: &Request<Bytes>| request.uri().path().to_owned();
//! let service = ServiceBuilder::new()
//!     .layer(FallbackLayer::new(capture, fallback))
//!     .service(service);
//! let response = service.oneshot(Request::new(Bytes::new())).await?;
//! assert_eq!(response.body(), "local answer for /");
//! assert!(response.extensions().get::<Degraded>().is_some());
//! assert_eq!(response.headers()["x-degraded"], "true");
//! # Ok(())
//! # }
//! ```
//!
//! # In a stack
//!
//! Outermost first: the fallback, then any retry, then the breaker, then queues and
//! limiters, then the call timeout, innermost, right around the upstream. So an open
//! circuit fails fast before queueing and stops retries at once; time spent queueing never
//! counts as upstream slowness; and the fallback answers whatever the layers below gave
//! up on, including the open circuit.
//!
//! The breaker should not count refusals of the layers below it (a full queue, a rate
//! limit) as upstream failures: give it a classifier closure that returns
//! [`Verdict::Ignored`] for those errors and defers to [`DefaultClassifier`] for the rest
//! (see [`Classify`]).
//!
//! # Refusals as errors, or as answers
//!
//! The breaker and the timeout refuse with an error (a boxed [`BreakerError`]), for the
//! fallback and retry layers above them, which must see the refusal, and for stacks that
//! shape their own answers. With the `http` feature,
//! [`CircuitBreakerLayer::answer_refusals`] and [`TimeoutLayer::answer_refusals`] give the
//! other form: the layer answers its refusals itself, per [`Refusal`] (503 with
//! `Retry-After` for an open circuit, 504 for a timeout, or their gRPC trailers-only
//! forms), and keeps the inner service's error type, as tower-http's `TimeoutLayer` does.
//! On an axum route, whose handlers never fail, they attach with `.layer(...)` as they
//! are:
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{Router, body::Body, http::StatusCode, routing::get};
//! use http::Request;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_breaker::{CircuitBreakerLayer, State, TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder().consecutive_failures(1).build();
//! let handle = breaker.handle();
//! let app: Router = Router::new().route(
//!     "/report",
//!     get(|| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         "too late"
//!     })
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(breaker.answer_refusals())
//!             .layer(TimeoutLayer::new(Duration::from_secs(1)).answer_refusals()),
//!     ),
//! );
//!
//! let report = || Request::get("/report").body(Body::empty()).unwrap();
//! // The call times out: 504, which the breaker counts as a failure.
//! let timed_out = app.clone().oneshot(report()).await.unwrap();
//! assert_eq!(timed_out.status(), StatusCode::GATEWAY_TIMEOUT);
//! assert_eq!(handle.state(), State::Open);
//! // The circuit is open: 503 at once, with the time left open.
//! let refused = app.oneshot(report()).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(refused.headers()["retry-after"], "60");
//! # }
//! ```
//!
//! # Features
//!
//! - `http` (default): the HTTP/gRPC answers of [`BreakerError`] and the layers'
//!   `answer_refusals`, [`ResponseVerdict`] and [`MarkDegraded`] for `http::Response`,
//!   and [`CaptureHead`].
//!
//! # Time
//!
//! The breaker's open period and the call timeout run on tokio's timers, so the breaker
//! reads tokio's clock, with no option: tests pause it
//! (`#[tokio::test(start_paused = true)]`) and advance it. The suite's crates that only
//! measure time (the limiter, the cache, the RED layer) read a faster monotonic clock by
//! default and take tokio's as an option.
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod classify;
mod error;
mod handle;
mod layer;
mod machine;
mod service;
mod window;

pub mod fallback;
pub mod future;
pub mod metrics;
pub mod timeout;

#[cfg(feature = "http")]
mod http;

pub use self::classify::{BoxError, Classify, DefaultClassifier, ResponseVerdict, Verdict};
pub use self::error::BreakerError;
pub use self::fallback::{Degraded, Fallback, FallbackLayer, MarkDegraded, NotDegraded};
pub use self::handle::{CircuitBreakerHandle, CircuitBreakerSnapshot};
#[cfg(feature = "http")]
pub use self::http::{CaptureHead, X_DEGRADED};
#[allow(deprecated)]
pub use self::layer::CircuitBreakerBuilder;
pub use self::layer::{CircuitBreakerLayer, CircuitBreakerLayerBuilder, DEFAULT_NAME};
pub use self::machine::{State, Transition};
pub use self::service::CircuitBreaker;
pub use self::timeout::{Timeout, TimeoutLayer};
/// The refusal foundation's trait and answering layer (feature `http`).
#[cfg(feature = "http")]
pub use tower_refusal::{AnswerRefusalsLayer, Refusal};
