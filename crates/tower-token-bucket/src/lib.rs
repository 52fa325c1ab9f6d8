//! Token-bucket rate limiting for [tower] services, on [governor]'s GCRA.
//!
//! One limiter holds one timestamp per key: per user, per client IP, or a single global
//! bucket. A request that finds no token is refused at once (`429 Too Many Requests` with
//! `Retry-After`) or, in wait mode, delayed until its tokens are there, up to a maximum
//! wait. State is shared by every clone of the service and every `Layer::layer` call, and
//! idle per-key state is pruned, so memory stays bounded under any number of keys.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_token_bucket::{http::user_or_peer_ip, Clock, Quota, RateLimitError, RateLimitLayer, Refusal};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // Five requests a second per user (the `x-user-id` header, else the client IP).
//! let per_user = RateLimitLayer::builder(Quota::per_second(5))
//!     .name("per-user")
//!     .key(user_or_peer_ip("x-user-id"))
//!     .clock(Clock::Tokio) // this example pauses tokio's time; see "Time" below
//!     .build();
//! // Two calls a second to the upstream, in total; a call waits up to 10 s for its turn.
//! let global = RateLimitLayer::builder(Quota::per_second(2))
//!     .name("upstream")
//!     .wait(Duration::from_secs(10))
//!     .clock(Clock::Tokio)
//!     .build();
//!
//! let upstream = service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, tower::BoxError>(http::Response::new(String::from("ok")))
//! });
//! let svc = per_user.layer(global.layer(upstream));
//!
//! let request = || {
//!     http::Request::builder()
//!         .header("x-user-id", "alice")
//!         .body(String::new())
//!         .unwrap()
//! };
//! let start = tokio::time::Instant::now();
//! let calls: Vec<_> = (0..5)
//!     .map(|_| tokio::spawn(svc.clone().oneshot(request())))
//!     .collect();
//! tokio::task::yield_now().await; // the five pass `per_user`, `global` paces them
//!
//! // A sixth request from alice at the same moment is refused: her bucket holds 5, and a
//! // token comes back every 200 ms (9 requests fit in her first second; see `Quota`).
//! let err = svc.clone().oneshot(request()).await.unwrap_err();
//! for call in calls {
//!     call.await??;
//! }
//! assert_eq!(start.elapsed(), Duration::from_millis(1500)); // 2 a second
//!
//! let err = err.downcast_ref::<RateLimitError>().unwrap();
//! let response: http::Response<bytes::Bytes> = err.to_http_response();
//! assert_eq!(response.status(), 429);
//! assert_eq!(per_user.handle().snapshot().rejected, 1);
//! # Ok(())
//! # }
//! ```
//!
//! - [`Quota`]: a burst, then the rate: `per_second(5)` admits 5 at once, then one
//!   every 200 ms (9 in a busy client's first second, 5 a second after); the burst
//!   defaults to the count; several quotas on one limiter, first refusal wins; a request may cost several tokens
//!   ([`ExtractKeyExt::with_cost`]).
//! - Keys: [`ExtractKey`] for any request type, with [`GlobalKey`], [`key_fn`], and for
//!   HTTP (feature `http`) [`http::HeaderKey`], [`http::ExtensionKey`], [`http::PeerIp`]
//!   and [`http::ForwardedIp`] (trusted proxies); [`ExtractKeyExt::or`] falls back.
//! - Decisions sit behind [`RateLimitBackend`]; [`InMemoryBackend`] (governor) is the
//!   default, with a key cap that makes room (never refusing a new key) and automatic
//!   pruning. With the `redis` feature, `RedisBackend` shares limits across
//!   instances (one Lua script per decision on the server's clock, a local cache of
//!   refusals, and a `FailurePolicy` for when Redis is unreachable); the layer
//!   builder's `build_redis` puts it under a layer.
//! - Errors are [`RateLimitError`], boxed; with `http`, it is a [`Refusal`], whose
//!   `to_response` builds the 429 (or gRPC `RESOURCE_EXHAUSTED`) with `Retry-After`,
//!   `RateLimit-Policy` and `RateLimit`.
//! - [`RateLimitHandle`] reads counts and a key's remaining tokens;
//!   [`metrics`] lists the metric names.
//!
//!
//! # Refusals as errors, or as answers
//!
//! The layer refuses with an error (a boxed [`RateLimitError`]), for stacks that shape
//! their own answers (axum's `HandleErrorLayer`, `tower::util::MapErr`, a preset). With
//! the `http` feature, [`RateLimitLayer::answer_refusals`] gives the other form: the layer
//! answers its refusals itself, per [`Refusal`] (429 with `Retry-After`,
//! `RateLimit-Policy` and `RateLimit`, or the gRPC trailers-only
//! `RESOURCE_EXHAUSTED`), and keeps the inner service's error type. On an axum route,
//! whose handlers never fail, it attaches with `.layer(...)` as it is:
//!
//! ```
//! use axum::{Router, body::Body, routing::post};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_token_bucket::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let limiter = RateLimitLayer::builder(Quota::per_second(1)).name("orders").build();
//! let app: Router = Router::new().route(
//!     "/orders",
//!     post(|| async { "created" }).layer(limiter.answer_refusals()),
//! );
//!
//! let order = || Request::post("/orders").body(Body::empty()).unwrap();
//! let first = app.clone().oneshot(order()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::OK);
//! let second = app.oneshot(order()).await.unwrap();
//! assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(second.headers()["ratelimit-policy"], "\"orders\";q=1;w=1");
//! # }
//! ```
//!
//! ## Time
//!
//! The in-process limiter reads the CPU's time-stamp counter ([`Clock::Monotonic`], about
//! 10 ns a read), which does not follow tokio's paused test clock. A test that pauses
//! tokio's time (`#[tokio::test(start_paused = true)]`) and advances it to see tokens
//! come back builds its limiter with [`Clock::Tokio`]
//! ([`RateLimitLayerBuilder::clock`]). Waits (wait mode) are tokio sleeps either way.
//!
//! [tower]: https://docs.rs/tower
//! [governor]: https://docs.rs/governor
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod backend;
mod clock;
mod error;
mod future;
mod handle;
#[cfg(feature = "http")]
pub mod http;
mod in_memory;
mod key;
mod layer;
pub mod metrics;
mod quota;
#[cfg(feature = "redis")]
mod redis_backend;
mod service;

pub use backend::{Decision, RateLimitBackend};
pub use clock::Clock;
pub use error::{KeyError, RateLimitError};
pub use future::ResponseFuture;
pub use handle::{RateLimitHandle, RateLimitSnapshot};
pub use in_memory::{DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL, InMemoryBackend};
pub use key::{
    EitherKey, ExtractKey, ExtractKeyExt, FnKey, GlobalKey, KeyExtractor, Or, WithCost, key_fn,
};
pub use layer::{Mode, RateLimitLayer, RateLimitLayerBuilder};
pub use quota::{InvalidQuota, Quota, QuotaInfo};
pub use service::RateLimit;
/// The refusal foundation's trait and answering layer (feature `http`).
#[cfg(feature = "http")]
pub use tower_refusal::{AnswerRefusalsLayer, Refusal};

/// The `redis` crate this backend is built on (feature `redis`), for its connection
/// and error types.
#[cfg(feature = "redis")]
pub use redis;
#[cfg(feature = "redis")]
pub use redis_backend::{
    DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_TIMEOUT, DEFAULT_UNAVAILABLE_RETRY_AFTER, FailurePolicy,
    ManualClock, RedisBackend, RedisBackendBuilder, RedisClock, RedisFuture, RedisKey, RedisStats,
};
