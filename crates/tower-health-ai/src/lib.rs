//! Resilience for tower services that call slow, expensive upstreams.
//!
//! This umbrella crate re-exports the suite's five concern crates and stacks them in one
//! preset layer, [`HealthAiStack`], with the seed's production defaults: RED metrics, a
//! per-user rate limit, a response cache, a fallback, retries, a circuit breaker, a
//! priority queue, a global pace and a call timeout, in that order from the outside in
//! (each position's reason is in [`HealthAiStack`]'s docs). Each request has one deadline
//! (150 s by default, which a client may shorten); when our capacity cannot give a real
//! answer in time, the fallback answers at once, marked degraded, instead of a 503.
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{Router, body::Body};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use tower::{BoxError, ServiceExt, service_fn};
//! use tower_health_ai::{HealthAiStack, UpstreamRequest};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // The expensive upstream call (here a stand-in).
//! let upstream = service_fn(|_req: UpstreamRequest| async {
//!     Ok::<_, BoxError>(Response::new(Body::from(r#"{"analysis":"..."}"#)))
//! });
//!
//! let stack = HealthAiStack::builder()
//!     .call_timeout(Duration::from_secs(90))
//!     // What to answer when the upstream fails for good or the circuit is open.
//!     .fallback(|_request, _error| Some(Response::new(Bytes::from(r#"{"analysis":"local"}"#))))
//!     .build();
//! let handle = stack.handle();
//! let app: Router = Router::new()
//!     .route_service("/analyze", tower::Layer::layer(&stack, upstream))
//!     .merge(handle.router()); // GET /api/health and /api/metrics
//!
//! let ask = || Request::post("/analyze").header("x-user-id", "ada").body(Body::empty());
//! let first = app.clone().oneshot(ask()?).await?;
//! let second = app.clone().oneshot(ask()?).await?;
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! assert_eq!(second.headers()["x-cache"], "HIT");
//! assert_eq!(handle.upstream_calls(), 1);
//! assert_eq!(handle.metrics().requests.total, 2);
//! # Ok(())
//! # }
//! ```
//!
//! The preset is a tower layer like any other: on an axum route it wraps an ordinary
//! handler with plain `.layer(...)` (the handler gets the request with its body read
//! whole), and since the preset answers every refusal itself, the route keeps axum's
//! `Infallible` error type:
//!
//! ```
//! use axum::{Router, body::Body, routing::post};
//! use http::Request;
//! use tower::ServiceExt;
//! use tower_health_ai::HealthAiStack;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! async fn summarize(text: String) -> String {
//!     format!("{} bytes, summarized", text.len())
//! }
//!
//! let app: Router = Router::new().route("/summarize", post(summarize).layer(HealthAiStack::new()));
//!
//! let ask = || Request::post("/summarize").header("x-user-id", "ada").body(Body::from("some text"));
//! let first = app.clone().oneshot(ask()?).await?;
//! let second = app.oneshot(ask()?).await?;
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! assert_eq!(second.headers()["x-cache"], "HIT");
//! # Ok(())
//! # }
//! ```
//!
//! The concern crates are re-exported as modules, for à la carte use:
//! [`token_bucket`], [`lru_cache`], [`priority_queue`], [`breaker`], [`red_metrics`];
//! [`prelude`] brings the common names into scope.
//!
//! ## Time
//!
//! The limiters, the cache and the RED layer read the CPU's time-stamp counter by default
//! ([`Clock::Monotonic`]); the layers that wait on tokio's timers (the queue, the
//! breaker, the deadlines, the limiters' waits) read tokio's clock. A test that pauses tokio's time
//! and advances it builds the preset with [`Clock::Tokio`]
//! ([`HealthAiStackBuilder::clock`]), and the à la carte layers with their crate's
//! `Clock::Tokio`.
//!
//! With the `redis` feature, several instances share the per-user limit, the global pace
//! and the cached answers through Redis: `HealthAiStackBuilder::redis` with a
//! `RedisConfig`. Without it (the default), each instance keeps its own, and the stack's
//! type is the same either way.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "axum")]
mod axum;
mod body;
mod budget;
mod count;
mod deadline;
mod degraded;
mod handle;
mod lazy;
mod policy;
mod priority;
mod prometheus;
mod refusal;
mod shared;
mod span;
mod stack;

pub use tower_breaker as breaker;
pub use tower_lru_cache as lru_cache;
pub use tower_priority_queue as priority_queue;
pub use tower_red_metrics as red_metrics;
pub use tower_token_bucket as token_bucket;

/// The `bytes` crate, whose `Bytes` the fallback's answers and the cache's bodies are
/// made of.
pub use bytes;
/// The `http` crate, whose types the layers take and give (`http::Request`,
/// `http::Response`).
pub use http;
/// The clock the preset's limiters and RED layer read; see
/// [`HealthAiStackBuilder::clock`].
pub use tower_red_metrics::Clock;

#[cfg(feature = "axum")]
pub use crate::axum::{health_handler, metrics_handler};
pub use crate::body::{
    BufferBody, BufferBodyFuture, BufferBodyLayer, RequestCheck, RequestRejected,
};
pub use crate::budget::{StartInTime, StartInTimeFuture};
pub use crate::count::{CountCalls, CountCallsFuture};
pub use crate::deadline::{
    DEADLINE_GRACE, Deadline, DeadlineBody, DeadlineExceeded, EnforceDeadline,
    EnforceDeadlineFuture, GRPC_TIMEOUT, RequestDeadline, RequestDeadlineFuture, X_REQUEST_TIMEOUT,
};
pub use crate::degraded::{DEGRADED_TOTAL, DegradeReason, DegradedStats};
pub use crate::handle::{
    CircuitBreakers, Cost, Health, HealthAiHandle, HealthStatus, MetricsReport, RateLimits,
};
pub use crate::lazy::CloneOnDrive;
pub use crate::policy::{
    BreakerClassifier, FallbackFn, FallbackOnUpstreamFailure, PresetFallback, PresetOverload,
    RetryClassifier, UpstreamAnswered, is_capacity_refusal, is_local_refusal,
};
pub use crate::priority::{PresetPriority, PriorityHeader};
pub use crate::prometheus::install_prometheus;
pub use crate::refusal::{Refusals, RefusalsFuture, RefusalsLayer, refusal_response};
#[cfg(feature = "redis")]
pub use crate::shared::{DEFAULT_REDIS_PREFIX, RedisConfig};
pub use crate::shared::{PresetBackend, PresetDecision, PresetLookup, PresetStore};
pub use crate::stack::{
    DEFAULT_ACCEPTED_AFTER, DEFAULT_ADAPTIVE_LIMIT, DEFAULT_BREAKER_FAILURE_RATE,
    DEFAULT_CACHE_MAX_BYTES, DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_DEADLINE, DEFAULT_USER_HEADER,
    HealthAi, HealthAiFuture, HealthAiStack, HealthAiStackBuilder, MAX_USER_ID_LEN,
    PER_USER_LIMITER, PresetLabels, UPSTREAM_NAME, UpstreamRequest,
};
/// The refusal foundation under the five crates: the [`Refusal`] trait every crate's error
/// implements (import it to call `to_http_response`, `to_response`), a refusal given by
/// its parts, and the layer behind every crate's `answer_refusals()`.
pub use tower_refusal::{AnswerRefusalsLayer, Refusal, SimpleRefusal};

/// The names most users need, in one import.
pub mod prelude {
    pub use crate::{HealthAiHandle, HealthAiStack, Refusal, RequestRejected, UpstreamRequest};
    pub use tower_breaker::{CircuitBreakerLayer, Degraded, FallbackLayer, State, TimeoutLayer};
    pub use tower_lru_cache::{CacheLayer, Partition};
    pub use tower_priority_queue::{Priority, PriorityQueueLayer, RetryLayer};
    pub use tower_red_metrics::{PrometheusConfig, RedMetricsLayer};
    pub use tower_token_bucket::{Quota, RateLimitLayer};
}
